"""The resolved run config (RUN.json, written by src/grid.py): keys, types, checks, defaults.

`resolve_run_config(cfg)` raises ValueError naming the key, the value and what is allowed, and
returns the config with the few defaults below filled in (the keys params.yaml may leave out).
It loads no data and builds no model, so train.py calls it before touching RUN_DIR; the checks
that need the data (batch size vs. train set size) are in train.py, also before RUN_DIR.

`config_hash` (src/grid.py's) is the run's identity: the hash of the config as grid.py wrote it,
so defaults filled in here never change it.
"""

from __future__ import annotations

import math
from typing import Any

from normrepro import augment, catalog, data
from normrepro.grid import config_hash

# Expected type of every key; a tuple allows several, None allows null. float accepts ints.
TOP_KEYS: dict[str, Any] = {
    "study": str,  # study name in params.yaml
    "run_id": str,  # readable run name, e.g. resnet20-gn-g8-bs4-s0
    "model": str,  # catalog model name
    "model_kw": dict,  # build_model overrides (depth, width, dropout, ...)
    "norm": str,  # catalog norm name
    "norm_kw": dict,  # {"groups": G} or {"channels_per_group": C} or {}
    "batch_size": int,  # training images per step
    "eval_batch_size": int,  # images per evaluation forward pass
    "seed": int,  # model init, shuffling, augmentation (not the val split: data.split_seed)
    "lr": float,  # peak learning rate
    "epochs": int,
    "optim": dict,
    "augment": str,  # augment.AUGMENTATIONS
    "normalize": str,  # augment.NORMALIZATIONS
    "data": dict,  # checked and completed by data.check_data_config
    "runtime": dict,
}
OPTIONAL_TOP: dict[str, Any] = {
    "config_hash": str,
    "norm_groups": dict,  # {channels: groups} per norm width (catalog.norm_groups), for the record
}
OPTIM_KEYS: dict[str, Any] = {
    "momentum": float,
    "nesterov": bool,
    "weight_decay": float,
    "wd_on_norm": bool,  # false: params with ndim <= 1 (norm gains/biases, biases) get no decay
    "schedule": str,  # SCHEDULES, see optim.lr_at
}
OPTIM_OPTIONAL: dict[str, Any] = {
    "name": str,  # only "sgd"
    "milestones": list,  # schedule "step": epochs at which lr *= factor
    "factor": float,  # schedules "step" and "evenly"
    "n_drops": int,  # schedule "evenly": number of evenly spaced drops
    "warmup_epochs": int,  # linear warmup, per step
    "label_smoothing": float,  # training loss only; evaluation uses plain cross-entropy
    "agc": (dict, None),  # adaptive gradient clipping {"clip": lambda, "eps": 1e-3} or null
}
NEEDED_BY_SCHEDULE = {"step": ("milestones", "factor"), "evenly": ("n_drops", "factor")}
AGC_KEYS: dict[str, Any] = {"clip": float}  # max ||G|| / max(||W||, eps) per output unit
AGC_OPTIONAL: dict[str, Any] = {"eps": float}
RUNTIME_KEYS: dict[str, Any] = {
    "bf16": bool,  # CUDA: bf16 autocast of the forward pass
    "compile": bool,  # CUDA: torch.compile the model
    "channels_last": bool,  # CUDA: NHWC memory format
    "deterministic": bool,  # deterministic algorithms (cuDNN); CPU runs are deterministic anyway
}
RUNTIME_OPTIONAL: dict[str, Any] = {
    "threads": (int, None),  # CPU threads; null: $OMP_NUM_THREADS (Snakemake sets it) or all cores
    "log_every": int,  # also log the running loss every N steps (0: once per epoch only)
    "test_every": int,  # evaluate the test set every N epochs (0: only after the last epoch)
}
# Values of the optional keys when absent: the only defaults of a run config (data's: data.py).
DEFAULTS = {
    "optim": {"name": "sgd", "warmup_epochs": 0, "label_smoothing": 0.0, "agc": None},
    "agc": {"eps": 1e-3},
    "runtime": {"threads": None, "log_every": 0, "test_every": 1},
}
SCHEDULES = ("step", "evenly", "cosine", "constant")


def _type_name(t: Any) -> str:
    return "null" if t is None else {float: "number", int: "integer"}.get(t, t.__name__)


def _is_type(value: Any, expected: Any) -> bool:
    if isinstance(expected, tuple):
        return any(_is_type(value, e) for e in expected)
    if expected is None:
        return value is None
    if isinstance(value, bool):  # bool is an int subclass: never accept it as a number
        return expected is bool
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def _check_keys(section: Any, where: str, required: dict, optional: dict) -> None:
    """Every required key present, no unknown key, each value of its expected type."""
    if not isinstance(section, dict):
        raise ValueError(f"config key {where!r} = {section!r} must be an object")
    prefix = f"{where}." if where else ""
    known = {**required, **optional}
    missing = [prefix + k for k in required if k not in section]
    if missing:
        raise ValueError(f"config is missing key(s) {', '.join(missing)}")
    unknown = [k for k in section if k not in known]
    if unknown:
        raise ValueError(
            f"unknown config key {prefix + unknown[0]!r}; allowed: {', '.join(sorted(known))}"
        )
    for key, value in section.items():
        if not _is_type(value, known[key]):
            types = known[key] if isinstance(known[key], tuple) else (known[key],)
            wanted = " or ".join(_type_name(t) for t in types)
            raise ValueError(f"config key {prefix + key!r} = {value!r} must be of type {wanted}")
        if isinstance(value, float):
            _check(math.isfinite(value), prefix + key, value, "a finite number")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config key {key!r} = {value!r} is not allowed; allowed: {allowed}")


def _one_of(cfg: dict, key: str, allowed: tuple) -> None:
    _check(cfg[key] in allowed, key, cfg[key], ", ".join(allowed))


def resolve_run_config(cfg: dict) -> dict:
    """Validate a run config and return a copy with every default filled in (see module doc)."""
    _check_keys(cfg, "", TOP_KEYS, OPTIONAL_TOP)
    for key in ("batch_size", "eval_batch_size", "epochs"):
        _check(cfg[key] >= 1, key, cfg[key], "an integer >= 1")
    _check(cfg["seed"] >= 0, "seed", cfg["seed"], "an integer >= 0")
    _check(cfg["lr"] >= 0, "lr", cfg["lr"], "a number >= 0")
    # catalog and data raise ValueError naming the value and what is allowed
    catalog.check_model(cfg["model"])
    catalog.check_norm(cfg["norm"])
    norms = tuple(catalog.allowed_norms(cfg["model"]))
    _check(cfg["norm"] in norms, "norm", cfg["norm"], f"with {cfg['model']}: {', '.join(norms)}")
    try:
        catalog.check_groups(cfg["model"], cfg["norm"], cfg["model_kw"], cfg["norm_kw"])
    except TypeError as err:  # an unknown model_kw / norm_kw key
        raise ValueError(str(err)) from None
    _one_of(cfg, "augment", augment.AUGMENTATIONS)
    _one_of(cfg, "normalize", augment.NORMALIZATIONS)
    resolved = {**cfg, "data": data.check_data_config(cfg["data"])}
    resolved["optim"] = _resolve_optim(cfg["optim"], cfg["epochs"])
    _check_keys(cfg["runtime"], "runtime", RUNTIME_KEYS, RUNTIME_OPTIONAL)
    runtime = resolved["runtime"] = {**DEFAULTS["runtime"], **cfg["runtime"]}
    threads = runtime["threads"]
    _check(threads is None or threads >= 1, "runtime.threads", threads, "null or an integer >= 1")
    _check(runtime["log_every"] >= 0, "runtime.log_every", runtime["log_every"], "an integer >= 0")
    every = runtime["test_every"]
    _check(every >= 0, "runtime.test_every", every, "an integer >= 0 (epochs; 0 = after the last)")
    expected = config_hash(cfg)
    if cfg.get("config_hash", expected) != expected:
        raise ValueError(
            f"config key 'config_hash' = {cfg['config_hash']!r} does not match the config's "
            f"content (hash {expected!r}): the file was edited after src/grid.py wrote it"
        )
    resolved["config_hash"] = expected
    return resolved


def validate_run_config(cfg: dict) -> None:
    """Raise ValueError naming the key, the value and what is allowed; None if `cfg` is valid."""
    resolve_run_config(cfg)


def _resolve_optim(opt: dict, epochs: int) -> dict:
    _check_keys(opt, "optim", OPTIM_KEYS, OPTIM_OPTIONAL)
    opt = {**DEFAULTS["optim"], **opt}
    _check(opt["name"] == "sgd", "optim.name", opt["name"], "sgd")
    _check(0 <= opt["momentum"] < 1, "optim.momentum", opt["momentum"], "a number in [0, 1)")
    if opt["nesterov"]:
        _check(opt["momentum"] > 0, "optim.nesterov", True, "only with optim.momentum > 0")
    _check(opt["weight_decay"] >= 0, "optim.weight_decay", opt["weight_decay"], "a number >= 0")
    schedule = opt["schedule"]
    _check(schedule in SCHEDULES, "optim.schedule", schedule, ", ".join(SCHEDULES))
    for key in NEEDED_BY_SCHEDULE.get(schedule, ()):
        if key not in opt:
            raise ValueError(f"config is missing key optim.{key} (schedule {schedule!r} uses it)")
    if "factor" in opt:
        _check(0 < opt["factor"] <= 1, "optim.factor", opt["factor"], "a number in (0, 1]")
    if "milestones" in opt:
        ok = all(_is_type(m, int) and m >= 1 for m in opt["milestones"])
        _check(ok, "optim.milestones", opt["milestones"], "a list of epochs (integers >= 1)")
    if "n_drops" in opt:
        _check(opt["n_drops"] >= 0, "optim.n_drops", opt["n_drops"], "an integer >= 0")
    warmup = opt["warmup_epochs"]
    _check(0 <= warmup < epochs, "optim.warmup_epochs", warmup, f"an integer in [0, {epochs})")
    smooth = opt["label_smoothing"]
    _check(0 <= smooth < 1, "optim.label_smoothing", smooth, "a number in [0, 1)")
    if opt["agc"] is not None:
        _check_keys(opt["agc"], "optim.agc", AGC_KEYS, AGC_OPTIONAL)
        opt["agc"] = {**DEFAULTS["agc"], **opt["agc"]}
        for key, value in opt["agc"].items():
            _check(value > 0, f"optim.agc.{key}", value, "a number > 0")
    return opt
