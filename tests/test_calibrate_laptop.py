"""benchmarks/calibrate_laptop.py on a tiny imagefolder: it evaluates no test image, ranks every
candidate on one validation set, runs >= 2 seeds of every norm, and picks by the norm mean."""

from __future__ import annotations

import importlib
import importlib.util
import math
import statistics

import pytest
import torch
from conftest import ROOT
from torchvision.io import write_png

from normrepro import data, train
from normrepro.io_utils import read_json

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
spec = importlib.util.spec_from_file_location("calibrate", ROOT / "benchmarks/calibrate_laptop.py")
calibrate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(calibrate)

CLASSES, PER_CLASS, PER_CLASS_TEST, SIZE = 4, 40, 6, 8


def rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(r) for r in x.reshape(len(x), -1).cpu().numpy()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """4 classes of 8 x 8 noise around a class colour: 160 train, 24 test images, all distinct."""
    root = tmp_path_factory.mktemp("tiny-imagefolder")
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", PER_CLASS), ("test", PER_CLASS_TEST)):
        for k in range(CLASSES):
            (root / split / f"c{k}").mkdir(parents=True)
            colour = torch.tensor([60 * k, 200 - 40 * k, 100]).view(3, 1, 1)
            for i in range(n):
                noise = torch.randint(-40, 41, (3, SIZE, SIZE), generator=gen)
                img = (colour + noise).clamp(0, 255).to(torch.uint8)
                write_png(img, str(root / split / f"c{k}" / f"{i}.png"))
    return root


def argv(folder, tmp_path, subsets=("64", "96")):
    return [
        "--config", "laptop.data.name=imagefolder", f"laptop.data.root={folder}",
        f"laptop.data.image_size={SIZE}", "laptop.data.val_size=16", "laptop.data.split_seed=3",
        "--budget", "192", "--subsets", *subsets, "--seeds", "2", "--jobs", "1",
        "--out", str(tmp_path / "out"), "--table", str(tmp_path / "calibration.md"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def calibrated(folder, tmp_path_factory):
    """Run the calibration in this process once, with spies on what the trainer loads and
    evaluates (taken off again before the tests read the results)."""
    tmp_path = tmp_path_factory.mktemp("calibration")
    evaluated, loaded = [], []
    # evaluate() lives where the trainer's epoch loop does (train_pack's module)
    loop_module = importlib.import_module(train.train_pack.__module__)
    real_evaluate, real_load = loop_module.evaluate, data.load_splits

    def spy_evaluate(model, tset, *args, **kw):
        evaluated.append(rows(tset.x))
        return real_evaluate(model, tset, *args, **kw)

    def spy_load(cfg, device="cpu"):
        splits = real_load(cfg, device)
        loaded.append((cfg, splits))
        return splits

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_module, "evaluate", spy_evaluate)
        mp.setattr(data, "load_splits", spy_load)
        assert calibrate.main(argv(folder, tmp_path), trainer=train.main) == 0
    return {"evaluated": evaluated, "loaded": loaded, "out": tmp_path / "out", "tmp": tmp_path}


def test_calibration_evaluates_no_test_image(calibrated, folder):
    cfg = {"name": "imagefolder", "root": str(folder), "image_size": SIZE, "val_size": 16}
    everything = data.load_splits(cfg)  # the real test set, as a grid run would load it
    test_images = rows(everything.test.x)
    pool_images = rows(everything.train.x) | rows(everything.val.x)
    assert len(test_images) == CLASSES * PER_CLASS_TEST  # distinct images: the check can bite
    # 12 runs (2 candidates x 3 norms x 2 seeds), one evaluation per epoch each (3 or 2 epochs)
    assert len(calibrated["evaluated"]) == 6 * 3 + 6 * 2
    for images in calibrated["evaluated"]:
        assert len(images) == 16  # the val split, every time
        assert not images & test_images and images <= pool_images
    for _, splits in calibrated["loaded"]:
        assert len(splits.test) == 0  # no test image is even on the device
    metrics = list(calibrated["out"].rglob("metrics.json"))
    assert len(metrics) == 12
    for path in metrics:
        m = read_json(path)
        assert m["status"] == "ok" and m["test_acc"] is None and m["val_acc"] is not None
        assert "test loss" not in (path.parent / "train.log").read_text()


def test_every_candidate_is_judged_on_the_same_val_images(calibrated, folder):
    configs = [cfg for cfg, _ in calibrated["loaded"]]  # the data config each run loaded
    subsets = {cfg["train_subset"] for cfg in configs}
    assert subsets == {64, 96}  # the candidates do train on different subsets
    whole = {"name": "imagefolder", "root": str(folder), "image_size": SIZE, "val_size": 0}
    pool_y = data.load_splits(whole).train.y  # the whole pool, in file order
    val_indices = [
        data.split_train_pool(pool_y, cfg["val_size"], cfg["train_subset"], cfg["split_seed"])[0]
        for cfg in configs
    ]
    assert len(val_indices[0]) == 16 and {cfg["split_seed"] for cfg in configs} == {3}
    assert all(torch.equal(v, val_indices[0]) for v in val_indices)
    val_images = [rows(splits.val.x) for _, splits in calibrated["loaded"]]
    assert all(v == val_images[0] for v in val_images)
    for _, splits in calibrated["loaded"]:
        assert not rows(splits.train.x) & val_images[0]
        assert len(splits.train) in subsets


def test_every_norm_has_two_seeds_and_the_table_has_the_spread(calibrated):
    runs = [read_json(p) for p in calibrated["out"].rglob("run.json")]
    seen = {}
    for cfg in runs:
        key = (cfg["data"]["train_subset"], calibrate.norm_label(cfg))
        seen.setdefault(key, set()).add(cfg["seed"])
        assert cfg["batch_size"] == 64 and cfg["data"]["test_subset"] == 0
    assert {norm for _, norm in seen} == {"BN", "GN (G=8)", "GN+WS (G=8)"}
    assert all(seeds == {0, 1} for seeds in seen.values()) and len(seen) == 6
    table = (calibrated["tmp"] / "calibration.md").read_text()
    saved = read_json(calibrated["out"] / "calibration.json")
    for s in saved["summary"]:  # the criterion, recomputed from the runs' own metrics.json
        accs = {}
        for path in (calibrated["out"] / s["name"]).rglob("metrics.json"):
            cfg = read_json(path.parent / "run.json")
            accs.setdefault(cfg["norm"], []).append(read_json(path)["val_acc"])
        expected = sum(sum(v) / len(v) for v in accs.values()) / len(accs)
        assert math.isclose(s["norm_mean"], expected, rel_tol=1e-12)
        assert f"**{100 * expected:.1f}**" in table
        every = [a for v in accs.values() for a in v]
        assert math.isclose(s["all"]["sd"], statistics.stdev(every), rel_tol=1e-9)
        assert f"({100 * min(every):.1f}–{100 * max(every):.1f})" in table
    assert "test acc" not in table.lower().replace("test accuracy is never", "")


def summary_row(name, bn, gn, gn_ws):
    """Two seeds per norm around the given means."""
    out = []
    for norm, acc in (("BN", bn), ("GN (G=8)", gn), ("GN+WS (G=8)", gn_ws)):
        for seed, delta in ((0, -0.01), (1, 0.01)):
            out.append({"candidate": name, "norm": norm, "seed": seed, "status": "ok",
                        "val_acc": acc + delta, "wall_s": 1.0})  # fmt: skip
    return out


def test_the_criterion_is_the_norm_mean_not_bn():
    # A: best for BN (0.60) but worst on average; B: the best mean over the three norms.
    rows_ = summary_row("A", 0.60, 0.30, 0.30) + summary_row("B", 0.50, 0.45, 0.46)
    cands = [{"name": n, "train_subset": 1, "epochs": 1, "lr_factor": 1.0} for n in "AB"]
    summary = calibrate.summarize(rows_, cands)
    by_bn = max(summary, key=lambda s: s["per_norm"]["BN"]["mean"])
    assert by_bn["name"] == "A"
    chosen = calibrate.choose(summary)
    assert chosen["name"] == "B"
    assert math.isclose(chosen["norm_mean"], (0.50 + 0.45 + 0.46) / 3)
    assert chosen["seeds"] == 2 and chosen["per_norm"]["BN"]["sd"] == pytest.approx(0.02**0.5 / 10)


def test_one_seed_is_refused(capsys):
    with pytest.raises(SystemExit):
        calibrate.parse_args(["--seeds", "1"])
    assert "--seeds: got 1; allowed: >= 2" in capsys.readouterr().err
