"""runtime.test_every: the test set is evaluated every N epochs and always after the last; the
number a run reports is the last epoch's test accuracy either way, and the run's (C, G) per norm
layer is in its log."""

from __future__ import annotations

import math

from test_train import history, make_cfg, metrics, run


def test_test_set_only_after_the_last_epoch_gives_the_same_final_numbers(tmp_path):
    every_epoch = make_cfg(epochs=3)
    last_only = make_cfg(epochs=3)
    last_only["runtime"]["test_every"] = 0
    code_a, dir_a = run(tmp_path, every_epoch, out="a")
    code_b, dir_b = run(tmp_path, last_only, out="b")
    assert code_a == code_b == 0
    rows_a, rows_b = history(dir_a), history(dir_b)
    # Evaluating draws no random numbers: training is identical, so the last epoch's test
    # numbers are equal, and the earlier epochs have none when test_every is 0.
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert rows_b[-1]["test_acc"] == rows_a[-1]["test_acc"]
    assert all(math.isnan(float(r["test_acc"])) for r in rows_b[:-1])
    assert all(not math.isnan(float(r["test_acc"])) for r in rows_a)
    assert metrics(dir_b)["status"] == "ok"
    assert metrics(dir_b)["test_acc"] == metrics(dir_a)["test_acc"]


def test_log_lists_channels_and_groups_of_the_norm_layers(tmp_path):
    cfg = make_cfg(norm="gn", norm_kw={"groups": 4}, epochs=1)
    code, run_dir = run(tmp_path, cfg)
    assert code == 0
    log = (run_dir / "train.log").read_text()
    # depth 8, base width 8: stem + 2 per stage over 8 / 16 / 32 channels, projections on 16, 32
    assert "norm layers (channels/groups): 8ch/G4 x3, 16ch/G4 x3, 32ch/G4 x3" in log


def epoch_lines(run_dir) -> list[str]:
    return [
        line
        for line in (run_dir / "train.log").read_text().splitlines()
        if " | train loss " in line
    ]


def test_an_epoch_without_a_test_pass_logs_no_test_numbers(tmp_path):
    # Issue 20 item 8: with runtime.test_every 0 the test set is evaluated after the last epoch
    # only; the other epochs' lines must not say `test loss nan acc nan` (read as a divergence).
    cfg = make_cfg(epochs=3)
    cfg["runtime"]["test_every"] = 0
    code, run_dir = run(tmp_path, cfg)
    assert code == 0
    lines = epoch_lines(run_dir)
    assert [line.split(" lr ")[0].split()[-1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("nan" not in line for line in lines)
    assert all("test" not in line for line in lines[:2])
    # the last epoch's line has the test numbers history.tsv recorded for it
    last = history(run_dir)[-1]
    assert f"test loss {float(last['test_loss']):.4f} acc {float(last['test_acc']):.4f}" in lines[2]
    assert f"val loss {float(last['val_loss']):.4f}" in lines[2]


def test_no_test_set_and_no_val_split_log_no_nan(tmp_path):
    # data.test_subset 0 (no test set, as the laptop calibration runs) and val_size 0: no line
    # names a split that was never evaluated, and the run is ok, not taken for diverged.
    cfg = make_cfg(epochs=2)
    cfg["data"].update(test_subset=0, val_size=0)
    code, run_dir = run(tmp_path, cfg)
    assert code == 0
    lines = epoch_lines(run_dir)
    assert len(lines) == 2
    assert all("nan" not in line and "test" not in line and "val" not in line for line in lines)
    m = metrics(run_dir)
    assert m["status"] == "ok" and m["test_acc"] is None and m["val_acc"] is None
    assert "test acc not evaluated" in (run_dir / "train.log").read_text()
