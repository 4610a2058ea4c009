"""Figures for the report: each function takes a tidy DataFrame and returns a matplotlib Figure.

No statistics here: means and CI bounds arrive as columns (src/aggregate.py computes them).
Values are plotted as given (the report passes percent). `to_svg` turns a figure into an inline
<svg> string (text kept as text, so the file stays small and searchable).
"""

from __future__ import annotations

import io
import itertools

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
) -> plt.Figure:
    """One line per `hue` level through (x, mean), shaded between lo and hi (a 95% CI band).

    Columns: x, hue, mean, lo, hi, optional note. Rows with a NaN mean are gaps (a missing
    cell). A non-empty `note` (survivorship: '1/2, 1 div.') is written at its point, or at the
    bottom of the axes where the point has no mean."""
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
    if levels:
        ax.legend(frameon=False)
    return fig


def bars_ci(df: pd.DataFrame, x: str, hue: str, xlabel: str, ylabel: str) -> plt.Figure:
    """Grouped bars of `mean` with `ci` whiskers (NaN ci: no whisker). Columns: x, hue, mean, ci."""
    fig, ax = plt.subplots(figsize=FIGSIZE)
    xs = list(dict.fromkeys(df[x]))
    hues = list(dict.fromkeys(df[hue]))
    colors = _colors(hues)
    width = 0.8 / max(len(hues), 1)
    for j, level in enumerate(hues):
        d = df[df[hue] == level].set_index(x).reindex(xs)
        pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
        ax.bar(pos, d["mean"], width, color=colors[level], label=str(level))
        ax.errorbar(pos, d["mean"], yerr=d["ci"], fmt="none", ecolor="0.15", capsize=3, lw=1)
        if "note" in d:
            top = d["mean"] + d["ci"].fillna(0)
            _notes(ax, pos, top, d["note"].fillna(""), "0.15", rotation=90)
    ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs])
    finite = df["mean"].dropna()
    if len(finite):  # zoom on the spread: accuracies of a few % apart are the point
        top = float((df["mean"] + df["ci"].fillna(0)).max())
        low = float((df["mean"] - df["ci"].fillna(0)).min())
        pad = max((top - low) * 0.15, 0.5)
        ax.set_ylim(max(0.0, low - pad), top + pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if hues:
        ax.legend(frameon=False, ncols=min(len(hues), 4))
    return fig


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
    sns.heatmap(
        values.astype(float),
        annot=labels.to_numpy(),
        fmt="",
        cmap="viridis",
        vmin=vmin,
        vmax=vmax if vmax > vmin else vmin + 1,
        linewidths=0.5,
        linecolor="white",
        cbar_kws={"label": cbar},
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


def curves(panels: list[tuple[pd.DataFrame, str]], hue: str, xlabel: str = "epoch"):
    """Side-by-side line_bands panels sharing x: [(bands DataFrame, y label), ...]."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(FIGSIZE[0] * (1 if len(panels) == 1 else 1.4), FIGSIZE[1])
    )
    for ax, (df, ylabel) in zip(np.atleast_1d(axes), panels, strict=True):
        line_bands(df, "epoch", hue, xlabel, ylabel, ax=ax)
        if df.empty:
            ax.text(0.5, 0.5, "no history yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig
