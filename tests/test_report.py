"""src/report.py renders the HTML report from fixture run tables (tests/fixtures/report/): a full
grid, a partial grid (missing and failed runs), a diverged cell and empty studies. Numbers are
checked against mean ± CI computed here from the fixture, not by the code under test."""

import html as html_lib
import json
import math
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

from normrepro import aggregate, catalog, config, grid, report, studies
from normrepro import runs as runs_mod
from normrepro.studies import common

FIXTURES = Path(__file__).parent / "fixtures" / "report"
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445}  # Student t 0.975 quantiles (table)


def fixture_runs() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "runs.csv")


def fixture_studies(runs: pd.DataFrame | None = None) -> list[report.StudyData]:
    """StudyData per fixture study from a (possibly edited) copy of the fixture run table."""
    runs = fixture_runs() if runs is None else runs
    metas = json.loads((FIXTURES / "studies.json").read_text())
    hist = pd.read_csv(FIXTURES / "histories.tsv", sep="\t")
    out = []
    for name, meta in metas.items():
        r = runs[runs["study"] == name]
        ok = r[r["status"] == "ok"][aggregate.PLAN_COLUMNS].drop(columns="study")
        h = hist[hist["study"] == name].merge(ok, on="run_id")
        tables = aggregate.study_tables(r, meta, h)
        out.append(
            report.StudyData.from_tables(name, meta, tables, "computed from the per-run table")
        )
    return out


def set_status(runs, study, run_ids, status, **cols):
    mask = (runs["study"] == study) & runs["run_id"].isin(run_ids)
    runs.loc[mask, "status"] = status
    for k, v in cols.items():
        runs.loc[mask, k] = v
    return runs


def partial_runs() -> pd.DataFrame:
    """Full fixture, then: one seed of a cell missing, a whole cell missing, a failed run, and
    two studies with no finished run at all."""
    runs = fixture_runs()
    set_status(runs, "batch_sweep", ["resnet20-bn-bs2-s2"], "missing")
    set_status(runs, "batch_sweep", [f"resnet20-bn-bs8-s{i}" for i in range(3)], "missing")
    set_status(
        runs,
        "batch_sweep",
        ["resnet20-gn-g8-bs32-s0"],
        "failed",
        log_path="logs/batch_sweep/resnet20-gn-g8-bs32-s0.log",
        note="exit code 1",
    )
    for study in ("norm_compare", "custom", "nf_final"):
        runs.loc[runs["study"] == study, "status"] = "missing"
    return runs


def write_ok_run(results, cfg, test_acc, **fields):
    """A finished run folder as src/train.py leaves it (metrics.json with the required fields)."""
    d = runs_mod.run_dir(results, cfg)
    d.mkdir(parents=True)
    m = {"status": "ok", "config_hash": cfg["config_hash"], "test_acc": test_acc, "wall_s": 7.0}
    m.update(val_acc=test_acc - 0.01, best_val_acc=test_acc + 0.01, device="cpu", **fields)
    (d / "metrics.json").write_text(json.dumps(m))
    return d


def section(html: str, study: str) -> str:
    m = re.search(rf'<section id="{study}".*?</section>', html, re.S)
    assert m, f"no section for study {study}"
    return m.group(0)


def expected_cell(runs, study, run_prefix, metric="test_acc", planned=None) -> str:
    """'91.23 ± 0.45 (n=3)' computed from the fixture with the t formula written out."""
    sel = runs[(runs["study"] == study) & runs["run_id"].str.startswith(run_prefix)]
    ok = sel[sel["status"] == "ok"]
    x = [100 * v for v in (ok[metric] if metric != "test_err" else 1 - ok["test_acc"])]
    n = len(x)
    ci = T975[n - 1] * statistics.stdev(x) / math.sqrt(n)
    count = f"n={n}" if n == len(sel) else f"n={n} of {len(sel)}"
    return f"{statistics.mean(x):.2f} ± {ci:.2f} ({count}"


@pytest.fixture(scope="module")
def full_html():
    return report.render(fixture_studies(), {"scale": "full"})


@pytest.fixture(scope="module")
def partial_html():
    return report.render(fixture_studies(partial_runs()), {"scale": "full"})


def test_every_study_has_its_section_and_artifact(full_html):
    metas = json.loads((FIXTURES / "studies.json").read_text())
    for name, meta in metas.items():
        sec = section(full_html, name)
        assert meta["title"] in sec
        assert f"kind-{meta['kind']}" in sec
    # Each kind's paper artifact: a figure where the paper had one, tables with published numbers.
    for study, n_figures in [
        ("wrn_table", 1),
        ("batch_sweep", 1),
        ("norm_compare", 1),
        ("nf_grid", 1),
        ("nf_final", 1),
        ("pets", 1),
    ]:
        sec = section(full_html, study)
        assert sec.count("<figure>") == n_figures == sec.count("<svg") == sec.count("<figcaption>")
    for pub in ("91.05", "92.24", "91.13", "94.75"):  # seed 000 Table 2
        assert f">{pub}</td>" in section(full_html, "wrn_table")
    assert "Figure 2" in section(full_html, "wrn_table")
    assert ">34.7</td>" in section(full_html, "batch_sweep")  # GN paper BN at 2 / GPU
    groups = section(full_html, "group_sweep")
    assert "G = 1 (LN)" in groups and ">25.3</td>" in groups and "C/G = 1 (IN)" in groups
    assert ">28.4</td>" in groups  # GN paper: IN
    assert ">79.88</td>" in section(full_html, "nf_grid") and ">89.28</td>" in section(
        full_html, "nf_final"
    )
    assert "Welch" in section(full_html, "batch_sweep")


def test_numbers_are_mean_ci_n_computed_independently(full_html):
    runs = fixture_runs()
    assert expected_cell(runs, "wrn_table", "wrn28_10-gn_ws") + ")" in section(
        full_html, "wrn_table"
    )
    assert expected_cell(runs, "wrn_table", "resnet164-bn") + ")" in section(full_html, "wrn_table")
    sweep = section(full_html, "batch_sweep")
    assert expected_cell(runs, "batch_sweep", "resnet20-bn-bs2-", "test_err") + ")" in sweep
    nf = section(full_html, "nf_grid")
    assert expected_cell(runs, "nf_grid", "nf_resnet-none-lr0.01-bs64-", "val_acc") + ")" in nf


def test_diverged_cell_is_marked_and_listed(full_html):
    nf = section(full_html, "nf_grid")
    assert nf.count('<td class="num diverged"') >= 4  # lr 0.1 at each batch size: ours...
    assert "diverged (3/3)" in nf
    assert "Diverged runs (12)" in nf and "nf_resnet-none-lr0.1-bs32-s0" in nf


def test_partial_grid_renders_missing_failed_and_empty(partial_html):
    runs = partial_runs()
    sweep = section(partial_html, "batch_sweep")
    # one seed missing: a narrower CI over the seeds that finished, n shown against the plan
    assert (
        expected_cell(runs, "batch_sweep", "resnet20-bn-bs2-", "test_err") + "; 1 missing)" in sweep
    )
    assert re.search(
        r'<td class="num missing" title="0 of 3 runs done: 3 missing">missing</td>', sweep
    )
    assert "Failed runs (1)" in sweep
    assert "logs/batch_sweep/resnet20-gn-g8-bs32-s0.log" in sweep
    assert "Not run yet (4)" in sweep
    for empty in ("norm_compare", "custom", "nf_final"):
        sec = section(partial_html, empty)
        assert re.search(r"0 of \d+ runs done", sec)
        assert "<svg" not in sec and ">missing</td>" in sec
    assert "No finished runs yet" in section(partial_html, "norm_compare")


def test_page_is_self_contained(full_html):
    assert full_html.startswith("<!DOCTYPE html>")
    assert "<?xml" not in full_html and "<!DOCTYPE svg" not in full_html
    assert not re.search(r'(src|href)="(?!#|data:)', full_html)  # nothing loaded from elsewhere
    assert "<script" not in full_html


def test_header_counts_and_compute(partial_html):
    runs = partial_runs()
    head = partial_html.split("<main>")[0]
    c = runs["status"].value_counts()
    for status in ("ok", "diverged", "failed", "missing"):
        assert f"<span>{c[status]} {status}</span>" in head
    assert f"<span>{len(runs)} planned</span>" in head
    finished = runs[runs["status"].isin(["ok", "diverged"])]
    assert f"{finished['wall_s'].sum() / 3600:.2f} h GPU" in head
    assert "NVIDIA H100" in head and "2.14.1" in head and "params hash" in head


def test_summary_csv_has_every_cell_of_every_study():
    studies = fixture_studies()
    cells = report.all_cells(studies)
    assert list(cells.columns[:2]) == ["study", *cells.columns[1:2]]
    expected = sum(len(aggregate.summarize(sd.runs, sd.meta["axes"])) for sd in studies)
    assert len(cells) == expected
    assert set(cells["study"]) == {sd.name for sd in studies}


def test_cli_reads_aggregated_and_unaggregated_studies(tmp_path, capsys):
    params_path = config.REPO / "params.yaml"
    params = config.load_params(params_path, {"scale": "smoke"})
    names = list(grid.studies(params))
    results = tmp_path / "results"
    final = grid.study_runs(params, "nf_final")[0]
    d = write_ok_run(results, final, test_acc=0.8, train_loss=0.5)
    hist = "epoch\tlr\ttrain_loss\ttrain_acc\tval_loss\tval_acc\ttest_loss\ttest_acc\tseconds\n"
    (d / "history.tsv").write_text(hist + "1\t0.01\t1.5\t0.5\t1.4\t0.6\t1.4\t0.6\t3\n")
    conf = ["--config", "scale=smoke", "--results", str(results)]
    args = ["--params", str(params_path), *conf]
    assert aggregate.main([*args, "--study", "nf_final"]) == 0  # default out: results/summaries
    out = tmp_path / "reports" / "index.html"
    assert report.main([*args, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    html = out.read_text()
    for name in names:
        section(html, name)
    final_html = section(html, "nf_final")
    assert "80.00 (n=1 of" in final_html and "<svg" in final_html  # its curve: history.tsv
    assert re.search(r"summaries/[^/]+/nf_final/summary\.csv", final_html)  # the aggregate
    assert "computed here from the run folders" in section(html, "batch_sweep")  # not aggregated
    cells = pd.read_csv(tmp_path / "reports" / "summary.csv")
    assert set(cells["study"]) == set(names)


def test_load_study_ignores_tables_aggregated_for_another_grid(tmp_path):
    meta = {"title": "t", "kind": "generic", "axes": ["model", "norm", "batch_size"]}
    plan = [
        {
            "study": "s",
            "grid": "g",
            "run_id": f"r-s{i}",
            "model": "resnet20",
            "norm": "bn",
            "norm_kw": {},
            "batch_size": 8,
            "lr": 0.1,
            "epochs": 1,
            "seed": i,
            "config_hash": f"h{i}",
        }
        for i in range(3)
    ]
    for c in plan:
        write_ok_run(tmp_path, c, test_acc=0.5)
    tables = aggregate.aggregate_study(plan[:2], meta, tmp_path)
    aggregate.write_study(aggregate.summary_dir(tmp_path, "s", "g"), "s", tables)

    same = report.load_study("s", meta, plan[:2], tmp_path)
    assert same.source.endswith("summary.csv") and len(same.runs) == 2
    grown = report.load_study("s", meta, plan, tmp_path)  # a seed was added since
    assert "computed here from the run folders" in grown.source and len(grown.runs) == 3
    assert int(grown.summary["n"].iloc[0]) == 3


# ---------------------------------------------------------------------------- issue 10


def svg_texts(sec: str) -> list[str]:
    """The text of every <text> element of the section's figures (matplotlib keeps text as
    text: svg.fonttype none)."""
    return [html_lib.unescape(t).strip() for t in re.findall(r"<text[^>]*>(.*?)</text>", sec, re.S)]


def lost_runs_text(cell_runs: pd.DataFrame) -> str:
    """'2/3, 1 div.' for a cell whose runs did not all finish ok; '' when all did."""
    c = cell_runs["status"].value_counts()
    ok, planned = int(c.get("ok", 0)), len(cell_runs)
    if ok == planned:
        return ""
    words = {"diverged": "div.", "failed": "failed", "missing": "not run"}
    return ", ".join([f"{ok}/{planned}"] + [f"{c[s]} {w}" for s, w in words.items() if c.get(s)])


def test_figures_show_lost_runs_at_their_points():
    runs = fixture_runs()
    set_status(runs, "batch_sweep", ["resnet20-bn-bs2-s2"], "diverged")
    set_status(runs, "norm_compare", ["resnet20-ln-bs4-s0"], "diverged")
    set_status(runs, "norm_compare", ["resnet20-ln-bs4-s1"], "missing")
    set_status(runs, "norm_compare", ["resnet20-gn-bs64-s2"], "failed", log_path="x.log")
    set_status(runs, "nf_final", ["nf_resnet-none-bs64-s0"], "diverged")
    html = report.render(fixture_studies(runs), {"scale": "full"})

    cells = runs.assign(cell=runs["run_id"].str.replace(r"-s\d+$", "", regex=True))
    for study in ("batch_sweep", "norm_compare", "nf_grid", "nf_final"):
        texts = svg_texts(section(html, study))
        lost = {
            cell: lost_runs_text(block)
            for cell, block in cells[cells["study"] == study].groupby("cell")
        }
        expected = sorted(t for t in lost.values() if t)
        assert expected, study  # every study here lost runs somewhere
        if study == "nf_final":  # curves: the series is named with it, in the panels' legend
            assert [t for t in texts if "/" in t] == [f"no norm [{expected[0]}]"]
            continue
        # One mark per cell that lost runs, and none for a cell that did not.
        assert sorted(t for t in texts if re.fullmatch(r"\d+/\d+(, .*)?", t)) == expected, study
    assert "0/3, 3 div." in svg_texts(section(html, "nf_grid"))  # lr 0.1: every seed diverged


def test_group_settings_say_what_they_are_on_each_layer_width():
    # ResNet-20's norm layers see 16, 32 and 64 channels (stem and stage 1, stage 2, stage 3).
    assert catalog.norm_widths("resnet20") == [16, 32, 64]
    cfg = {"model": "resnet20", "norm": "gn", "model_kw": {}}
    text = common.per_width_text
    assert text({**cfg, "norm_kw": {"groups": 16}}) == (
        "1 / 2 / 4 channels per group on the 16 / 32 / 64-channel layers "
        "(IN on the 16-channel layers)"
    )
    assert text({**cfg, "norm_kw": {"groups": 8}}) == (
        "2 / 4 / 8 channels per group on the 16 / 32 / 64-channel layers"
    )
    assert text({**cfg, "norm_kw": {"groups": 1}}) == "LN on every layer"
    assert text({**cfg, "norm_kw": {"channels_per_group": 1}}) == "IN on every layer"
    assert text({**cfg, "norm_kw": {"channels_per_group": 4}}).startswith("4 / 4 / 4 channels")
    # A run config's recorded groups win over a recomputation (what the run really used).
    assert text({**cfg, "norm_kw": {}, "norm_groups": {"16": 16, "32": 32, "64": 32}}) == (
        "1 / 1 / 2 channels per group on the 16 / 32 / 64-channel layers "
        "(IN on the 16 / 32-channel layers)"
    )


def test_every_kind_is_one_module_and_every_grid_kind_has_one():
    kinds = studies.kind_names()
    raw = config.read_params(config.REPO / "params.yaml")
    assert {s["kind"] for s in raw["studies"].values()} <= set(kinds)  # every kind a module
    with pytest.raises(config.ParamsError, match=r"kind: got 'nope'; allowed: batch_sweep"):
        config.load_params(overrides={"studies": {"nf_grid": {"kind": "nope"}}})
    for kind in kinds:
        assert callable(studies.builder(kind))
    with pytest.raises(ValueError, match=r"unknown study kind 'nope'; allowed: batch_sweep"):
        studies.builder("nope")


def write_smoke_results(results: Path) -> dict[str, list[dict]]:
    """Finished run folders for every run the smoke scale plans (no training): ok runs with a
    history, and the NF-ResNet runs at lr >= 1 diverged, as the smoke preset makes them."""
    params = config.load_params(config.REPO / "params.yaml", {"scale": "smoke"})
    plan = {name: grid.study_runs(params, name) for name in grid.studies(params)}
    head = "epoch\tlr\ttrain_loss\ttrain_acc\tval_loss\tval_acc\ttest_loss\ttest_acc\tseconds\n"
    for cfgs in plan.values():
        for i, c in enumerate(cfgs):
            if c["model"] == "nf_resnet" and c["lr"] >= 1:
                d = runs_mod.run_dir(results, c)
                d.mkdir(parents=True)
                m = {"status": "diverged", "config_hash": c["config_hash"], "diverged_epoch": 1}
                m.update(test_acc=0.1, val_acc=0.1, best_val_acc=0.1, wall_s=1.0, device="cpu")
                (d / "metrics.json").write_text(json.dumps(m))
                continue
            acc = 0.6 + 0.01 * (i % 5)
            d = write_ok_run(results, c, test_acc=acc, train_loss=0.9)
            lines = [
                f"{e}\t{c['lr']}\t{2.0 / e}\t{acc}\t1.0\t{acc}\t1.0\t{acc}\t1.0\n"
                for e in range(1, c["epochs"] + 1)
            ]
            (d / "history.tsv").write_text(head + "".join(lines))
    return plan


def strip_published(page: str) -> str:
    """The page without what is about a published source (class ref): tables, headers,
    cells and notes of published numbers."""
    page = re.sub(r'<table class="ref">.*?</table>', "", page, flags=re.S)
    page = re.sub(r'<th class="[^"]*\bref\b[^"]*"[^>]*>.*?</th>', "", page, flags=re.S)
    page = re.sub(r'<td class="[^"]*\bref\b[^"]*"[^>]*>.*?</td>', "", page, flags=re.S)
    return re.sub(r'<p class="note ref">.*?</p>', "", page, flags=re.S)


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("smoke-report")
    plan = write_smoke_results(root / "results")
    out = root / "reports" / "index.html"
    args = ["--params", str(config.REPO / "params.yaml"), "--config", "scale=smoke"]
    assert report.main([*args, "--results", str(root / "results"), "--out", str(out)]) == 0
    return out.read_text(), plan


def test_smoke_captions_name_what_ran_and_never_cifar10(smoke_report):
    page, plan = smoke_report
    for study, cfgs in plan.items():
        sec = section(page, study)
        epochs = sorted({c["epochs"] for c in cfgs})
        batches = ", ".join(str(b) for b in sorted({c["batch_size"] for c in cfgs}))
        assert {c["data"]["name"] for c in cfgs} == {"fashion-mnist"}
        ours = strip_published(sec)
        captions = re.findall(r"<(?:fig)?caption>(.*?)</(?:fig)?caption>", ours, re.S)
        assert len(captions) >= 2, study  # its own table(s) / figure and the cells table
        for cap in captions:
            cap = html_lib.unescape(cap)
            assert "Fashion-MNIST" in cap, (study, cap)
            assert f"{', '.join(map(str, epochs))} epochs" in cap, (study, cap)
            assert f"batch {batches}" in cap, (study, cap)
        assert "CIFAR-10" not in ours, study
        # Every published column, and every table of published numbers, says it is not
        # comparable at this scale.
        labels = re.findall(r'<th class="[^"]*\bref\b[^"]*"[^>]*>(.*?)</th>', sec, re.S)
        labels += re.findall(r'<table class="ref">\s*<caption>(.*?)</caption>', sec, re.S)
        for label in labels:
            assert "(not comparable)" in label, study
        for ref_note in re.findall(r'<p class="note ref">(.*?)</p>', sec, re.S):
            assert (
                "Not comparable with ours here: smoke scale, ours ran on Fashion-MNIST" in ref_note
            )
    assert "CIFAR-10" not in strip_published(page.split("<main>")[0])  # nor the header


def test_smoke_report_marks_the_diverged_nf_cell_and_adjusts_p_values(smoke_report):
    page, plan = smoke_report
    lr10 = [c for c in plan["nf_grid"] if c["lr"] >= 1]
    texts = svg_texts(section(page, "nf_grid"))
    assert lr10 and f"0/{len(lr10)}, {len(lr10)} div." in texts
    # norm_compare: one Welch test per pair of its norms (each with 2 ok seeds), one family.
    norms = {(c["norm"], c["norm_kw"].get("groups")) for c in plan["norm_compare"]}
    batches = {c["batch_size"] for c in plan["norm_compare"]}
    family = len(batches) * len(norms) * (len(norms) - 1) // 2
    sec = html_lib.unescape(section(page, "norm_compare"))
    assert f"this study's {family} tests" in sec and "p, Holm-adjusted" in sec


def test_project_choices_and_expected_gaps_are_stated_beside_the_numbers(smoke_report):
    page, plan = smoke_report
    nf = html_lib.unescape(section(page, "nf_grid"))
    optim = plan["nf_grid"][0]["optim"]
    assert f"Nesterov {'on' if optim['nesterov'] else 'off'} (seed 002 silent" in nf
    assert f"weight decay {optim['weight_decay']:g} (seed 002 silent" in nf
    assert f"schedule {optim['schedule']} (seed 002 silent" in nf
    table2 = html_lib.unescape(section(page, "wrn_table"))
    assert "3–5 points below the original papers" in table2
    assert "1x1 projections" in html_lib.unescape(section(page, "batch_sweep"))
    sweep = html_lib.unescape(section(page, "batch_sweep"))
    assert "BeFranke/GroupNorm" in sweep and ">19.70</td>" in sweep  # second anchor, Figure 1


def test_smoke_report_says_what_gn_was_on_each_layer_width(smoke_report):
    page, plan = smoke_report
    gn = next(c for c in plan["batch_sweep"] if c["norm"] == "gn")
    widths = catalog.norm_widths(gn["model"], **gn["model_kw"])
    g = gn["norm_kw"]["groups"]
    per_group = " / ".join(str(w // g) for w in widths)
    expected = (
        f"GN (G={g}): {per_group} channels per group on the "
        f"{' / '.join(map(str, widths))}-channel layers"
    )
    for study in ("batch_sweep", "norm_compare"):
        assert expected in html_lib.unescape(section(page, study)), study


def test_every_published_column_has_its_source_and_expectation_beside_it(full_html):
    for study in ("wrn_table", "batch_sweep", "group_sweep", "norm_compare", "nf_grid", "nf_final"):
        sec = html_lib.unescape(section(full_html, study))
        assert re.search(r'class="[^"]*\bref\b', sec), study  # it prints published numbers
        notes = re.findall(r'<p class="note ref">(.*?)</p>', sec, re.S)
        assert len(notes) == 1 and "Published: " in notes[0], study
        assert "Expected of a faithful rerun: " in notes[0], study
    # At full scale on CIFAR-10 the seeds' CIFAR-10 columns are comparable, ImageNet ones never.
    table2 = section(full_html, "wrn_table")
    assert "Seed 000</th>" in table2 and "(not comparable)" not in table2
    assert "(not comparable)" in section(full_html, "group_sweep")
