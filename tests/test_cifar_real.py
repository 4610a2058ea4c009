"""Real CIFAR-10 through the laptop scale's own loader path: the run config the laptop grid
trains (BN, its largest batch, ResNet-8), shortened to two epochs on 2,500 real images.

The images come from ../shared/data/cifar10-jpeg-10k.tar.gz (real CIFAR-10 as JPEG files, the
workplace's offline copy), extracted into a temporary folder; users' runs download CIFAR-10 with
torchvision instead and never read ../shared.
"""

from __future__ import annotations

import copy
import tarfile
from pathlib import Path

import pytest
import yaml
from test_train import metrics, run

from normrepro import config, grid

ROOT = Path(__file__).resolve().parents[1]
TARBALL = ROOT.parent / "shared" / "data" / "cifar10-jpeg-10k.tar.gz"
OVERLAY = ROOT / "workflow" / "configs" / "cifar10-jpeg.yaml"


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory) -> Path:
    local = ROOT / "data" / "cifar10-jpeg"
    if (local / "train").is_dir():
        return local
    if not TARBALL.is_file():
        pytest.skip(f"no real CIFAR-10 here: neither {local} nor {TARBALL}")
    out = tmp_path_factory.mktemp("cifar")
    with tarfile.open(TARBALL) as tar:
        tar.extractall(out, filter="data")
    return out / "cifar10-jpeg"


def test_two_epochs_of_real_cifar10_learn_well_above_chance(tmp_path, jpeg_root):
    overlay = yaml.safe_load(OVERLAY.read_text())  # the overlay `make laptop` uses offline
    params = config.load_params(overrides=config.deep_merge(overlay, {"scale": "laptop"}))
    runs = grid.study_runs(params, "batch_sweep")
    largest = max(r["batch_size"] for r in runs)
    cfg = copy.deepcopy(next(r for r in runs if r["norm"] == "bn" and r["batch_size"] == largest))
    assert cfg["data"]["name"] == "imagefolder" and cfg["data"]["test_subset"] is None
    cfg["data"].update(root=str(jpeg_root), train_subset=2500)  # images trained on
    cfg["epochs"] = 2
    cfg["runtime"]["threads"] = 2
    cfg["config_hash"] = config.config_hash(cfg)
    code, run_dir = run(tmp_path, cfg)
    assert code == 0
    m = metrics(run_dir)
    log = (run_dir / "train.log").read_text()
    val = cfg["data"]["val_size"]  # drawn from the pool before the 2,500
    assert f"2500 train / {val} val / 10000 test images" in log  # the whole real test set
    # Ten classes: chance is 0.10. Two epochs on 2,500 real images reach about twice that.
    assert m["status"] == "ok"
    assert m["test_acc"] > 0.2, m["test_acc"]
