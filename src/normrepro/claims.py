"""The claims ledger: each seed's claim, written down once in its study kind's module
(src/normrepro/studies/<kind>.py, a module-level `CLAIMS` list) as a test over the grid's
results, evaluated here on aggregate's per-run tables, with a verdict.

    python -m normrepro.claims --params results/params.effective.json --results results \
        --out results/claims.json [--markdown docs/laptop/claims.md] [--summaries DIR]

A claim names two arms as cell selectors (axis -> value over the per-run table's columns) or one
arm and a published value, the kind of test (claim_stats.TESTS), the direction, the margin key
(params.yaml `claims.margins`) and the published effect it is set against. Selectors may say
SMALLEST / REFERENCE for the batch size, EACH (one ledger entry per level of an axis, the same in
both arms) and OTHERS (arm b only: one entry per level other than arm a's). A claim whose cells
are not in the grid (a scale trimmed them), or that has fewer than 2 runs in an arm, is "not run".

Pairing: arms of one study at the same batch size, epochs and dataset share, seed by seed, the
data order and augmentation (src/normrepro/train.py seeds `data_gen` with the run's seed alone),
so they are compared by a paired t-test on the per-seed differences; otherwise by Welch's.

Two analyses per claim: the survivors (ok runs), and intent-to-treat (every finished run, a
diverged or failed one counted at chance accuracy, 1 / number of classes). A claim whose two
verdicts differ is marked as depending on survivorship. A claim about divergence itself
(`chance_counts`) has intent-to-treat as its only analysis. Effects are in error points
(percent), positive in the claim's direction; Holm's adjustment runs over the whole ledger.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from normrepro import aggregate, grid, studies
from normrepro import claim_stats as cs
from normrepro.claim_cells import (
    ClaimsError,
    arm_errors,
    cell_text,
    class_count,
    comparable,
    expand,
    pairable,
    select,
)
from normrepro.io_utils import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class Claim:
    """One claim of a seed, fixed before any result is seen. Errors are in points (percent)."""

    id: str  # unique within its kind; the ledger id is "<study>/<id>[/<expanded levels>]"
    source: str  # the seed document (and table) the claim comes from
    statement: str
    test: str  # claim_stats.TESTS: difference | equivalence | value
    a: dict  # arm a's cell selector
    b: dict | None = None  # arm b's; None for a value claim
    direction: str = ""  # difference claims: "a_lower" or "a_higher" (a's error vs b's)
    margin_key: str | None = None  # params.yaml claims.margins key (equivalence, value)
    # The published effect in the claim's convention (difference: positive = the claim holds;
    # equivalence: a − b; value: the published error %), or a function of the resolved cells
    # {"a": {axis: value}, "b": {...}} giving it (None: not printed for these cells).
    published: float | Callable[[dict], float | None] | None = None
    published_source: str = ""
    metric: str = "test_acc"  # test_acc | val_acc; the claim tests 100 * (1 - metric)
    chance_counts: bool = False  # about divergence: a run at chance is the claim's data
    needs_recipe: bool = False  # against a published number: only where ours is comparable
    dataset: str = "cifar10"  # where the published number was measured (needs_recipe)


def kind_claims(kind: str) -> list[Claim]:
    """The `CLAIMS` of a study kind's module ([] for a kind without claims)."""
    if kind not in studies.kind_names():
        return []
    return list(getattr(importlib.import_module(f"normrepro.studies.{kind}"), "CLAIMS", []))


# ---------------------------------------------------------------------------- parameters


def claim_margins(params: dict) -> dict[str, float]:
    """claims.margins of the effective params, with the scale preset's claims.margins on top
    (smoke:, laptop:; a no-op where the config already folded the preset in)."""
    margins = dict((params.get("claims") or {}).get("margins") or {})
    scale = params.get("scale")
    preset = params.get(scale) if scale != "full" and isinstance(params.get(scale), dict) else {}
    margins.update((preset.get("claims") or {}).get("margins") or {})
    return margins


# ---------------------------------------------------------------------------- one claim


def analyse(claim: Claim, a: pd.DataFrame, b, paired: bool, margin) -> dict:
    """The claim's test on arm tables from arm_errors (b: a table, or the published error for a
    value claim), signed so that a positive effect is the claim's direction."""
    n_b = 0 if claim.test == "value" else len(b)
    if len(a) < 2 or (claim.test != "value" and n_b < 2):
        used = {"runs_a": list(a["run"]), "runs_b": [] if claim.test == "value" else list(b["run"])}
        return {"n_a": len(a), "n_b": n_b, **used, "p": math.nan, "why": "fewer than 2 runs"}
    note = ""
    if claim.test != "value" and paired:
        pairs = a.merge(b, on="seed", suffixes=("_a", "_b"))  # seeds both arms have
        if len(pairs) >= 2:
            a, b = ({c: pairs[f"{c}_{s}"] for c in ("run", "err")} for s in "ab")
            a, b = pd.DataFrame(a), pd.DataFrame(b)
        else:
            paired, note = False, "fewer than 2 seeds in both arms: Welch"
    other = b if claim.test == "value" else b["err"].to_numpy()
    res = cs.run_test(claim.test, a["err"].to_numpy(), other, paired, margin)
    sign = -1.0 if claim.direction == "a_lower" else 1.0
    low, high = sorted((sign * res["ci_low"], sign * res["ci_high"]))
    return {
        **res,
        "effect": sign * res["effect"],
        "ci_low": low,
        "ci_high": high,
        "paired": bool(paired and claim.test != "value"),
        "n_a": len(a),
        "n_b": n_b,
        "runs_a": list(a["run"]),
        "runs_b": [] if claim.test == "value" else list(b["run"]),
        "why": note,
    }


def evaluate_study(study, claim: Claim, margins: dict, scale: str) -> list[dict]:
    """Every ledger entry of `claim` on one study (anything with name, meta, runs, configs:
    report's StudyData), before Holm and verdicts."""
    runs = aggregate.typed(study.runs)
    if claim.margin_key and claim.margin_key not in margins:
        raise ClaimsError(
            f"claims.margins.{claim.margin_key}: not set in params.yaml; claim "
            f"{study.name}/{claim.id} needs it (a margin in error points); set: "
            f"{', '.join(sorted(margins)) or 'none'}"
        )
    margin = margins.get(claim.margin_key) if claim.margin_key else None
    data_cfg = (study.configs[0].get("data") if study.configs else None) or {}
    dataset = data_cfg.get("name") or next(iter(runs["dataset"].dropna()), "cifar10")

    def chance_err() -> float:  # asked only when a run is at chance: counts its classes
        return 100.0 * (1 - 1 / class_count(dataset, data_cfg))

    out = []
    for suffix, arm_a, arm_b in expand(claim, runs) or [("", claim.a, claim.b)]:
        entry = base_entry(study, claim, suffix, margin)
        cells_a, why_a = select(runs, arm_a)
        cells_b, why_b = select(runs, arm_b) if arm_b is not None else (None, "")
        entry["cells"] = {"a": cell_text(cells_a, arm_a), "b": cell_text(cells_b, arm_b)}
        resolved = {"a": arm_a, "b": arm_b}
        pub = claim.published(resolved) if callable(claim.published) else claim.published
        entry["published"] = pub
        why = why_a or why_b or (comparable(scale, runs, claim) if claim.needs_recipe else "")
        if not why and claim.test == "value" and pub is None:
            why = "no published value for this cell"
        if why:
            entry["note"] = f"not run: {why}"
            out.append(entry)
            continue
        paired = arm_b is not None and pairable(cells_a, cells_b)
        other = pub if claim.test == "value" else None
        for itt, key in ((claim.chance_counts, ""), (True, "_itt")):
            a = arm_errors(cells_a, claim.metric, itt, chance_err)
            b = other if other is not None else arm_errors(cells_b, claim.metric, itt, chance_err)
            entry.update({f"{k}{key}": v for k, v in analyse(claim, a, b, paired, margin).items()})
        out.append(entry)
    return out


def base_entry(study, claim: Claim, suffix: str, margin) -> dict:
    """A ledger entry with its declaration filled in and every result empty ('not run')."""
    return {
        "id": f"{study.name}/{claim.id}" + (f"/{suffix}" if suffix else ""),
        "study": study.name,
        "kind": study.meta.get("kind") or "generic",
        "claim": claim.id,
        "source": claim.source,
        "statement": claim.statement,
        "test": claim.test,
        "direction": claim.direction,
        "metric": claim.metric,
        "margin_key": claim.margin_key,
        "margin": margin,
        "published_source": claim.published_source,
        "intent_to_treat_only": claim.chance_counts,
        **{k: None for k in ("method", "effect", "ci_low", "ci_high", "ci_level", "p", "sd")},
        **{k: None for k in ("effect_itt", "ci_low_itt", "ci_high_itt", "p_itt")},
        "paired": None,
        "n_a": 0,
        "n_b": 0,
        "runs_a": [],
        "runs_b": [],
        "note": "",
    }


# ---------------------------------------------------------------------------- the ledger


def evaluate(studies, params: dict) -> list[dict]:
    """The ledger over `studies` (report's StudyData, or anything with name, meta, runs,
    configs): every claim of every study's kind, Holm-adjusted over the whole ledger, with
    verdicts (survivors and intent-to-treat) and seeds to resolve."""
    margins = claim_margins(params)
    scale = str(params.get("scale", "full"))
    ledger = [
        entry
        for study in studies
        for claim in kind_claims(study.meta.get("kind") or "generic")
        for entry in evaluate_study(study, claim, margins, scale)
    ]
    return finish(ledger)


def finish(ledger: list[dict]) -> list[dict]:
    """Holm over the ledger (survivors' p and intent-to-treat p, each its own family), the
    verdicts, the survivorship mark and the seeds to resolve; JSON-ready numbers."""
    for key in ("", "_itt"):
        p = [_nan(e.get(f"p{key}")) for e in ledger]
        for e, adjusted in zip(ledger, cs.holm(p), strict=True):
            e[f"p_holm{key}"] = adjusted
            e[f"verdict{key}"] = cs.verdict(
                e["test"],
                _nan(e.get(f"effect{key}")),
                (_nan(e.get(f"ci_low{key}")), _nan(e.get(f"ci_high{key}"))),
                adjusted,
                e["margin"],
            )
    family = sum(e["p_holm"] is not None and not math.isnan(e["p_holm"]) for e in ledger)
    for e in ledger:
        why = e.pop("why", "") or ""
        if e["verdict"] == "not run" and not e["note"]:
            e["note"] = f"not run: {why or 'no test'}"
        elif why:
            e["note"] = why
        e.pop("why_itt", None)
        e["survivorship"] = e["verdict"] != e["verdict_itt"]
        e["seeds_to_resolve"] = None
        if e["verdict"] == "inconclusive":
            delta = e["published"] if e["test"] == "difference" else 0.0
            paired = bool(e["paired"])
            e["seeds_to_resolve"] = cs.seeds_to_resolve(
                e["test"], paired, _nan(e["sd"]), delta, e["margin"], cs.ALPHA / family
            )
        for k, v in list(e.items()):
            if isinstance(v, float) and not math.isfinite(v):
                e[k] = None
    return ledger


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def metric_file(ledger: list[dict]) -> dict:
    """results/claims.json: the ledger (a list), and each claim's verdicts keyed by id, which is
    what `dvc metrics show/diff` read (DVC skips lists inside a metrics file)."""
    counts = {v: sum(e["verdict"] == v for e in ledger) for v in cs.VERDICTS}
    return {
        "verdicts": {e["id"]: e["verdict"] for e in ledger},
        "verdicts_itt": {e["id"]: e["verdict_itt"] for e in ledger},
        "counts": counts,
        "claims": ledger,
    }


# ---------------------------------------------------------------------------- CLI


@dataclass
class StudyRuns:
    """What the ledger needs of one study (report's StudyData has the same fields)."""

    name: str
    meta: dict
    runs: pd.DataFrame
    configs: list[dict]


def load_runs(name: str, cfgs: list[dict], results: str, summaries: str | None) -> pd.DataFrame:
    """The study's runs.csv when its aggregate was made for this grid (same run ids and config
    hashes), else read now from the run folders (as report.load_study decides)."""
    folder = (
        Path(summaries) / name
        if summaries
        else aggregate.summary_dir(results, name, cfgs[0]["grid"])
    )
    tables = aggregate.read_study(folder)
    planned = {(c["run_id"], c["config_hash"]) for c in cfgs}
    if tables is not None:
        runs = tables["runs"]
        if set(runs[["run_id", "config_hash"]].itertuples(False)) == planned:
            return runs
    return aggregate.collect_runs(cfgs, results)


def planned_configs(params: dict, name: str, configs_dir: str | None) -> list[dict]:
    """The study's run configs: planned from the params, or as a finished grid wrote them."""
    if configs_dir is None:
        return grid.study_runs(params, name)
    files = sorted((Path(configs_dir) / name).glob("*.json"))
    if not files:
        raise SystemExit(f"error: --configs {configs_dir}: no run configs of study {name!r}")
    return [json.loads(f.read_text()) for f in files]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate the claims ledger (see module doc).")
    ap.add_argument("--out", default="results/claims.json")
    ap.add_argument("--summaries", help="aggregates folder (default: RESULTS/summaries)")
    ap.add_argument("--markdown", metavar="PATH", help="also write the ledger as Markdown")
    ap.add_argument(
        "--configs",
        metavar="DIR",
        help="the run configs a finished grid wrote (DIR/<study>/*.json): evaluate that grid as "
        "it ran, e.g. one trained by an earlier version of the code, instead of re-planning",
    )
    args, params = aggregate.cli_params(ap, argv)
    studies = [
        StudyRuns(name, meta, load_runs(name, cfgs, args.results, args.summaries), cfgs)
        for name, meta in grid.studies(params).items()
        for cfgs in [planned_configs(params, name, args.configs)]
    ]
    try:
        ledger = evaluate(studies, params)
    except ClaimsError as err:
        raise SystemExit(f"error: {err}") from None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, metric_file(ledger))
    if args.markdown:
        from normrepro.claims_view import markdown  # formatting only

        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.markdown, markdown(ledger, params))
    counts = metric_file(ledger)["counts"]
    print(f"{len(ledger)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
