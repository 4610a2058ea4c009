"""The configuration: params.yaml read, checked once, completed with its defaults, the scale
preset applied once. Everything else reads the result and never knows a preset exists.

    raw (params.yaml + Snakemake's --configfile overlays + --config values, merged)
      --check_params-->  validated: one pass of workflow/schemas/params.schema.yaml, then the
                         names the schema cannot know (recipes, study kinds, preset trims);
                         the schema's defaults filled in (they are the only defaults)
      --apply_preset-->  effective: the section named like the scale (smoke:, laptop:) folded
                         into data, runtime, claims and every study

`load_params` does all of it; `config_hash` is a run config's identity. No torch here: Snakemake
imports this at parse time. Every rejection names the key, the value given and what is allowed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

import yaml

from normrepro import studies as study_kinds
from normrepro import yaml_traps

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "params.schema.yaml"
# Scales other than `full` are presets: a section of params.yaml named like the scale, applied
# on top of the rest. `full` is the seeds' recipes as written.
PRESET_SCALES = ("smoke", "laptop")


class ParamsError(ValueError):
    """params.yaml (or a run config) is invalid; the message names the key, the value and what
    is allowed."""


# libyaml's parser where PyYAML has it: the same YAML, read about 6x faster (parse time counts)
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def schema() -> dict:
    return yaml.load(SCHEMA.read_text(), Loader=YAML_LOADER)


# ---------------------------------------------------------------------------- reading


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


def merge_data(*layers: dict) -> dict:
    """The `data` sections merged, later layers winning; a `label` names the data of its own
    layer, so a later layer that changes `name` or `root` without a label of its own drops it
    (a study on other images must never be printed as the data above it)."""
    merged: dict = {}
    for layer in layers:
        if {"name", "root"} & set(layer) and "label" not in layer:
            merged.pop("label", None)
        merged = deep_merge(merged, layer)
    return merged


def read_params(path: str | Path) -> dict:
    """params.yaml (YAML) or a grid's recorded params (JSON: YAML 1.1 would read 5e-05 back as
    a string)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file (run from the repository root)") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.load(text, YAML_LOADER)
    except json.JSONDecodeError as err:
        raise ParamsError(f"{path}: not valid JSON: {err}") from None
    except yaml.YAMLError:  # the message of PyYAML's own parser, as Snakemake reads the file
        raise ParamsError(yaml_traps.check_syntax(path) or f"{path}: not valid YAML") from None
    return raw or {}


def load_params(path: str | Path = REPO / "params.yaml", overrides: dict | None = None) -> dict:
    """The effective params of params.yaml with `overrides` on top: checked, defaults filled,
    the scale preset applied."""
    return apply_preset(check_params(deep_merge(read_params(path), overrides or {})))


# ---------------------------------------------------------------------------- checking


def _format_path(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _message(err) -> list[str]:
    where = _format_path(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        return [
            f"{where + '.' if err.absolute_path else ''}{key}: unknown key; allowed: {allowed}"
            for key in extra
        ]
    if err.validator == "required":
        missing = err.message.split("'")[1]
        key = f"{where}.{missing}" if err.absolute_path else missing
        return [f"{key}: missing; allowed: any value this key takes (it has no default)"]
    if err.validator == "enum":
        allowed = ", ".join(map(str, err.validator_value))
    else:
        allowed = err.schema.get("description") or f"{err.validator} {err.validator_value!r}"
    hint = yaml_traps.explain(where, err.instance, err.schema)
    return [f"{where}: got {err.instance!r}; allowed: {allowed}" + (f" ({hint})" if hint else "")]


def schema_errors(instance, definition: str | None = None) -> list[str]:
    """Every violation of the schema (or of one of its $defs), one message each, key order."""
    import jsonschema  # imported here: only needed when checking

    root = schema()
    node = root if definition is None else {"$defs": root["$defs"], "$ref": f"#/$defs/{definition}"}
    validator = jsonschema.Draft202012Validator(node)
    messages = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        messages += _message(err)
    return messages


def check_params(raw: dict) -> dict:
    """The validated params (a copy, the schema's defaults filled in), or ParamsError listing
    every problem. Strings that --config or YAML left where a number or a boolean belongs are
    read as what they spell first (yaml_traps.coerce_strings)."""
    params = yaml_traps.coerce_strings(raw, schema())
    messages = schema_errors(params)
    if not messages:
        messages = _name_errors(params)
    if messages:
        raise ParamsError("params.yaml is invalid:\n  " + "\n  ".join(messages))
    return fill_defaults(params)


def _name_errors(params: dict) -> list[str]:
    """What the schema cannot know: recipes and studies named elsewhere, study kinds."""
    messages = []
    kinds = study_kinds.kind_names()
    for name, study in params["studies"].items():
        if study["recipe"] not in params["recipes"]:
            allowed = ", ".join(params["recipes"])
            messages.append(f"studies.{name}.recipe: got {study['recipe']!r}; allowed: {allowed}")
    for preset in PRESET_SCALES:
        for name in params.get(preset, {}).get("studies", {}):
            if name not in params["studies"]:
                allowed = ", ".join(params["studies"])
                messages.append(f"{preset}.studies.{name}: unknown study; allowed: {allowed}")
    for where, study in _studies_and_trims(params):
        if "kind" in study and study["kind"] not in kinds:
            messages.append(f"{where}.kind: got {study['kind']!r}; allowed: {', '.join(kinds)}")
    return messages


def _studies_and_trims(params: dict):
    for name, study in params["studies"].items():
        yield f"studies.{name}", study
    for preset in PRESET_SCALES:
        for name, trim in params.get(preset, {}).get("studies", {}).items():
            yield f"{preset}.studies.{name}", trim


def _resolve(node: dict) -> dict:
    ref = node.get("$ref")
    return _resolve(schema()["$defs"][ref.rsplit("/", 1)[1]]) if ref else node


def _defaults_of(node: dict) -> dict:
    """{key: default} of an object schema, through $ref and allOf."""
    node = _resolve(node)
    out = {}
    for part in node.get("allOf", []):
        out.update(_defaults_of(part))
    for key, prop in node.get("properties", {}).items():
        if "default" in prop:
            out[key] = prop["default"]
    return out


def _children(node: dict, key):
    """The schemas an object's value at `key` (or a list's item) is checked against."""
    node = _resolve(node)
    found = [c for part in node.get("allOf", []) for c in _children(part, key)]
    if isinstance(key, int):
        return found + ([node["items"]] if isinstance(node.get("items"), dict) else [])
    props = node.get("properties", {})
    if key in props:
        return [*found, props[key]]
    extra = node.get("additionalProperties")
    return found + ([extra] if isinstance(extra, dict) else [])


def fill_defaults(instance, definition: str | None = None):
    """A copy of `instance` with every absent key that has a `default` in the schema (or in
    `$defs/<definition>`) set to it, at every depth."""
    node = schema() if definition is None else {"$ref": f"#/$defs/{definition}"}
    return _fill(copy.deepcopy(instance), node)


def _fill(instance, node: dict):
    if isinstance(instance, dict):
        for key, value in _defaults_of(node).items():
            instance.setdefault(key, copy.deepcopy(value))
        for key, value in instance.items():
            for child in _children(node, key):
                _fill(value, child)
    elif isinstance(instance, list):
        for i, value in enumerate(instance):
            for child in _children(node, i):
                _fill(value, child)
    return instance


def defaults(definition: str) -> dict:
    """{key: default} of one $defs entry (e.g. `data_complete`), for code that completes a
    section itself (data.check_data_config)."""
    return copy.deepcopy(_defaults_of({"$ref": f"#/$defs/{definition}"}))


# ---------------------------------------------------------------------------- the preset


def preset_of(params: dict) -> dict:
    """The section named like the scale (smoke:, laptop:); {} at full scale."""
    scale = params.get("scale")
    return params.get(scale, {}) if scale in PRESET_SCALES else {}


def apply_preset(params: dict) -> dict:
    """The effective params: the scale's preset folded in, once. Each value is taken from the
    most specific place that sets it: a study's own keys, under the preset's keys for every
    study (`epochs`, `optim`, `model_kw`, `data`; `n_seeds` only caps the study's), under the
    preset's trim of that study (`<scale>.studies.<name>`, which wins). The preset's `data`,
    `runtime` and `claims` go on top of the top-level sections. The preset section itself stays,
    as a record of what it changed (the report's header lists it). Applying it twice changes
    nothing."""
    preset = preset_of(params)
    out = copy.deepcopy(params)
    if not preset:
        return out
    out["data"] = merge_data(out["data"], preset.get("data", {}))
    out["runtime"] = deep_merge(out["runtime"], preset.get("runtime", {}))
    if "claims" in preset:
        out["claims"] = deep_merge(out.get("claims", {}), preset["claims"])
    for name, study in params["studies"].items():
        trim = preset.get("studies", {}).get(name, {})
        s = copy.deepcopy(study)
        if "epochs" in preset:
            s["epochs"] = preset["epochs"]
        if "n_seeds" in preset:
            s["n_seeds"] = min(s["n_seeds"], preset["n_seeds"])
        for key in ("optim", "model_kw"):
            if key in preset:
                s[key] = deep_merge(s.get(key, {}), preset[key])
        s = deep_merge(s, {k: v for k, v in trim.items() if k != "data"})
        if "data" in study or "data" in trim:
            layers = (study.get("data", {}), preset.get("data", {}), trim.get("data", {}))
            s["data"] = merge_data(*layers)
        out["studies"][name] = s
    return out


# ---------------------------------------------------------------------------- a run's identity


def config_hash(cfg: dict) -> str:
    """sha256 of the canonical JSON of a run config (without its own hash field, and without
    `data.label`: a name for the reader, which changes no image, so relabelling keeps runs)."""
    body = {k: v for k, v in cfg.items() if k != "config_hash"}
    if isinstance(body.get("data"), dict) and "label" in body["data"]:
        body["data"] = {k: v for k, v in body["data"].items() if k != "label"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
