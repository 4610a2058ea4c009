"""Datasets, subsets and the val split, checked against independent parsers and published counts."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from normrepro import data, datasets
from normrepro.data import (
    DataError,
    balanced_subset,
    check_data_config,
    load_splits,
    make_synthetic,
    split_train_pool,
)

torch.set_num_threads(1)
# write_png builds the imagefolder fixtures; torchvision 0.29 flags its codecs as deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

DEBIAN = data.DEBIAN_FASHION_MNIST
needs_debian = pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install -y dataset-fashion-mnist",
)


def rows(x):
    """Each image as bytes, to compare sets of images."""
    return [bytes(r) for r in x.reshape(len(x), -1).numpy()]


def idx_bytes(array):
    """IDX encoding written out from the format spec: 0, 0, dtype 0x08, ndim, big-endian dims."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def read_idx_numpy(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


# --- config validation ---------------------------------------------------------------------------


def test_check_data_config_fills_defaults():
    cfg = check_data_config({"name": "synthetic", "val_size": 100})
    assert cfg == {**data.DATA_DEFAULTS, "name": "synthetic", "val_size": 100}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "foo"}, "data.name: got 'foo'; allowed: cifar10, fashion-mnist, imagefolder"),
        ({"name": "cifar10", "colour": 1}, "data.colour: unknown key; allowed: name, root"),
        ({"name": "cifar10", "root": 3}, "data.root: got 3"),
        ({"name": "cifar10", "download": "yes"}, "data.download: got 'yes'"),
        ({"name": "cifar10", "val_size": -1}, "data.val_size: got -1; expected an integer >= 0"),
        ({"name": "cifar10", "val_size": 1.5}, "data.val_size: got 1.5"),
        ({"name": "cifar10", "split_seed": True}, "data.split_seed: got True"),
        ({"name": "cifar10", "train_subset": 0}, "data.train_subset: got 0; expected null"),
        (
            {"name": "cifar10", "train_subset": 45001},
            "data.train_subset: got 45001; at most the 45000",
        ),
        (
            {"name": "cifar10", "train_subset": 49901, "val_size": 100},
            "of the 50000-image train pool",
        ),
        ({"name": "fashion-mnist", "test_subset": 10001}, "data.test_subset: got 10001"),
        (
            {"name": "cifar10", "test_subset": -1},
            "data.test_subset: got -1; expected null or an integer >= 0",
        ),
        ({"name": "cifar10", "image_size": "32"}, "data.image_size: got '32'"),
        ({"name": "imagefolder"}, "data.image_size: got None; imagefolder needs"),
        ({"name": "cifar10", "val_size": 50000}, "data.val_size: got 50000; must be < the 50000"),
        ({"name": "synthetic"}, "data.val_size: got 5000; must be < the 2000"),
        ([], "data: got []"),
    ],
)
def test_bad_data_config_names_key_and_value(cfg, message):
    with pytest.raises(ValueError) as err:
        check_data_config(cfg)
    assert message in str(err.value)


# --- subsets and the val split -------------------------------------------------------------------


def test_balanced_subset_counts_and_seeding():
    y = torch.arange(10).repeat_interleave(100)  # sorted by class, as folders are
    idx = balanced_subset(y, 995, torch.Generator().manual_seed(0))
    counts = torch.bincount(y[idx], minlength=10)
    assert len(set(idx.tolist())) == 995 and counts.max() - counts.min() == 1
    idx = balanced_subset(y, 50, torch.Generator().manual_seed(0))
    assert torch.bincount(y[idx]).tolist() == [5] * 10  # not the first 50 (all class 0)
    again = balanced_subset(y, 50, torch.Generator().manual_seed(0))
    other = balanced_subset(y, 50, torch.Generator().manual_seed(1))
    assert torch.equal(idx, again) and not torch.equal(idx, other)
    # A class with only 2 images drops out of the round-robin; the others stay balanced.
    y = torch.cat([torch.zeros(2), torch.ones(50), torch.full((50,), 2)]).long()
    counts = torch.bincount(y[balanced_subset(y, 42, torch.Generator().manual_seed(0))])
    assert counts.tolist() == [2, 20, 20]


def synthetic(**kw):
    return load_splits({"name": "synthetic", "train_subset": 300, "test_subset": 100, **kw})


def test_val_split_ignores_run_seed_and_follows_split_seed():
    torch.manual_seed(0)
    a = synthetic(val_size=100)
    torch.manual_seed(1)  # a different run seed must not move the split
    b = synthetic(val_size=100)
    c = synthetic(val_size=100, split_seed=1)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.x, b.train.x)
    assert set(rows(a.val.x)) != set(rows(c.val.x))
    full = make_synthetic(400, 100)[0]  # the pool: train_subset + val_size images
    for s in (a, c):
        assert (len(s.train), len(s.val), len(s.test)) == (300, 100, 100)
        assert not set(rows(s.train.x)) & set(rows(s.val.x))  # disjoint
        assert sorted(rows(s.train.x) + rows(s.val.x)) == sorted(rows(full.x))  # one pool
        assert torch.bincount(s.val.y).tolist() == [10] * 10
    empty = synthetic(val_size=0)
    assert empty.val.x.shape == (0, 3, 32, 32) and len(empty.train) == 300


def test_val_indices_do_not_depend_on_train_subset():
    # A pool in a shuffled class order (as a real pool's labels come), 10 classes x 100.
    y = torch.arange(10).repeat_interleave(100)[
        torch.randperm(1000, generator=torch.Generator().manual_seed(5))
    ]
    splits = {n: split_train_pool(y, 200, n, split_seed=0) for n in (100, 550, 800, None)}
    val = splits[None][0]
    for n, (val_n, train_n) in splits.items():
        assert torch.equal(val_n, val)  # the very same indices for every train_subset
        assert len(train_n) == (n if n is not None else 800)  # train_subset = images trained on
        assert not set(val_n.tolist()) & set(train_n.tolist())  # disjoint
        counts = torch.bincount(y[train_n], minlength=10)
        assert counts.max() - counts.min() <= 1  # the train draw is class-balanced too
    assert torch.bincount(y[val], minlength=10).tolist() == [20] * 10  # 200 / 10 classes
    assert sorted(splits[None][1].tolist() + val.tolist()) == list(range(1000))  # all of the pool
    # The split seed moves the val set; the run never supplies it.
    assert not torch.equal(split_train_pool(y, 200, 100, split_seed=1)[0], val)
    with pytest.raises(ValueError, match="data.train_subset: got 801; at most the 800 images"):
        split_train_pool(y, 200, 801, split_seed=0)


def test_val_images_are_the_same_for_every_train_subset(tmp_path):
    # Through load_splits on a dataset read from files (fashion-mnist layout, 200-image pool).
    write_fashion(tmp_path / "FashionMNIST" / "raw", n_train=200, n_test=10)
    cfg = {"name": "fashion-mnist", "root": str(tmp_path), "download": False, "val_size": 50}
    small, large = (load_splits({**cfg, "train_subset": n}) for n in (60, 150))
    assert torch.equal(small.val.x, large.val.x) and torch.equal(small.val.y, large.val.y)
    assert (len(small.train), len(large.train), len(small.val)) == (60, 150, 50)
    for s in (small, large):
        assert not set(rows(s.train.x)) & set(rows(s.val.x))
        assert torch.bincount(s.train.y, minlength=10).tolist() == [len(s.train) // 10] * 10
        assert torch.bincount(s.val.y, minlength=10).tolist() == [5] * 10
    with pytest.raises(ValueError, match="data.train_subset: got 151; at most the 150"):
        load_splits({**cfg, "train_subset": 151})


def test_test_subset_zero_is_no_test_set(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", n_train=40, n_test=10)
    cfg = {"name": "fashion-mnist", "root": str(tmp_path), "download": False, "val_size": 10}
    s = load_splits({**cfg, "test_subset": 0})
    assert len(s.test) == 0 and s.test.x.shape == (0, 1, 28, 28)
    assert (len(s.train), len(s.val)) == (30, 10)
    assert len(load_splits({**cfg, "test_subset": 4}).test) == 4
    assert len(synthetic(val_size=10, test_subset=0).test) == 0


def test_synthetic_is_learnable_by_nearest_class_mean():
    s = synthetic(val_size=0)
    x_train, x_test = s.train.x.double().flatten(1), s.test.x.double().flatten(1)
    centroids = torch.stack([x_train[s.train.y == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(x_test, centroids).argmin(1) == s.test.y).double().mean()
    assert accuracy > 0.5  # chance is 0.1
    assert s.train.x.dtype == torch.uint8 and s.num_classes == 10 and s.in_channels == 3


# --- fashion-mnist -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion():
    return load_splits(
        {"name": "fashion-mnist", "root": "/nonexistent", "download": False, "val_size": 5000}
    )


@needs_debian
def test_fashion_mnist_from_debian_package(fashion):
    s = fashion
    assert (len(s.train), len(s.val), len(s.test)) == (55000, 5000, 10000)
    assert s.train.x.shape[1:] == (1, 28, 28) and s.train.x.dtype == torch.uint8
    assert s.in_channels == 1 and s.num_classes == 10
    assert sorted(s.test.y.unique().tolist()) == list(range(10))
    assert torch.bincount(s.val.y).tolist() == [500] * 10
    # Against an independent parse of the package's files (integer sums: exact and light).
    train = read_idx_numpy(DEBIAN / "train-images-idx3-ubyte.gz")
    test = read_idx_numpy(DEBIAN / "t10k-images-idx3-ubyte.gz")
    assert int(s.train.x.sum()) + int(s.val.x.sum()) == int(train.sum(dtype=np.int64))
    assert np.array_equal(s.test.x[:, 0].numpy(), test)
    assert np.bincount(read_idx_numpy(DEBIAN / "t10k-labels-idx1-ubyte.gz")).tolist() == [1000] * 10
    part = s.train.x.numpy()
    mean = part.sum(dtype=np.int64) / part.size / 255
    mean_sq = (part.astype(np.uint16) ** 2).sum(dtype=np.int64) / part.size / 255**2
    assert s.mean.item() == pytest.approx(mean, abs=1e-6)
    assert s.std.item() == pytest.approx(np.sqrt(mean_sq - mean**2), abs=1e-6)
    # Published Fashion-MNIST train statistics: mean 0.2860, std 0.3530.
    assert train.sum(dtype=np.int64) / train.size / 255 == pytest.approx(0.2860, abs=1e-4)
    assert s.mean.item() == pytest.approx(0.2860, abs=2e-3)
    assert s.std.item() == pytest.approx(0.3530, abs=2e-3)
    assert s.pixel_mean.shape == (1, 28, 28)


@needs_debian
def test_fashion_mnist_subsets_are_balanced_and_resizable():
    s = load_splits(
        {"name": "fashion-mnist", "root": "/nonexistent", "download": False, "val_size": 200}
        | {"train_subset": 1000, "test_subset": 500, "image_size": 32}
    )
    assert torch.bincount(s.train.y).tolist() == [100] * 10
    assert torch.bincount(s.val.y).tolist() == [20] * 10
    assert torch.bincount(s.test.y).tolist() == [50] * 10
    assert s.train.x.shape == (1000, 1, 32, 32) and s.pixel_mean.shape == (1, 32, 32)


def write_fashion(folder, n_train=20, n_test=10, corrupt=False):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[split] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images = idx_bytes(arrays[split])
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(images[:-5] if corrupt else images)
        )
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(n) % 10))
    return arrays


def test_fashion_mnist_torchvision_layout_comes_first(tmp_path):
    arrays = write_fashion(tmp_path / "FashionMNIST" / "raw")
    s = load_splits({"name": "fashion-mnist", "root": str(tmp_path), "val_size": 0})
    assert (len(s.train), len(s.test)) == (20, 10)
    assert np.array_equal(s.train.x[:, 0].numpy(), arrays["train"])
    assert s.test.y.tolist() == list(range(10))


def test_corrupt_fashion_mnist_names_the_file(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", corrupt=True)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is corrupt"):
        load_splits({"name": "fashion-mnist", "root": str(tmp_path), "val_size": 0})


def test_missing_fashion_mnist_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    with pytest.raises(DataError) as err:
        load_splits({"name": "fashion-mnist", "root": str(tmp_path), "download": False})
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and str(tmp_path / "debian") in message
    assert "apt-get install -y dataset-fashion-mnist" in message and "download: true" in message


# --- cifar10 -------------------------------------------------------------------------------------


def test_missing_cifar10_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        load_splits({"name": "cifar10", "root": str(tmp_path), "download": False})
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)
    assert "data.download: true" in str(err.value)


def test_cifar10_batches_become_nchw_uint8(tmp_path, monkeypatch):
    # Fake python batches in CIFAR-10's format: rows of 3072 bytes, R plane, G plane, B plane.
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    raw = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        raw[name] = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        batch = {"data": raw[name], "labels": list(np.arange(20) % 10)}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"c{k}" for k in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    s = load_splits({"name": "cifar10", "root": str(tmp_path), "download": False, "val_size": 10})
    assert (len(s.train), len(s.val), len(s.test)) == (90, 10, 20)
    test = raw["test_batch"]
    n, c, i, j = 7, 2, 5, 30
    assert s.test.x[n, c, i, j].item() == test[n, c * 1024 + i * 32 + j]
    assert np.array_equal(s.test.x.reshape(20, -1).numpy(), test)
    assert s.classes == meta["label_names"]


# --- imagefolder ---------------------------------------------------------------------------------


def write_folder(root, corrupt=False):
    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}
    for split, n in (("train", 4), ("test", 2)):
        for cls, colour in colours.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for k in range(n):
                h, w = (20, 30) if k % 2 else (40, 24)
                img = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w)
                write_png(img.contiguous(), str(folder / f"{k}.png"))
            (folder / "notes.txt").write_text("not an image")
    write_png(torch.full((1, 12, 12), 77, dtype=torch.uint8), str(root / "test" / "emu" / "g.png"))
    if corrupt:
        (root / "train" / "dog" / "9.png").write_bytes(b"\x89PNG broken")


def test_imagefolder_decodes_resizes_and_caches(tmp_path, monkeypatch):
    write_folder(tmp_path)
    cfg = {"name": "imagefolder", "root": str(tmp_path), "image_size": 16, "val_size": 3}
    s = load_splits(cfg)
    assert s.classes == ["cat", "dog", "emu"]
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 7)
    assert s.train.x.shape[1:] == (3, 16, 16) and s.train.x.dtype == torch.uint8
    # Solid colours survive the resize exactly; the grayscale image becomes 3 equal channels.
    for x, y in ((s.train.x, s.train.y), (s.test.x, s.test.y)):
        expected = torch.eye(3, dtype=torch.long)[y] * 255  # class k -> channel k is 255
        solid = x.amin((2, 3)) == x.amax((2, 3))
        grey = (x == 77).flatten(1).all(1)
        assert solid.all() and (torch.equal(x[~grey, :, 0, 0].long(), expected[~grey]))
    assert (s.test.x == 77).flatten(1).all(1).sum() == 1
    assert (tmp_path / ".normrepro-imagefolder-16.pt").is_file()

    def no_decode(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(datasets, "_decode", no_decode)
    again = load_splits(cfg)
    assert torch.equal(again.train.x, s.train.x) and torch.equal(again.test.y, s.test.y)


def test_imagefolder_errors_name_the_layout_and_the_file(tmp_path):
    cfg = {"name": "imagefolder", "root": str(tmp_path), "image_size": 8, "val_size": 0}
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    assert str(tmp_path / "train") in str(err.value) and "ROOT/train/<class>/" in str(err.value)
    write_folder(tmp_path, corrupt=True)
    with pytest.raises(DataError, match="cannot decode .*9.png"):
        load_splits(cfg)
