"""Figures for the report: each function takes a tidy DataFrame and returns a matplotlib Figure.

No statistics here: means and CI bounds arrive as columns (normrepro.aggregate computes them).
Values are plotted as given (the report passes percent). `to_svg` turns a figure into an inline
<svg> string (text kept as text, so the file stays small and searchable).
"""

from __future__ import annotations

import io
import itertools
import textwrap

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

PALETTE = "colorblind"  # seaborn's colour-blind-safe palette
FIGSIZE = (6.4, 3.8)  # inches; the page scales the SVG to its column width
sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
plt.rcParams.update({"svg.fonttype": "none", "figure.dpi": 100, "axes.titlesize": "medium"})
_svg_ids = itertools.count()


def to_svg(fig: plt.Figure) -> str:
    """The figure as an <svg> element (no XML header / DOCTYPE), ids unique within the page."""
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": f"fig{next(_svg_ids)}"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _colors(levels) -> dict:
    return dict(zip(levels, sns.color_palette(PALETTE, len(levels)), strict=True))


def line_bands(
    df: pd.DataFrame,
    x: str,
    hue: str,
    xlabel: str,
    ylabel: str,
    logx2: bool = False,
    logy: bool = False,
    ax: plt.Axes | None = None,
    bounds: tuple[float, float] | None = None,
) -> plt.Figure:
    """One line per `hue` level through (x, mean), shaded between lo and hi (a 95% CI band).

    Columns: x, hue, mean, lo, hi, optional note. Rows with a NaN mean are gaps (a missing
    cell). A non-empty `note` (survivorship: '1/2, 1 div.') is written at its point, or at the
    bottom of the axes where the point has no mean. `bounds`: what the quantity can take
    ((0, 100) for a percentage): the y axis never goes beyond it."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=FIGSIZE)
    levels = list(dict.fromkeys(df[hue]))
    colors = _colors(levels)
    markers = itertools.cycle("osD^vP")
    for level in levels:
        d = df[df[hue] == level].sort_values(x)
        ax.plot(d[x], d["mean"], marker=next(markers), ms=4, color=colors[level], label=level)
        ax.fill_between(d[x], d["lo"], d["hi"], color=colors[level], alpha=0.2, lw=0)
        if "note" in d:
            _notes(ax, d[x], d["mean"], d["note"], colors[level])
    if x == "epoch":  # whole epochs, not 1.25
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if logx2:
        ax.set_xscale("log", base=2)
        ticks = sorted(set(df[x].dropna()))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    clamp_y(ax, bounds)
    if levels:
        legend_outside(ax)
    return fig


def clamp_y(ax: plt.Axes, bounds: tuple[float, float] | None) -> None:
    """Keeps the y axis (and so its ticks) within what the quantity can take."""
    if bounds is not None:
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, bounds[0]), min(hi, bounds[1]))


def legend_outside(ax: plt.Axes, **kwargs) -> None:
    """The legend right of the axes, where it can cover no line, bar or survivorship note."""
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), **kwargs)


def bars_ci(
    df: pd.DataFrame,
    x: str,
    hue: str,
    xlabel: str,
    ylabel: str,
    bounds: tuple[float, float] = (0.0, 100.0),
) -> plt.Figure:
    """Grouped bars of `mean` with whiskers from `lo` to `hi` (a CI already clipped to what the
    quantity can take; without them mean ± `ci`; NaN: no whisker). Columns: x, hue, mean, ci
    [, lo, hi, note]. The y axis stays within `bounds` (a percentage: 0 to 100)."""
    fig, ax = plt.subplots(figsize=FIGSIZE)
    xs = list(dict.fromkeys(df[x]))
    hues = list(dict.fromkeys(df[hue]))
    colors = _colors(hues)
    width = 0.8 / max(len(hues), 1)
    ci = df["ci"].fillna(0.0)
    df = df.assign(lo=df.get("lo", df["mean"] - ci), hi=df.get("hi", df["mean"] + ci))
    for j, level in enumerate(hues):
        d = df[df[hue] == level].set_index(x).reindex(xs)
        pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
        ax.bar(pos, d["mean"], width, color=colors[level], label=str(level))
        yerr = np.vstack([d["mean"] - d["lo"], d["hi"] - d["mean"]])
        ax.errorbar(pos, d["mean"], yerr=yerr, fmt="none", ecolor="0.15", capsize=3, lw=1)
        if "note" in d:
            _notes(ax, pos, d["hi"], d["note"].fillna(""), "0.15", rotation=90)
    ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs])
    if df["mean"].notna().any():  # zoom on the spread: values a few % apart are the point
        top, low = float(df["hi"].max()), float(df["lo"].min())
        pad = max((top - low) * 0.15, 0.5)
        ax.set_ylim(max(bounds[0], low - pad), min(bounds[1], top + pad))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if hues:
        legend_outside(ax)
    fit_xticklabels(fig, ax)
    return fig


def fit_xticklabels(fig: plt.Figure, ax: plt.Axes) -> None:
    """Makes the x tick labels readable side by side: wrapped at spaces ever shorter while two
    overlap, then turned 30 degrees if they still do (measured as drawn)."""
    labels = [t.get_text() for t in ax.get_xticklabels()]
    for width in (14, 10, 7):
        if not _xlabels_overlap(fig, ax):
            return
        ax.set_xticks(ax.get_xticks(), [textwrap.fill(t, width) for t in labels])
    if _xlabels_overlap(fig, ax):
        ax.tick_params(axis="x", labelrotation=30)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")


def _xlabels_overlap(fig: plt.Figure, ax: plt.Axes, gap: float = 4.0) -> bool:
    """Whether two x tick labels' boxes come closer than `gap` pixels (measured as drawn)."""
    renderer = fig.canvas.get_renderer()
    boxes = sorted(
        (t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()),
        key=lambda b: b.x0,
    )
    return any(a.x1 + gap > b.x0 for a, b in itertools.pairwise(boxes))


def _notes(ax, xs, ys, notes, color, rotation: float = 0) -> None:
    """Writes each non-empty note at (x, y); at the bottom of the axes where y is NaN (a cell
    with no ok run has no point, but must still say what happened to its runs)."""
    bottom = ax.get_xaxis_transform()  # x in data units, y in axes fraction
    for x, y, text in zip(xs, ys, notes, strict=True):
        if not isinstance(text, str) or not text:
            continue
        if np.isfinite(y):
            ax.annotate(
                text,
                (x, y),
                xytext=(0, 5),
                textcoords="offset points",
                ha="center",
                va="bottom",
                rotation=rotation,
                fontsize="small",
                color=color,
            )
        else:
            ax.text(
                x,
                0.03,
                text,
                transform=bottom,
                ha="center",
                va="bottom",
                rotation=rotation,
                fontsize="small",
                color=color,
            )


def heatmap(values: pd.DataFrame, labels: pd.DataFrame, xlabel: str, ylabel: str, cbar: str):
    """Annotated heatmap: colour from `values` (NaN: blank), text from `labels` (same shape)."""
    fig, ax = plt.subplots(figsize=(FIGSIZE[0], 0.6 * len(values) + 1.6))
    finite = values.to_numpy(float)[np.isfinite(values.to_numpy(float))]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    # A colour bar says how colours map to values; with one value (or all equal) it would span
    # an invented range (17 to 18 for one cell at 17 %): no bar then, the cells carry the value.
    spread = vmax > vmin
    sns.heatmap(
        values.astype(float),
        annot=labels.to_numpy(),
        fmt="",
        cmap="viridis",
        vmin=vmin if spread else vmin - 1,
        vmax=vmax if spread else vmin + 1,
        linewidths=0.5,
        linecolor="white",
        cbar=spread,
        cbar_kws={"label": cbar} if spread else None,
        ax=ax,
    )
    # seaborn leaves NaN cells blank: hatch them and write why (diverged, missing, ...).
    for i, j in zip(*np.where(~np.isfinite(values.to_numpy(float))), strict=True):
        ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, hatch="//", ec="0.6", lw=0))
        ax.text(
            j + 0.5,
            i + 0.5,
            labels.iat[i, j],
            ha="center",
            va="center",
            color="0.2",
            bbox={"fc": "white", "ec": "none", "pad": 1},
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="y", rotation=0)
    return fig


def curves(panels: list[tuple], hue: str, xlabel: str = "epoch"):
    """Side-by-side line_bands panels sharing x: [(bands DataFrame, y label[, y bounds]), ...];
    one legend, right of the last panel (the panels share their series)."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(FIGSIZE[0] * (1 if len(panels) == 1 else 1.4), FIGSIZE[1])
    )
    axes = np.atleast_1d(axes)
    for ax, (df, ylabel, *bounds) in zip(axes, panels, strict=True):
        line_bands(df, "epoch", hue, xlabel, ylabel, ax=ax, bounds=bounds[0] if bounds else None)
        if df.empty:
            ax.text(0.5, 0.5, "no history yet", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[:-1]:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.tight_layout()
    return fig
