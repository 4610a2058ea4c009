"""The claims ledger (src/normrepro/claims.py, claim_cells.py, claims_view.py): verdicts on
synthetic per-run tables (shaped like aggregate's runs.csv) whose truth is known, checked against
scipy.stats; every kind's claims on the report fixtures; the CLI on a smoke grid's run folders;
the report's Claims section. The statistics themselves: tests/test_claim_stats.py.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from test_report import fixture_studies, write_smoke_results

from normrepro import aggregate, claims, config, grid, report
from normrepro import claim_stats as cs
from normrepro.claim_cells import EACH, OTHERS, REFERENCE, SMALLEST, expand, reference_batch
from normrepro.studies import kind_names

RNG_SEED = 20240917
MARGINS = {"m": 1.0}
REQUIRED = ["id", "study", "source", "statement", "test", "effect", "ci_low", "ci_high"]
REQUIRED += ["margin", "p", "p_holm", "n_a", "n_b", "runs_a", "runs_b", "verdict"]
REQUIRED += ["verdict_itt", "seeds_to_resolve"]


def rng():
    return np.random.default_rng(RNG_SEED)


# ---------------------------------------------------------------------------- cells


def test_reference_batch_is_the_normal_batch_of_the_grid():
    assert reference_batch([2, 4, 8, 16, 32, 64, 128]) == 32  # full batch_sweep
    assert reference_batch([2, 4, 64]) == 64  # laptop: 4 is a tiny batch, not a normal one
    assert reference_batch([8, 64]) == 64  # smoke
    assert reference_batch([4, 64]) == 64  # norm_compare
    assert reference_batch([16]) == 16


def runs_table(cells: list[dict], study: str = "s") -> pd.DataFrame:
    """A per-run table shaped like aggregate's runs.csv: one row per (cell, seed); `errs` in
    error points; `status` {seed: status} for runs that are not ok."""
    rows = []
    for c in cells:
        for seed, err in enumerate(c["errs"]):
            status = c.get("status", {}).get(seed, "ok")
            name = f"{c['norm']}-bs{c.get('batch_size', 8)}-lr{c.get('lr', 0.1)}-s{seed}"
            rows.append(
                {
                    "study": study,
                    "run_id": name,
                    "model": "resnet20",
                    "norm": c["norm"],
                    "groups": c.get("groups"),
                    "batch_size": c.get("batch_size", 8),
                    "lr": c.get("lr", 0.1),
                    "epochs": 3,
                    "seed": seed,
                    "dataset": "cifar10",
                    "config_hash": f"h{len(rows)}",
                    "status": status,
                    "test_acc": 1 - err / 100 if status in ("ok", "diverged") else None,
                    "val_acc": 1 - err / 100 if status in ("ok", "diverged") else None,
                }
            )
    return aggregate.typed(pd.DataFrame(rows, columns=aggregate.RUN_COLUMNS))


def test_each_and_others_expand_over_the_grid():
    runs = runs_table(
        [
            {"norm": "none", "lr": lr, "batch_size": b, "errs": [10, 11]}
            for lr in (0.001, 0.01, 0.1)
            for b in (32, 64)
        ]
    )
    claim = claims.Claim(
        id="c",
        source="",
        statement="",
        test="difference",
        a={"lr": 0.01, "batch_size": EACH},
        b={"lr": OTHERS, "batch_size": EACH},
    )
    got = {(s, a["batch_size"], b["lr"]) for s, a, b in expand(claim, runs)}
    assert got == {
        (f"bs{b}/lr{lr_text}", b, lr)
        for b in (32, 64)
        for lr, lr_text in ((0.001, "0p001"), (0.1, "0p1"))
    }


def ledger_of(claim: claims.Claim, runs: pd.DataFrame, margins=MARGINS) -> dict:
    study = claims.StudyRuns("s", {"kind": "x"}, runs, [])
    (entry,) = claims.finish(claims.evaluate_study(study, claim, margins, "full"))
    return entry


def beats(a: str, b: str, published=3.0, batch=SMALLEST) -> claims.Claim:
    return claims.Claim(
        id=f"{a}_beats_{b}",
        source="test",
        statement=f"{a} has a lower error than {b}",
        test="difference",
        a={"norm": a, "batch_size": batch},
        b={"norm": b, "batch_size": batch},
        direction="a_lower",
        published=published,
    )


def two_arms(n: int, effect: float, sd: float = 0.5, seed: int = RNG_SEED, **gn) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    bn = 14 + r.normal(0, sd, n)
    return runs_table(
        [{"norm": "bn", "errs": bn}, {"norm": "gn", "errs": bn - effect + r.normal(0, sd, n), **gn}]
    )


def test_a_true_3_point_effect_over_20_seeds_is_reproduced_and_swapped_contradicted():
    runs = two_arms(20, 3.0)
    e = ledger_of(beats("gn", "bn"), runs)
    assert e["verdict"] == e["verdict_itt"] == "reproduced"
    assert e["paired"] and e["n_a"] == e["n_b"] == 20
    bn = runs[runs["norm"] == "bn"].sort_values("seed")
    gn = runs[runs["norm"] == "gn"].sort_values("seed")
    d = 100 * (gn["test_acc"].to_numpy() - bn["test_acc"].to_numpy())  # bn err - gn err
    assert e["effect"] == pytest.approx(d.mean())
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert (e["ci_low"], e["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert e["runs_a"] == [f"s/{r}" for r in gn["run_id"]]
    assert e["seeds_to_resolve"] is None  # resolved

    swapped = ledger_of(beats("bn", "gn"), runs)
    assert swapped["verdict"] == "contradicted"
    assert swapped["effect"] == pytest.approx(-e["effect"])


def test_two_seeds_and_a_small_effect_are_inconclusive_with_seeds_to_resolve():
    runs = two_arms(2, 0.2)
    e = ledger_of(beats("gn", "bn", published=0.2), runs)
    assert e["verdict"] == "inconclusive"
    d = np.diff(runs.sort_values(["seed", "norm"])["test_acc"].to_numpy().reshape(2, 2), axis=1)
    sd = float(np.std(100 * d, ddof=1))  # paired differences, bn - gn, in points
    assert e["seeds_to_resolve"] == cs.seeds_to_resolve("difference", True, sd, 0.2, None)
    assert 2 < e["seeds_to_resolve"] < 10_000


def test_a_cell_missing_from_the_grid_is_not_run():
    runs = two_arms(5, 3.0)
    e = ledger_of(beats("gn_ws", "bn"), runs)  # no GN+WS cell: the preset left it out
    assert e["verdict"] == e["verdict_itt"] == "not run"
    assert "gn_ws" in e["note"] and e["p"] is None and e["p_holm"] is None
    one = runs[~((runs["norm"] == "gn") & (runs["seed"] > 0))]  # a cell with 1 run
    assert ledger_of(beats("gn", "bn"), one)["verdict"] == "not run"


def test_a_diverged_run_that_flips_the_verdict_under_intent_to_treat_is_marked():
    # GN is 3 points better on the 4 seeds that finished ok; its 5th seed diverged.
    runs = two_arms(5, 3.0, status={4: "diverged"}, sd=0.3)
    e = ledger_of(beats("gn", "bn"), runs)
    assert e["verdict"] == "reproduced" and e["n_a"] == 4
    assert e["verdict_itt"] == "inconclusive" and e["survivorship"] is True
    # intent-to-treat counts the diverged run at chance: 90 % error on 10 classes
    bn = 100 * (1 - runs[runs["norm"] == "bn"].sort_values("seed")["test_acc"].to_numpy())
    gn = 100 * (1 - runs[runs["norm"] == "gn"].sort_values("seed")["test_acc"].to_numpy())
    gn[4] = 90.0
    assert e["effect_itt"] == pytest.approx((bn - gn).mean())
    assert e["n_a_itt"] == 5


def test_different_batch_sizes_are_compared_by_welch():
    r = rng()
    runs = runs_table(
        [
            {"norm": "bn", "batch_size": 2, "errs": 19 + r.normal(0, 0.5, 5)},
            {"norm": "bn", "batch_size": 32, "errs": 13 + r.normal(0, 0.5, 5)},
        ]
    )
    claim = claims.Claim(
        id="bn",
        source="",
        statement="",
        test="difference",
        direction="a_higher",
        a={"norm": "bn", "batch_size": SMALLEST},
        b={"norm": "bn", "batch_size": REFERENCE},
    )
    e = ledger_of(claim, runs)
    assert e["method"] == "Welch t" and not e["paired"]
    a = 100 * (1 - runs[runs["batch_size"] == 2]["test_acc"].to_numpy())
    b = 100 * (1 - runs[runs["batch_size"] == 32]["test_acc"].to_numpy())
    assert e["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert e["verdict"] == "reproduced"


def test_holm_runs_over_the_whole_ledger():
    runs = two_arms(4, 0.8, sd=0.4)
    study = claims.StudyRuns("s", {"kind": "x"}, runs, [])
    entries = [
        e
        for c in (beats("gn", "bn"), beats("bn", "gn"), beats("gn_ws", "bn"))
        for e in claims.evaluate_study(study, c, MARGINS, "full")
    ]
    ledger = claims.finish(entries)
    p = [e["p"] for e in ledger if e["p"] is not None]
    assert len(p) == 2
    assert [e["p_holm"] for e in ledger[:2]] == pytest.approx([min(1, 2 * min(p))] * 2)


def test_a_margin_not_set_is_an_error_naming_the_key():
    claim = claims.Claim(
        id="eq",
        source="",
        statement="",
        test="equivalence",
        margin_key="gn_flat",
        a={"norm": "gn"},
        b={"norm": "bn"},
    )
    with pytest.raises(claims.ClaimsError, match=r"claims\.margins\.gn_flat"):
        ledger_of(claim, two_arms(3, 0.0), margins={})


# ---------------------------------------------------------------------------- declarations


def test_every_margin_key_is_in_the_schema_and_set_in_params_yaml():
    used = {c.margin_key for k in kind_names() for c in claims.kind_claims(k) if c.margin_key}
    schema = yaml.safe_load(config.SCHEMA.read_text())
    allowed = set(schema["$defs"]["claims"]["properties"]["margins"]["properties"])
    params = yaml.safe_load((config.REPO / "params.yaml").read_text())
    assert used == allowed == set(params["claims"]["margins"])
    for c in (c for k in kind_names() for c in claims.kind_claims(k)):
        assert c.test in cs.TESTS
        assert (c.margin_key is None) == (c.test == "difference"), c.id
        assert (c.b is None) == (c.test == "value"), c.id
        assert c.direction in (("a_lower", "a_higher") if c.test == "difference" else ("",))


def test_every_kind_evaluates_on_the_report_fixtures():
    studies = fixture_studies()
    ledger = claims.evaluate(studies, config.load_params(config.REPO / "params.yaml"))
    by_id = {e["id"]: e for e in ledger}
    assert len(by_id) == len(ledger)  # ids unique
    kinds = {s.meta["kind"] for s in studies}
    assert {e["kind"] for e in ledger} == {k for k in kinds if claims.kind_claims(k)}
    for e in ledger:
        assert set(REQUIRED) <= set(e), e["id"]
        assert e["verdict"] in cs.VERDICTS and e["verdict_itt"] in cs.VERDICTS
        json.dumps(e, allow_nan=False)  # JSON-ready
    # seed 001's published effects at the fixture's batches (2 and 32), from REFERENCES.md
    assert by_id["batch_sweep/bn_worse_at_smallest_batch"]["published"] == pytest.approx(
        19.70 - 13.60
    )
    assert by_id["batch_sweep/gn_beats_bn_at_smallest_batch"]["published"] == pytest.approx(
        19.70 - 14.21
    )
    # the fixture's lr 0.1 NF cells diverged: at chance, and lr 0.01 "best" only by survivorship
    for b in (32, 64, 128, 256):
        assert by_id[f"nf_grid/lr0p1_diverges/bs{b}"]["verdict"] == "reproduced"
        vs = by_id[f"nf_grid/lr0p01_best/bs{b}/lr0p1"]
        assert (vs["verdict"], vs["verdict_itt"], vs["survivorship"]) == (
            "not run",
            "reproduced",
            True,
        )


def test_cli_writes_every_claim_of_every_enabled_study_and_the_markdown(tmp_path):
    plan = write_smoke_results(tmp_path / "results")
    out, md = tmp_path / "claims.json", tmp_path / "docs" / "claims.md"
    args = ["--params", str(config.REPO / "params.yaml"), "--config", "scale=smoke"]
    args += ["--results", str(tmp_path / "results"), "--out", str(out), "--markdown", str(md)]
    assert claims.main(args) == 0
    data = json.loads(out.read_text())
    metas = grid.studies(config.load_params(config.REPO / "params.yaml", {"scale": "smoke"}))
    want = {(s, c.id) for s in plan for c in claims.kind_claims(metas[s]["kind"])}
    assert {(e["study"], e["claim"]) for e in data["claims"]} == want
    assert data["verdicts"] == {e["id"]: e["verdict"] for e in data["claims"]}
    assert sum(data["counts"].values()) == len(data["claims"])
    text = md.read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and "/" in line]
    assert len(table) == len(data["claims"])
    for verdict in ("Reproduced", "Contradicted", "Inconclusive", "Not run"):
        assert re.search(rf"{verdict} \({data['counts'][verdict.lower()]}\)", text)


def test_the_report_shows_the_claims_first_each_row_linking_to_its_study():
    studies = fixture_studies()
    ledger = claims.evaluate(studies, config.load_params(config.REPO / "params.yaml"))
    html = report.render(studies, {"scale": "full"}, claims=ledger)
    first_study = html.index('<section id="', html.index("<main>") + 1)
    assert html.index('<section id="claims"') == first_study
    section = html[first_study : html.index("</section>", first_study)]
    rows = re.findall(r'<tr id="claim-([^"]+)"><td class="statement"><a href="#([^"]+)">', section)
    # in the order the page shows the studies, each study's claims as the ledger lists them
    shown = re.findall(r'<section id="([^"]+)" class="study', html)
    assert [r[0] for r in rows] == sorted(
        (e["id"] for e in ledger), key=lambda i: shown.index(i.split("/")[0])
    )
    for claim_id, anchor in rows:
        assert claim_id.split("/")[0] == anchor and f'<section id="{anchor}"' in html
    assert section.count("⚑ ITT: ") == sum(e["survivorship"] for e in ledger)
    assert report.render(studies, {"scale": "full"}).count('id="claims"') == 0


def test_the_interim_report_evaluates_the_claims_from_the_runs_finished(tmp_path):
    write_smoke_results(tmp_path / "results")
    page = tmp_path / "index.html"
    args = ["--params", str(config.REPO / "params.yaml"), "--config", "scale=smoke"]
    args += ["--results", str(tmp_path / "results"), "--out", str(page), "--interim"]
    assert report.main(args) == 0
    html = page.read_text()
    assert '<section id="claims"' in html
    assert "nf_grid/lr0p01_best/bs32/lr10" in html  # the smoke grid's diverging lr
