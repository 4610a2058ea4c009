"""Expand params.yaml into one resolved config per run: the only code that knows the grid.

Snakemake calls this at parse time (so it must stay fast: no torch import), and aggregation
uses the same run list, so a stale run folder never leaks into a table.

    params.yaml --load_params--> effective params (validated, scale preset applied)
                --expand_runs--> [run config, ...]   (the RUN.json contract of src/train.py)
                --sync_run_configs--> results/configs/<study>/<run_id>.json (written only on change)
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

import yaml

from normrepro import catalog
from normrepro.io_utils import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "params.schema.yaml"
STUDY_KINDS = (
    "table2",
    "batch_sweep",
    "group_sweep",
    "norm_compare",
    "nf_grid",
    "nf_final",
    "pets",
    "generic",
)
# Keys a study may set to override its recipe, and the run-config key each one lands in.
RECIPE_KEYS = ("epochs", "lr", "augment", "normalize", "optim")


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the key, the value and what is allowed."""


# ---------------------------------------------------------------- loading and validation


def parse_overrides(items: list[str] | None) -> dict:
    """`["scale=smoke", "data.val_size=0"]` -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ParamsError(f"--config: got {item!r}; expected KEY=VALUE (e.g. scale=smoke)")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def deep_merge(base: dict, top: dict) -> dict:
    """A new dict: `top` over `base`, recursing into dicts (lists are replaced, not merged)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_path(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _schema_errors(params: dict) -> list[str]:
    import jsonschema  # imported here: only needed when validating

    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    messages = []
    for err in sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path)):
        where = _format_path(err.absolute_path)
        if err.validator == "additionalProperties":
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            for key in extra:
                key_path = f"{where}.{key}" if err.absolute_path else key
                messages.append(f"{key_path}: unknown key; allowed: {allowed}")
        elif err.validator == "enum":
            allowed = ", ".join(map(str, err.validator_value))
            messages.append(f"{where}: got {err.instance!r}; allowed: {allowed}")
        elif err.validator == "required":
            messages.append(f"{where}: {err.message}")
        else:
            rule = err.schema.get("description") or f"{err.validator} {err.validator_value!r}"
            messages.append(f"{where}: got {err.instance!r}; allowed: {rule}")
    return messages


def validate_params(params: dict) -> None:
    """Structure from the JSON schema, then names, groups and grid sizes (needs the catalog)."""
    messages = _schema_errors(params)
    if messages:
        raise ParamsError("params.yaml is invalid:\n  " + "\n  ".join(messages))
    for name, study in params["studies"].items():
        if study["recipe"] not in params["recipes"]:
            raise ParamsError(
                f"studies.{name}.recipe: got {study['recipe']!r}; "
                f"allowed: {', '.join(params['recipes'])}"
            )
    for preset in PRESET_SCALES:
        trims = params.get(preset, {}).get("studies", {})
        for name in trims:
            if name not in params["studies"]:
                raise ParamsError(
                    f"{preset}.studies.{name}: unknown study; "
                    f"allowed: {', '.join(params['studies'])}"
                )
        # The trims replace study keys, so the merged studies must be valid studies too.
        merged = {n: deep_merge(s, trims.get(n, {})) for n, s in params["studies"].items()}
        messages = _schema_errors({**params, "studies": merged})
        if messages:
            raise ParamsError(
                f"params.yaml is invalid (with {preset}.studies trims):\n  " + "\n  ".join(messages)
            )


def load_params(path: str | Path = REPO / "params.yaml", overrides: dict | None = None) -> dict:
    """Read, override, validate, and apply the scale preset: the effective parameters."""
    path = Path(path)
    try:
        text = path.read_text()
        # JSON (Snakemake's effective params) by its own parser: YAML 1.1 reads 5e-05 as a string
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file (run from the repository root)") from None
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ParamsError(f"{path}: not valid YAML or JSON: {err}") from None
    return resolve_params(deep_merge(raw or {}, overrides or {}))


def plan(raw: dict) -> tuple[dict, dict[str, list[dict]]]:
    """Validate raw params (params.yaml merged with overrides) and expand every enabled study,
    once: a bad name, groups that do not divide, an empty grid or repeated run ids are reported
    before any job starts. Returns (effective params, study name -> run configs)."""
    validate_params(raw)
    params = copy.deepcopy(raw)
    return params, {name: study_runs(params, name) for name in studies(params)}


def resolve_params(params: dict) -> dict:
    """The validated params alone (see `plan`)."""
    return plan(params)[0]


# ---------------------------------------------------------------- expansion


# Scales other than `full` are presets: a section of params.yaml named like the scale (smoke,
# laptop) applied on top of the recipes and studies. `full` is the seeds' recipes as written.
PRESET_SCALES = ("smoke", "laptop")


def _preset(params: dict) -> dict:
    scale = params.get("scale")
    return params.get(scale, {}) if scale in PRESET_SCALES else {}


def effective_study(params: dict, name: str) -> dict:
    """The study's own keys with the scale preset's per-study trims on top (smoke, laptop)."""
    study = params["studies"][name]
    return deep_merge(study, _preset(params).get("studies", {}).get(name, {}))


def studies(params: dict, include_disabled: bool = False) -> dict[str, dict]:
    """Study name -> display meta, in params.yaml order."""
    out = {}
    for name in params["studies"]:
        s = effective_study(params, name)
        if not s.get("enabled", True) and not include_disabled:
            continue
        axes = ["model", "norm", "groups", "channels_per_group", "batch_size", "lr"]
        out[name] = {
            "title": s.get("title", name),
            "seed_doc": s.get("seed_doc"),
            "kind": s.get("kind", "generic"),
            "axes": axes,
            "compare": "norm",
            "enabled": s.get("enabled", True),
        }
    return out


def _scaled_milestones(milestones: list[int], epochs: int, recipe_epochs: int) -> list[int]:
    """Milestones are written for the recipe's length; a shorter run keeps their positions."""
    if epochs == recipe_epochs:
        return list(milestones)
    return sorted({max(1, round(m * epochs / recipe_epochs)) for m in milestones})


def _variants(name: str, study: dict) -> list[dict]:
    if "variants" in study:
        return [
            {
                "model": v["model"],
                "norm": v["norm"],
                "norm_kw": v.get("norm_kw", {}),
                "model_kw": v.get("model_kw", {}),
            }
            for v in study["variants"]
        ]
    if "models" not in study or "norms" not in study:
        raise ParamsError(f"studies.{name}: needs `variants`, or both `models` and `norms`")
    return [
        {"model": m, "norm": n, "norm_kw": {}, "model_kw": {}}
        for m, n in itertools.product(study["models"], study["norms"])
    ]


def run_id(cfg: dict, with_lr: bool) -> str:
    """A name a person can read: resnet20-gn-g8-bs4-s0, nf_resnet-none-lr0.01-bs64-s1."""
    parts = [cfg["model"], cfg["norm"]]
    if "groups" in cfg["norm_kw"]:
        parts.append(f"g{cfg['norm_kw']['groups']}")
    if "channels_per_group" in cfg["norm_kw"]:
        parts.append(f"cpg{cfg['norm_kw']['channels_per_group']}")
    if with_lr:
        parts.append(f"lr{cfg['lr']:g}")
    parts += [f"bs{cfg['batch_size']}", f"s{cfg['seed']}"]
    return "-".join(parts)


def config_hash(cfg: dict) -> str:
    """sha256 of the canonical JSON of a run config (without its own hash field)."""
    body = {k: v for k, v in cfg.items() if k != "config_hash"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_names(name: str, variant: dict, extra_norm_kw: dict) -> None:
    where = f"studies.{name}"
    try:
        catalog.check_model(variant["model"])
        catalog.check_norm(variant["norm"])
        allowed = catalog.allowed_norms(variant["model"])
        if variant["norm"] not in allowed:
            raise ValueError(
                f"norm {variant['norm']!r} does not apply to model {variant['model']!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        catalog.check_groups(variant["model"], variant["norm"], variant["model_kw"], extra_norm_kw)
    except (ValueError, TypeError) as err:
        raise ParamsError(f"{where}: {err}") from None


def study_runs(params: dict, name: str) -> list[dict]:
    """Every resolved run config of one study, in grid order (seed varies fastest)."""
    study = effective_study(params, name)
    smoke = _preset(params)  # {} at full scale
    recipe = params["recipes"][study["recipe"]]
    epochs = study.get("epochs", smoke.get("epochs", recipe["epochs"]))
    if "epochs" in smoke.get("studies", {}).get(name, {}):
        epochs = smoke["studies"][name]["epochs"]
    optim = deep_merge(deep_merge(recipe["optim"], study.get("optim", {})), smoke.get("optim", {}))
    if optim.get("milestones"):
        optim["milestones"] = _scaled_milestones(optim["milestones"], epochs, recipe["epochs"])
    data = deep_merge(deep_merge(params["data"], study.get("data", {})), smoke.get("data", {}))
    runtime = deep_merge(params.get("runtime", {}), smoke.get("runtime", {}))
    eval_batch_size = runtime.pop("eval_batch_size", 1000)
    runtime.pop("pack", None)  # how runs are grouped into jobs (plan_packs), not a run's identity
    n_seeds = min(study["n_seeds"], smoke.get("n_seeds", study["n_seeds"]))
    base_lr = study.get("lr", recipe["lr"])
    lrs = study.get("lrs", [base_lr])
    scaling = study.get("lr_scaling")
    norm_kws = study.get("norm_kw", [{}])
    variants = _variants(name, study)

    runs = []
    for variant, extra_kw in itertools.product(variants, norm_kws):
        _check_names(name, variant, {**variant["norm_kw"], **extra_kw})
    for variant, extra_kw, batch_size, lr, seed in itertools.product(
        variants, norm_kws, study["batch_sizes"], lrs, range(n_seeds)
    ):
        norm_kw = {**variant["norm_kw"], **extra_kw}
        model_kw = {**smoke.get("model_kw", {}).get(variant["model"], {}), **variant["model_kw"]}
        if scaling:
            lr = lr * batch_size / scaling["base_batch"]
        cfg = {
            "study": name,
            "run_id": "",
            "model": variant["model"],
            "model_kw": model_kw,
            "norm": variant["norm"],
            "norm_kw": norm_kw,
            "norm_groups": catalog.norm_groups(
                variant["model"], variant["norm"], model_kw, norm_kw
            ),
            "batch_size": batch_size,
            "seed": seed,
            "lr": lr,
            "epochs": epochs,
            "eval_batch_size": eval_batch_size,
            "optim": optim,
            "augment": study.get("augment", recipe["augment"]),
            "normalize": study.get("normalize", recipe["normalize"]),
            "data": data,
            "runtime": runtime,
        }
        cfg["run_id"] = run_id(cfg, with_lr="lrs" in study)
        cfg["config_hash"] = config_hash(cfg)
        runs.append(copy.deepcopy(cfg))

    if not runs:
        raise ParamsError(f"studies.{name}: the grid is empty (an axis has no values)")
    ids = [r["run_id"] for r in runs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ParamsError(
            f"studies.{name}: run ids repeat ({', '.join(dupes[:3])}): two variants differ only "
            "in model_kw; split them into two studies"
        )
    return runs


def expand_runs(params: dict) -> list[dict]:
    """Every run of every enabled study."""
    return [run for name in studies(params) for run in study_runs(params, name)]


# ---------------------------------------------------------------- files on disk


def run_dir(results_root: str | Path, cfg: dict) -> Path:
    return Path(results_root) / "runs" / cfg["study"] / cfg["run_id"]


def config_path(results_root: str | Path, cfg: dict) -> Path:
    return Path(results_root) / "configs" / cfg["study"] / f"{cfg['run_id']}.json"


FINISHED = ("ok", "diverged")  # metrics.json statuses that mean "nothing left to do"


def finished_hash(metrics_path: Path) -> str | None:
    """config_hash of a run that finished (ok or diverged); None if not finished or unreadable.
    The one rule for "done": the planner (sync_run_configs) and src/train.py both use it."""
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or metrics.get("status") not in FINISHED:
        return None
    return metrics.get("config_hash")


def sync_run_configs(runs: list[dict], results_root: str | Path = "results") -> list[Path]:
    """Write each run's config only when its content changed, then make Snakemake's mtime rule
    agree with the content: a run whose metrics.json finished under this config hash is done
    (config made no newer than its metrics), any other existing metrics.json is out of date
    (config made newer), and a run without one is to run (config made newer than anything).
    Correct in a fresh clone or DVC workspace with no .snakemake/ metadata. Snakemake must decide
    by times alone (profile: rerun-triggers mtime, max-checksum-file-size 0).
    Returns the config paths, in run order."""
    paths = []
    for cfg in runs:
        path = config_path(results_root, cfg)
        text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
        try:
            unchanged = path.read_text() == text
        except (OSError, ValueError):  # absent, or not text (a damaged file): rewrite it
            unchanged = False
        if not unchanged:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        metrics = run_dir(results_root, cfg) / "metrics.json"
        if metrics.exists():
            m_time = metrics.stat().st_mtime
            c_time = path.stat().st_mtime
            if finished_hash(metrics) == cfg["config_hash"]:
                if c_time > m_time:
                    os.utime(path, (m_time - 1, m_time - 1))
            elif c_time <= m_time:
                os.utime(path, (m_time + 1, m_time + 1))
        else:
            # Not run, cut off, or its metrics.json deleted by hand: Snakemake 9 reruns a job
            # whose output is missing only if a job downstream must run, so make the config newer
            # than the study's summaries (this run's train job is then out of date by its input).
            os.utime(path)
        paths.append(path)
    return paths


def write_effective_params(config: dict, path: str | Path) -> None:
    """The params a Snakemake invocation plans with (its merged `config`) as JSON, for the
    aggregate and report jobs; rewritten only when its content changes."""
    path = Path(path)
    text = json.dumps(config, indent=1, sort_keys=True, default=str) + "\n"
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU, without importing torch (parse time)."""
    import shutil

    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


# ---------------------------------------------------------------- packs (runtime.pack)

# What the runs of one cell differ in: a cell's runs can be trained together as one fused
# model (src/packing.py, src/train.py), each exactly the run it would be alone.
PER_RUN_KEYS = ("seed", "run_id", "config_hash")
# runtime.pack: auto packs a cell's runs only where benchmarks/pack_throughput.py measured
# packing faster on that device type: batch sizes up to max_batch, at most `size` runs a pack.
# CPU (2 cores, fp32, ResNet-20 BN/GN): 1.8-2.0x at batch 2, 1.2-1.4x at batch 8, < 1x from 32.
# CUDA: not measured yet, so auto does not pack there (an integer runtime.pack does).
AUTO_PACK = {"cpu": {"max_batch": 8, "size": 5}, "cuda": {"max_batch": 0, "size": 1}}


def cell_difference(a: dict, b: dict) -> str | None:
    """The first key (sorted) in which run configs a and b differ beyond PER_RUN_KEYS; None
    when they are runs of one cell."""
    for key in sorted(set(a) | set(b)):
        if key not in PER_RUN_KEYS and a.get(key) != b.get(key):
            return key
    return None


def cell_key(cfg: dict) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k not in PER_RUN_KEYS}, sort_keys=True)


def pack_setting(params: dict):
    """runtime.pack of the effective params (the scale preset's runtime on top): off by default."""
    runtime = deep_merge(params.get("runtime", {}), _preset(params).get("runtime", {}))
    return runtime.get("pack", "off")


def pack_size(setting, batch_size: int, device_type: str) -> int:
    """Runs per pack: runtime.pack `off` (or false) -> 1, an integer K -> K, `auto` -> AUTO_PACK."""
    if setting == "auto":
        policy = AUTO_PACK[device_type]
        return policy["size"] if batch_size <= policy["max_batch"] else 1
    if setting in ("off", False, None):
        return 1
    return int(setting)


def plan_packs(runs: list[dict], results_root: str | Path, setting, device_type: str):
    """The unfinished runs (finished_hash is not theirs) grouped into packs: runs of one cell,
    in grid order (seeds ascending), in chunks of pack_size. Finished runs are in no pack, so
    adding a seed packs only the new runs. A pack that finishes leaves the other packs of its
    cell as they were (only the last chunk is short), so a job re-planned later (a cluster job
    parses the workflow again) finds its pack unchanged."""
    cells: dict[str, list[dict]] = {}  # insertion order: grid order
    for cfg in runs:
        if finished_hash(run_dir(results_root, cfg) / "metrics.json") != cfg["config_hash"]:
            cells.setdefault(cell_key(cfg), []).append(cfg)
    packs = []
    for members in cells.values():
        k = pack_size(setting, members[0]["batch_size"], device_type)
        packs += [members[i : i + k] for i in range(0, len(members), k)]
    return packs


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="List the runs params.yaml expands to.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--config", nargs="*", default=[], help="overrides, e.g. scale=smoke")
    ap.add_argument("--study", help="only this study")
    ap.add_argument("--count", action="store_true", help="print counts per study")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params, parse_overrides(args.config))
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = [args.study] if args.study else list(studies(params))
    for name in names:
        runs = study_runs(params, name)
        if args.count:
            print(f"{name}\t{len(runs)}")
        else:
            for r in runs:
                print(f"{name}/{r['run_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
