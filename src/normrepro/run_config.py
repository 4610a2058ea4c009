"""The resolved run config (RUN.json, written by src/normrepro/grid.py): checked before any file
of the run is touched, and completed with the schema's defaults.

`resolve_run_config(cfg)` raises ValueError naming the key, the value and what is allowed, and
returns a copy with every default filled in (`$defs/run_config` of
workflow/schemas/params.schema.yaml: the one schema, whose defaults are the only defaults). It
loads no data and builds no model, so train.py calls it before touching RUN_DIR; what needs the
data (the batch size against the training set, the split sizes) is checked where the data is
loaded (data.check_data_config, train.py), and at Snakemake parse time by preflight.py.

The run's identity is `config.config_hash` of the config as the grid wrote it, so the defaults
filled in here never change it.
"""

from __future__ import annotations

from normrepro import catalog, config

# Keys each learning-rate schedule reads (optim.lr_at).
NEEDED_BY_SCHEDULE = {"step": ("milestones", "factor"), "evenly": ("n_drops", "factor")}


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config key {key!r} = {value!r} is not allowed; allowed: {allowed}")


def resolve_run_config(cfg: dict) -> dict:
    """Validate a run config and return a copy with every default filled in (see module doc)."""
    errors = config.schema_errors(cfg, "run_config")
    if errors:
        raise ValueError("config: " + "; ".join(errors))
    catalog.check_model(cfg["model"])  # these raise ValueError naming the value and the allowed
    catalog.check_norm(cfg["norm"])
    norms = tuple(catalog.allowed_norms(cfg["model"]))
    _check(cfg["norm"] in norms, "norm", cfg["norm"], f"with {cfg['model']}: {', '.join(norms)}")
    try:
        catalog.check_groups(cfg["model"], cfg["norm"], cfg["model_kw"], cfg["norm_kw"])
    except TypeError as err:  # an unknown model_kw / norm_kw key
        raise ValueError(str(err)) from None
    resolved = config.fill_defaults(cfg, "run_config")
    _check_optim(resolved["optim"], resolved["epochs"])
    expected = config.config_hash(cfg)
    if cfg.get("config_hash", expected) != expected:
        raise ValueError(
            f"config key 'config_hash' = {cfg['config_hash']!r} does not match the config's "
            f"content (hash {expected!r}): the file was edited after the grid wrote it"
        )
    resolved["config_hash"] = expected
    return resolved


def _check_optim(opt: dict, epochs: int) -> None:
    """What one key's schema cannot say: keys a schedule needs, and keys that depend on others."""
    for key in NEEDED_BY_SCHEDULE.get(opt["schedule"], ()):
        if key not in opt:
            raise ValueError(
                f"config is missing key optim.{key} (schedule {opt['schedule']!r} uses it)"
            )
    if opt["nesterov"]:
        _check(opt["momentum"] > 0, "optim.nesterov", True, "only with optim.momentum > 0")
    warmup = opt["warmup_epochs"]
    _check(warmup < epochs, "optim.warmup_epochs", warmup, f"an integer in [0, {epochs})")
