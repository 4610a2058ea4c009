"""Parse-time checks (src/normrepro/preflight.py).

Fast tests call the checks on planned grids built here (synthetic data, files made in tmp_path)
and compare with numbers written in the test. Slow tests run the real `snakemake` in a copy of
the repository: each mistake is refused before any job starts, with the key named, no traceback,
and every file under results/ byte for byte as it was. (YAML's traps: test_yaml_traps.py; the
exit status of a grid with a failed run: test_exit_status.py.)
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from normrepro import config, dataset_files, gpu_slots, grid, preflight

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"model": "resnet20", "norm": "bn", "model_kw": {"depth": 8, "base_width": 4}}
SYNTHETIC = {"name": "synthetic", "root": "data", "download": False, "val_size": 50}
SYNTHETIC |= {"split_seed": 0, "train_subset": 200, "test_subset": 100, "image_size": None}


def make_params(**study) -> dict:
    """params.yaml (the real schema) with one study `tiny` of tiny runs on synthetic data."""
    optim = {"momentum": 0.9, "nesterov": False, "weight_decay": 1.0e-4, "wd_on_norm": True}
    return {
        "scale": "full",
        "data": dict(SYNTHETIC),
        "runtime": {
            "bf16": False,
            "compile": False,
            "channels_last": False,
            "deterministic": False,
            "eval_batch_size": 500,
            "pack": "off",
        },
        "recipes": {
            "tiny": {
                "epochs": 1,
                "lr": 0.05,
                "augment": "standard",
                "normalize": "channel",
                "optim": {**optim, "schedule": "constant"},
            }
        },
        "studies": {
            "tiny": {
                "title": "preflight tests",
                "kind": "generic",
                "recipe": "tiny",
                "variants": [TINY],
                "batch_sizes": [32],
                "n_seeds": 2,
                **study,
            }
        },
    }


def plan(raw: dict) -> tuple[dict, dict[str, list[dict]]]:
    """(checked params, before the preset; study -> run configs), as common.smk makes them."""
    checked = config.check_params(raw)
    return checked, grid.plan(config.apply_preset(checked))


def problems(params: dict, **gpu) -> list[str]:
    checked, runs = plan(params)
    return preflight.find_problems(checked, runs, **gpu)


def image_tree(root: Path, train: dict[str, int], test: dict[str, int]) -> None:
    """ROOT/<split>/<class>/<i>.png files (never decoded here), plus files the reader skips."""
    for split, classes in (("train", train), ("test", test)):
        for cls, n in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.png").write_bytes(b"png?")
            (folder / ".hidden.png").write_bytes(b"")  # hidden: not an image to the reader
            (folder / "notes.txt").write_text("not an image")


def folder_study(root: Path, **data) -> dict:
    return {"data": {"name": "imagefolder", "root": str(root), "image_size": 16, "val_size": 0,
                     "train_subset": None, "test_subset": None, **data}}  # fmt: skip


# ---------------------------------------------------------------- the data is there


def test_a_missing_imagefolder_root_is_refused_naming_the_study_key(tmp_path):
    (line,) = problems(make_params(**folder_study(tmp_path / "nowhere")))
    assert line.startswith(f"studies.tiny.data.root: got '{tmp_path / 'nowhere'}'; no such folder")
    assert "allowed: a folder laid out as ROOT/train/<class>/" in line


def test_an_imagefolder_without_images_is_refused_and_one_with_them_is_counted(tmp_path):
    (tmp_path / "pics" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "pics" / "train" / "cat" / "notes.txt").write_text("no image")
    (line,) = problems(make_params(**folder_study(tmp_path / "pics")))
    assert f"no image in a class folder of {tmp_path / 'pics' / 'train'}" in line

    image_tree(tmp_path / "ok", {"cat": 7, "dog": 5}, {"cat": 2, "dog": 2})
    assert dataset_files.count_images(tmp_path / "ok" / "train") == {"cat": 7, "dog": 5}
    params = make_params(**folder_study(tmp_path / "ok", val_size=2), batch_sizes=[10])
    assert problems(params) == []  # 12 images, 2 for validation: 10 to train on
    params["studies"]["tiny"]["batch_sizes"] = [11]
    (line,) = problems(params)
    assert line == (
        "studies.tiny.batch_sizes: got 11; allowed: batch sizes up to the 10 training images "
        "(the 12-image imagefolder training pool less studies.tiny.data.val_size = 2 "
        "validation images)"
    )


def test_imagefolder_test_classes_must_be_train_classes(tmp_path):
    image_tree(tmp_path / "pics", {"cat": 3}, {"cat": 1, "owl": 1})
    params = make_params(**folder_study(tmp_path / "pics"), batch_sizes=[1])
    (line,) = problems(params)
    assert "test classes owl have no folder under" in line


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist"])
def test_a_dataset_neither_there_nor_downloadable_is_refused(tmp_path, monkeypatch, name):
    monkeypatch.setattr(dataset_files, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-copy")
    params = make_params()
    params["data"] |= {"name": name, "root": str(tmp_path), "download": False}
    params["data"] |= {"train_subset": None, "test_subset": None}
    (line,) = problems(params)
    assert line.startswith(f"data.root: got '{tmp_path}'; {name} is not ")
    assert "data.download is false; allowed:" in line and "data.download: true" in line

    params["data"]["download"] = True  # torchvision fetches it when the run starts
    assert problems(params) == []
    params["data"]["download"] = False
    if name == "cifar10":
        folder = tmp_path / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    else:
        folder = tmp_path / "FashionMNIST" / "raw"
        names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
        names += ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    folder.mkdir(parents=True)
    for n in names:
        (folder / n).write_bytes(b"")
    assert problems(params) == []


def test_the_fashion_mnist_search_agrees_with_the_loader(tmp_path):
    """Both readers of the layout (the trainer's and the torch-free one) find the same folder."""
    pytest.importorskip("torch")
    from normrepro import datasets

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in [s for pair in dataset_files.FASHION_FILES.values() for s in pair]:
        (raw / f"{stem}.gz").write_bytes(b"")
    assert datasets._find_fashion(tmp_path) == dataset_files.find_fashion(tmp_path) == raw
    assert datasets.IMAGE_EXTENSIONS == dataset_files.IMAGE_EXTENSIONS
    assert datasets.DEBIAN_FASHION_MNIST == dataset_files.DEBIAN_FASHION_MNIST


def test_the_dataset_sizes_agree_with_the_loader():
    pytest.importorskip("torch")
    from normrepro import data

    for name, (train, test) in data.FULL_SIZES.items():
        assert (dataset_files.FULL_TRAIN[name], dataset_files.FULL_TEST[name]) == (train, test)
    assert data.SYNTHETIC_SIZES[0] == dataset_files.SYNTHETIC_TRAIN


# ---------------------------------------------------------------- batch sizes fit the data


def test_a_batch_larger_than_the_training_images_is_refused():
    # train_subset 200 is what a run trains on (the 50 val images are drawn first): 200.
    assert problems(make_params(batch_sizes=[200])) == []
    (line,) = problems(make_params(batch_sizes=[8, 201, 512]))
    assert line == (
        "studies.tiny.batch_sizes: got [201, 512]; allowed: batch sizes up to the 200 "
        "training images (data.train_subset = 200)"
    )


def test_a_preset_trim_is_named_where_the_batch_size_comes_from():
    params = make_params()
    params["scale"] = "smoke"
    params["smoke"] = {"studies": {"tiny": {"batch_sizes": [256]}}}
    (line,) = problems(params)
    assert line.startswith("smoke.studies.tiny.batch_sizes: got 256;")


@pytest.mark.parametrize(("train_subset", "val_size"), [(None, 50), (None, 0), (120, 30)])
def test_training_images_agree_with_what_the_loader_returns(train_subset, val_size):
    """preflight's count (no data read) against the real loader's split, synthetic data."""
    pytest.importorskip("torch")
    from normrepro import data

    cfg = {**SYNTHETIC, "train_subset": train_subset, "val_size": val_size, "test_subset": 10}
    assert preflight.train_images(cfg) == len(data.load_splits(cfg).train)


def test_a_split_that_does_not_fit_the_pool_is_refused():
    params = make_params()
    params["data"] |= {"name": "cifar10", "download": True}
    params["data"] |= {"train_subset": 49000, "val_size": 5000}
    (line,) = problems(params)
    assert line.startswith("data.train_subset: got 49000; allowed: at most the 45000 images")


# ---------------------------------------------------------------- the GPUs asked for


def test_a_gpu_request_with_no_gpu_visible_is_refused_naming_both():
    (line,) = problems(make_params(), gpu_request=4, usable_gpus=[])
    assert line.startswith("--resources gpu=4: this machine shows no GPU")
    assert "--config device=cpu" in line
    assert problems(make_params(), gpu_request=4, usable_gpus=[], device="cpu") == []
    assert problems(make_params(), gpu_request=0, usable_gpus=[]) == []
    (line,) = problems(make_params(), gpu_request=3, usable_gpus=["0", "1"])
    assert line.startswith("--resources gpu=3: this machine shows 2 GPUs")


class FakeWorkflow:
    """What check_before_training reads of Snakemake's workflow object."""

    is_main_process = True
    non_local_exec = False

    def __init__(self, gpu: int | None):
        self.global_resources = {"gpu": gpu}


def test_the_workflow_check_probes_the_gpus_like_the_jobs_and_skips_under_slurm(
    monkeypatch, capsys, caplog
):
    planned, runs = plan(make_params())
    monkeypatch.setenv(gpu_slots.ENV_COUNT, "0")  # the probe the jobs use: no GPU here
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(SystemExit) as stop:
        preflight.check_before_training(FakeWorkflow(2), planned, runs, "auto")
    assert stop.value.code == 1
    said = capsys.readouterr().err + caplog.text  # Snakemake's logger, or stderr without it
    assert "--resources gpu=2: this machine shows no GPU" in said
    monkeypatch.setenv(gpu_slots.ENV_COUNT, "2")
    preflight.check_before_training(FakeWorkflow(2), planned, runs, "auto")
    monkeypatch.setenv(gpu_slots.ENV_COUNT, "0")
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # Slurm gives the GPUs
    preflight.check_before_training(FakeWorkflow(2), planned, runs, "auto")


# ---------------------------------------------------------------- a preset keeps a study whole


def preset_over_a_study_with_its_own_data(tmp_path) -> dict:
    image_tree(tmp_path / "pics", {"cat": 40}, {"cat": 4})
    params = make_params(**folder_study(tmp_path / "pics"))
    params["scale"] = "smoke"
    params["smoke"] = {"data": {"name": "fashion-mnist", "val_size": 10, "train_subset": 100}}
    return params


def test_a_preset_that_would_mix_a_studys_data_is_refused(tmp_path):
    params = preset_over_a_study_with_its_own_data(tmp_path)
    lines = problems(params)
    assert lines[0].startswith("studies.tiny.data: got {name: imagefolder, ")
    assert "smoke.data sets name: fashion-mnist, val_size: 10, train_subset: 100" in lines[0]
    assert (
        "smoke.studies.tiny.data" in lines[0] and "smoke.studies.tiny: {enabled: false}" in lines[0]
    )


def test_the_two_fixes_the_message_names_work(tmp_path):
    params = preset_over_a_study_with_its_own_data(tmp_path)
    fixed = copy.deepcopy(params)
    trim = {"name": "imagefolder", "val_size": 4, "train_subset": 32}
    fixed["smoke"]["studies"] = {"tiny": {"data": trim}}
    assert problems(fixed) == []
    _, runs = plan(fixed)
    data = runs["tiny"][0]["data"]  # the trim wins over smoke.data
    assert (data["name"], data["root"], data["val_size"]) == (
        "imagefolder",
        str(tmp_path / "pics"),
        4,
    )
    assert data["train_subset"] == 32

    params["smoke"]["studies"] = {"tiny": {"enabled": False}}
    params["studies"]["other"] = {**params["studies"]["tiny"], "data": {}}
    assert problems(params) == []


# ---------------------------------------------------------------- real snakemake, in a copy


def make_repo(tmp_path: Path, params: dict) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "Snakefile", repo / "Snakefile")
    for name in ("src", "workflow", "profiles"):
        if (ROOT / name).exists():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / name, repo / name, symlinks=True, ignore=ignore)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def snakemake(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    env["PYTHONPATH"] = str(repo / "src")  # the copy's code
    env.pop("SLURM_JOB_ID", None)
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=repo, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def bad_indent(repo: Path) -> int:
    lines = (repo / "params.yaml").read_text().splitlines()
    at = lines.index("studies:") + 3  # the study's second key, one space too far left
    lines[at] = lines[at][1:]
    (repo / "params.yaml").write_text("\n".join(lines) + "\n")
    return at + 1


def with_params(repo: Path, change) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


REFUSALS = {
    # case: (params change, extra snakemake args, env, text the message must hold)
    "missing data root": (
        lambda p: p["studies"]["tiny"].update(folder_study(Path("no/such/images"))),
        [], {}, "studies.tiny.data.root: got 'no/such/images'; no such folder",
    ),
    "batch larger than the data": (
        lambda p: p["studies"]["tiny"].update(batch_sizes=[8, 256]),
        [], {}, "studies.tiny.batch_sizes: got 256; allowed: batch sizes up to the 200 training",
    ),
    "gpu with no gpu visible": (
        None, ["--resources", "gpu=2"], {gpu_slots.ENV_COUNT: "0"},
        "--resources gpu=2: this machine shows no GPU",
    ),
    "a study's data under a preset": (
        lambda p: p.update(scale="smoke", smoke={"data": {"name": "synthetic", "val_size": 10}})
        or p["studies"]["tiny"].update(data={"val_size": 20}),
        [], {}, "studies.tiny.data: got {val_size: 20}, and the smoke preset's smoke.data sets",
    ),
    "nested --config value of the wrong type": (
        None, ["--config", "studies={tiny: {n_seeds: many}}"], {},
        "studies.tiny.n_seeds: got 'many'; allowed: an integer >= 1",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def finished_repo(tmp_path_factory) -> Path:
    """A repo whose tiny grid ran once: results/ holds finished runs, summaries and configs."""
    repo = make_repo(tmp_path_factory.mktemp("preflight"), make_params(n_seeds=1))
    proc = snakemake(repo, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("case", [*REFUSALS, "bad indent"])
def test_each_mistake_is_refused_before_any_job_starts(finished_repo, tmp_path, case):
    repo = tmp_path / "repo"
    shutil.copytree(finished_repo, repo, symlinks=True)
    before = tree_digest(repo / "results")
    if case == "bad indent":
        args, env, expected = [], {}, f"params.yaml:{bad_indent(repo)}:"
    else:
        change, args, env, expected = REFUSALS[case]
        if change:
            with_params(repo, change)
    proc = snakemake(repo, "--cores", "1", *args, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert expected in out, out[-3000:]
    assert "Traceback" not in out and 'File "' not in out and ".smk" not in out, out[-3000:]
    assert "Building DAG" not in out  # refused while parsing: no job was even planned
    assert tree_digest(repo / "results") == before
