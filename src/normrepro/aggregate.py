"""Aggregate one study: planned runs -> per-run table -> per-cell statistics and Welch tests.

The run list always comes from the grid (`grid.study_runs`), never from globbing results/: a run
folder left over from an older grid must not leak into a table. Each planned run gets a status:

  ok          metrics.json says ok and was written for this run's current config
  diverged    metrics.json says diverged (counted per cell, never averaged)
  running     a live trainer holds the run's lock (src/normrepro/runs.py), and it has not finished
  failed      metrics.json says failed (src/record_failure.py: the job exited non-zero), or
              there is no metrics.json but a train.log or a `.failed` marker and no live
              trainer (crashed or killed; the next invocation resumes it)
  missing     the run dir has nothing yet
  stale       metrics.json was written for another config (its config_hash differs): ignored
  unreadable  metrics.json is not JSON or lacks a field; `note` names the file and the field

Accuracies stay fractions in [0, 1] here; the report turns them into percent.

    python -m normrepro.aggregate --study batch_sweep [--params P | --config scale=smoke |
        --last-grid] [--results results] [--out results/summaries/GRID/batch_sweep] \
        [--metrics results/metrics/GRID/batch_sweep.json] [--curves results/curves/GRID/...tsv]

Writes OUT/{runs,summary,welch}.csv, OUT/history.tsv (the ok runs' epochs) and OUT/summary.json.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from normrepro import grid
from normrepro import runs as run_folder  # `runs` names a study's per-run table here
from normrepro.config import ParamsError
from normrepro.io_utils import atomic_write_json, atomic_write_text

STATUSES = run_folder.STATUSES  # the order of every count column
# Planned-run columns, taken from the resolved run config (groups/channels_per_group: norm_kw).
PLAN_COLUMNS = [
    "study",
    "run_id",
    "model",
    "norm",
    "groups",
    "channels_per_group",
    "batch_size",
    "lr",
    "epochs",
    "seed",
    "dataset",
    "config_hash",
]
# Copied from metrics.json when present (any may be null, e.g. val_acc when val_size is 0).
METRIC_FIELDS = [
    "test_acc",
    "best_val_acc",
    "val_acc",
    "train_loss",
    "wall_s",
    "images_per_sec",
    "epochs_done",
    "diverged_epoch",
    "n_train",  # images trained on, as loaded (the report's captions print it)
    "n_val",
    "n_test",
    "device",
    "device_name",
    "torch_version",
    "cuda_version",
    "git_rev",
    "git_dirty",
    "finished_at",
]
REQUIRED_FIELDS = run_folder.REQUIRED_FIELDS
RUN_COLUMNS = [
    *PLAN_COLUMNS,
    "status",
    "test_acc",
    "test_err",
    *(f for f in METRIC_FIELDS if f != "test_acc"),
    "log_path",
    "note",
]
# Axes that are part of a compared level's identity: GN with G = 8 is the level "gn/g8".
LEVEL_AXES = {"norm": ["norm", "groups", "channels_per_group"]}
INT_COLUMNS = ["groups", "channels_per_group", "batch_size", "epochs", "seed"]
STAT_METRICS = ("test_acc", "test_err", "val_acc", "best_val_acc")
STATUS_COUNTS = {f"n_{s}": s for s in STATUSES if s != "ok"}


# ---------------------------------------------------------------------------- per-run table


def plan_row(cfg: dict) -> dict:
    """The planned-run columns of one resolved run config."""
    norm_kw = cfg.get("norm_kw") or {}
    return {
        "study": cfg["study"],
        "run_id": cfg["run_id"],
        "model": cfg["model"],
        "norm": cfg["norm"],
        "groups": norm_kw.get("groups"),
        "channels_per_group": norm_kw.get("channels_per_group"),
        "batch_size": cfg["batch_size"],
        "lr": cfg["lr"],
        "epochs": cfg["epochs"],
        "seed": cfg["seed"],
        "dataset": (cfg.get("data") or {}).get("name"),
        "config_hash": cfg.get("config_hash"),
    }


def read_run(rdir: Path, planned_hash: str | None) -> dict:
    """Status, metrics, log path and note of one run dir (never raises on a bad file); the rules
    are runs.read_state's, shared with `make status`."""
    state = run_folder.read_state(rdir, planned_hash, REQUIRED_FIELDS)
    m = state["metrics"] or {}
    row = {k: m.get(k) for k in METRIC_FIELDS} if m else {}
    if state["status"] == "running":  # how far it is: its last checkpointed epoch
        row["epochs_done"] = len(state["history"])
    row["status"] = state["status"]
    row.update({k: state[k] for k in ("log_path", "note") if state[k] is not None})
    return row


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """Integer axes as nullable Int64 (groups is null for BN), so 8 stays 8 after a CSV trip;
    metrics as floats; test_err = 1 - test_acc (its only definition)."""
    df = df.copy()
    for col in INT_COLUMNS:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64")
    for col in ("lr", *STAT_METRICS, "train_loss", "wall_s", "images_per_sec"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    if "test_acc" in df:
        df["test_err"] = 1.0 - df["test_acc"]
    return df


def collect_runs(run_cfgs: list[dict], results_root: str | Path) -> pd.DataFrame:
    """One row per planned run (grid order), with its status and metrics (RUN_COLUMNS)."""
    rows = []
    for cfg in run_cfgs:
        row = plan_row(cfg)
        row.update(read_run(run_folder.run_dir(results_root, cfg), cfg.get("config_hash")))
        rows.append(row)
    df = typed(pd.DataFrame(rows, columns=RUN_COLUMNS))
    # Numbers of a run that is not ok/diverged are never used (stale: another config's).
    unused = ~df["status"].isin(run_folder.FINISHED)
    df.loc[unused, ["test_acc", "test_err", "val_acc", "best_val_acc"]] = np.nan
    return df


# ---------------------------------------------------------------------------- statistics


def mean_ci(values) -> dict:
    """n, mean, std (ddof=1), 95% CI half-width t(0.975, n-1)*std/sqrt(n), min, max; NaN-safe."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    n = len(x)
    std = float(np.std(x, ddof=1)) if n >= 2 else math.nan
    ci = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n >= 2 else math.nan
    return {
        "n": n,
        "mean": float(x.mean()) if n else math.nan,
        "std": std,
        "ci95": ci,
        "min": float(x.min()) if n else math.nan,
        "max": float(x.max()) if n else math.nan,
    }


def _groups(df: pd.DataFrame, keys: list[str]):
    """(key dict, block) per distinct value of `keys`, in order of first appearance."""
    if not keys:
        yield {}, df
        return
    for key, block in df.groupby(keys, sort=False, dropna=False):
        yield dict(zip(keys, key, strict=True)), block


def cell_label(values: dict, axes: list[str]) -> str:
    """A readable cell name from its axis values, e.g. 'resnet20/gn/g8/bs4' (nulls skipped)."""
    prefix = {"batch_size": "bs", "groups": "g", "channels_per_group": "cpg", "epochs": "ep"}
    parts = []
    for axis in axes:
        v = values.get(axis)
        if pd.isna(v):
            continue
        if axis in ("model", "norm", "dataset"):
            parts.append(str(v))
        elif axis == "lr":
            parts.append(f"lr{float(v):g}")
        elif axis in prefix:
            parts.append(f"{prefix[axis]}{int(v)}")
        else:
            parts.append(f"{axis}={v}")
    return "/".join(parts) or "all"


def summarize(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Per cell (every axis except seed): run counts by status and mean/std/CI/min/max of the ok
    runs for test_acc, test_err, val_acc, best_val_acc. Diverged runs are counted, not averaged."""
    runs = typed(runs)
    keys = (["study"] if "study" in runs and "study" not in axes else []) + list(axes)
    rows = []
    for key, cell in _groups(runs, keys):
        status = cell["status"]
        ok = cell[status == "ok"]
        row = {**key, "cell": cell_label(key, axes), "n_planned": len(cell), "n": len(ok)}
        row.update({col: int((status == s).sum()) for col, s in STATUS_COUNTS.items()})
        for metric in STAT_METRICS:
            s = mean_ci(ok[metric])
            row.update({f"{metric}_{k}": v for k, v in s.items() if k != "n"})
        row["ci_note"] = {0: "no ok runs", 1: "n=1: no CI"}.get(len(ok), "")
        rows.append(row)
    columns = [*keys, "cell", "n_planned", "n", *STATUS_COUNTS]
    columns += [f"{m}_{k}" for m in STAT_METRICS for k in ("mean", "std", "ci95", "min", "max")]
    return typed(pd.DataFrame(rows, columns=[*columns, "ci_note"]))


def welch_tests(
    runs: pd.DataFrame, axes: list[str], compare: str = "norm", metric: str = "test_acc"
) -> pd.DataFrame:
    """Welch t-test (unequal variances) of `metric` between each pair of levels of `compare`,
    at equal values of the other axes, on the ok runs. NaN with a note when a side has n < 2.

    A level of "norm" includes its groups / channels_per_group (LEVEL_AXES): "gn/g8" vs "bn".
    `p_holm`: the p-values adjusted for multiple comparisons by Holm's step-down method over the
    family of every test of this call (one study: all its pairs at all its cells that have a p);
    `family` is that family's size, so a reader sees how many tests were adjusted together."""
    level_axes = [a for a in LEVEL_AXES.get(compare, [compare]) if a in axes]
    others = [a for a in axes if a not in level_axes]
    columns = [*others, "cell", "compare", "level_a", "level_b", "metric"]
    columns += ["n_a", "n_b", "mean_a", "mean_b", "diff", "t", "p", "p_holm", "family", "note"]
    if compare not in axes or runs.empty:
        return pd.DataFrame(columns=columns)
    runs = typed(runs)
    runs["level"] = [cell_label(r, level_axes) for r in runs[level_axes].to_dict("records")]
    rows = []
    for key, block in _groups(runs, others):
        ok = block[block["status"] == "ok"]
        levels = list(dict.fromkeys(block["level"]))  # planned levels, even those without runs
        for a, b in itertools.combinations(levels, 2):
            xa = ok.loc[ok["level"] == a, metric].dropna().to_numpy(float)
            xb = ok.loc[ok["level"] == b, metric].dropna().to_numpy(float)
            row = {**key, "cell": cell_label(key, others), "compare": compare}
            row.update({"level_a": a, "level_b": b, "metric": metric, "n_a": len(xa)})
            row.update({"n_b": len(xb), "t": math.nan, "p": math.nan, "note": ""})
            row["mean_a"] = xa.mean() if len(xa) else math.nan
            row["mean_b"] = xb.mean() if len(xb) else math.nan
            row["diff"] = row["mean_a"] - row["mean_b"]
            if len(xa) < 2 or len(xb) < 2:
                row["note"] = f"n<2 ({a}: {len(xa)}, {b}: {len(xb)}): no test"
            elif np.var(xa) == 0 and np.var(xb) == 0:
                row["note"] = "both sides have zero variance: no test"
            else:
                res = stats.ttest_ind(xa, xb, equal_var=False)
                row["t"], row["p"] = float(res.statistic), float(res.pvalue)
            rows.append(row)
    df = pd.DataFrame(rows, columns=columns)
    return typed(df.assign(**holm(df["p"])))


def holm(p: pd.Series) -> dict:
    """{"p_holm", "family"}: Holm-adjusted p-values (statsmodels' multipletests) over the
    non-NaN entries of `p`, NaN elsewhere; family = how many p-values were adjusted together."""
    tested = p.notna().to_numpy()
    adjusted = np.full(len(p), math.nan)
    if tested.any():
        adjusted[tested] = multipletests(p[tested].to_numpy(float), method="holm")[1]
    return {"p_holm": adjusted, "family": int(tested.sum())}


def history_bands(histories: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Per (by..., epoch): n, mean and 95% CI band (lo, hi) of `metric` over seeds.

    `histories` is the concatenation of history.tsv files with the run's axis columns added.
    Where n < 2 the band collapses to the mean."""
    cols = [*by, "epoch", "n", "mean", "lo", "hi"]
    if histories.empty or metric not in histories:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, block in _groups(histories, [*by, "epoch"]):
        s = mean_ci(block[metric])
        half = 0.0 if math.isnan(s["ci95"]) else s["ci95"]
        lo, hi = s["mean"] - half, s["mean"] + half
        rows.append({**key, "n": s["n"], "mean": s["mean"], "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=cols).sort_values([*by, "epoch"], kind="stable")


# ---------------------------------------------------------------------------- files


def _num(v):
    """A JSON-ready scalar: numpy -> Python, NaN/NA -> None."""
    if pd.isna(v):
        return None
    return v.item() if isinstance(v, np.generic) else v


def summary_json(study: str, runs: pd.DataFrame, summary: pd.DataFrame) -> dict:
    """DVC-metric-friendly summary: counts and, per cell, test_acc mean / CI / n."""
    counts = runs["status"].value_counts()
    out = {"study": study, "n_runs": len(runs)}
    out.update({f"n_{s}": int(counts.get(s, 0)) for s in STATUSES})
    out["cells"] = {
        r["cell"]: {
            "test_acc_mean": _num(r["test_acc_mean"]),
            "test_acc_ci95": _num(r["test_acc_ci95"]),
            "n": int(r["n"]),
            "n_planned": int(r["n_planned"]),
            "n_diverged": int(r["n_diverged"]),
        }
        for _, r in summary.iterrows()
    }
    out["runs"] = "runs.csv"
    return out


def collect_histories(
    runs: pd.DataFrame, results_root: str | Path, grid_name: str | None
) -> pd.DataFrame:
    """history.tsv of every ok run (of the grid `grid_name`), with the run's plan columns added
    (one row per epoch)."""
    frames = []
    for r in runs[runs["status"] == "ok"].to_dict("records"):
        try:
            path = run_folder.run_dir(results_root, {**r, "grid": grid_name}) / run_folder.HISTORY
            h = pd.read_csv(path, sep="\t")
        except (OSError, ValueError):
            continue  # the run's table cell still shows; only its curve is absent
        frames.append(h.assign(**{col: r[col] for col in PLAN_COLUMNS}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PLAN_COLUMNS)


# File of each table in a study's aggregate folder (results/summaries/<study>/).
TABLE_FILES = {
    "runs": "runs.csv",
    "summary": "summary.csv",
    "welch": "welch.csv",
    "history": "history.tsv",
}


def summary_dir(results_root: str | Path, study: str, grid_name: str) -> Path:
    """Where a study's aggregate lives by default (the Snakefile passes the same --out)."""
    return Path(results_root) / "summaries" / grid_name / study


def study_tables(runs: pd.DataFrame, meta: dict, history: pd.DataFrame | None = None) -> dict:
    """{"runs", "summary", "welch", "history"} of one study from its per-run table and its meta
    (axes: what defines a cell; compare: the axis whose levels Welch tests compare)."""
    axes = list(meta.get("axes") or [])
    runs = typed(runs)
    return {
        "runs": runs,
        "summary": summarize(runs, axes),
        "welch": welch_tests(runs, axes, compare=meta.get("compare") or "norm"),
        "history": history if history is not None else pd.DataFrame(columns=PLAN_COLUMNS),
    }


def aggregate_study(run_cfgs: list[dict], meta: dict, results_root: str | Path) -> dict:
    """study_tables of one study's planned runs, read from their run folders."""
    runs = collect_runs(run_cfgs, results_root)
    grid_name = run_cfgs[0]["grid"] if run_cfgs else None
    return study_tables(runs, meta, collect_histories(runs, results_root, grid_name))


def write_study(out_dir: str | Path, study: str, tables: dict) -> None:
    """TABLE_FILES and summary.json into out_dir, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, file in TABLE_FILES.items():
        sep = "\t" if file.endswith(".tsv") else ","
        atomic_write_text(out / file, tables[name].to_csv(index=False, sep=sep))
    atomic_write_json(out / "summary.json", summary_json(study, tables["runs"], tables["summary"]))


WELCH_COLUMNS = ["cell", "compare", "level_a", "level_b", "metric", "n_a", "n_b", "mean_a"]
WELCH_COLUMNS += ["mean_b", "diff", "t", "p", "p_holm", "family", "note"]
# Columns each table must have to be read back; a folder from an older version may lack some.
TABLE_COLUMNS = {
    "runs": RUN_COLUMNS,
    "summary": ["cell", "n_planned", "n", *STATUS_COUNTS]
    + [f"{m}_{k}" for m in STAT_METRICS for k in ("mean", "std", "ci95", "min", "max")],
    "welch": WELCH_COLUMNS,
    "history": PLAN_COLUMNS,
}


def read_study(folder: str | Path) -> dict | None:
    """The tables write_study wrote, or None if any file is absent. A file that cannot be read
    or lacks a column (written by an older version) also gives None, with a line on stderr
    naming it: the caller then aggregates again from the run folders."""
    paths = {name: Path(folder) / file for name, file in TABLE_FILES.items()}
    if not all(p.is_file() for p in paths.values()):
        return None
    tables = {}
    for name, p in paths.items():
        try:
            df = pd.read_csv(p, sep="\t" if p.suffix == ".tsv" else ",")
        except (OSError, ValueError) as e:  # ValueError: pandas' parser and decoding errors
            print(f"{p}: unreadable ({type(e).__name__}: {e}); not used", file=sys.stderr)
            return None
        absent = [c for c in TABLE_COLUMNS[name] if c not in df.columns]
        if absent:
            print(
                f"{p}: no column {', '.join(absent)} (an older version's file?); not used",
                file=sys.stderr,
            )
            return None
        tables[name] = typed(df)
    return tables


def status_line(study: str, runs: pd.DataFrame, out: Path) -> str:
    """'batch_sweep: 70 planned, 60 ok, 5 diverged, ... -> OUT' plus a line per failed/bad run."""
    counts = runs["status"].value_counts()
    parts = [f"{len(runs)} planned"] + [f"{int(counts.get(s, 0))} {s}" for s in STATUSES]
    lines = [f"{study}: " + ", ".join(parts) + f" -> {out}"]
    for _, r in runs[runs["status"] == "failed"].iterrows():
        lines.append(f"  failed: {r['study']}/{r['run_id']} (log: {r['log_path']})")
    for _, r in runs[runs["status"].isin(["stale", "unreadable"])].iterrows():
        lines.append(f"  {r['status']}: {r['study']}/{r['run_id']}: {r['note']}")
    return "\n".join(lines)


def cli_params(ap: argparse.ArgumentParser, argv: list[str] | None):
    """Adds the options aggregate and report share (grid.add_grid_options), parses argv, loads
    the effective params of the grid they act on and says which on stderr."""
    grid.add_grid_options(ap)
    args = ap.parse_args(argv)
    try:
        params, which = grid.params_from_cli(args)
    except ParamsError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"normrepro: {which}", file=sys.stderr)
    return args, params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Aggregate one study's runs (see module doc).")
    ap.add_argument("--study", required=True)
    ap.add_argument("--out", help="output folder (default: RESULTS/summaries/GRID/STUDY)")
    ap.add_argument("--metrics", help="also write summary.json to this file (DVC metrics)")
    ap.add_argument("--curves", help="also write history.tsv to this file (DVC plots)")
    args, params = cli_params(ap, argv)
    metas = grid.studies(params)
    if args.study not in metas:
        raise SystemExit(
            f"error: --study {args.study}: not an enabled study; allowed: {', '.join(metas)}"
        )
    tables = aggregate_study(grid.study_runs(params, args.study), metas[args.study], args.results)
    grid_name = run_folder.grid_name(params)
    out = Path(args.out) if args.out else summary_dir(args.results, args.study, grid_name)
    try:
        write_study(out, args.study, tables)
        for extra, src in ((args.metrics, "summary.json"), (args.curves, TABLE_FILES["history"])):
            if extra:
                Path(extra).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(extra, (out / src).read_text(encoding="utf-8"))
    except OSError as err:  # disk full, read-only: every file keeps its old content
        raise SystemExit(
            f"error: cannot write the {args.study} aggregate to {out}: {err}"
        ) from None
    print(status_line(args.study, tables["runs"], out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
