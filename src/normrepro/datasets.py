"""Dataset readers: each returns (train TensorSet, test TensorSet, class names) on the CPU.

src/normrepro/data.py checks the `data` config, splits and subsets what these return.
- cifar10: torchvision layout under `root` (root/cifar-10-batches-py), downloaded when allowed.
- fashion-mnist: torchvision layout (root/FashionMNIST/raw/*-ubyte[.gz]), else the files of
  Debian's `dataset-fashion-mnist` package, else a torchvision download when allowed. 1 x 28 x 28.
- imagefolder: root/train/<class>/*, root/test/<class>/*; decoded once, resized to `image_size`
  (shorter side, then centre crop), cached as root/.normrepro-imagefolder-<size>.pt.
- synthetic: generated in memory (learnable class prototypes + noise), 3 x 32 x 32.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SYNTHETIC_SEED = 1234  # the synthetic images themselves never change; split_seed only splits them
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {  # split -> (images, labels) idx files, as torchvision and Debian name them
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
FASHION_CLASSES += ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")
IMAGEFOLDER_LAYOUT = "ROOT/train/<class>/<image>.jpg|png and ROOT/test/<class>/<image>.jpg|png"


class DataError(Exception):
    """A dataset is missing or unreadable; the message says where we looked and how to get it."""


@dataclass
class TensorSet:
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return self.y.shape[0]

    def select(self, idx: torch.Tensor) -> TensorSet:
        return TensorSet(self.x[idx], self.y[idx])

    def to(self, device) -> TensorSet:
        return TensorSet(self.x.to(device), self.y.to(device))


def _load_cifar10(cfg: dict):
    from torchvision.datasets import CIFAR10

    root = Path(cfg["root"])
    folder = root / CIFAR10.base_folder
    download = cfg["download"] and not folder.is_dir()
    try:
        sets = [CIFAR10(str(root), train=train, download=download) for train in (True, False)]
    except Exception as err:  # missing / corrupt (RuntimeError) or a failed download (OSError)
        how = (
            "the download failed; fetch https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
            f"and extract it into {root}"
            if cfg["download"]
            else "set data.download: true to download it"
        )
        raise DataError(f"cifar10: could not load {folder} ({err}); {how}") from err
    out = []
    for ds in sets:
        if ds.data.ndim != 4 or ds.data.shape[1:] != (32, 32, 3) or len(ds.targets) != len(ds.data):
            raise DataError(f"cifar10: {folder} is corrupt: got images {ds.data.shape}")
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        out.append(TensorSet(x, torch.tensor(ds.targets, dtype=torch.long)))
    return out[0], out[1], sets[0].classes


def _fashion_dirs(root: Path) -> list[Path]:
    return [root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]


def _idx_path(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _find_fashion(root: Path) -> Path | None:
    for folder in _fashion_dirs(root):
        stems = [stem for pair in FASHION_FILES.values() for stem in pair]
        if all(_idx_path(folder, stem) for stem in stems):
            return folder
    return None


def read_idx(path: Path) -> torch.Tensor:
    """Parse an IDX file (raw or .gz) of unsigned bytes into a uint8 tensor of its dimensions."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = bytearray(f.read())
        zero, dtype, ndim = data[0:2], data[2], data[3]
        if zero != b"\0\0" or dtype != 0x08 or not 1 <= ndim <= 4:
            raise ValueError(f"bad IDX header {bytes(data[:4]).hex()}")
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        count = 1
        for d in dims:
            count *= d
        if len(data) != 4 + 4 * ndim + count:
            raise ValueError(f"{len(data)} bytes for dimensions {dims}")
        return torch.frombuffer(data, dtype=torch.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise DataError(
            f"fashion-mnist: {path} is corrupt ({err}); delete it and download it again "
            "(data.download: true) or reinstall: apt-get install -y dataset-fashion-mnist"
        ) from err


def _load_fashion_mnist(cfg: dict):
    root = Path(cfg["root"])
    folder = _find_fashion(root)
    failure = ""
    if folder is None and cfg["download"]:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(root), train=True, download=True)  # fetches all four files
        except Exception as err:  # no network, disk full, bad checksum...
            failure = f" (the download into {root} failed: {' '.join(str(err).split())})"
        folder = _find_fashion(root)
    if folder is None:
        looked = " and ".join(str(d) for d in _fashion_dirs(root))
        raise DataError(
            f"fashion-mnist: not found; looked in {looked} for {FASHION_FILES['train'][0]}[.gz] "
            f"and the other three idx files{failure}. Get it with "
            "`apt-get install -y dataset-fashion-mnist`"
            + ("" if cfg["download"] else f", or set data.download: true to download it to {root}")
        )
    out = []
    for split, (images, labels) in FASHION_FILES.items():
        x = read_idx(_idx_path(folder, images))
        y = read_idx(_idx_path(folder, labels)).long()
        if x.ndim != 3 or y.shape != x.shape[:1] or int(y.max()) >= len(FASHION_CLASSES):
            raise DataError(f"fashion-mnist: {folder} is corrupt: {split} {tuple(x.shape)}")
        out.append(TensorSet(x.unsqueeze(1), y))  # [N, 1, 28, 28]
    return out[0], out[1], FASHION_CLASSES


def _image_files(split_dir: Path) -> list[tuple[Path, str]]:
    return [
        (path, class_dir.name)
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir())
        for path in sorted(class_dir.iterdir())
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    ]


def _decode(path: Path, size: int) -> torch.Tensor:
    """One image file -> uint8 [3, size, size]: shorter side resized to size, centre crop."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (torchcodec)
            warnings.simplefilter("ignore", DeprecationWarning)
            img = decode_image(str(path), mode=ImageReadMode.RGB)
    except Exception as err:  # torchvision raises RuntimeError on undecodable bytes
        raise DataError(f"imagefolder: cannot decode {path} ({err}); remove or replace it") from err
    img = TF.resize(img, size, antialias=True)
    return TF.center_crop(img, [size, size])


def _load_imagefolder(cfg: dict):
    root, size = Path(cfg["root"]), cfg["image_size"]
    split_dirs = {split: root / split for split in ("train", "test")}
    files = {}
    for split, split_dir in split_dirs.items():
        files[split] = _image_files(split_dir) if split_dir.is_dir() else []
        if not files[split]:
            raise DataError(
                f"imagefolder: no images found under {split_dir}; expected {IMAGEFOLDER_LAYOUT} "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
    classes = sorted({cls for _, cls in files["train"]})
    extra = sorted({cls for _, cls in files["test"]} - set(classes))
    if extra:
        raise DataError(f"imagefolder: test classes {extra} have no folder under {root / 'train'}")

    # The cache is valid while the file list, sizes and modification times are unchanged.
    stat = "\n".join(
        f"{p.relative_to(root)}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}"
        for split in ("train", "test")
        for p, _ in files[split]
    )
    fingerprint = hashlib.sha256(stat.encode()).hexdigest()
    cache = root / f".normrepro-imagefolder-{size}.pt"
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            if saved["fingerprint"] == fingerprint:
                sets = [TensorSet(saved[f"{s}_x"], saved[f"{s}_y"]) for s in ("train", "test")]
                return sets[0], sets[1], saved["classes"]
        except Exception as err:  # a stale or broken cache is rebuilt
            warnings.warn(f"imagefolder: ignoring unreadable cache {cache}: {err}", stacklevel=2)

    label = {cls: i for i, cls in enumerate(classes)}
    sets = []
    for split in ("train", "test"):
        x = torch.stack([_decode(path, size) for path, _ in files[split]])
        y = torch.tensor([label[cls] for _, cls in files[split]], dtype=torch.long)
        sets.append(TensorSet(x, y))
    saved = {"fingerprint": fingerprint, "classes": classes}
    for split, tset in zip(("train", "test"), sets, strict=True):
        saved[f"{split}_x"], saved[f"{split}_y"] = tset.x, tset.y
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")  # runs started together each write their own
    try:
        torch.save(saved, tmp)
        tmp.replace(cache)
    except OSError as err:  # a read-only dataset folder only costs the next load's decode
        warnings.warn(f"imagefolder: could not write cache {cache}: {err}", stacklevel=2)
    return sets[0], sets[1], classes


def make_synthetic(n_train: int, n_test: int, image_size: int = 32, num_classes: int = 10):
    """A learnable, fixed 3-channel dataset of up to 27 classes: a class colour and a
    low-frequency class pattern, plus per-image colour jitter and pixel noise. Labels are
    balanced (counts differ by <= 1). A tiny CNN reaches ~90% test accuracy in one epoch.
    """
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    size = (image_size, image_size)
    # Class colours: distinct corners of a 3 x 3 x 3 grid in [0.25, 0.75]^3 (>= 0.25 apart).
    grid = torch.cartesian_prod(*[torch.tensor([0.25, 0.5, 0.75])] * 3)  # [27, 3]
    picks = torch.randperm(len(grid), generator=gen)[:num_classes]
    colour = grid[picks].view(num_classes, 3, 1, 1)
    coarse = torch.randn(num_classes, 3, 4, 4, generator=gen)
    pattern = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    prototypes = colour + 0.2 * pattern  # [K, 3, S, S], pixels in [0, 1]

    def draw(n: int) -> TensorSet:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        jitter = 0.06 * torch.randn(n, 3, 1, 1, generator=gen)
        noise = 0.1 * torch.randn(n, 3, *size, generator=gen)
        x = (prototypes[y] + jitter + noise).clamp(0, 1)
        return TensorSet((x * 255).round().to(torch.uint8), y)

    train, test = draw(n_train), draw(n_test)
    return train, test, [f"class{k}" for k in range(num_classes)]


LOADERS = {
    "cifar10": _load_cifar10,
    "fashion-mnist": _load_fashion_mnist,
    "imagefolder": _load_imagefolder,
}
