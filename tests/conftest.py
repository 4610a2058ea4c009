"""Shared test setup. The code under test is the installed package `normrepro` (pip install -e .).

`smoke_grid`: the 40-run smoke grid, run once per test session (`make smoke`'s command in a copy
of the project that is a git repository with DVC and no dvc.lock) and shared by every test that
needs a finished grid; a test that changes it works on its own copy (`copy_of`).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
BIN = VENV / "bin"
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
FMNIST = Path("/usr/share/datasets/fashion-mnist")
# What a copy of the project leaves out: the environment, every result, caches.
NOT_COPIED = (".venv", "results", ".snakemake", "reports", "data", ".git", ".make", "__pycache__",
              "*.egg-info", "cache", "tmp", "config.local", ".pytest_cache", ".ruff_cache")  # fmt: skip


def sh(cmd: list[str], cwd: Path, timeout: int = 1200, check: bool = True):
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def git_commit(repo: Path, message: str) -> None:
    who = ["-c", "user.name=t", "-c", "user.email=t@t"]
    sh(["git", *who, "add", "-A"], repo)
    sh(["git", *who, "commit", "-qm", message], repo)


def copy_project(dest: Path) -> Path:
    """The project as a fresh clone has it (code, params.yaml, dvc.yaml, .dvc/, profiles/), its
    .venv linked; a git repository with one commit."""
    shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(*NOT_COPIED))
    (dest / ".venv").symlink_to(VENV)
    sh(["git", "init", "-q"], dest)
    git_commit(dest, "init")
    return dest


def copy_of(repo: Path, dest: Path) -> Path:
    """A copy of a finished grid's repository (results, .snakemake, .git and all)."""
    shutil.copytree(repo, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory) -> Path:
    """The smoke grid, finished, as `make smoke` leaves it: params.yaml says `scale: full`, the
    grid was run with --config scale=smoke, and there is no dvc.lock. Read it; do not change it
    (copy_of it first)."""
    if not FMNIST.is_dir():
        pytest.skip(f"{FMNIST} missing: apt-get install dataset-fashion-mnist (CI installs it)")
    repo = copy_project(tmp_path_factory.mktemp("smoke") / "repo")
    sh([str(BIN / "snakemake"), "--cores", "2", "--config", "scale=smoke"], repo, timeout=1800)
    return repo
