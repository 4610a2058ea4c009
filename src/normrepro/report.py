"""Render reports/index.html: every enabled study as its paper-style table and figure, our numbers
as mean ± 95% CI (n) in percent with the published number beside them.

    python -m normrepro.report --params params.yaml --results results --out reports/index.html \
        [--config scale=smoke] [--summaries results/summaries]

Inputs per study: its aggregate (results/summaries/<study>/: the runs, summary, welch and
history tables of src/aggregate.py). A study whose aggregate is absent, or was made for another
grid, is aggregated here from its run folders, so a partial grid always renders and never shows
stale cells. This module loads the studies and builds what every study shows (its cells table,
its Welch tests, its run lists, the page header); what a study *kind* shows (its figure, its
published references, its captions) is in src/studies/<kind>.py. View models carry every number
as a string; the template (templates/report.html.j2) only lays them out, plots.py only draws.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import sys
import tempfile
from html import escape as html_escape
from pathlib import Path

import jinja2
import pandas as pd

from normrepro import aggregate, grid
from normrepro import studies as kinds
from normrepro.gitinfo import git
from normrepro.io_utils import atomic_write_text
from normrepro.status import grid_status, interim_view
from normrepro.studies.common import (
    PROBLEMS,
    StudyData,
    num,
    pct,
    ran,
    stat_cell,
    table,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).resolve().parent / "templates"


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
    return StudyData.from_tables(name, meta, tables, source, run_cfgs)


# ---------------------------------------------------------------------------- every kind


def p_text(p) -> str:
    return "" if pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def hours_text(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:.2f} h" if h < 10 else f"{h:.1f} h"


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
    caption = f"All cells of {sd.name} ({len(body)}), ours: {ran(sd)}."
    return table(caption, cols, body, collapsed=collapsed)


def welch_table(sd: StudyData) -> dict | None:
    w = sd.welch
    if w is None or w.empty:
        return None
    cols = [("At", False), ("A", False), ("B", False), ("n A", True), ("n B", True)]
    cols += [("mean A %", True), ("mean B %", True), ("A − B (pp)", True), ("t", True)]
    cols += [("p", True), ("p, Holm-adjusted", True)]
    body = []
    for _, r in w.iterrows():
        body.append([r["cell"], r["level_a"], r["level_b"], num(r["n_a"]), num(r["n_b"])])
        body[-1] += [num(pct(r["mean_a"])), num(pct(r["mean_b"])), num(pct(r["diff"]))]
        body[-1] += [
            num("" if pd.isna(r["t"]) else f"{r['t']:.2f}"),
            num(p_text(r["p"]), title=r["note"] or ""),
            num(p_text(r["p_holm"])),
        ]
    family = int(w["family"].max()) if w["family"].notna().any() else 0
    caption = (
        f"Welch t-tests of {w['metric'].iloc[0]} between {w['compare'].iloc[0]} levels at equal "
        f"other settings, ours ({ran(sd)}): two-sided, unequal variances, ok runs; blank where a "
        f"side has n < 2. Multiple comparisons: the family adjusted together is this study's "
        f"{family} test{'s' if family != 1 else ''} (every pair at every setting), by Holm's "
        "step-down method; read the "
        "adjusted p, not the raw one, when asking whether any difference is real."
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
    blocks = kinds.builder(kind)(sd) if len(sd.summary) else []
    blocks = [b for b in blocks if b]  # a kind may leave out a block (no choices to state)
    blocks.append(cells_table(sd, collapsed=kind != "generic"))
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


def _trim_text(key: str, value) -> str:
    if key == "variants":  # [{model, norm, norm_kw}] -> "resnet20 bn, resnet20 gn (groups 8)"
        return ", ".join(
            f"{v['model']} {v['norm']}"
            + "".join(f" ({k} {x})" for k, x in v.get("norm_kw", {}).items())
            for v in value
        )
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def preset_choices(params: dict) -> list[str]:
    """What the scale's preset (smoke, laptop) changes from the seeds' recipes, one line each:
    the choices a budget forced, printed in the header so no number is read without them."""
    preset = (
        params.get(params.get("scale"), {}) if params.get("scale") in grid.PRESET_SCALES else {}
    )
    lines = []
    data = preset.get("data", {})
    if data:
        held = (
            f", {data['val_size']:,} of them held out for validation"
            if data.get("val_size")
            else ""
        )
        subset = data.get("train_subset")
        drawn = f"a class-balanced subset of {subset:,} training images{held}" if subset else ""
        test = data.get("test_subset")
        lines.append(
            f"data: {data.get('name', params['data']['name'])}"
            + (f", {drawn}" if drawn else "")
            + (f", test subset {test:,}" if test else ", the whole test set")
        )
    if "epochs" in preset:
        lines.append(f"epochs: {preset['epochs']} for every study (lr milestones scaled with them)")
    if "n_seeds" in preset:
        lines.append(f"seeds: at most {preset['n_seeds']} per cell")
    for model, kw in preset.get("model_kw", {}).items():
        lines.append(f"model {model} built with {', '.join(f'{k}={v}' for k, v in kw.items())}")
    for name, trims in preset.get("studies", {}).items():
        if trims.get("enabled") is False:
            lines.append(f"study {name}: off at this scale")
        else:
            keys = ", ".join(
                f"{k} = {_trim_text(k, v)}" for k, v in trims.items() if k != "enabled"
            )
            lines.append(f"study {name}: {keys}")
    return lines


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
        "preset": preset_choices(params or {}),
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


def render(
    studies: list[StudyData],
    params: dict | None = None,
    prov: dict | None = None,
    interim: dict | None = None,
) -> str:
    """The report's HTML; `interim` (status.interim_view) adds the banner of a grid still running."""
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
    return env.get_template("report.html.j2").render(
        header=header_view(studies, params, prov),
        interim=interim,
        studies=[study_view(dataclasses.replace(sd, scale=scale)) for sd in studies],
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
    html = render(studies, params, interim=interim)
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
