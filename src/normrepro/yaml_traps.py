"""YAML's traps in params.yaml and `--config`, turned into messages that say how to write it.

The config loader (src/normrepro/grid.py) calls these; nothing here knows a params.yaml key by name
(the schema says what each key takes):
- `coerce_strings`: Snakemake parses a nested `--config 'studies={pets: {enabled: false}}'` with
  YAML's BaseLoader, so every value inside arrives as text ('false', '4'). A string where the
  schema takes no string is re-read as the YAML scalar it spells, where that makes it valid.
- `explain`: what a schema message adds when the value is one of YAML's traps: `lr: 1e-3` is text
  in YAML 1.1 (PyYAML, Snakemake), a quoted number or boolean, a scalar where a mapping or a list
  is expected (`lr_scaling: linear` for `{rule: linear, base_batch: N}`).
- `syntax_error`: a YAML syntax error (a bad indent) as `FILE:LINE:COLUMN: problem`;
  `python -m normrepro.yaml_traps FILE` prints it for any file (a --configfile overlay).
"""

from __future__ import annotations

import copy
import re

import yaml

# A float as YAML 1.2 and Python read it but YAML 1.1 does not (no dot, or an unsigned
# exponent): PyYAML leaves `1e-3`, `5E-4` or `1.0e3` a string.
_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off"}


# ---------------------------------------------------------------- --config strings


def coerce_strings(params: dict, schema: dict) -> dict:
    """A copy of params in which each string the schema rejects is replaced by the YAML scalar
    it spells (a number, a boolean, null) when that value is valid there. Strings the schema
    accepts, and strings that stay strings in YAML, are left alone. A preset's per-study trims
    (`smoke.studies.<name>`) are read as studies."""
    import jsonschema  # imported here: only needed when validating

    out = copy.deepcopy(params)
    _coerce_in(out, jsonschema.Draft202012Validator(schema))
    study = {"$defs": schema.get("$defs", {}), "$ref": "#/$defs/study"}
    for name, section in out.items():
        trims = section.get("studies") if isinstance(section, dict) else None
        if name == "studies" or not isinstance(trims, dict):
            continue
        for trim in (t for t in trims.values() if isinstance(t, dict)):
            _coerce_in(trim, jsonschema.Draft202012Validator(study))
    return out


def _coerce_in(instance: dict, validator) -> None:
    """Replace, in place, each rejected string whose YAML value clears the error at its path."""
    for err in list(validator.iter_errors(instance)):
        path = list(err.absolute_path)
        if not path or not isinstance(err.instance, str):
            continue
        value = _scalar(err.instance)
        if value is None and err.instance.strip().lower() not in ("null", "~", ""):
            continue
        parent = _at(instance, path[:-1])
        before = _errors_at(validator, instance, path)
        parent[path[-1]] = value
        if _errors_at(validator, instance, path) >= before:
            parent[path[-1]] = err.instance  # no better: keep what was given (and its message)


def _scalar(text: str):
    """The YAML scalar `text` spells when it is not a string (bool, int, float, null), else None."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return None if isinstance(value, str | list | dict) else value


def _at(node, path):
    for part in path:
        node = node[part]
    return node


def _errors_at(validator, instance, path) -> int:
    return sum(1 for e in validator.iter_errors(instance) if list(e.absolute_path) == path)


# ---------------------------------------------------------------- what a schema message adds


def _types(rule: dict) -> set[str]:
    kind = rule.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def explain(key_path: str, value, schema_rule: dict) -> str:
    """A sentence to append to the schema message `key_path: got VALUE; allowed: ...` when the
    value is one of YAML's traps; "" otherwise. schema_rule: the schema the value failed."""
    types = _types(schema_rule)
    if isinstance(value, str):
        text = value.strip()
        if types & {"number", "integer"} and _EXPONENT.match(text):
            return (
                f"{text!r} is text, not a number: YAML 1.1 (PyYAML, Snakemake) reads an exponent "
                f"as a number only with a dot and a sign; write {key_path.split('.')[-1]}: "
                f"{_yaml11_float(text)} or {float(text)!r}"
            )
        if types & {"number", "integer", "boolean", "null"} and _scalar(text) is not None:
            return f"{text!r} is text (quoted, or inside a --config mapping); write it unquoted"
        if "boolean" in types and text.lower() in _BOOL_WORDS:
            return f"{text!r} is text; write true or false, unquoted"
    if "object" in types and not isinstance(value, dict):
        return f"write it as a mapping: {key_path.split('.')[-1]}: {_mapping_form(schema_rule)}"
    if "array" in types and not isinstance(value, list):
        return f"write it as a list: {key_path.split('.')[-1]}: [{_flow(value)}]"
    return ""


def _yaml11_float(text: str) -> str:
    """`1e-3` -> `1.0e-3`, `5E4` -> `5.0e+4`: the same number in the form YAML 1.1 reads."""
    mantissa, exponent = re.split(r"[eE]", text)
    if "." not in mantissa:
        mantissa += ".0"
    elif mantissa.endswith("."):
        mantissa += "0"
    if exponent[0] not in "+-":
        exponent = "+" + exponent
    return f"{mantissa}e{exponent}"


def _mapping_form(rule: dict) -> str:
    """`{rule: linear, base_batch: N}` from an object schema: its required keys (else all), a
    single allowed value written out, a choice as a|b, an integer as N, anything else as ..."""
    props = rule.get("properties", {})
    keys = rule.get("required") or list(props)
    parts = []
    for key in keys:
        prop = props.get(key, {})
        if "enum" in prop:
            parts.append(f"{key}: {'|'.join(map(str, prop['enum']))}")
        elif "int" in str(prop.get("$ref", "")) or "integer" in _types(prop):
            parts.append(f"{key}: N")
        else:
            parts.append(f"{key}: ...")
    return "{" + ", ".join(parts) + "}"


def _flow(value) -> str:
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------- syntax errors


def syntax_error(path, err: yaml.YAMLError) -> str:
    """`params.yaml:12:3: expected <block end>, but found '-' (a bad indent? ...)`: the file, line
    and column of a YAML syntax error, counted from 1 as editors count them."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} that starts at line {context_mark.line + 1})"
    return (
        f"{where}: not valid YAML: {problem}; check that line and the ones above it: an "
        "indent (spaces only, no tabs; a key aligned with its siblings), an unclosed [ { or quote"
    )


def check_syntax(path) -> str | None:
    """syntax_error's message for the YAML file at path, or None when it parses (or is absent:
    the reader of the file says that)."""
    try:
        with open(path, encoding="utf-8") as f:
            yaml.safe_load(f)
    except OSError:
        return None
    except yaml.YAMLError as err:
        return syntax_error(path, err)
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m normrepro.yaml_traps FILE...`: where a YAML file stops parsing (for a
    --configfile overlay, which Snakemake reads before any of this project's code runs)."""
    import sys

    problems = [p for p in map(check_syntax, argv or sys.argv[1:]) if p]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
