"""Issue 20: every label of the report is true. The data is named as loaded (a config's label,
an image folder's root) with the number of images trained on; each study shows one quantity
(error or accuracy %, as its seed reports it); models are named as they ran; no percentage axis
or interval leaves [0, 100]; lost runs are counted beside the tests that use their cells;
sections follow the seed documents; the header lists only what the report contains.

Expected texts are written here from the fixture, the plan or the config (the t formula, the
model sizes), not taken from the code under test. The Chromium checks (label boxes, font sizes)
are in test_report_browser.py."""

import html as html_lib
import math
import re
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from test_report import (
    T975,
    fixture_runs,
    fixture_studies,
    section,
    set_status,
    strip_published,
    svg_texts,
    write_ok_run,
    write_smoke_results,
)

from normrepro import config, data, grid, report

ROOT = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"
# The quantity each seed document reports: error (seed 001, 003, the GN paper), accuracy
# (seed 000's Table 2, seed 002's NF-ResNet).
QUANTITY = {"table2": "accuracy", "nf_grid": "accuracy", "nf_final": "accuracy"}
QUANTITY |= {k: "error" for k in ("batch_sweep", "group_sweep", "norm_compare", "pets")}


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory) -> tuple[str, dict]:
    """The smoke grid's report from finished run folders (no training; test_report's)."""
    root = tmp_path_factory.mktemp("smoke-labels")
    plan = write_smoke_results(root / "results")
    out = root / "index.html"
    args = ["--params", str(ROOT / "params.yaml"), "--config", "scale=smoke"]
    assert report.main([*args, "--results", str(root / "results"), "--out", str(out)]) == 0
    return out.read_text(), plan


def ours_texts(sec: str) -> list[str]:
    """Our labels in a section: captions, table headers, figure texts (published ones removed)."""
    sec = strip_published(sec)
    found = re.findall(r"<(?:caption|figcaption|summary|th)[^>]*>(.*?)</", sec, re.S)
    return [html_lib.unescape(t) for t in found] + svg_texts(sec)


def mean_ci(x: list[float]) -> tuple[float, float]:
    n = len(x)
    return statistics.mean(x), T975[n - 1] * statistics.stdev(x) / math.sqrt(n)


def study_pages(params: dict, names: list[str], results: Path) -> str:
    studies = [
        report.load_study(n, grid.studies(params)[n], grid.study_runs(params, n), results)
        for n in names
    ]
    return report.render(studies, params)


# ---------------------------------------------------------------------------- one quantity


def rows_of(sec: str) -> list[list[str]]:
    """The cells' texts of every table row of a section."""
    rows = re.findall(r"<tr>(.*?)</tr>", sec, re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]
    return [[html_lib.unescape(c) for c in row] for row in cells if row]


def test_each_study_shows_one_quantity_as_its_seed_reports_it(smoke_report):
    page, plan = smoke_report
    params = config.load_params(overrides={"scale": "smoke"})
    for study, meta in grid.studies(params).items():
        want = QUANTITY[meta["kind"]]
        other = r"accuracy|\bacc\b" if want == "error" else r"error|\berr\b"
        texts = ours_texts(section(page, study))
        assert any(want in t.lower() for t in texts), study
        assert not [t for t in texts if re.search(other, t.lower())], study
    # norm_compare in error: 100 − accuracy, mean ± t CI over the seeds as written.
    sec = section(page, "norm_compare")
    accs = [0.6 + 0.01 * (i % 5) for i in range(len(plan["norm_compare"]))]  # as written
    cfgs = plan["norm_compare"]
    bn = [100 * (1 - a) for c, a in zip(cfgs, accs, strict=True) if c["norm"] == "bn"]
    mean, ci = mean_ci(bn)
    rows = rows_of(sec)
    assert [r[1] for r in rows if r[0] == "BN"][0] == f"{mean:.2f} ± {ci:.2f} (n={len(bn)})"
    # Its Welch tests are in error too: BN's side shows BN's mean error (A at 5, B at 6).
    welch = [r for r in rows if len(r) == 11 and "BN" in r[1:3]]
    assert welch and all(r[5 if r[1] == "BN" else 6] == f"{mean:.2f}" for r in welch)


# ---------------------------------------------------------------------------- models as run


def run_name(model: str, kw: dict) -> str:
    """The smoke preset's models named by their size, written out from catalog.py's rules."""
    bw = f"base width {kw.get('base_width')}"
    return {
        "resnet20": f"ResNet-{kw.get('depth')}",
        "resnet164": f"ResNet-{kw.get('depth')} (bottleneck, {bw})",
        "preact_resnet164": f"PreAct ResNet-{kw.get('depth')} (bottleneck, {bw})",
        "wrn28_10": f"PreAct WRN-{kw.get('depth')}-{kw.get('width')}",
        "nf_resnet": f"NF-ResNet ({kw.get('blocks_per_stack')} block per stack, {bw})",
    }[model]


def test_models_are_named_as_they_ran(smoke_report):
    page, plan = smoke_report
    for study, cfgs in plan.items():
        sec = html_lib.unescape(section(page, study))
        title = re.search(r"<h2>(.*?)</h2>", sec).group(1)
        for c in cfgs:
            assert run_name(c["model"], c["model_kw"]) in strip_published(sec), (study, c["model"])
        # Where our numbers are shown (title, our tables and figures), no full-scale name.
        ours = [title, *ours_texts(sec), *re.findall(r"<td>([^<]*)</td>", strip_published(sec))]
        full = [t for t in ours if re.search(r"ResNet-(20|164|34)\b|WRN-28-10", t)]
        assert not full, (study, full)


# ---------------------------------------------------------------------------- within [0, 100]


def y_axes(svg: str) -> list[tuple[str, list[float]]]:
    """(y label, y tick values) of every axes of a matplotlib SVG (colour bars included)."""
    out = []
    for axes in ET.fromstring(svg).iter(f"{SVG}g"):
        if not (axes.get("id") or "").startswith("axes_"):
            continue
        yaxis = next((g for g in axes.iter(f"{SVG}g") if g.get("id") == "matplotlib.axis_2"), [])
        ticks, label = [], []
        for g in yaxis:
            texts = [t.text or "" for t in g.iter(f"{SVG}text")]
            if (g.get("id") or "").startswith("ytick"):
                ticks += [float(t.replace("−", "-")) for t in texts if t.strip()]
            else:
                label += texts
        out.append((" ".join(label), ticks))
    return out


def percent_ticks(page: str) -> list[float]:
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert svgs
    return [t for s in svgs for label, ticks in y_axes(s) if "%" in label for t in ticks]


def test_no_percent_axis_or_interval_leaves_0_100():
    runs = fixture_runs()
    # Seeds far apart: a t interval over 3 seeds passes 0 (an error near 0) or 100 (accuracy).
    bn64 = runs["run_id"].str.startswith("resnet20-bn-bs64-") & (runs["study"] == "norm_compare")
    runs.loc[bn64, "test_acc"] = [0.99, 0.98, 0.40]
    final = runs["study"] == "nf_final"
    runs.loc[final, "test_acc"] = [0.99, 0.97, 0.50]
    page = html_lib.unescape(report.render(fixture_studies(runs), {"scale": "full"}))

    err, err_ci = mean_ci([1.0, 2.0, 60.0])
    assert err - err_ci < 0  # the interval as computed passes 0
    assert err + err_ci > 100  # and 100: both ends clipped
    assert f"{err:.2f}, CI 0.00–100.00 (n=3)" in section(page, "norm_compare")
    acc, acc_ci = mean_ci([99.0, 97.0, 50.0])
    assert acc + acc_ci > 100
    assert f"{acc:.2f}, CI {acc - acc_ci:.2f}–100.00 (n=3)" in section(page, "nf_final")
    assert f"± {err_ci:.2f}" not in page and f"± {acc_ci:.2f}" not in page
    ticks = percent_ticks(page)
    assert ticks and min(ticks) >= 0 and max(ticks) <= 100, ticks


def test_smoke_report_percent_axes_stay_within_0_100(smoke_report):
    ticks = percent_ticks(smoke_report[0])
    assert ticks and min(ticks) >= 0 and max(ticks) <= 100, ticks


# ---------------------------------------------------------------------------- survivorship


def test_welch_tables_count_the_runs_a_cell_lost():
    runs = fixture_runs()
    set_status(runs, "batch_sweep", ["resnet20-bn-bs2-s2"], "diverged")
    set_status(runs, "batch_sweep", ["resnet20-gn-g8-bs2-s0"], "failed", log_path="x.log")
    page = html_lib.unescape(report.render(fixture_studies(runs), {"scale": "full"}))
    welch = section(page, "batch_sweep").split("Welch t-tests")[1]
    row = re.search(r"<tr><td[^>]*>[^<]*batch 2,[^<]*</td>.*?</tr>", welch, re.S).group(0)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    sel = runs[(runs["study"] == "batch_sweep") & runs["run_id"].str.contains("-bs2-")]
    for side, norm, lost in ((3, "resnet20-bn-", "diverged"), (4, "resnet20-gn-", "failed")):
        cell = sel[sel["run_id"].str.startswith(norm)]
        ok = int((cell["status"] == "ok").sum())
        assert cells[side] == f"{ok} of {len(cell)}: {len(cell) - ok} {lost}", cells
    intact = re.search(r"<tr><td[^>]*>[^<]*batch 8,[^<]*</td>.*?</tr>", welch, re.S).group(0)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", intact)[3:5] == ["3", "3"]


# ---------------------------------------------------------------------------- order, header


def test_sections_follow_the_seed_documents():
    order = ["wrn_table", "batch_sweep", "group_sweep", "nf_grid", "nf_final", "norm_compare"]
    order += ["pets", "custom"]  # 000, 001 (Figure 1, then groups), 002 (grid, then final), 003
    for studies in (fixture_studies(), fixture_studies()[::-1]):
        page = report.render(studies, {"scale": "full"})
        assert re.findall(r'<section id="([^"]+)"', page) == order


def test_smoke_sections_in_seed_order_and_nf_final_titled_as_what_it_is(smoke_report):
    page, plan = smoke_report
    docs = re.findall(r'<section id="([^"]+)".*?seed <code>(\d{3})_', page, re.S)
    assert [d for _, d in docs] == sorted(d for _, d in docs)
    ids = [s for s, _ in docs]
    assert ids.index("nf_grid") < ids.index("nf_final")
    final = html_lib.unescape(section(page, "nf_final"))
    title = re.search(r"<h2>(.*?)</h2>", final).group(1)
    assert "seed 002's choice (lr 0.01, batch 64)" in title and "not this grid's best cell" in title
    lr, batch = plan["nf_final"][0]["lr"], plan["nf_final"][0]["batch_size"]
    assert f"ours ran at lr {lr:g}, batch {batch}." in final


@pytest.mark.parametrize("scale", ["laptop", "smoke"])
def test_header_lists_the_preset_choices_of_the_studies_shown(scale, tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())[scale]
    params = config.load_params(overrides={"scale": scale})
    shown = list(grid.studies(params))
    page = html_lib.unescape(study_pages(params, shown, tmp_path))
    head = page.split("<main>")[0]
    assert f"{raw['data']['train_subset']:,} training images" in head
    assert f"epochs: {raw['epochs']} for every study" in head
    assert f"at most {raw['n_seeds']} per cell" in head
    off = [n for n, t in raw["studies"].items() if t.get("enabled") is False]
    for name, trims in raw["studies"].items():
        assert (f"study {name}: " in head) == (name in shown and set(trims) != {"enabled"}), name
    if off:
        assert f"studies off at this scale (not in this report): {', '.join(off)}" in head
    models = {c["model"] for n in shown for c in grid.study_runs(params, n)}
    for model, kw in raw["model_kw"].items():
        line = f"model {model} built with " + ", ".join(f"{k}={v}" for k, v in kw.items())
        assert (line in head) == (model in models), model
    # A report of one study lists that study's trims only.
    one = html_lib.unescape(study_pages(params, shown[:1], tmp_path)).split("<main>")[0]
    assert [n for n in raw["studies"] if f"study {n}: " in one] == [
        n for n in shown[:1] if n in raw["studies"]
    ]
    assert "preset" not in html_lib.unescape(report.render([], config.load_params()))


def test_cuda_version_only_for_runs_on_a_gpu():
    runs = fixture_runs()
    gpu = html_lib.unescape(report.render(fixture_studies(runs), {"scale": "full"}))
    assert "<dt>CUDA (GPU runs)</dt><dd>13.0</dd>" in gpu
    runs["device"], runs["device_name"], runs["cuda_version"] = "cpu", "Some CPU", "12.1"
    cpu = report.render(fixture_studies(runs), {"scale": "full"}).split("<main>")[0]
    assert "CUDA" not in cpu and "12.1" not in cpu and "Some CPU" in cpu


# ---------------------------------------------------------------------------- data as loaded


def our_captions(sec: str) -> list[str]:
    sec = strip_published(sec)
    found = re.findall(r"<(?:caption|figcaption)>(.*?)</(?:caption|figcaption)>", sec, re.S)
    return [html_lib.unescape(c) for c in found]


def test_image_folder_report_names_its_root_and_the_images_trained_on(tmp_path):
    root = str(tmp_path / "my-images")
    folder = {"name": "imagefolder", "root": root, "image_size": 28, "val_size": 30}
    folder |= {"train_subset": None, "test_subset": None}
    params = config.load_params(overrides={"scale": "smoke", "smoke": {"data": folder}})
    plan = grid.study_runs(params, "batch_sweep")
    for c in plan:  # what train.py records of the splits it loaded (an image folder's pool)
        write_ok_run(tmp_path, c, test_acc=0.5, n_train=1234, n_val=30, n_test=200)
    page = study_pages(params, ["batch_sweep"], tmp_path)
    captions = our_captions(section(page, "batch_sweep"))
    assert len(captions) >= 3
    for cap in captions:
        assert f"image folder {root} (trained on 1,234 images)" in cap, cap
    facts = html_lib.unescape(page.split('<dl class="facts">')[1].split("</dl>")[0])
    assert f"image folder {root}" in facts and "CIFAR-10" not in facts
    assert "CIFAR-10" not in strip_published(html_lib.unescape(section(page, "batch_sweep")))


def test_a_data_label_names_the_data_in_the_header_and_every_caption(tmp_path):
    jpeg = yaml.safe_load((ROOT / "workflow/configs/cifar10-jpeg.yaml").read_text())
    label = jpeg["laptop"]["data"]["label"]
    params = config.load_params(overrides={**jpeg, "scale": "laptop"})  # schema: label is ok
    plan = grid.study_runs(params, "batch_sweep")
    for c in plan:
        write_ok_run(tmp_path, c, test_acc=0.5, n_train=4500, n_val=500, n_test=10000)
    page = html_lib.unescape(study_pages(params, ["batch_sweep"], tmp_path))
    for cap in our_captions(section(page, "batch_sweep")):
        assert f"{label} (trained on 4,500 images)" in cap, cap
    facts = page.split('<dl class="facts">')[1].split("</dl>")[0]
    assert f"data: {label}" in facts
    # "CIFAR-10" names our data only inside its label ("JPEG re-encode"), never alone.
    ours = strip_published(section(page, "batch_sweep")) + facts
    assert "CIFAR-10" not in ours.replace(label, "")
    # A label names no image: relabelling keeps every run's identity (its config hash).
    bare = {**plan[0], "data": {k: v for k, v in plan[0]["data"].items() if k != "label"}}
    assert plan[0]["data"]["label"] == label and config.config_hash(bare) == plan[0]["config_hash"]
    # A study on other images does not inherit the label of the data above it.
    assert "label" not in config.merge_data({"name": "cifar10", "label": label}, {"root": "pets"})
    with pytest.raises(config.ParamsError, match="label"):
        config.load_params(overrides={"data": {"label": 5}})
    with pytest.raises(ValueError, match=r"data\.label: got ''"):
        data.check_data_config({"name": "synthetic", "label": ""})


def test_full_scale_choices_say_what_resnet20_trained_on_beside_the_anchors(tmp_path):
    params = config.load_params()  # full: CIFAR-10, its 50,000 training images less val_size
    held = params["data"]["val_size"]
    expected = f"training images {50_000 - held:,} of CIFAR-10, {held:,} more held out"
    names = ["batch_sweep", "group_sweep", "norm_compare"]
    page = html_lib.unescape(study_pages(params, names, tmp_path))
    for name in names:
        choices = re.search(r"Recipe choices behind these numbers: (.*?)</p>", section(page, name))
        assert expected in choices.group(1), name
        assert "trained on all 50,000 images of their training set" in choices.group(1), name
