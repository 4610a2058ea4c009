"""src/report.py renders the HTML report from fixture run tables (tests/fixtures/report/): a full
grid, a partial grid (missing and failed runs), a diverged cell and empty studies. Numbers are
checked against mean ± CI computed here from the fixture, not by the code under test."""

import json
import math
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

import aggregate
import grid
import report

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
        out.append(report.make_study(name, meta, r, h))
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
    d = grid.run_dir(results, cfg)
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
    params_path = grid.REPO / "params.yaml"
    params = grid.load_params(params_path, {"scale": "smoke"})
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
    assert "summaries/nf_final/summary.csv" in final_html  # read from the aggregate
    assert "computed here from the run folders" in section(html, "batch_sweep")  # not aggregated
    cells = pd.read_csv(tmp_path / "reports" / "summary.csv")
    assert set(cells["study"]) == set(names)


def test_load_study_ignores_tables_aggregated_for_another_grid(tmp_path):
    meta = {"title": "t", "kind": "generic", "axes": ["model", "norm", "batch_size"]}
    plan = [
        {
            "study": "s",
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
    aggregate.write_study(aggregate.summary_dir(tmp_path, "s"), "s", tables)

    same = report.load_study("s", meta, plan[:2], tmp_path)
    assert same.source.endswith("summary.csv") and len(same.runs) == 2
    grown = report.load_study("s", meta, plan, tmp_path)  # a seed was added since
    assert "computed here from the run folders" in grown.source and len(grown.runs) == 3
    assert int(grown.summary["n"].iloc[0]) == 3
