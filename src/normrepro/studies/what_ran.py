"""What a study's runs were, named as they ran: the data as loaded (a config's `label`, an image
folder's root, or the dataset's name) with the number of images trained on, and each model at the
size it was built (ResNet-8 for `resnet20` with depth 8), read from the run configs and from what
the trainer recorded in metrics.json, never from the scale's name or the paper's model.

Pure Python (no torch): the report imports it for every study.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pandas as pd

from normrepro import catalog

if TYPE_CHECKING:
    from normrepro.studies.common import StudyData

# The published models' names (what a seed document or paper calls them).
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
DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "fashion-mnist": "Fashion-MNIST",
    "synthetic": "synthetic data",
}
# How each family is named at a given size; the qualifiers in brackets are what its builder does
# differently from a plain post-activation basic-block ResNet.
FAMILY_NAMES = {
    "resnet": ("ResNet-{depth}", []),
    "bottleneck_resnet": ("ResNet-{depth}", ["bottleneck"]),
    "preact_resnet": ("PreAct ResNet-{depth}", ["bottleneck"]),
    "wrn": ("PreAct WRN-{depth}-{width}", []),
    "imagenet_resnet": ("ResNet-{depth}", []),
    "nf_resnet": ("NF-ResNet", []),
}


# ---------------------------------------------------------------------------- config values


def distinct(values) -> list:
    """Distinct non-null values in order of first appearance."""
    return [v for v in dict.fromkeys(values) if not pd.isna(v)]


def join_numbers(values, unit: str = "") -> str:
    """'8, 64' / '3' (ints without a decimal point), '—' for none."""
    vals = sorted(distinct(values))
    return ", ".join(f"{v:g}" for v in vals) + unit if vals else "—"


def config_values(sd: StudyData, path: str) -> list:
    """Distinct values of a dotted key ('optim.weight_decay') over the study's run configs;
    from the per-run table when there are no configs (unit tests) and the column exists."""
    if not sd.configs:
        col = path.split(".")[-1]
        return distinct(sd.runs[col]) if col in sd.runs else []
    out = []
    for cfg in sd.configs:
        v = cfg
        for key in path.split("."):
            v = v.get(key) if isinstance(v, dict) else None
        out.append(repr(v) if isinstance(v, dict | list) else v)
    return distinct(out)


# ---------------------------------------------------------------------------- models


def model_label(model, model_kw: dict | None = None) -> str:
    """The model as it was built: 'ResNet-8' (resnet20, depth 8), 'ResNet-11 (bottleneck, base
    width 8)', 'PreAct WRN-10-1', 'NF-ResNet (1 block per stack, base width 8)'; the published
    name when the overrides leave the model as its name says (and for a name the catalog lacks)."""
    try:
        family, kw = catalog.resolve_model(model, model_kw or {})
        _, as_named = catalog.resolve_model(model, {})
    except (ValueError, TypeError):
        return MODEL_NAMES.get(model, str(model))
    if kw == as_named and model in MODEL_NAMES:
        return MODEL_NAMES[model]
    pattern, qualifiers = FAMILY_NAMES[family]
    extra = list(qualifiers)
    if family == "nf_resnet":
        n = kw["blocks_per_stack"]
        extra.append(f"{n} block{'s' if n != 1 else ''} per stack")
    for key, text in (
        ("base_width", "base width {}"),
        ("dropout", "dropout {}"),
        ("alpha", "alpha {}"),
        ("zero_init_last", "zero-init last {}"),
        ("stem", "{} stem"),
    ):
        if key in kw and kw[key] != as_named.get(key):
            value = "CIFAR" if kw[key] == "cifar" else kw[key]
            extra.append(text.format(value))
    name = pattern.format(**kw)
    return f"{name} ({', '.join(extra)})" if extra else name


def model_names(sd: StudyData) -> dict[str, str]:
    """{model: its name as run} over the study's run configs ('ResNet-8'; several sizes of one
    model in a study: 'ResNet-8 / ResNet-14'); the published name without configs."""
    names: dict[str, list[str]] = {}
    for cfg in sd.configs:
        names.setdefault(cfg["model"], []).append(model_label(cfg["model"], cfg.get("model_kw")))
    out = {m: " / ".join(distinct(v)) for m, v in names.items()}
    for m in distinct(sd.runs["model"]) if "model" in sd.runs else []:
        out.setdefault(m, model_label(m))
    return out


def _published_aliases(model: str) -> list[str]:
    """How a title may write a published model: 'ResNet-164' for 'ResNet-164 (bottleneck)',
    'WRN-28-10' for 'PreAct WRN-28-10'."""
    name = MODEL_NAMES.get(model)
    if name is None:
        return []
    short = name.removesuffix(" (bottleneck)")
    if catalog.check_model(model) == "wrn":
        short = short.removeprefix("PreAct ")
    return distinct([name, short])


def title_as_run(title: str, sd: StudyData) -> str:
    """The study's title with each published model name it contains replaced by the model that
    ran ('Figure 1: ResNet-20 test error …' at smoke scale: 'Figure 1: ResNet-8 test error …')."""
    swap = {}
    for model, ran_as in model_names(sd).items():
        for alias in _published_aliases(model):
            if alias != ran_as and ran_as != MODEL_NAMES.get(model):
                swap[alias] = ran_as
    if not swap:
        return title
    # Longest first, so 'PreAct ResNet-164' is one match and not 'PreAct ' + 'ResNet-164'.
    alternatives = "|".join(re.escape(a) for a in sorted(swap, key=len, reverse=True))
    return re.sub(rf"(?<![\w-])(?:{alternatives})(?![\w-])", lambda m: swap[m[0]], title)


def groups_by_width(cfg: dict) -> dict[int, int]:
    """{channels: groups} of every norm layer width of a run (the config's `norm_groups` when
    normrepro.grid recorded it, else computed the same way from normrepro.catalog)."""
    if cfg.get("norm_groups"):
        return {int(c): int(g) for c, g in cfg["norm_groups"].items()}
    widths = catalog.norm_widths(cfg["model"], **(cfg.get("model_kw") or {}))
    return {w: catalog.resolve_groups(cfg["norm"], w, **(cfg.get("norm_kw") or {})) for w in widths}


def per_width_text(cfg: dict) -> str:
    """What a group setting is on each layer width: '1 / 2 / 4 channels per group on the
    16 / 32 / 64-channel layers (IN on the 16-channel layers)'; 'LN on every layer'."""
    try:
        g = groups_by_width(cfg)
    except (KeyError, ValueError):  # a cell rebuilt from a table, not a config the grid checked
        return ""
    if not g or any(v is None for v in g.values()):
        return ""
    widths = sorted(g)
    cpg = [w // g[w] for w in widths]
    if all(g[w] == 1 for w in widths):
        return "LN on every layer"
    if all(c == 1 for c in cpg):
        return "IN on every layer"
    text = (
        f"{' / '.join(map(str, cpg))} channels per group on the "
        f"{' / '.join(map(str, widths))}-channel layers"
    )
    inst = [w for w, c in zip(widths, cpg, strict=True) if c == 1]
    return text + (f" (IN on the {' / '.join(map(str, inst))}-channel layers)" if inst else "")


def cell_config(sd: StudyData, row) -> dict:
    """A planned config of the cell (for its model overrides); built from the row without one."""
    for cfg in sd.configs:
        kw = cfg.get("norm_kw") or {}
        if (
            cfg["model"] == row["model"]
            and cfg["norm"] == row["norm"]
            and cfg["batch_size"] == row["batch_size"]
            and _same(kw.get("groups"), row.get("groups"))
            and _same(kw.get("channels_per_group"), row.get("channels_per_group"))
        ):
            return cfg
    norm_kw = {k: int(row[k]) for k in ("groups", "channels_per_group") if not pd.isna(row.get(k))}
    return {"model": row["model"], "norm": row["norm"], "norm_kw": norm_kw, "model_kw": {}}


def _same(a, b) -> bool:
    return (a is None or pd.isna(a)) if (b is None or pd.isna(b)) else a == b


# ---------------------------------------------------------------------------- data


def data_name(data: dict) -> str:
    """The data as a reader should call it: the config's `label` ('CIFAR-10, JPEG re-encode
    (quality ~75), 10k pool'); for an unlabelled image folder its root; else the dataset."""
    if data.get("label"):
        return str(data["label"])
    if data.get("name") == "imagefolder":
        return f"image folder {data.get('root')}"
    return DATASET_NAMES.get(data.get("name"), str(data.get("name")))


def configured_train_images(data: dict) -> int | None:
    """Images a config trains on, as data.py draws them (the val split first, then
    `train_subset` from the rest): train_subset, else the pool less val_size; None where the
    pool is only known once loaded (an image folder)."""
    if data.get("train_subset"):
        return int(data["train_subset"])
    name = data.get("name")
    if name not in DATASET_NAMES:
        return None
    from normrepro.data import FULL_SIZES, SYNTHETIC_SIZES  # torch: only for this fallback

    pool = SYNTHETIC_SIZES[0] if name == "synthetic" else FULL_SIZES[name][0]
    return pool - int(data.get("val_size") or 0)


def _recorded(sd: StudyData, column: str) -> dict:
    """{run_id: the count metrics.json recorded} for runs that recorded one (n_train, ...)."""
    if column not in sd.runs:
        return {}
    values = pd.to_numeric(sd.runs[column], errors="coerce")
    return {r: int(v) for r, v in zip(sd.runs["run_id"], values, strict=True) if pd.notna(v)}


def train_images(sd: StudyData, cfg: dict) -> int | None:
    """Images run `cfg` trained on: what its metrics.json recorded (n_train), else its config."""
    recorded = _recorded(sd, "n_train").get(cfg.get("run_id"))
    return recorded if recorded is not None else configured_train_images(cfg.get("data") or {})


def dataset_names(sd: StudyData, with_count: bool = True) -> list[str]:
    """The data each run of the study loaded, named as in data_name, with the number of images
    it trained on: 'Fashion-MNIST (trained on 1,250 images)'."""
    if not sd.configs:  # a table rebuilt from a CSV: its dataset column and recorded counts
        names = [DATASET_NAMES.get(d, str(d)) for d in distinct(sd.runs["dataset"])] or ["—"]
        counts = sorted(set(_recorded(sd, "n_train").values()))
        if with_count and counts:
            names = [
                f"{n} (trained on {' / '.join(f'{c:,}' for c in counts)} images)" for n in names
            ]
        return names
    out = []
    for cfg in sd.configs:
        name = data_name(cfg.get("data") or {})
        n = train_images(sd, cfg) if with_count else None
        out.append(f"{name} (trained on {n:,} images)" if n else name)
    return distinct(out)


def ran(sd: StudyData, with_batch: bool = True) -> str:
    """What our numbers are, from the run configs: 'Fashion-MNIST (trained on 1,250 images),
    3 epochs, batch 8, 64'. Every caption of ours carries it."""
    epochs = config_values(sd, "epochs")
    parts = [" / ".join(dataset_names(sd)), join_numbers(epochs, " epochs" if epochs else "")]
    if with_batch:
        parts.append("batch " + join_numbers(config_values(sd, "batch_size")))
    return ", ".join(parts)


def comparable(sd: StudyData, dataset: str = "cifar10") -> str:
    """'' when our runs can be set beside a published number measured on `dataset` with the
    seed's recipe (scale full, that dataset as downloaded); otherwise why not: '… scale', 'ours
    ran on …' (an image folder, even of CIFAR-10's images, is named by its label or root)."""
    if sd.configs:
        datasets = distinct(cfg.get("data", {}).get("name") for cfg in sd.configs)
        names = distinct(data_name(cfg.get("data") or {}) for cfg in sd.configs)
    else:
        datasets = distinct(sd.runs["dataset"])
        names = [DATASET_NAMES.get(d, str(d)) for d in datasets]
    reasons = [f"{sd.scale} scale"] if sd.scale != "full" else []
    if datasets and set(datasets) != {dataset}:
        reasons.append(f"ours ran on {' / '.join(names)}")
    return ", ".join(reasons)


def train_images_choice(sd: StudyData, anchors: str) -> str:
    """The choices-note part that says how many images our runs trained on, beside what the
    published anchors trained on: 'training images 45,000 of CIFAR-10, 5,000 more held out
    for validation (data.val_size), whereas {anchors}'."""
    parts = []
    for cfg in sd.configs:
        data = cfg.get("data") or {}
        n = train_images(sd, cfg)
        held = int(data.get("val_size") or 0)
        more = f"{held:,} more held out for validation (data.val_size)" if held else "none held out"
        parts.append(f"{n:,} of {data_name(data)}, {more}" if n else "")
    shown = "; ".join(p for p in distinct(parts) if p)
    return f"training images {shown or 'known once a run finishes'}, whereas {anchors}"
