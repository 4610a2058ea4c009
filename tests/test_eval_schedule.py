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
