"""Render reports/index.html: every enabled study as its paper-style table and figure, our numbers
as mean ± 95% CI (n) in percent with the published number beside them.

    python -m normrepro.report --params params.yaml --results results --out reports/index.html \
        [--config scale=smoke] [--summaries results/summaries]

Inputs per study: its aggregate (results/summaries/<study>/: the runs, summary, welch and
history tables of normrepro.aggregate). A study whose aggregate is absent, or was made for another
grid, is aggregated here from its run folders, so a partial grid always renders and never shows
stale cells. This module loads the studies and builds what every study shows (its cells table,
its Welch tests, its run lists, the page header); what a study *kind* shows (its figure, its
published references, its captions) is in src/studies/<kind>.py. View models carry every number
as a string; the template (templates/report.html.j2) only lays them out, plots.py only draws.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from html import escape as html_escape
from pathlib import Path

import jinja2
import pandas as pd

from normrepro import aggregate, claims_view, grid
from normrepro import studies as kinds
from normrepro.io_utils import atomic_write_text
from normrepro.report_header import header_view, provenance
from normrepro.status import grid_status, interim_view
from normrepro.studies import quantity as q
from normrepro.studies.common import (
    LOST,
    PROBLEMS,
    StudyData,
    model_names,
    norm_label,
    num,
    pct,
    ran,
    stat_cell,
    table,
)
from normrepro.studies.what_ran import title_as_run

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).resolve().parent / "templates"


# ---------------------------------------------------------------------------- loading


def load_study(
    name: str,
    meta: dict,
    run_cfgs: list[dict],
    results_root: str | Path,
    summaries: str | Path | None = None,
) -> StudyData:
    """The study's aggregate (SUMMARIES/<name>/, default results/summaries/<name>/) when it was
    made for this grid; otherwise aggregated now from the run folders."""
    folder = (
        Path(summaries) / name
        if summaries
        else aggregate.summary_dir(results_root, name, run_cfgs[0]["grid"])
    )
    tables = aggregate.read_study(folder)
    source = f"{folder}/summary.csv"
    planned = {(c["run_id"], c["config_hash"]) for c in run_cfgs}
    if (
        tables is None
        or set(tables["runs"][["run_id", "config_hash"]].itertuples(False)) != planned
    ):
        tables = aggregate.aggregate_study(run_cfgs, meta, results_root)
        source = "computed here from the run folders (no up-to-date aggregate yet)"
    return StudyData.from_tables(name, meta, tables, source, run_cfgs)


# ---------------------------------------------------------------------------- every kind


def p_text(p) -> str:
    return "" if pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def cells_table(sd: StudyData, collapsed: bool, quantity: str) -> dict:
    """Every cell of the study with its counts and statistics (any kind, user-added studies),
    in the study's quantity (error or accuracy %), models named as they ran."""
    axes = [a for a in sd.meta.get("axes") or [] if a in sd.summary and sd.summary[a].notna().any()]
    cols = [(a, a in aggregate.INT_COLUMNS or a == "lr") for a in axes]
    test, best = q.metric(quantity), q.metric(quantity, "best_val")
    cols += [(f"{q.label(quantity)} %", True), (f"{q.label(quantity, 'best_val')} %", True)]
    cols += [(f"{q.label(quantity)} min–max %", True)]
    names = model_names(sd)
    body = []
    for _, r in q.with_errors(sd.summary).iterrows():
        line = [num("" if pd.isna(r[a]) else f"{r[a]:g}") if dict(cols)[a] else r[a] for a in axes]
        if "model" in axes:
            line[axes.index("model")] = names.get(r["model"], r["model"])
        line += [stat_cell(r, m) for m in (test, best)]
        span = f"{pct(r[f'{test}_min'])}–{pct(r[f'{test}_max'])}" if r["n"] else ""
        body.append([*line, num(span)])
    caption = f"All cells of {sd.name} ({len(body)}), ours: {ran(sd)}."
    return table(caption, cols, body, collapsed=collapsed)


def level_text(level: str) -> str:
    """A compared level as the tables name it: 'gn/g8' -> 'GN (G=8)', 'gn/cpg4' -> 'GN (C/G=4)'."""
    norm, *rest = str(level).split("/")
    row = {"norm": norm, "groups": None, "channels_per_group": None}
    for part in rest:
        key = "channels_per_group" if part.startswith("cpg") else "groups"
        row[key] = int(part.removeprefix("cpg").removeprefix("g"))
    return norm_label(row)


def at_text(r, names: dict) -> str:
    """The setting a test compares at: 'ResNet-8, batch 32, lr 0.025'."""
    parts = [names.get(r["model"], r["model"])] if "model" in r and pd.notna(r["model"]) else []
    if "batch_size" in r and pd.notna(r["batch_size"]):
        parts.append(f"batch {int(r['batch_size'])}")
    if "lr" in r and pd.notna(r["lr"]):
        parts.append(f"lr {float(r['lr']):g}")
    return ", ".join(parts) or str(r["cell"])


def lost_by_level(sd: StudyData) -> dict:
    """{(setting label, level label): (planned, {status: runs})} of the runs behind each side
    of a Welch test, labelled as aggregate.welch_tests labels them."""
    runs = aggregate.typed(sd.runs)
    level_axes = [a for a in aggregate.LEVEL_AXES["norm"] if a in runs]
    others = [a for a in sd.meta.get("axes") or [] if a not in level_axes and a in runs]
    out = {}
    for r in runs.to_dict("records"):
        key = (aggregate.cell_label(r, others), aggregate.cell_label(r, level_axes))
        planned, lost = out.get(key, (0, {}))
        if r["status"] != "ok":
            lost = {**lost, r["status"]: lost.get(r["status"], 0) + 1}
        out[key] = (planned + 1, lost)
    return out


def n_text(n, planned_lost) -> dict:
    """A side's n: '3', or where its cell lost runs '2 of 3: 1 diverged' (survivorship: the
    test compares the runs that finished, not the plan)."""
    planned, lost = planned_lost or (n, {})
    if int(n) == planned:
        return num(int(n))
    what = ", ".join(f"{c} {s}" for s, c in lost.items() if s in LOST)
    return num(f"{int(n)} of {planned}: {what}", "partial")


def welch_table(sd: StudyData, quantity: str) -> dict | None:
    w = sd.welch
    if w is None or w.empty:
        return None
    w = q.welch_in(quantity, w)
    what = q.label(quantity)
    cols = [("At", False), ("A", False), ("B", False), ("n A", True), ("n B", True)]
    cols += [(f"A: {what} %", True), (f"B: {what} %", True), ("A − B (pp)", True), ("t", True)]
    cols += [("p", True), ("p, Holm-adjusted", True)]
    names, lost = model_names(sd), lost_by_level(sd)
    body = []
    for _, r in w.iterrows():
        body.append([at_text(r, names), level_text(r["level_a"]), level_text(r["level_b"])])
        body[-1] += [n_text(r["n_a"], lost.get((r["cell"], r["level_a"])))]
        body[-1] += [n_text(r["n_b"], lost.get((r["cell"], r["level_b"])))]
        body[-1] += [num(pct(r["mean_a"])), num(pct(r["mean_b"])), num(pct(r["diff"]))]
        body[-1] += [
            num("" if pd.isna(r["t"]) else f"{r['t']:.2f}"),
            num(p_text(r["p"]), title=r["note"] or ""),
            num(p_text(r["p_holm"])),
        ]
    family = int(w["family"].max()) if w["family"].notna().any() else 0
    caption = (
        f"Welch t-tests of {what} between norms at equal other settings, ours ({ran(sd)}): "
        "two-sided, unequal variances, ok runs only (n; where a side's cell lost runs, n of "
        "planned and what happened to the rest); blank where a side has n < 2. Multiple "
        f"comparisons: the family adjusted together is this study's {family} "
        f"test{'s' if family != 1 else ''} (every pair at every setting), by Holm's step-down "
        "method; read the adjusted p, not the raw one, when asking whether any difference is real."
    )
    return table(caption, cols, body, collapsed=len(body) > 12)


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
    build, quantity = kinds.builder(kind), kinds.kind_quantity(kind)
    blocks = build(sd) if len(sd.summary) else []
    blocks = [b for b in blocks if b]  # a kind may leave out a block (no choices to state)
    blocks.append(cells_table(sd, kind != "generic", quantity))
    w = welch_table(sd, quantity)
    if w:
        blocks.append(w)
    return {
        "id": sd.name,
        "title": title_as_run(sd.meta.get("title") or sd.name, sd),
        "seed_doc": sd.meta.get("seed_doc") or "",
        "kind": kind,
        "source": sd.source,
        "counts": counts_text(sd.runs),
        "blocks": blocks,
        **run_lists(sd.runs),
    }


# ---------------------------------------------------------------------------- render


def render(
    studies: list[StudyData],
    params: dict | None = None,
    prov: dict | None = None,
    interim: dict | None = None,
    claims: list[dict] | None = None,
) -> str:
    """The report's HTML; `interim` (status.interim_view) adds the banner of a grid still running,
    `claims` (the ledger, src/normrepro/claims.py) the Claims section at the top."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    prov = prov or provenance(params)
    # Published columns are comparable only at the seeds' recipes: every study learns the scale.
    scale = str((params or {}).get("scale", "full"))
    studies = in_seed_order(studies)
    return env.get_template("report.html.j2").render(
        header=header_view(studies, params, prov),
        interim=interim,
        claims=claims_view.section(claims, [sd.name for sd in studies]),
        studies=[study_view(dataclasses.replace(sd, scale=scale)) for sd in studies],
    )


# Within one seed document, the order its artifacts are read in (a grid before the run it picks).
KIND_ORDER = ["table2", "batch_sweep", "group_sweep", "norm_compare", "pets", "nf_grid"]
KIND_ORDER += ["nf_final", "generic"]


def in_seed_order(studies: list[StudyData]) -> list[StudyData]:
    """The studies by seed document (000, 001, 002, 003; a study without one last), then by
    KIND_ORDER within a document, then as params.yaml lists them."""

    def key(item):
        k, sd = item
        doc = sd.meta.get("seed_doc") or ""
        kind = sd.meta.get("kind") or "generic"
        rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
        return (doc == "", doc, rank, k)

    return [sd for _, sd in sorted(enumerate(studies), key=key)]


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
    ap.add_argument(
        "--interim",
        action="store_true",
        help="while a grid runs (make report): aggregate every study now from the run folders, "
        "in memory (never reading or writing the grid's summaries, never taking its lock), with "
        "a banner saying it is interim and the running runs' last epochs",
    )
    ap.add_argument(
        "--figures", metavar="DIR", help="also write every figure as DIR/<study>-<k>.svg"
    )
    ap.add_argument(
        "--claims",
        metavar="PATH",
        help="the claims ledger to show (results/claims.json); default, and with --interim: "
        "evaluated here from the runs loaded",
    )
    args, params = aggregate.cli_params(ap, argv)
    with tempfile.TemporaryDirectory() as nothing:  # --interim: no aggregate folder to trust
        studies = [
            load_study(name, meta, grid.study_runs(params, name), args.results,
                       nothing if args.interim else args.summaries)
            for name, meta in grid.studies(params).items()
        ]  # fmt: skip
    interim = interim_view(grid_status(params, args.results)) if args.interim else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ledger = claims_view.report_ledger(None if args.interim else args.claims, studies, params)
    html = render(studies, params, interim=interim, claims=ledger)
    atomic_write_text(out.parent / "summary.csv", all_cells(studies).to_csv(index=False))
    atomic_write_text(out, html)
    print(out)
    if args.figures:
        for path in write_figures(studies, params, Path(args.figures)):
            print(path)
    return 0


def write_figures(studies: list[StudyData], params: dict, folder: Path) -> list[Path]:
    """Every figure of the report as its own SVG file, FOLDER/<study>-<k>.svg (k from 1), with
    its caption in the file's <title>: what the README shows (docs/laptop/)."""
    scale = str(params.get("scale", "full"))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for sd in studies:
        figures = [b for b in study_view(dataclasses.replace(sd, scale=scale))["blocks"]
                   if b.get("type") == "figure"]  # fmt: skip
        for k, block in enumerate(figures, start=1):
            svg = str(block["svg"])
            title = f"<title>{html_escape(str(block['caption']))}</title>"
            svg = svg.replace(">", ">" + title, 1) if svg.lstrip().startswith("<svg") else svg
            path = folder / f"{sd.name}-{k}.svg"
            atomic_write_text(path, svg)
            written.append(path)
    return written


if __name__ == "__main__":
    sys.exit(main())
