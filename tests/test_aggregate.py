"""src/aggregate.py: run statuses from run folders, per-cell statistics and Welch tests, checked
against the formulas written out here (t quantiles from a printed table), and the CLI on a
partial grid of the real params.yaml (smoke scale)."""

import json
import math
import statistics

import pandas as pd
import pytest
from scipy import stats

from normrepro import aggregate, config, grid
from normrepro.runs import run_dir

# Student t 0.975 quantiles from a printed table (df -> t), independent of scipy.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


def cfg(run_id, norm="bn", bs=8, seed=0, groups=None, study="s"):
    return {
        "grid": "g",  # the grid folder: results/runs/g/<study>/<run>
        "study": study,
        "run_id": run_id,
        "model": "resnet20",
        "model_kw": {},
        "norm": norm,
        "norm_kw": {"groups": groups} if groups else {},
        "batch_size": bs,
        "lr": 0.1,
        "epochs": 3,
        "seed": seed,
        "data": {"name": "cifar10"},
        "config_hash": f"hash-{run_id}",
    }


def metrics(c, **over):
    m = {
        "status": "ok",
        "diverged_epoch": None,
        "test_acc": 0.9,
        "test_loss": 0.3,
        "val_acc": 0.88,
        "best_val_acc": 0.89,
        "best_epoch": 3,
        "epochs_done": 3,
        "train_loss": 0.2,
        "wall_s": 12.5,
        "images_per_sec": 800.0,
        "device": "cpu",
        "device_name": "cpu",
        "torch_version": "2.14.1",
        "config_hash": c["config_hash"],
    }
    return {**m, **over}


def test_collect_runs_gives_each_planned_run_one_status(tmp_path):
    names = ["ok", "div", "stale", "badjson", "nofield", "log", "recorded", "marker", "none"]
    cfgs = [cfg(n, seed=i) for i, n in enumerate(names)]
    by = {c["run_id"]: c for c in cfgs}

    def rdir(name):
        d = tmp_path / "runs" / "g" / "s" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write(name, obj):
        (rdir(name) / "metrics.json").write_text(json.dumps(obj))

    write("ok", metrics(by["ok"], test_acc=0.91))
    write("div", metrics(by["div"], status="diverged", diverged_epoch=2, test_acc=None))
    write("stale", metrics(by["stale"], config_hash="older", test_acc=0.99))
    (rdir("badjson") / "metrics.json").write_text('{"status": "ok", ')
    m = metrics(by["nofield"])
    del m["best_val_acc"]
    write("nofield", m)
    (rdir("log") / "train.log").write_text("Traceback ...\n")
    write(
        "recorded",
        {
            "status": "failed",
            "exit_code": 1,
            "log_path": "logs/x.log",
            "config_hash": by["recorded"]["config_hash"],
        },
    )  # src/record_failure.py
    (rdir("marker") / ".failed").write_text("")
    (rdir("marker") / "train.log").write_text("killed\n")
    write("leftover", metrics(cfg("leftover")))  # not planned: a glob would pick it up

    runs = aggregate.collect_runs(cfgs, tmp_path)
    got = dict(zip(runs["run_id"], runs["status"], strict=True))
    assert list(runs["run_id"]) == names  # the plan, in order; "leftover" never appears
    assert got == {
        "ok": "ok",
        "div": "diverged",
        "stale": "stale",
        "badjson": "unreadable",
        "nofield": "unreadable",
        "log": "failed",
        "recorded": "failed",
        "marker": "failed",
        "none": "missing",
    }
    row = runs.set_index("run_id")
    assert row.loc["ok", "test_acc"] == pytest.approx(0.91)
    assert row.loc["ok", "test_err"] == pytest.approx(0.09)
    assert row.loc["ok", "wall_s"] == 12.5 and row.loc["ok", "device"] == "cpu"
    assert row.loc["div", "diverged_epoch"] == 2 and "epoch 2" in row.loc["div", "note"]
    assert math.isnan(row.loc["stale", "test_acc"])  # a stale run's numbers are never used
    assert "older" in row.loc["stale", "note"] and "hash-stale" in row.loc["stale", "note"]
    bad = row.loc["badjson", "note"]
    assert "badjson/metrics.json" in bad and "not valid JSON" in bad and "Traceback" not in bad
    assert "nofield/metrics.json" in row.loc["nofield", "note"]
    assert "best_val_acc" in row.loc["nofield", "note"]
    assert row.loc["log", "log_path"] == str(tmp_path / "runs/g/s/log/train.log")
    assert row.loc["recorded", "log_path"] == "logs/x.log"
    assert row.loc["marker", "log_path"] == str(tmp_path / "runs/g/s/marker/train.log")
    assert runs["groups"].isna().all()  # BN: no groups


def _runs(rows):
    cols = ["study", "run_id", "model", "norm", "groups", "batch_size", "lr", "seed", "status"]
    df = pd.DataFrame(rows, columns=[*cols, "test_acc"])
    return df.assign(channels_per_group=None, val_acc=df["test_acc"], best_val_acc=df["test_acc"])


def _cell(norm, bs, statuses_accs, groups=None):
    return [
        ["s", f"{norm}-bs{bs}-s{i}", "resnet20", norm, groups, bs, 0.1, i, st, acc]
        for i, (st, acc) in enumerate(statuses_accs)
    ]


AXES = ["model", "norm", "groups", "channels_per_group", "batch_size", "lr"]


def test_summarize_mean_ci_counts_against_formula():
    a = [0.90, 0.92, 0.91, 0.95, 0.89]
    rows = _cell("bn", 8, [("ok", x) for x in a] + [("diverged", 0.1), ("missing", None)])
    rows += _cell("gn", 8, [("ok", 0.93), ("failed", None)], groups=8)
    rows += _cell("gn", 2, [("missing", None), ("stale", None)], groups=8)
    s = aggregate.summarize(_runs(rows), AXES).set_index("cell")

    assert list(s.index) == [
        "resnet20/bn/bs8/lr0.1",
        "resnet20/gn/g8/bs8/lr0.1",
        "resnet20/gn/g8/bs2/lr0.1",
    ]
    bn = s.loc["resnet20/bn/bs8/lr0.1"]
    mean, sd = sum(a) / 5, statistics.stdev(a)  # the diverged run's 0.1 is not averaged
    assert (bn["n_planned"], bn["n"], bn["n_diverged"], bn["n_missing"]) == (7, 5, 1, 1)
    assert bn["test_acc_mean"] == pytest.approx(mean)
    assert bn["test_acc_std"] == pytest.approx(sd)
    assert bn["test_acc_ci95"] == pytest.approx(T975[4] * sd / math.sqrt(5), rel=1e-3)
    assert (bn["test_acc_min"], bn["test_acc_max"]) == (0.89, 0.95)
    assert bn["test_err_mean"] == pytest.approx(1 - mean)
    assert bn["test_err_ci95"] == pytest.approx(bn["test_acc_ci95"])
    assert bn["ci_note"] == ""

    one = s.loc["resnet20/gn/g8/bs8/lr0.1"]
    assert (one["n"], one["n_failed"], one["groups"]) == (1, 1, 8)
    assert one["test_acc_mean"] == pytest.approx(0.93)
    assert math.isnan(one["test_acc_ci95"]) and one["ci_note"] == "n=1: no CI"

    empty = s.loc["resnet20/gn/g8/bs2/lr0.1"]
    assert (empty["n"], empty["n_missing"], empty["n_stale"]) == (0, 1, 1)
    assert math.isnan(empty["test_acc_mean"])


def test_welch_tests_against_formula():
    a, b = [0.80, 0.82, 0.79, 0.81], [0.90, 0.88, 0.91]
    rows = _cell("bn", 4, [("ok", x) for x in a]) + _cell("gn", 4, [("ok", x) for x in b], groups=8)
    rows += _cell("bn", 64, [("ok", 0.91), ("ok", 0.92)])
    rows += _cell("gn", 64, [("ok", 0.90), ("diverged", 0.1)], groups=8)
    w = aggregate.welch_tests(_runs(rows), AXES, compare="norm")

    assert list(w["batch_size"]) == [4, 64]  # pairs only at equal other settings
    assert list(w["level_a"]) == ["bn", "bn"] and list(w["level_b"]) == ["gn/g8", "gn/g8"]
    r = w.iloc[0]
    va, vb = statistics.variance(a) / 4, statistics.variance(b) / 3
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)  # Welch-Satterthwaite
    assert (r["n_a"], r["n_b"]) == (4, 3)
    assert r["diff"] == pytest.approx(statistics.mean(a) - statistics.mean(b))
    assert r["t"] == pytest.approx(t)
    assert r["p"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    small = w.iloc[1]
    assert math.isnan(small["p"]) and "n<2" in small["note"] and small["n_b"] == 1


def holm_by_hand(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment written out: sort ascending, multiply the i-th smallest
    (0-based) by m - i, carry the running maximum, cap at 1; back in the original order."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def test_welch_p_values_are_holm_adjusted_over_the_study():
    # Three norms at two batch sizes: 3 pairs per cell, one pair untestable (n < 2).
    accs = {
        ("bn", 4): [0.80, 0.82, 0.79, 0.81],
        ("gn", 4): [0.90, 0.88, 0.91],
        ("ln", 4): [0.85, 0.86, 0.83],
        ("bn", 64): [0.91, 0.92, 0.925],
        ("gn", 64): [0.90, 0.905, 0.91],
        ("ln", 64): [0.89],
    }
    rows = []
    for (norm, bs), xs in accs.items():
        rows += _cell(norm, bs, [("ok", x) for x in xs], groups=8 if norm == "gn" else None)
    w = aggregate.welch_tests(_runs(rows), AXES, compare="norm")

    tested = w[w["p"].notna()]
    assert len(w) == 6 and len(tested) == 4  # ln at batch 64 has one run: 2 pairs untested
    expected = holm_by_hand(list(tested["p"]))
    assert list(tested["p_holm"]) == pytest.approx(expected)
    assert (tested["p_holm"] >= tested["p"]).all()
    assert set(w["family"]) == {4}  # the whole study is one family
    assert w.loc[w["p"].isna(), "p_holm"].isna().all()
    # Smallest p times the family size (Holm's first step), when that stays below 1.
    assert tested["p_holm"].min() == pytest.approx(min(1.0, 4 * tested["p"].min()))


def test_history_bands_mean_and_ci():
    h = pd.DataFrame({"series": "x", "epoch": [1, 1, 1, 2], "train_loss": [1.0, 2.0, 3.0, 0.5]})
    b = aggregate.history_bands(h, ["series"], "train_loss").set_index("epoch")
    assert b.loc[1, "mean"] == 2.0
    assert b.loc[1, "hi"] - 2.0 == pytest.approx(T975[2] * 1.0 / math.sqrt(3), rel=1e-3)
    assert b.loc[2, "lo"] == b.loc[2, "hi"] == 0.5  # n = 1: the band is the line


def test_cli_on_a_partial_grid(tmp_path, capsys):
    params = config.load_params(config.REPO / "params.yaml", {"scale": "smoke"})
    cfgs = grid.study_runs(params, "batch_sweep")
    results = tmp_path / "results"
    for i, c in enumerate(cfgs[: len(cfgs) // 2]):  # first half done
        d = run_dir(results, c)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(metrics(c, test_acc=0.8 + 0.01 * i)))
    hist = "epoch\tlr\ttrain_loss\ttrain_acc\tval_loss\tval_acc\ttest_loss\ttest_acc\tseconds\n"
    (run_dir(results, cfgs[0]) / "history.tsv").write_text(
        hist + "1\t0.1\t2\t.1\t2\t.1\t2\t.1\t1\n"
    )
    crashed = run_dir(results, cfgs[-1])
    crashed.mkdir(parents=True)
    (crashed / "train.log").write_text("CUDA out of memory\n")

    out = tmp_path / "agg"
    argv = ["--params", str(config.REPO / "params.yaml"), "--study", "batch_sweep"]
    argv += ["--config", "scale=smoke", "--results", str(results), "--out", str(out)]
    argv += [
        "--metrics",
        str(tmp_path / "dvc/metrics.json"),
        "--curves",
        str(tmp_path / "dvc/c.tsv"),
    ]
    assert aggregate.main(argv) == 0

    printed = capsys.readouterr().out
    n, half = len(cfgs), len(cfgs) // 2
    assert (
        f"batch_sweep: {n} planned, {half} ok, 0 diverged, 1 failed, {n - half - 1} missing"
        in printed
    )
    assert str(crashed / "train.log") in printed
    files = ["history.tsv", "runs.csv", "summary.csv", "summary.json", "welch.csv"]
    assert sorted(p.name for p in out.iterdir()) == files  # and no temporary files left behind
    assert (tmp_path / "dvc/metrics.json").read_text() == (out / "summary.json").read_text()
    curves = pd.read_csv(tmp_path / "dvc/c.tsv", sep="\t")
    assert list(curves["run_id"]) == [cfgs[0]["run_id"]] and curves["train_loss"].tolist() == [2]
    summary = json.loads((out / "summary.json").read_text(), parse_constant=pytest.fail)
    assert (summary["n_runs"], summary["n_ok"], summary["n_failed"]) == (n, half, 1)
    assert summary["runs"] == "runs.csv"
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["run_id"]) == [c["run_id"] for c in cfgs]
    cells = pd.read_csv(out / "summary.csv")
    assert cells["n_planned"].sum() == n
    assert set(summary["cells"]) == set(cells["cell"])
