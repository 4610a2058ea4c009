"""The report's header: the scale and what its preset changed (only for the studies the report
shows), the data as loaded, run counts, compute, and provenance (the code and parameters of the
report, the versions and devices of the runs: a CUDA version only for runs that ran on a GPU).
Every value leaves here as a string; templates/report.html.j2 lays it out.
"""

from __future__ import annotations

import datetime
import hashlib
import json

import pandas as pd

from normrepro import aggregate, config, grid
from normrepro.gitinfo import git
from normrepro.studies.common import StudyData, dataset_names
from normrepro.studies.what_ran import data_name, distinct, model_label


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


def hours_text(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:.2f} h" if h < 10 else f"{h:.1f} h"


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


def _data_line(data: dict, params: dict) -> str:
    """'data: CIFAR-10, JPEG re-encode (quality ~75), 10k pool; 4,500 training images, a
    class-balanced draw after 500 validation images were drawn from the pool; the whole test
    set' (data.py draws the validation images first, then train_subset from the rest)."""
    parts = [f"data: {data_name(config.merge_data(params.get('data', {}), data))}"]
    subset, held = data.get("train_subset"), data.get("val_size")
    if subset:
        drawn = f"{subset:,} training images (a class-balanced draw"
        parts.append(drawn + (f" after the {held:,} validation images)" if held else ")"))
    elif held:
        parts.append(f"{held:,} images held out for validation")
    test = data.get("test_subset")
    parts.append(f"test subset {test:,}" if test else "the whole test set")
    return parts[0] + ", " + ", ".join(parts[1:])


def _study_models(params: dict, name: str) -> set[str]:
    """The models a study names (its variants' or its `models`), at this scale (the effective
    params: the preset's trims applied)."""
    study = params["studies"][name]
    return {v["model"] for v in study.get("variants", [])} | set(study.get("models", []))


def preset_choices(params: dict, shown: set[str] | None = None) -> list[str]:
    """What the scale's preset (smoke, laptop) changes from the seeds' recipes, one line each:
    the choices a budget forced, printed in the header so no number is read without them.
    `shown`: the studies the report contains (default: every enabled one); a study's trims and
    a model's size are listed only for those, the studies the preset turns off on one line."""
    preset = config.preset_of(params)
    if not preset:
        return []
    if shown is None:
        shown = set(grid.studies(params))
    lines = [_data_line(preset["data"], params)] if preset.get("data") else []
    if "epochs" in preset:
        lines.append(f"epochs: {preset['epochs']} for every study (lr milestones scaled with them)")
    if "n_seeds" in preset:
        lines.append(f"seeds: at most {preset['n_seeds']} per cell")
    models = {m for name in shown for m in _study_models(params, name)}
    for model, kw in preset.get("model_kw", {}).items():
        if model in models:
            built = ", ".join(f"{k}={v}" for k, v in kw.items())
            lines.append(f"model {model} built with {built}: {model_label(model, kw)}")
    trims = preset.get("studies", {})
    off = [name for name, t in trims.items() if t.get("enabled") is False and name not in shown]
    if off:
        lines.append(f"studies off at this scale (not in this report): {', '.join(off)}")
    for name, t in trims.items():
        keys = ", ".join(f"{k} = {_trim_text(k, v)}" for k, v in t.items() if k != "enabled")
        if name in shown and keys:
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
    versions = [("torch", _distinct(finished, "torch_version"))]
    if gpu.any():  # a CPU run's torch may be a CUDA build: its CUDA version was never used
        versions.append(("CUDA (GPU runs)", _distinct(finished[gpu], "cuda_version")))
    shown = {sd.name for sd in studies}
    return {
        "scale": (params or {}).get("scale", "—"),
        "preset": preset_choices(params or {}, shown) if params else [],
        "datasets": "; ".join(distinct(n for sd in studies for n in dataset_names(sd))) or "—",
        "n_studies": len(studies),
        "counts": counts,
        "compute": ", ".join(compute) or "none yet",
        "provenance": [
            ("report code (git)", prov["git"]),
            ("params hash (effective params.yaml)", prov["params_hash"]),
            ("runs' code (git)", _distinct(revs, "rev")),
            *versions,
            ("devices", _distinct(finished, "device_name")),
            ("rendered", prov["date"]),
        ],
    }
