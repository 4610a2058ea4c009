"""Datasets as one uint8 tensor per split on the training device, with a fixed val split.

`load_splits(data_cfg, device)` reads the `data` section of a run config and returns train / val /
test `TensorSet`s (x: uint8 [N, C, H, W], y: int64 [N]) plus the train-split statistics that
`augment.make_batch_transform` normalizes with. Everything random here (subsets, the val split)
is drawn from `split_seed`, never from the run seed, so every run of a study sees the same images.

The split, in this order (`split_train_pool`): the `val_size` validation images are drawn from the
whole training pool first (class-balanced), then the `train_subset` training images from the
rest. So the validation set does not change with `train_subset` (runs that train on different
subset sizes are compared on one val set), and `train_subset` is exactly the number of images
trained on. `test_subset: 0` means no test set at all (an empty split: nothing to evaluate), for
runs that must never see it, such as the laptop calibration.

The readers of the datasets themselves (cifar10, fashion-mnist, imagefolder, synthetic) are in
src/normrepro/datasets.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from normrepro import config

# Re-exported: callers name them as data.X (DataError, TensorSet, make_synthetic, read_idx).
from normrepro.datasets import (  # noqa: F401
    DEBIAN_FASHION_MNIST,
    LOADERS,
    DataError,
    TensorSet,
    make_synthetic,
    read_idx,
)

DATASETS = ("cifar10", "fashion-mnist", "imagefolder", "synthetic")

# Every key of the `data` section and its default: the schema's (workflow/schemas/
# params.schema.yaml, `data_complete`), the one place a default is written.
DATA_DEFAULTS = config.defaults("data_complete")
FULL_SIZES = {"cifar10": (50000, 10000), "fashion-mnist": (60000, 10000)}  # (train, test) images
SYNTHETIC_SIZES = (2000, 500)  # default (train, test) sizes of the synthetic set


@dataclass
class Splits:
    train: TensorSet
    val: TensorSet  # empty (N = 0) when val_size is 0
    test: TensorSet
    classes: list[str]
    mean: torch.Tensor  # float32 [C], per-channel mean of the train split, pixels in [0, 1]
    std: torch.Tensor  # float32 [C], per-channel std (over all train pixels), same units
    pixel_mean: torch.Tensor  # float32 [C, H, W], per-pixel mean of the train split, in [0, 1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.x.shape[2:])


# ---------------------------------------------------------------------------------------------
# Config validation (no data is read)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(key: str, value, want: str) -> ValueError:
    return ValueError(f"data.{key}: got {value!r}; {want}")


def check_data_config(data_cfg: dict) -> dict:
    """Validate the `data` section; return it completed with DATA_DEFAULTS. Raises ValueError."""
    if not isinstance(data_cfg, dict):
        raise ValueError(
            f"data: got {data_cfg!r}; expected a mapping with keys {list(DATA_DEFAULTS)}"
        )
    unknown = sorted(set(data_cfg) - set(DATA_DEFAULTS))
    if unknown:
        raise ValueError(f"data.{unknown[0]}: unknown key; allowed: {', '.join(DATA_DEFAULTS)}")
    cfg = {**DATA_DEFAULTS, **data_cfg}
    _check_values(cfg)
    _check_sizes(cfg)
    return cfg


def _check_values(cfg: dict) -> None:
    """Each key of a completed `data` section on its own: its type and range."""
    name = cfg["name"]
    if name not in DATASETS:
        raise _bad("name", name, f"allowed: {', '.join(DATASETS)}")
    if not isinstance(cfg["root"], str) or not cfg["root"]:
        raise _bad("root", cfg["root"], "expected a non-empty path string")
    if not isinstance(cfg["download"], bool):
        raise _bad("download", cfg["download"], "expected true or false")
    for key in ("val_size", "split_seed"):
        if not _is_int(cfg[key]) or cfg[key] < 0:
            raise _bad(key, cfg[key], "expected an integer >= 0")
    for key in ("train_subset", "image_size"):
        if cfg[key] is not None and (not _is_int(cfg[key]) or cfg[key] < 1):
            raise _bad(key, cfg[key], "expected null or an integer >= 1")
    if cfg["test_subset"] is not None and (
        not _is_int(cfg["test_subset"]) or cfg["test_subset"] < 0
    ):
        raise _bad(
            "test_subset", cfg["test_subset"], "expected null or an integer >= 0 (0: no test set)"
        )
    if cfg["label"] is not None and (not isinstance(cfg["label"], str) or not cfg["label"]):
        raise _bad("label", cfg["label"], "expected null or a non-empty text naming the data")
    if name == "imagefolder" and cfg["image_size"] is None:
        raise _bad("image_size", None, "imagefolder needs an integer image size (e.g. 128)")


def _check_sizes(cfg: dict) -> None:
    """The split sizes of a checked `data` section against the images the dataset has."""
    name = cfg["name"]
    if name == "synthetic":  # the generated sizes follow the config: no split can be too big
        if cfg["train_subset"] is None:
            _check_split_sizes(cfg["val_size"], None, SYNTHETIC_SIZES[0])
        return
    full_train, full_test = FULL_SIZES.get(name, (None, None))
    if full_test is not None and cfg["test_subset"] is not None and cfg["test_subset"] > full_test:
        raise _bad("test_subset", cfg["test_subset"], f"{name} has only {full_test} test images")
    if full_train is not None:
        _check_split_sizes(cfg["val_size"], cfg["train_subset"], full_train)


def _check_split_sizes(val_size: int, train_subset: int | None, pool: int) -> None:
    """val_size, then train_subset, are drawn from a training pool of `pool` images."""
    if val_size >= pool:
        raise _bad("val_size", val_size, f"must be < the {pool} images of the train pool")
    if train_subset is not None and val_size + train_subset > pool:
        raise _bad(
            "train_subset", train_subset,
            f"at most the {pool - val_size} images left of the {pool}-image train pool after "
            f"data.val_size = {val_size} validation images",
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Loading


def load_splits(data_cfg: dict, device="cpu") -> Splits:
    """Load, subset, split and move a dataset to `device` (see the module docstring)."""
    cfg = check_data_config(data_cfg)
    if cfg["name"] == "synthetic":  # made to size: a pool of train_subset + val_size images
        n_pool = cfg["val_size"] + cfg["train_subset"] if cfg["train_subset"] else None
        n_test = cfg["test_subset"] if cfg["test_subset"] is not None else SYNTHETIC_SIZES[1]
        pool, test, classes = make_synthetic(
            n_pool or SYNTHETIC_SIZES[0], n_test, cfg["image_size"] or 32
        )
    else:
        pool, test, classes = LOADERS[cfg["name"]](cfg)

    seed = cfg["split_seed"]
    val_idx, train_idx = split_train_pool(pool.y, cfg["val_size"], cfg["train_subset"], seed)
    train, val = pool.select(train_idx), pool.select(val_idx)
    n_test = cfg["test_subset"]
    if n_test is not None:  # 0: an empty test set, so no test image can reach an evaluation
        if n_test > len(test):
            raise _bad("test_subset", n_test, f"the dataset has only {len(test)} test images")
        test = test.select(balanced_subset(test.y, n_test, _split_generator(seed, "test")))

    if cfg["image_size"] is not None:
        size = cfg["image_size"]
        train, val, test = (TensorSet(resize_images(s.x, size), s.y) for s in (train, val, test))
    mean, std, pixel_mean = image_stats(train.x)
    return Splits(
        train=train.to(device),
        val=val.to(device),
        test=test.to(device),
        classes=list(classes),
        mean=mean.to(device),
        std=std.to(device),
        pixel_mean=pixel_mean.to(device),
    )


def _split_generator(split_seed: int, purpose: str) -> torch.Generator:
    """A generator of its own for each draw, so that no draw moves another: the val split is
    seeded with split_seed itself (the split every earlier version drew for a whole pool); the
    train and test subsets with a hash of (split_seed, purpose)."""
    if purpose == "val":
        return torch.Generator().manual_seed(split_seed)
    digest = hashlib.sha256(f"normrepro-split:{split_seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def split_train_pool(
    y: torch.Tensor, val_size: int, train_subset: int | None, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(val indices, train indices) into a training pool with labels y, both sorted.

    The val images are drawn first, class-balanced, from the whole pool: they depend on the
    pool, val_size and split_seed only, never on train_subset. The train images are then a
    class-balanced draw of train_subset from the rest (all of the rest when it is None).
    """
    y = y.cpu()
    _check_split_sizes(val_size, train_subset, len(y))
    val_idx = balanced_subset(y, val_size, _split_generator(split_seed, "val"))
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val_idx] = False
    rest = keep.nonzero().squeeze(1)
    if train_subset is None:
        return val_idx, rest
    picked = balanced_subset(y[rest], train_subset, _split_generator(split_seed, "train"))
    return val_idx, rest[picked]


def balanced_subset(y: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Sorted indices of a seeded sample of n labels whose per-class counts differ by at most 1.

    Each sample gets a random rank within its class; taking samples by (rank, random class
    order) deals one image per class in turn, so a class that runs out simply drops out.
    """
    y = y.cpu()
    num = y.shape[0]
    if n >= num:
        return torch.arange(num)
    perm = torch.randperm(num, generator=gen)
    y_perm = y[perm]
    num_classes = int(y.max()) + 1
    by_class = torch.argsort(y_perm, stable=True)  # grouped by class, random order within
    counts = torch.bincount(y_perm, minlength=num_classes)
    rank = torch.empty(num, dtype=torch.long)
    rank[by_class] = torch.arange(num) - (counts.cumsum(0) - counts)[y_perm[by_class]]
    class_order = torch.argsort(torch.randperm(num_classes, generator=gen))
    key = rank * num_classes + class_order[y_perm]
    return perm[torch.argsort(key)[:n]].sort().values


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, size, size] (antialiased bilinear; no-op if already)."""
    if tuple(x.shape[2:]) == (size, size) or x.shape[0] == 0:
        return x
    from torchvision.transforms.v2 import functional as TF

    chunks = [TF.resize(c, [size, size], antialias=True) for c in x.split(4096)]
    return torch.cat(chunks)


def image_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and std and per-pixel mean of uint8 [N, C, H, W], in [0, 1] units.

    Sums are float64 over chunks, so the statistics are exact and memory stays small.
    """
    n, c, h, w = x.shape
    total = torch.zeros(c, h, w, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(4096):
        chunk = chunk.to(torch.float64)
        total += chunk.sum(0)
        total_sq += chunk.square().sum((0, 2, 3))
    pixel_mean = total / max(n, 1) / 255.0
    count = max(n * h * w, 1)
    mean = total.sum((1, 2)) / count / 255.0
    var = (total_sq / count / 255.0**2 - mean.square()).clamp_min(0.0)
    return mean.float(), var.sqrt().float(), pixel_mean.float()
