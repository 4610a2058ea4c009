"""Render reports/index.html: every enabled study as its paper-style table and figure, our numbers
as mean ± 95% CI (n) in percent with the published number beside them.

    python src/report.py --params params.yaml --results results --out reports/index.html \
        [--config scale=smoke] [--summaries results/summaries]

Inputs per study: its aggregate (results/summaries/<study>/: the runs, summary, welch and
history tables of src/aggregate.py). A study whose aggregate is absent, or was made for another
grid, is aggregated here from its run folders, so a partial grid always renders and never shows
stale cells. This module builds view models (every number already a string); the template
(templates/report.html.j2) only lays them out, and plots.py only draws.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

import aggregate
import grid
import plots
import references as ref
from gitinfo import git
from io_utils import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "templates"
MODEL_NAMES = {
    "resnet20": "ResNet-20",
    "resnet56": "ResNet-56",
    "resnet110": "ResNet-110",
    "resnet164": "ResNet-164 (bottleneck)",
    "preact_resnet164": "PreAct ResNet-164 (bottleneck)",
    "wrn28_10": "PreAct WRN-28-10",
    "nf_resnet": "NF-ResNet",
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50",
}
NORM_NAMES = {
    "bn": "BN",
    "gn": "GN",
    "ln": "LN",
    "in": "IN",
    "gn_ws": "GN+WS",
    "bn_ws": "BN+WS",
    "none": "no norm",
}
PROBLEMS = ("diverged", "failed", "unreadable", "stale")  # why a cell may have no ok run


@dataclass
class StudyData:
    """One study's tables, as aggregate.py writes them (fractions, not percent)."""

    name: str
    meta: dict  # grid.studies() entry: title, seed_doc, kind, axes, compare
    runs: pd.DataFrame
    summary: pd.DataFrame
    welch: pd.DataFrame
    history: pd.DataFrame = field(default_factory=pd.DataFrame)  # ok runs' history.tsv rows
    source: str = ""  # where the tables came from, shown under the study's title

    @classmethod
    def from_tables(cls, name: str, meta: dict, tables: dict, source: str) -> StudyData:
        """From aggregate.study_tables / read_study's {"runs", "summary", "welch", "history"}."""
        t = tables
        return cls(name, meta, t["runs"], t["summary"], t["welch"], t["history"], source)


# ---------------------------------------------------------------------------- loading


def make_study(
    name: str, meta: dict, runs: pd.DataFrame, history: pd.DataFrame | None = None
) -> StudyData:
    """A StudyData whose summary and Welch tests are computed from its per-run table."""
    t = aggregate.study_tables(runs, meta, history)
    return StudyData.from_tables(name, meta, t, "computed from the per-run table")


def load_study(
    name: str,
    meta: dict,
    run_cfgs: list[dict],
    results_root: str | Path,
    summaries: str | Path | None = None,
) -> StudyData:
    """The study's aggregate (SUMMARIES/<name>/, default results/summaries/<name>/) when it was
    made for this grid; otherwise aggregated now from the run folders."""
    folder = Path(summaries) / name if summaries else aggregate.summary_dir(results_root, name)
    tables = aggregate.read_study(folder)
    source = f"{folder}/summary.csv"
    planned = {(c["run_id"], c["config_hash"]) for c in run_cfgs}
    if (
        tables is None
        or set(tables["runs"][["run_id", "config_hash"]].itertuples(False)) != planned
    ):
        tables = aggregate.aggregate_study(run_cfgs, meta, results_root)
        source = "computed here from the run folders (no up-to-date aggregate yet)"
    return StudyData.from_tables(name, meta, tables, source)


# ---------------------------------------------------------------------------- formatting


def pct(x, digits: int = 2) -> str:
    """A fraction as percent text; '' for NaN."""
    return "" if pd.isna(x) else f"{100 * float(x):.{digits}f}"


def cell(text, cls: str = "", title: str = "") -> dict:
    return {"text": "" if pd.isna(text) else str(text), "cls": cls, "title": title}


def num(text, cls: str = "", title: str = "") -> dict:
    """A right-aligned numeric cell ('—' where there is nothing)."""
    return cell(text if text not in ("", None) else "—", f"num {cls}".strip(), title)


def stat_cell(row, metric: str) -> dict:
    """'91.23 ± 0.45 (n=5)' in percent, or the reason a cell has no number (missing, diverged…)."""
    n, planned = int(row["n"]), int(row["n_planned"])
    counts = {s: int(row[f"n_{s}"]) for s in (*PROBLEMS, "missing")}
    others = ", ".join(f"{c} {s}" for s, c in counts.items() if c)
    if n == 0:
        status = next((s for s in PROBLEMS if counts[s]), "missing")
        text = status if status == "missing" else f"{status} ({counts[status]}/{planned})"
        return num(text, status, f"0 of {planned} runs done" + (f": {others}" if others else ""))
    mean, ci = row[f"{metric}_mean"], row[f"{metric}_ci95"]
    if pd.isna(mean):
        return num("n/a", "missing", f"{metric} not recorded")
    count = f"n={n}" if n == planned else f"n={n} of {planned}"
    if others:
        count += f"; {others}"
    text = f"{pct(mean)} ± {pct(ci)} ({count})" if n >= 2 else f"{pct(mean)} ({count}, no CI)"
    return num(text, "partial" if n < planned else "", row.get("ci_note") or "")


def model_label(model) -> str:
    return MODEL_NAMES.get(model, str(model))


def norm_label(row) -> str:
    """'GN (G=8)', 'GN+WS (C/G=4)', 'BN'."""
    name = NORM_NAMES.get(row["norm"], str(row["norm"]))
    if not pd.isna(row.get("groups")):
        return f"{name} (G={int(row['groups'])})"
    if not pd.isna(row.get("channels_per_group")):
        return f"{name} (C/G={int(row['channels_per_group'])})"
    return name


def series_label(row, with_model: bool) -> str:
    return f"{model_label(row['model'])} {norm_label(row)}" if with_model else norm_label(row)


def _with_series(df: pd.DataFrame) -> pd.DataFrame:
    """Adds `series` (model only where the study has several, then norm) to a cell/run table."""
    df = df.copy()
    many = df["model"].nunique() > 1 if len(df) else False
    df["series"] = [series_label(r, many) for r in df.to_dict("records")]
    return df


def p_text(p) -> str:
    return "" if pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def hours_text(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:.2f} h" if h < 10 else f"{h:.1f} h"


# ---------------------------------------------------------------------------- blocks


def table(caption: str, columns: list, rows: list, collapsed: bool = False) -> dict:
    """columns: [(label, numeric)], rows: [[cell, ...]] (a str is a plain text cell)."""
    cols = [{"label": label, "cls": "num" if numeric else ""} for label, numeric in columns]
    body = [[c if isinstance(c, dict) else cell(c) for c in r] for r in rows]
    return {
        "type": "table",
        "caption": caption,
        "columns": cols,
        "rows": body,
        "collapsed": collapsed,
    }


def figure(fig, caption: str) -> dict:
    return {"type": "figure", "svg": Markup(plots.to_svg(fig)), "caption": caption}


def note(text: str) -> dict:
    return {"type": "note", "text": text}


def two_way_table(caption, summary, rows, cols, metric, row_title, col_fmt, extra=None):
    """Rows `rows`, one column per level of `cols` (sorted descending, like the GN paper);
    `extra`: {column label: function(row level) -> text} for reference columns."""
    rlev = list(dict.fromkeys(summary[rows]))
    clev = sorted(set(summary[cols]), reverse=True)
    cells = {(r[rows], r[cols]): stat_cell(r, metric) for _, r in summary.iterrows()}
    extra = extra or {}
    columns = [(row_title, False)] + [(col_fmt(c), True) for c in clev]
    columns += [(label, True) for label in extra]
    body = []
    for r in rlev:
        line = [r] + [cells.get((r, c), num("not planned", "missing")) for c in clev]
        line += [num(f(r)) for f in extra.values()]
        body.append(line)
    return table(caption, columns, body)


def _band(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Adds mean, lo, hi, ci in percent from a summary's metric columns (no CI: lo = hi = mean)."""
    mean = 100 * summary[f"{metric}_mean"]
    ci = 100 * summary[f"{metric}_ci95"]
    # A t interval over few seeds can pass 0 or 100 %; the band is drawn within the range a
    # percentage can take, the tables keep the interval as computed.
    lo = (mean - ci.fillna(0.0)).clip(lower=0.0)
    hi = (mean + ci.fillna(0.0)).clip(upper=100.0)
    return summary.assign(mean=mean, ci=ci, lo=lo, hi=hi)


def curve_bands(sd: StudyData, metric: str, scale: float = 1.0) -> pd.DataFrame:
    """Per series and epoch: mean and 95% CI band of a history.tsv column over the ok runs."""
    h = sd.history
    if h.empty or metric not in h:
        return pd.DataFrame(columns=["series", "epoch", "n", "mean", "lo", "hi"])
    h = _with_series(h).assign(**{metric: pd.to_numeric(h[metric], errors="coerce") * scale})
    bands = aggregate.history_bands(h, ["series"], metric)
    # Losses and accuracies are >= 0, accuracies in percent <= 100: draw the band within that.
    bands["lo"] = bands["lo"].clip(lower=0.0)
    if scale == 100:
        bands["hi"] = bands["hi"].clip(upper=100.0)
    return bands


def figure_if(ready: bool, caption: str, draw, *args, **kwargs) -> dict:
    """figure(draw(*args, **kwargs)) when there is something to draw; a note until then."""
    if ready:
        return figure(draw(*args, **kwargs), caption)
    return note("No finished runs yet: the figure appears once runs finish.")


def finished(sd: StudyData) -> bool:
    """Whether any cell has an ok or diverged run."""
    s = sd.summary
    return bool(len(s) and ((s["n"] > 0) | (s["n_diverged"] > 0)).any())


def by_batch_table(caption: str, s: pd.DataFrame, metric: str, row_title: str, extra=None):
    return two_way_table(
        caption, s, "series", "batch_size", metric, row_title, lambda b: f"batch {b}", extra
    )


def accuracy_bars(sd: StudyData, s: pd.DataFrame) -> dict:
    """Test accuracy % per series (bar groups) and batch size (hue), 95% CI whiskers."""
    d = _band(s, "test_acc").assign(batch=[f"batch {b}" for b in s["batch_size"]])
    caption = "Test accuracy: mean over seeds, 95% CI whiskers (no bar: no ok run)."
    return figure_if(
        finished(sd), caption, plots.bars_ci, d, "series", "batch", "", "test accuracy (%)"
    )


# ---------------------------------------------------------------------------- study kinds


def build_table2(sd: StudyData) -> list[dict]:
    body = []
    for _, r in sd.summary.iterrows():
        pub = ref.TABLE2_TEST_ACC.get((r["model"], r["norm"]))
        diff = f"{100 * r['test_acc_mean'] - pub:+.2f}" if pub and r["n"] else ""
        body.append([model_label(r["model"]), norm_label(r), stat_cell(r, "test_acc")])
        body[-1] += [num(pub and f"{pub:.2f}"), num(diff)]
    cols = [("Model", False), ("Norm", False), ("Ours: test top-1 %", True)]
    cols += [("Seed 000 (published)", True), ("Ours − published (pp)", True)]
    caption = f"Table 2. Ours: mean ± 95% CI over seeds (n). Published: {ref.TABLE2_SOURCE}."
    bands = curve_bands(sd, "train_loss")
    fig_caption = "Figure 2. Training loss vs epoch: mean over seeds, shaded 95% CI (ok runs)."
    ylabel = "training loss (cross-entropy)"
    return [
        table(caption, cols, body),
        figure_if(
            not bands.empty,
            fig_caption,
            plots.line_bands,
            bands,
            "epoch",
            "series",
            "epoch",
            ylabel,
        ),
    ]


def build_batch_sweep(sd: StudyData) -> list[dict]:
    s = _with_series(sd.summary)
    xlabel = "batch size (images per step, log2 scale)"
    caption = "Figure 1. Test error vs batch size: mean over seeds, shaded 95% CI."
    # A cell without ok runs is a gap in its line.
    fig = figure_if(
        finished(sd),
        caption,
        plots.line_bands,
        _band(s, "test_err"),
        "batch_size",
        "series",
        xlabel,
        "test error (%)",
        logx2=True,
    )
    ours = "Ours: CIFAR-10 test error %, mean ± 95% CI (n), by batch size."
    batches = list(ref.GN_ERROR_BY_BATCH["bn"])
    ref_cols = [("Norm", False)] + [(f"{b} / GPU", True) for b in batches]
    ref_rows = [
        [NORM_NAMES[norm]] + [num(f"{v:.1f}") for v in by_batch.values()]
        for norm, by_batch in ref.GN_ERROR_BY_BATCH.items()
    ]
    return [
        fig,
        by_batch_table(ours, s, "test_err", "Norm"),
        table(f"Reference: {ref.GN_PAPER_SOURCE}, by images per GPU.", ref_cols, ref_rows),
        note(f"Published claim: {ref.BATCH_SWEEP_CLAIM}"),
    ]


def _group_setting(row) -> tuple[str, float | None, tuple]:
    """(label, GN paper error %, sort key) of one group-sweep cell."""
    g, cpg = row.get("groups"), row.get("channels_per_group")
    if row["norm"] == "gn" and not pd.isna(g):
        g = int(g)
        label = f"G = {g}" + (" (LN)" if g == 1 else "")
        return label, ref.GN_ERROR_BY_GROUPS.get(g), (0, -g)
    if row["norm"] == "gn" and not pd.isna(cpg):
        cpg = int(cpg)
        label = f"C/G = {cpg}" + (" (IN)" if cpg == 1 else "")
        return label, ref.GN_ERROR_BY_CHANNELS_PER_GROUP.get(cpg), (1, -cpg)
    return norm_label(row), ref.GN_ERROR_BY_METHOD.get(row["norm"]), (2, 0)


def build_group_sweep(sd: StudyData) -> list[dict]:
    s = sd.summary
    many = s["model"].nunique() > 1 or s["batch_size"].nunique() > 1
    rows = []
    for _, r in s.iterrows():
        label, pub, key = _group_setting(r)
        if many:
            label = f"{label}, {model_label(r['model'])}, batch {r['batch_size']}"
        rows.append((key, [label, stat_cell(r, "test_err"), num(pub and f"{pub:.1f}")]))
    rows.sort(key=lambda kv: kv[0])
    cols = [("Setting", False), ("Ours: CIFAR-10 test error %", True)]
    cols += [("GN paper: ImageNet val error %", True)]
    caption = (
        "Groups table (GN paper, Table 3 layout). Top: fixed number of groups G; bottom: fixed "
        f"channels per group C/G. Ours: mean ± 95% CI (n). Reference: {ref.GN_PAPER_SOURCE}."
    )
    return [table(caption, cols, [r for _, r in rows])]


def build_norm_compare(sd: StudyData) -> list[dict]:
    s = _with_series(sd.summary)
    norms = dict(zip(s["series"], s["norm"], strict=True))

    def gn_paper(series):
        v = ref.GN_ERROR_BY_METHOD.get(norms[series])
        return v and f"{v:.1f}"

    caption = (
        "Ours: CIFAR-10 test accuracy %, mean ± 95% CI (n). Right: GN paper ImageNet "
        "val error % at batch 32 (an error, not an accuracy; another dataset and network)."
    )
    extra = {"GN paper err % (batch 32)": gn_paper}
    return [accuracy_bars(sd, s), by_batch_table(caption, s, "test_acc", "Norm", extra)]


def build_nf_grid(sd: StudyData) -> list[dict]:
    s = sd.summary
    lrs = sorted(set(s["lr"]))
    batches = sorted(set(s["batch_size"]))
    cells = {(r["lr"], r["batch_size"]): r for _, r in s.iterrows()}
    # Heatmap inputs (lr rows x batch columns) and the table (batch rows x lr column pairs).
    values = pd.DataFrame(math.nan, index=[f"{lr:g}" for lr in lrs], columns=batches)
    labels = pd.DataFrame("not planned", index=values.index, columns=batches)
    body = {b: [num(b)] for b in batches}
    for lr in lrs:
        for b in batches:
            r = cells.get((lr, b))
            c = stat_cell(r, "val_acc") if r is not None else num("not planned", "missing")
            if r is not None and not pd.isna(r["val_acc_mean"]):
                values.loc[f"{lr:g}", b] = 100 * r["val_acc_mean"]
                labels.loc[f"{lr:g}", b] = pct(r["val_acc_mean"], 1)
            else:
                labels.loc[f"{lr:g}", b] = c["text"].split(" ")[0]  # diverged, missing, ...
            pub = ref.NF_GRID_VAL_ACC.get((float(lr), int(b)))
            chance = "diverged" if lr == ref.NF_GRID_DIVERGED_LR else ""
            body[b] += [c, num(pub and f"{pub:.2f}", chance)]
    cols = [("batch", True)]
    for lr in lrs:
        cols += [(f"lr {lr:g}: ours", True), (f"lr {lr:g}: seed 002", True)]
    fig_caption = (
        "Validation accuracy (%) after the last epoch, mean over seeds; hatched: no ok run."
    )
    caption = (
        "Learning rate × batch size: validation accuracy % at the last epoch, ours mean ± 95% CI "
        f"(n) beside {ref.NF_SOURCE}'s (lr {ref.NF_GRID_DIVERGED_LR:g}: diverged, 10.14 % = chance)."
    )
    cbar = "validation accuracy (%)"
    return [
        figure_if(
            finished(sd),
            fig_caption,
            plots.heatmap,
            values,
            labels,
            "batch size",
            "learning rate",
            cbar,
        ),
        table(caption, cols, list(body.values())),
    ]


def build_nf_final(sd: StudyData) -> list[dict]:
    pub = ref.NF_FINAL
    body = []
    for _, r in sd.summary.iterrows():
        setting = f"lr {r['lr']:g}, batch {r['batch_size']}, {_distinct(sd.runs, 'epochs')} epochs"
        for label, metric in (
            ("test accuracy %", "test_acc"),
            ("best val accuracy %", "best_val_acc"),
        ):
            body.append([setting, label, stat_cell(r, metric), num(f"{pub[metric]:.2f}")])
    cols = [("Our run", False), ("Metric", False), ("Ours", True)]
    cols += [(f"Seed 002 (lr {pub['lr']:g}, batch {pub['batch_size']}, {pub['epochs']} ep)", True)]
    loss, acc = curve_bands(sd, "train_loss"), curve_bands(sd, "val_acc", 100.0)
    panels = [(loss, "training loss"), (acc, "validation accuracy (%)")]
    caption = "Training loss and validation accuracy vs epoch: mean over seeds, shaded 95% CI."
    return [
        table(f"Final run: ours mean ± 95% CI (n) and {ref.NF_SOURCE}'s.", cols, body),
        figure_if(not loss.empty, caption, plots.curves, panels, "series"),
    ]


def build_pets(sd: StudyData) -> list[dict]:
    s = _with_series(sd.summary)
    ours = "Ours: test accuracy %, mean ± 95% CI (n), by batch size."
    return [
        accuracy_bars(sd, s),
        by_batch_table(ours, s, "test_acc", "Model / norm"),
        note(f"Published claim (no numbers printed): {ref.PETS_CLAIM}"),
    ]


def cells_table(sd: StudyData, collapsed: bool) -> dict:
    """Every cell of the study with its counts and statistics (any kind, user-added studies)."""
    axes = [a for a in sd.meta.get("axes") or [] if a in sd.summary and sd.summary[a].notna().any()]
    cols = [(a, a in aggregate.INT_COLUMNS or a == "lr") for a in axes]
    cols += [("test acc %", True), ("best val acc %", True), ("test acc min–max %", True)]
    body = []
    for _, r in sd.summary.iterrows():
        line = [num("" if pd.isna(r[a]) else f"{r[a]:g}") if dict(cols)[a] else r[a] for a in axes]
        line += [stat_cell(r, m) for m in ("test_acc", "best_val_acc")]
        span = f"{pct(r['test_acc_min'])}–{pct(r['test_acc_max'])}" if r["n"] else ""
        body.append([*line, num(span)])
    return table(f"All cells of {sd.name} ({len(body)}).", cols, body, collapsed=collapsed)


def welch_table(sd: StudyData) -> dict | None:
    w = sd.welch
    if w is None or w.empty:
        return None
    cols = [("At", False), ("A", False), ("B", False), ("n A", True), ("n B", True)]
    cols += [("mean A %", True), ("mean B %", True), ("A − B (pp)", True), ("t", True), ("p", True)]
    body = []
    for _, r in w.iterrows():
        body.append([r["cell"], r["level_a"], r["level_b"], num(r["n_a"]), num(r["n_b"])])
        body[-1] += [num(pct(r["mean_a"])), num(pct(r["mean_b"])), num(pct(r["diff"]))]
        body[-1] += [
            num("" if pd.isna(r["t"]) else f"{r['t']:.2f}"),
            num(p_text(r["p"]), title=r["note"] or ""),
        ]
    caption = (
        f"Welch t-tests of {w['metric'].iloc[0]} between {w['compare'].iloc[0]} levels at equal "
        "other settings (two-sided, unequal variances, ok runs); blank where a side has n < 2."
    )
    return table(caption, cols, body, collapsed=len(body) > 12)


BUILDERS = {
    "table2": build_table2,
    "batch_sweep": build_batch_sweep,
    "group_sweep": build_group_sweep,
    "norm_compare": build_norm_compare,
    "nf_grid": build_nf_grid,
    "nf_final": build_nf_final,
    "pets": build_pets,
}


def run_lists(runs: pd.DataFrame) -> dict:
    """Runs a reader must see by name: failed (with log), diverged, stale/unreadable, missing."""

    def rows(status):
        return runs[runs["status"].isin(status)].to_dict("records")

    out = {
        "failed": [
            {"run": r["run_id"], "log": r["log_path"] or "", "note": r["note"] or ""}
            for r in rows(["failed"])
        ],
        "diverged": [{"run": r["run_id"], "note": r["note"] or ""} for r in rows(["diverged"])],
        "bad": [
            {"run": r["run_id"], "note": f"{r['status']}: {r['note']}"}
            for r in rows(["stale", "unreadable"])
        ],
        "missing": [r["run_id"] for r in rows(["missing"])],
    }
    for items in out.values():  # NaN from a CSV reads as float
        for item in items:
            if isinstance(item, dict):
                item.update({k: "" if pd.isna(v) else v for k, v in item.items()})
    return out


def counts_text(runs: pd.DataFrame) -> str:
    c = runs["status"].value_counts()
    parts = [f"{int(c.get('ok', 0))} of {len(runs)} runs done"]
    parts += [f"{int(c[s])} {s}" for s in (*PROBLEMS, "missing") if c.get(s, 0)]
    return " · ".join(parts)


def study_view(sd: StudyData) -> dict:
    kind = sd.meta.get("kind") or "generic"
    builder = BUILDERS.get(kind)
    blocks = builder(sd) if builder and len(sd.summary) else []
    blocks.append(cells_table(sd, collapsed=builder is not None))
    w = welch_table(sd)
    if w:
        blocks.append(w)
    return {
        "id": sd.name,
        "title": sd.meta.get("title") or sd.name,
        "seed_doc": sd.meta.get("seed_doc") or "",
        "kind": kind,
        "source": sd.source,
        "counts": counts_text(sd.runs),
        "blocks": blocks,
        **run_lists(sd.runs),
    }


# ---------------------------------------------------------------------------- header


def provenance(params: dict | None) -> dict:
    """Code and parameters that produced the report (not the runs: those are per run)."""
    rev = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain")
    code = "no commit yet" if rev is None else rev + (" (dirty)" if dirty else "")
    blob = json.dumps(params or {}, sort_keys=True, default=str).encode()
    return {
        "git": code,
        "params_hash": hashlib.sha256(blob).hexdigest()[:12],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _distinct(runs: pd.DataFrame, col: str) -> str:
    if col not in runs:
        return "—"
    vals = [str(v) for v in dict.fromkeys(runs[col]) if not pd.isna(v)]
    return ", ".join(vals) or "—"


def header_view(studies: list[StudyData], params: dict | None, prov: dict) -> dict:
    runs = (
        pd.concat([sd.runs for sd in studies], ignore_index=True)
        if studies
        else pd.DataFrame(columns=aggregate.RUN_COLUMNS)
    )
    finished = runs[runs["status"].isin(["ok", "diverged"])]
    gpu = finished["device"].astype(str).str.startswith("cuda")
    compute = []
    for label, mask in (("GPU", gpu), ("CPU", ~gpu)):
        if mask.any():
            compute.append(f"{hours_text(finished.loc[mask, 'wall_s'].fillna(0).sum())} {label}")
    c = runs["status"].value_counts()
    counts = [("planned", len(runs))] + [(s, int(c.get(s, 0))) for s in aggregate.STATUSES]
    with_rev = finished[finished["git_rev"].notna()]
    dirty = with_rev["git_dirty"].astype(str).str.lower().eq("true")  # bool, or text from a CSV
    revs = with_rev.assign(
        rev=with_rev["git_rev"].astype(str) + dirty.map({True: " (dirty)", False: ""})
    )
    return {
        "scale": (params or {}).get("scale", "—"),
        "datasets": _distinct(runs, "dataset"),
        "n_studies": len(studies),
        "counts": counts,
        "compute": ", ".join(compute) or "none yet",
        "provenance": [
            ("report code (git)", prov["git"]),
            ("params hash (effective params.yaml)", prov["params_hash"]),
            ("runs' code (git)", _distinct(revs, "rev")),
            ("torch", _distinct(finished, "torch_version")),
            ("CUDA", _distinct(finished, "cuda_version")),
            ("devices", _distinct(finished, "device_name")),
            ("rendered", prov["date"]),
        ],
    }


# ---------------------------------------------------------------------------- render


def render(studies: list[StudyData], params: dict | None = None, prov: dict | None = None) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    prov = prov or provenance(params)
    return env.get_template("report.html.j2").render(
        header=header_view(studies, params, prov),
        studies=[study_view(sd) for sd in studies],
    )


def all_cells(studies: list[StudyData]) -> pd.DataFrame:
    """Every cell of every study, one table (reports/summary.csv)."""
    frames = [sd.summary.assign(study=sd.name) for sd in studies if len(sd.summary)]
    if not frames:
        return pd.DataFrame(columns=["study", "cell"])
    df = pd.concat(frames, ignore_index=True)
    return df[["study", *[c for c in df.columns if c != "study"]]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render the HTML report (see module doc).")
    ap.add_argument("--out", default="reports/index.html")
    ap.add_argument("--summaries", help="aggregates folder (default: RESULTS/summaries)")
    args, params = aggregate.cli_params(ap, argv)
    studies = [
        load_study(name, meta, grid.study_runs(params, name), args.results, args.summaries)
        for name, meta in grid.studies(params).items()
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    html = render(studies, params)
    atomic_write_text(out.parent / "summary.csv", all_cells(studies).to_csv(index=False))
    atomic_write_text(out, html)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
