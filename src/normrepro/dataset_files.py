"""Where each dataset lies on disk and how many training images it holds, without torch.

Read at Snakemake parse time (src/normrepro/preflight.py), so a missing dataset is refused before
any job starts; src/normrepro/datasets.py reads the same layouts when a run loads them (the
tests check that both agree). Nothing here decodes an image or reads more than a directory
listing.

- cifar10: torchvision's ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch}.
- fashion-mnist: torchvision's ROOT/FashionMNIST/raw/*-ubyte[.gz], else Debian's
  `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist).
- imagefolder: ROOT/train/<class>/<image>, ROOT/test/<class>/<image>.
- synthetic: generated in memory, nothing on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

# Images of the full datasets (data.FULL_SIZES, which a test checks against these).
FULL_TRAIN = {"cifar10": 50000, "fashion-mnist": 60000}  # the training pool
FULL_TEST = {"cifar10": 10000, "fashion-mnist": 10000}
SYNTHETIC_TRAIN = 2000  # the synthetic pool when data.train_subset is null (data.SYNTHETIC_SIZES)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {  # split -> (images, labels) idx files, as torchvision and Debian name them
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")
IMAGEFOLDER_LAYOUT = "ROOT/train/<class>/<image>.jpg|png and ROOT/test/<class>/<image>.jpg|png"


def missing_cifar10(root: str | os.PathLike) -> list[str]:
    """The CIFAR-10 files torchvision needs that are not under root (all six when absent)."""
    folder = Path(root) / CIFAR10_FOLDER
    return [str(folder / name) for name in CIFAR10_FILES if not (folder / name).is_file()]


def fashion_dirs(root: str | os.PathLike, debian: Path | None = None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: torchvision's layout under root, Debian's."""
    return [Path(root) / "FashionMNIST" / "raw", debian or DEBIAN_FASHION_MNIST]


def find_fashion(root: str | os.PathLike, debian: Path | None = None) -> Path | None:
    """The first folder of fashion_dirs that holds all four idx files (raw or .gz); None if none."""
    stems = [stem for pair in FASHION_FILES.values() for stem in pair]
    for folder in fashion_dirs(root, debian):
        if all((folder / s).is_file() or (folder / f"{s}.gz").is_file() for s in stems):
            return folder
    return None


def is_image_file(entry: os.DirEntry) -> bool:
    """An image as the imagefolder reader takes it: a known extension, not hidden, a file."""
    name = entry.name
    return (
        not name.startswith(".")
        and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        and entry.is_file()
    )


def count_images(split_dir: str | os.PathLike) -> dict[str, int]:
    """{class folder: number of image files} of one imagefolder split, classes with none left
    out; {} when the folder is absent. One directory listing per class: no file is opened."""
    counts: dict[str, int] = {}
    try:
        classes = [e for e in os.scandir(split_dir) if e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return counts
    for class_dir in classes:
        with os.scandir(class_dir.path) as entries:
            n = sum(1 for e in entries if is_image_file(e))
        if n:
            counts[class_dir.name] = n
    return counts
