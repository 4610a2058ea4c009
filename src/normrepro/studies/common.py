"""What every study kind's view shares: the study's tables and run configs, number formatting,
table / figure / note blocks, and labels taken from the configs the study actually ran.

Every number leaves here as a string (the template only lays blocks out, plots.py only draws).
Accuracies arrive as fractions and are shown in percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from markupsafe import Markup

from normrepro import aggregate, catalog, plots
from normrepro.norm_registry import display_name as norm_display_name
from normrepro.studies import quantity as q

# Names of the data and models as they ran (re-exported: the kinds import them from here).
from normrepro.studies.what_ran import (  # noqa: F401
    DATASET_NAMES,
    MODEL_NAMES,
    cell_config,
    comparable,
    config_values,
    dataset_names,
    distinct,
    join_numbers,
    model_label,
    model_names,
    per_width_text,
    ran,
    train_images_choice,
)

# A norm's display name is its row's `display` in norm_registry.NORMS (norm_display_name).
PROBLEMS = ("diverged", "failed", "unreadable", "stale")  # why a cell may have no ok run
# Short words for the survivorship note drawn at a figure's point: "1/2, 1 div.".
LOST = {
    "diverged": "div.",
    "failed": "failed",
    "unreadable": "unreadable",
    "stale": "stale",
    "running": "running",
    "missing": "not run",
}


@dataclass
class StudyData:
    """One study's tables, as aggregate.py writes them (fractions, not percent), and the run
    configs it planned (normrepro.grid's RUN.json), which every label is taken from."""

    name: str
    meta: dict  # grid.studies() entry: title, seed_doc, kind, axes, compare
    runs: pd.DataFrame
    summary: pd.DataFrame
    welch: pd.DataFrame
    history: pd.DataFrame = field(default_factory=pd.DataFrame)  # ok runs' history.tsv rows
    source: str = ""  # where the tables came from, shown under the study's title
    configs: list[dict] = field(default_factory=list)  # planned run configs ([] in unit tests)
    scale: str = "full"  # params.yaml `scale` the report was made for

    @classmethod
    def from_tables(
        cls, name: str, meta: dict, tables: dict, source: str, configs: list[dict] | None = None
    ) -> StudyData:
        """From aggregate.study_tables / read_study's {"runs", "summary", "welch", "history"}."""
        t = tables
        return cls(
            name, meta, t["runs"], t["summary"], t["welch"], t["history"], source, configs or []
        )


# ---------------------------------------------------------------------------- formatting


def pct(x, digits: int = 2) -> str:
    """A fraction as percent text; '' for NaN."""
    return "" if pd.isna(x) else f"{100 * float(x):.{digits}f}"


def cell(text, cls: str = "", title: str = "") -> dict:
    return {"text": "" if pd.isna(text) else str(text), "cls": cls, "title": title}


def num(text, cls: str = "", title: str = "") -> dict:
    """A right-aligned numeric cell ('—' where there is nothing)."""
    return cell(text if text not in ("", None) else "—", f"num {cls}".strip(), title)


def ref_num(value, digits: int = 2, title: str = "") -> dict:
    """A published number's cell (class `ref`: the page and the tests tell it from ours)."""
    return num(None if value is None else f"{value:.{digits}f}", "ref", title)


def counts(row) -> dict:
    """{status: number of runs} of a summary row, for every status that lost runs."""
    return {s: int(row.get(f"n_{s}", 0) or 0) for s in LOST}


def survivorship(row) -> str:
    """'' when every planned run of the cell finished ok; else '1/2, 1 div.' (ok of planned,
    then what happened to the others): drawn at the cell's point so a mean over survivors
    never looks like a mean over the plan."""
    n, planned = int(row["n"]), int(row["n_planned"])
    if n == planned:
        return ""
    lost = [f"{c} {LOST[s]}" for s, c in counts(row).items() if c]
    return ", ".join([f"{n}/{planned}", *lost])


def stat_cell(row, metric: str) -> dict:
    """'91.23 ± 0.45 (n=5)' in percent, or the reason a cell has no number (missing, diverged…)."""
    n, planned = int(row["n"]), int(row["n_planned"])
    lost = {s: c for s, c in counts(row).items() if c}
    others = ", ".join(f"{c} {s}" for s, c in lost.items())
    if n == 0:
        status = next((s for s in PROBLEMS if lost.get(s)), "missing")
        text = status if status == "missing" else f"{status} ({lost[status]}/{planned})"
        return num(text, status, f"0 of {planned} runs done" + (f": {others}" if others else ""))
    mean, ci = row[f"{metric}_mean"], row[f"{metric}_ci95"]
    if pd.isna(mean):
        return num("n/a", "missing", f"{metric} not recorded")
    count = f"n={n}" if n == planned else f"n={n} of {planned}"
    if others:
        count += f"; {others}"
    title = row.get("ci_note") or ""
    if n < 2:
        text = f"{pct(mean)} ({count}, no CI)"
    elif mean - ci < 0 or mean + ci > 1:
        # A t interval over few seeds can pass 0 or 100 %: '19.10 ± 67.34' would promise
        # values a percentage cannot take, so the interval is shown as it is, clipped.
        lo, hi = max(mean - ci, 0.0), min(mean + ci, 1.0)
        text = f"{pct(mean)}, CI {pct(lo)}–{pct(hi)} ({count})"
        title = "95% CI clipped to [0, 100]: the t interval over these seeds passes it"
    else:
        text = f"{pct(mean)} ± {pct(ci)} ({count})"
    return num(text, "partial" if n < planned else "", title)


def norm_label(row) -> str:
    """'GN (G=8)', 'GN+WS (C/G=4)', 'BN'."""
    name = norm_display_name(row["norm"])
    if not pd.isna(row.get("groups")):
        return f"{name} (G={int(row['groups'])})"
    if not pd.isna(row.get("channels_per_group")):
        return f"{name} (C/G={int(row['channels_per_group'])})"
    return name


def series_label(row, with_model: bool, names: dict | None = None) -> str:
    """'GN (G=8)', or with the model as it ran: 'ResNet-8 GN (G=8)' (names: model_names(sd))."""
    if not with_model:
        return norm_label(row)
    model = (names or {}).get(row["model"]) or model_label(row["model"])
    return f"{model} {norm_label(row)}"


def with_series(
    df: pd.DataFrame, many: bool | None = None, names: dict | None = None
) -> pd.DataFrame:
    """Adds `series` (model only where the study has several, then norm) to a cell/run table;
    `many`: whether to name the model (default: whether `df` has several); `names`: each
    model's name as it ran (model_names(sd)), else its published name."""
    df = df.copy()
    if many is None:
        many = df["model"].nunique() > 1 if len(df) else False
    df["series"] = [series_label(r, many, names) for r in df.to_dict("records")]
    return df


def ref_label(label: str, sd: StudyData, dataset: str = "cifar10") -> str:
    """A published column's header, with ' (not comparable)' when it is not (the reference
    note under it says why)."""
    return f"{label} (not comparable)" if comparable(sd, dataset) else label


def reference_note(source: str, expectation: str, sd: StudyData, dataset: str = "cifar10"):
    """A note under a published column: which source it is, what a faithful rerun is expected
    to get, and whether this report's runs can be compared with it at all."""
    why = comparable(sd, dataset)
    text = f"Published: {source}. Expected of a faithful rerun: {expectation}"
    if why:
        text += f" Not comparable with ours here: {why} (ours: {ran(sd)})."
    return note(text, "ref")


def choices_note(
    sd: StudyData, choices: list[tuple[str, str, str]], extra: list[str] | None = None
) -> dict | None:
    """'Recipe choices behind these numbers: Nesterov off (seed 001 silent); …' with each value
    read from the run configs. choices: [(label, config key or '', why)]; extra: parts already
    written from what ran (what_ran.train_images_choice)."""
    parts = []
    for label, path, why in choices:
        vals = config_values(sd, path) if path else []
        shown = ", ".join(_value_text(v) for v in vals) or ("off" if path else "")
        parts.append(f"{label}{' ' + shown if shown else ''} ({why})")
    parts += extra or []
    if not parts:
        return None
    return note("Recipe choices behind these numbers: " + "; ".join(parts) + ".")


def _value_text(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return f"{v:g}" if isinstance(v, float) else str(v)


def groups_note(sd: StudyData) -> dict | None:
    """'What each group norm normalized on the model that ran: GN (G=8): 2 / 4 / 8 channels per
    group on the 16 / 32 / 64-channel layers; …' for the study's GN / GN+WS / LN / IN cells."""
    texts = {}
    for _, r in sd.summary.iterrows():
        if catalog.is_group_norm(r["norm"]):
            name = series_label(r, sd.summary["model"].nunique() > 1, model_names(sd))
            texts.setdefault(name, per_width_text(cell_config(sd, r)))
    parts = [f"{k}: {v}" for k, v in texts.items() if v]
    if not parts:
        return None
    return note("What each group norm normalized on the model that ran: " + "; ".join(parts) + ".")


# ---------------------------------------------------------------------------- blocks


def table(caption: str, columns: list, rows: list, collapsed: bool = False, cls: str = "") -> dict:
    """columns: [(label, numeric)] or [(label, numeric, cls)] (cls 'ref': a published column);
    rows: [[cell, ...]] (a str is a plain text cell); cls 'ref': a table of published numbers."""
    cols = []
    for label, numeric, *col_cls in columns:
        cols.append({"label": label, "cls": " ".join(["num"] * numeric + col_cls)})
    body = [[c if isinstance(c, dict) else cell(c) for c in r] for r in rows]
    return {
        "type": "table",
        "caption": caption,
        "columns": cols,
        "rows": body,
        "collapsed": collapsed,
        "cls": cls,
    }


def figure(fig, caption: str) -> dict:
    return {"type": "figure", "svg": Markup(plots.to_svg(fig)), "caption": caption}


def note(text: str, cls: str = "") -> dict:
    """A paragraph under the study (cls 'ref': about a published source, not our runs)."""
    return {"type": "note", "text": text, "cls": cls}


def figure_if(ready: bool, caption: str, draw, *args, **kwargs) -> dict:
    """figure(draw(*args, **kwargs)) when there is something to draw; a note until then."""
    if ready:
        return figure(draw(*args, **kwargs), caption)
    return note("No finished runs yet: the figure appears once runs finish.")


def finished(sd: StudyData) -> bool:
    """Whether any cell has an ok or diverged run."""
    s = sd.summary
    return bool(len(s) and ((s["n"] > 0) | (s["n_diverged"] > 0)).any())


SURVIVORSHIP = "A point or bar with n/planned beside it lost runs (div.: diverged): it is the mean of the rest."


def two_way_table(caption, summary, rows, cols, metric, row_title, col_fmt, extra=None):
    """Rows `rows`, one column per level of `cols` (sorted descending, like the GN paper);
    `extra`: {column label: function(row level) -> text} for published (reference) columns."""
    rlev = list(dict.fromkeys(summary[rows]))
    clev = sorted(set(summary[cols]), reverse=True)
    cells = {(r[rows], r[cols]): stat_cell(r, metric) for _, r in summary.iterrows()}
    extra = extra or {}
    columns = [(row_title, False)] + [(col_fmt(c), True) for c in clev]
    columns += [(label, True, "ref") for label in extra]
    body = []
    for r in rlev:
        line = [r] + [cells.get((r, c), num("not planned", "missing")) for c in clev]
        line += [num(f(r), "ref") for f in extra.values()]
        body.append(line)
    return table(caption, columns, body)


def by_batch_table(caption: str, s: pd.DataFrame, metric: str, row_title: str, extra=None):
    return two_way_table(
        caption, s, "series", "batch_size", metric, row_title, lambda b: f"batch {b}", extra
    )


def band(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Adds mean, lo, hi, ci in percent from a summary's metric columns (no CI: lo = hi = mean)
    and `note`, the cell's survivorship text that the figure draws at its point."""
    mean = 100 * summary[f"{metric}_mean"]
    ci = 100 * summary[f"{metric}_ci95"]
    # A t interval over few seeds can pass 0 or 100 %: drawn within what a percentage can take
    # (the tables clip it the same way, stat_cell).
    lo = (mean - ci.fillna(0.0)).clip(lower=0.0)
    hi = (mean + ci.fillna(0.0)).clip(upper=100.0)
    notes = [survivorship(r) for r in summary.to_dict("records")]
    return summary.assign(mean=mean, ci=ci, lo=lo, hi=hi, note=notes)


def curve_bands(sd: StudyData, metric: str, scale: float = 1.0) -> pd.DataFrame:
    """Per series and epoch: mean and 95% CI band of a history.tsv column over the ok runs.
    A series whose cell lost runs is named with its survivorship ('GN (G=8) [1/2, 1 div.]')."""
    h = sd.history
    if h.empty or metric not in h:
        return pd.DataFrame(columns=["series", "epoch", "n", "mean", "lo", "hi"])
    many = sd.summary["model"].nunique() > 1  # name series as the summary does
    h = with_series(h, many, model_names(sd)).assign(
        **{metric: pd.to_numeric(h[metric], errors="coerce") * scale}
    )
    lost = series_survivorship(sd)
    h["series"] = [f"{s} [{lost[s]}]" if lost.get(s) else s for s in h["series"]]
    bands = aggregate.history_bands(h, ["series"], metric)
    # Losses and accuracies are >= 0, accuracies in percent <= 100: draw the band within that.
    bands["lo"] = bands["lo"].clip(lower=0.0)
    if scale == 100:
        bands["hi"] = bands["hi"].clip(upper=100.0)
    return bands


def series_survivorship(sd: StudyData) -> dict[str, str]:
    """survivorship() of each series (model, norm) over all its cells: what a curve lost."""
    s = with_series(sd.summary, names=model_names(sd))
    cols = ["n", "n_planned", *(f"n_{k}" for k in LOST if f"n_{k}" in s)]
    return {name: survivorship(b[cols].sum()) for name, b in s.groupby("series", sort=False)}


def no_curve_text(sd: StudyData) -> str:
    """' No curve (no ok run): WRN-28-10 GN+WS [0/3, 3 div.].' for the series a curve figure
    cannot draw; '' when every series has one."""
    gone = [
        f"{name} [{text}]"
        for name, text in series_survivorship(sd).items()
        if text.startswith("0/")
    ]
    return f" No curve (no ok run): {'; '.join(gone)}." if gone else ""


def test_bars(sd: StudyData, s: pd.DataFrame, quantity: str) -> dict:
    """Test error or accuracy % (quantity.py) per series (bar groups) and batch size (hue),
    95% CI whiskers clipped to [0, 100]."""
    d = band(s, q.metric(quantity)).assign(batch=[f"batch {b}" for b in s["batch_size"]])
    what = q.label(quantity)
    caption = (
        f"{what.capitalize()}, ours ({ran(sd)}): mean over seeds, 95% CI whiskers (no bar: no ok "
        "run). " + SURVIVORSHIP
    )
    ylabel = f"{what} on {' / '.join(dataset_names(sd, False))} (%)"
    return figure_if(finished(sd), caption, plots.bars_ci, d, "series", "batch", "", ylabel)
