"""How the claims ledger reads (src/normrepro/claims.py's entries as text): the report's
"Claims" section (a view model the template lays out) and the Markdown file `--markdown`
writes for docs/. Every number leaves here as a string; nothing is computed but formatting.
"""

from __future__ import annotations

from normrepro import claim_stats as cs
from normrepro import claims
from normrepro.io_utils import read_json

VERDICT_CLASS = {v: "v-" + v.replace(" ", "-") for v in cs.VERDICTS}
SURVIVORSHIP_MARK = "⚑"


def _num(x, digits: int = 2, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def p_text(p) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def effect_text(e: dict) -> str:
    """'+1.51' (the CI goes below it: ci_text)."""
    return "—" if e["effect"] is None else _num(e["effect"], signed=True)


def ci_text(e: dict) -> str:
    """'95% CI [0.34, 2.69]', or '90% CI [−0.3, 0.6] vs ±1.0' for a TOST; '' when not run."""
    if e["effect"] is None:
        return ""
    level = "95%" if e["test"] == "difference" else "90%"
    text = f"{level} CI [{_num(e['ci_low'])}, {_num(e['ci_high'])}]"
    return text + (f" vs ±{_num(e['margin'], 1)}" if e["test"] != "difference" else "")


def test_text(e: dict) -> str:
    """'paired t', 'TOST, Welch t', 'TOST, one-sample t' (the CI level is the test's: 95% for a
    difference, 90% for a TOST)."""
    method = e["method"] or {"difference": "t-test"}.get(e["test"], "TOST")
    return method.replace("TOST (", "TOST, ").replace(")", "")


def published_text(e: dict) -> str:
    if e["published"] is None:
        return "not printed"
    if e["test"] == "value":
        return f"{_num(e['published'])} % error"
    return _num(e["published"], signed=True)


def seeds_text(e: dict) -> str:
    if e["verdict"] != "inconclusive":
        return ""
    if e["seeds_to_resolve"] is None:
        why = "no published effect" if e["published"] is None else "no spread observed"
        return f"— ({why})"
    return str(e["seeds_to_resolve"])


def verdict_title(e: dict) -> str:
    """The tooltip: what the other analysis said, and why a claim was not run."""
    parts = []
    if e["survivorship"]:
        parts.append(
            f"depends on survivorship: intent-to-treat (each diverged or failed run at chance) "
            f"says {e['verdict_itt']}"
        )
    if e["note"]:
        parts.append(e["note"])
    return "; ".join(parts)


def cells_text(e: dict) -> str:
    a, b = e["cells"]["a"], e["cells"]["b"]
    return f"{a} vs published" if e["test"] == "value" else f"{a} vs {b}"


def row(e: dict) -> dict:
    """One claim as the report's row (strings; `study` is the section it links to)."""
    return {
        "id": e["id"],
        "study": e["study"],
        "source": e["source"],
        "statement": e["statement"],
        "cells": cells_text(e),
        "effect": effect_text(e),
        "ci": ci_text(e),
        "published": published_text(e),
        "published_source": e["published_source"],
        "test": test_text(e),
        "paired": bool(e["paired"]),
        "n": "—" if e["verdict"] == "not run" and not e["n_a"] else _n_text(e),
        "p": p_text(e["p"]),
        "p_holm": p_text(e["p_holm"]),
        "verdict": e["verdict"],
        "verdict_cls": VERDICT_CLASS[e["verdict"]],
        "survivorship": bool(e["survivorship"]),
        "verdict_itt": e["verdict_itt"],
        "title": verdict_title(e),
        "seeds": seeds_text(e),
    }


def _n_text(e: dict) -> str:
    return str(e["n_a"]) if e["test"] == "value" else f"{e['n_a']} / {e['n_b']}"


def counts(ledger: list[dict]) -> list[tuple[str, int, str]]:
    return [(v, sum(e["verdict"] == v for e in ledger), VERDICT_CLASS[v]) for v in cs.VERDICTS]


def family(ledger: list[dict]) -> int:
    return sum(e["p"] is not None for e in ledger)


def report_ledger(path: str | None, studies, params: dict) -> list[dict]:
    """The ledger the report shows: the one the pipeline wrote (--claims results/claims.json),
    or evaluated here from the studies loaded (the interim report: the runs finished so far)."""
    if path:
        try:
            return read_json(path)["claims"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"error: --claims {path}: not a claims ledger ({err})") from None
    try:
        return claims.evaluate(studies, params)
    except claims.ClaimsError as err:
        raise SystemExit(f"error: {err}") from None


def section(ledger: list[dict] | None, study_order: list[str] | None = None) -> dict | None:
    """The report's Claims section: rows (in `study_order`, the report's order of studies),
    verdict counts and the caption that explains them; None without a ledger."""
    if ledger is None:
        return None
    order = {name: i for i, name in enumerate(study_order or [])}
    ledger = sorted(ledger, key=lambda e: order.get(e["study"], len(order)))
    n = family(ledger)
    caption = (
        "Each seed's claim as a test over this report's runs, declared before any result. "
        "Effect: error points (percent) in the claim's direction (positive = as claimed), with "
        "its 95% CI for a difference, or its 90% CI set against ±margin for an equivalence or a "
        "value claim (TOST; margins from the published spread, params.yaml claims.margins). "
        "Paired t-test on per-seed differences where both arms share seeds and data order "
        "(same study, batch size, epochs and dataset), Welch's otherwise. "
        f"Holm over the ledger's {n} tested claim{'s' if n != 1 else ''}. The verdict uses the "
        f"runs that finished ok; {SURVIVORSHIP_MARK} marks a claim whose intent-to-treat (ITT) "
        "verdict, each diverged or failed run counted at chance accuracy, differs. Seeds to resolve: seeds per "
        f"cell at which the test has {cs.POWER:.0%} power at {cs.ALPHA:g}/{n} (so the verdict "
        "survives Holm), from the observed spread and the published effect (no difference, for "
        "an equivalence)."
    )
    return {
        "rows": [row(e) for e in ledger],
        "counts": counts(ledger),
        "caption": caption,
    }


# ---------------------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(ledger: list[dict], params: dict | None = None) -> str:
    """The ledger as a Markdown table and a paragraph saying what it reproduced, contradicted
    and left inconclusive, with the seeds each inconclusive claim needs (docs/)."""
    scale = (params or {}).get("scale", "full")
    head = ["claim", "statement", "cells", "effect (pp)", "published", "test", "n", "p"]
    head += ["p (Holm)", "verdict", "seeds to resolve"]
    lines = [
        f"Claims ledger ({scale} scale; generated by `python -m normrepro.claims`).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for e in ledger:
        r = row(e)
        verdict = r["verdict"]
        if r["survivorship"]:
            verdict += f" {SURVIVORSHIP_MARK} (ITT: {r['verdict_itt']})"
        if e["verdict"] == "not run" and e["note"]:
            verdict += f" ({e['note'].removeprefix('not run: ')})"
        effect = f"{r['effect']} ({r['ci']})" if r["ci"] else r["effect"]
        cells = [r["id"], r["statement"], r["cells"], effect, r["published"], r["test"]]
        cells += [r["n"], r["p"], r["p_holm"], verdict, r["seeds"]]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    lines += ["", summary_paragraph(ledger), ""]
    return "\n".join(lines)


def summary_paragraph(ledger: list[dict]) -> str:
    """What the ledger reproduced, contradicted and left inconclusive (with the seeds per cell
    each inconclusive claim needs), in sentences; the statements are the claims' own."""

    def listed(entries: list[dict], extra=lambda e: "") -> str:
        return "; ".join(f"{e['id']} ({e['statement'].rstrip('.')}{extra(e)})" for e in entries)

    def seeds(e: dict) -> str:
        n = e["seeds_to_resolve"]
        if n is not None:
            return f": {n} seeds per cell would resolve it"
        return ": seeds unknown, " + seeds_text(e).strip("— ()")

    parts = []
    for verdict in ("reproduced", "contradicted", "inconclusive"):
        found = [e for e in ledger if e["verdict"] == verdict]
        text = listed(found, seeds if verdict == "inconclusive" else lambda e: "")
        parts.append(f"{verdict.capitalize()} ({len(found)}): {text or 'none'}.")
    not_run = [e["id"] for e in ledger if e["verdict"] == "not run"]
    parts.append(f"Not run ({len(not_run)}): {', '.join(not_run) or 'none'}.")
    marked = [
        f"{e['id']} (intent-to-treat: {e['verdict_itt']})" for e in ledger if e["survivorship"]
    ]
    if marked:
        parts.append("Depends on survivorship: " + "; ".join(marked) + ".")
    return " ".join(parts)
