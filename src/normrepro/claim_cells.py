"""Cells of the claims ledger: how a claim's selectors (axis -> value, with SMALLEST,
REFERENCE, EACH and OTHERS) resolve to a study's cells and runs, and which errors (points) each
analysis takes from them: the survivors (ok runs) or intent-to-treat (a diverged or failed run at
chance accuracy). Used by src/normrepro/claims.py; a study's CLAIMS use the selector constants.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from normrepro import aggregate

SMALLEST = "<smallest>"  # batch_size: the smallest batch of the study's grid
REFERENCE = "<reference>"  # batch_size: see reference_batch
EACH = "<each>"  # one entry per level of this axis in the grid, the same level in both arms
OTHERS = "<others>"  # arm b only: one entry per level of this axis other than arm a's
AXES = ["model", "norm", "groups", "channels_per_group", "batch_size", "lr"]
SUFFIX = {"batch_size": "bs", "lr": "lr", "groups": "g", "channels_per_group": "cpg"}
# Classes of each dataset whose count is fixed; imagefolder's are its folders (class_count).
CLASS_COUNTS = {"cifar10": 10, "fashion-mnist": 10, "synthetic": 10}
FINISHED = ("ok", "diverged", "failed")  # what intent-to-treat counts
AT_CHANCE = ("diverged", "failed")


class ClaimsError(ValueError):
    """A claim cannot be evaluated as declared (a margin not set, an unknown dataset)."""


def class_count(dataset: str, data_cfg: dict | None = None) -> int:
    """Number of classes of a dataset (chance accuracy is 1 / this): fixed for the datasets the
    loaders know, the class folders of ROOT/train for imagefolder."""
    if dataset in CLASS_COUNTS:
        return CLASS_COUNTS[dataset]
    if dataset == "imagefolder" and data_cfg and data_cfg.get("root"):
        folder = Path(data_cfg["root"]) / "train"
        classes = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        if classes:
            return len(classes)
    raise ClaimsError(
        f"dataset {dataset!r}: number of classes unknown (for chance accuracy); known: "
        f"{', '.join(CLASS_COUNTS)}, or imagefolder with class folders under ROOT/train"
    )


def reference_batch(batches: list[int]) -> int:
    """The normal batch a small batch is set against: the largest batch of 16 to 32 in the grid
    (the published tables' normal regime: the GN paper's 32 images per GPU, the reproductions'
    16-32 where BN has levelled off), else the largest batch there is (a laptop or smoke grid
    that skipped 16-32 has 64 as its normal batch)."""
    normal = [b for b in batches if 16 <= b <= 32]
    return max(normal) if normal else max(batches)


def _levels(runs: pd.DataFrame, axis: str) -> list:
    return sorted(v.item() if hasattr(v, "item") else v for v in runs[axis].dropna().unique())


def _level_text(axis: str, value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return SUFFIX.get(axis, axis) + text.replace(".", "p")  # no dots: DVC splits keys on them


def _resolve(arm: dict, fixed: dict) -> dict:
    return {k: fixed.get(v, v) if isinstance(v, str) else v for k, v in arm.items()}


def expand(claim, runs: pd.DataFrame) -> list[tuple[str, dict, dict | None]]:
    """(id suffix, arm a, arm b) of every ledger entry of `claim` on a study's runs, with
    SMALLEST / REFERENCE resolved and EACH / OTHERS expanded ('bs32/lr0p001')."""
    batches = _levels(runs, "batch_size")
    fixed = {SMALLEST: min(batches), REFERENCE: reference_batch(batches)} if batches else {}
    a = _resolve(claim.a, fixed)
    b = None if claim.b is None else _resolve(claim.b, fixed)
    each = [k for k, v in a.items() if v == EACH]
    others = [k for k, v in (b or {}).items() if v == OTHERS]
    entries = []
    for values in itertools.product(*(_levels(runs, k) for k in each)):
        ea = {**a, **dict(zip(each, values, strict=True))}
        eb = None if b is None else {**b, **{k: ea[k] for k in each if b.get(k) == EACH}}
        rest = [[x for x in _levels(runs, k) if x != ea.get(k)] for k in others]
        for other_values in itertools.product(*rest):  # one empty tuple without OTHERS
            ob = eb if eb is None else {**eb, **dict(zip(others, other_values, strict=True))}
            levels = [*zip(each, values, strict=True), *zip(others, other_values, strict=True)]
            entries.append(("/".join(_level_text(k, v) for k, v in levels), ea, ob))
    return entries


def select(runs: pd.DataFrame, arm: dict) -> tuple[pd.DataFrame, str]:
    """(the arm's runs, '') when its selector matches exactly one cell; else (empty, why not)."""
    mask = pd.Series(True, index=runs.index)
    for axis, value in arm.items():
        col = runs[axis]
        if value is None:
            mask &= col.isna()
        elif axis == "lr":
            mask &= np.isclose(col.astype(float), float(value))
        else:
            mask &= col == value
    chosen = runs[mask.fillna(False).astype(bool)]
    cells = {aggregate.cell_label(r, AXES) for r in chosen[AXES].to_dict("records")}
    if len(cells) == 1:
        return chosen, ""
    wanted = ", ".join(f"{k} {v}" for k, v in arm.items()) or "any"
    if not cells:
        return chosen.iloc[0:0], f"no cell with {wanted} in the grid"
    return chosen.iloc[0:0], f"{wanted} matches {len(cells)} cells ({', '.join(sorted(cells))})"


def arm_errors(runs: pd.DataFrame, metric: str, itt: bool, chance_err) -> pd.DataFrame:
    """run (study/run_id), seed and error (points) of the runs an analysis uses: the ok runs
    with the metric; intent-to-treat adds the diverged and failed ones at chance_err()."""
    use = runs[runs["status"].isin(FINISHED if itt else ("ok",))]
    err = 100.0 * (1.0 - use[metric].astype(float))
    at_chance = use["status"].isin(AT_CHANCE)
    if at_chance.any():
        err = err.where(~at_chance, chance_err())
    out = pd.DataFrame({"run": use["study"] + "/" + use["run_id"], "seed": use["seed"], "err": err})
    return out.dropna(subset=["err"])


def comparable(scale: str, runs: pd.DataFrame, claim) -> str:
    """'' when our runs can be set against the claim's published number (the seeds' recipe at
    scale full, on its dataset); else why not."""
    reasons = [f"{scale} scale"] if scale != "full" else []
    datasets = sorted(set(runs["dataset"].dropna()))
    if datasets and datasets != [claim.dataset]:
        reasons.append(f"ours ran on {', '.join(datasets)}")
    return ", ".join(reasons)


def cell_text(runs: pd.DataFrame | None, arm: dict | None) -> str:
    if arm is None:
        return ""
    if runs is not None and len(runs):
        return aggregate.cell_label(runs.iloc[0].to_dict(), AXES)
    return ", ".join(f"{k} {v}" for k, v in arm.items())


def pairable(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Same batch size, epochs and dataset: each seed gives both arms the same data order."""
    cols = ["batch_size", "epochs", "dataset"]
    return all(a[c].nunique() == 1 and set(a[c]) == set(b[c]) for c in cols)
