"""src/gpu_slots.py on the CPU, with a simulated GPU count: no two live jobs share a GPU, a killed
holder frees its GPU at once, and `--resources gpu=N` above the count is refused at parse time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normrepro import gpu_slots

ROOT = Path(__file__).resolve().parents[1]

# A train job's life as far as slots go: claim (waiting while all are held), record the slot and
# the interval it held it (monotonic clock: one clock for every process of the machine), exit.
# With `together` > 0 the jobs first wait until that many have started (a barrier of files), so
# that they all contend at once however slowly a loaded machine starts them.
JOB = """
import json, pathlib, os, sys, time
from normrepro import gpu_slots
ready = pathlib.Path({folder!r}) / "ready"
ready.mkdir(exist_ok=True)
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < {together}:
    time.sleep(0.01)
slot = gpu_slots.claim({gpus!r}, {folder!r})
start = time.monotonic()
time.sleep({hold})
print(json.dumps({{"gpu": slot.gpu, "start": start, "end": time.monotonic()}}), flush=True)
"""


def job_code(folder: Path, gpus: list[str], hold: float, together: int = 0) -> str:
    return JOB.format(
        src=str(ROOT / "src"), gpus=gpus, folder=str(folder), hold=hold, together=together
    )


def test_eight_concurrent_jobs_on_four_slots_never_share_one(tmp_path):
    gpus = gpu_slots.usable_gpus(env={}, machine_count=4)
    assert gpus == ["0", "1", "2", "3"]
    code = job_code(tmp_path, gpus, 1.0, together=8)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    records = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            overlap = a["start"] < b["end"] and b["start"] < a["end"]
            assert not (overlap and a["gpu"] == b["gpu"]), (a, b)
    assert {r["gpu"] for r in records} == set(gpus)  # every GPU was used
    # never more than 4 at once, and 4 at once when 8 contend: the slots are used side by side
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    live = peak = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    assert peak == 4


def test_a_sigkilled_holder_frees_its_slot_at_once(tmp_path):
    gpus = ["0"]
    proc = subprocess.Popen([sys.executable, "-c", job_code(tmp_path, gpus, 60)])
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until the child holds the only slot
            try:
                os.close(gpu_slots.claim(gpus, tmp_path, wait=False).fd)
            except BlockingIOError:
                break
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        with pytest.raises(BlockingIOError, match="every GPU slot is held: 0"):
            gpu_slots.claim(gpus, tmp_path, wait=False)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    slot = gpu_slots.claim(gpus, tmp_path, wait=False)  # free at once: no wait, no cleanup
    assert slot.gpu == "0"
    os.close(slot.fd)


def test_usable_gpus_follow_cuda_visible_devices():
    assert gpu_slots.usable_gpus(env={"CUDA_VISIBLE_DEVICES": "2,5"}, machine_count=8) == ["2", "5"]
    assert gpu_slots.usable_gpus(env={"CUDA_VISIBLE_DEVICES": "1,-1,3"}, machine_count=8) == ["1"]
    assert gpu_slots.usable_gpus(env={"CUDA_VISIBLE_DEVICES": ""}, machine_count=8) == []
    assert gpu_slots.usable_gpus(env={}, machine_count=0) == []
    assert gpu_slots.usable_gpus(env={"CUDA_VISIBLE_DEVICES": "0,1"}, machine_count=0) == []


def test_the_job_hook_narrows_cuda_to_its_slot(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_slots.ENV_DIR, str(tmp_path))
    monkeypatch.setenv(gpu_slots.ENV_COUNT, "8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(gpu_slots, "_HELD", None)
    other = gpu_slots.claim(["2"], tmp_path)  # another live job holds GPU 2
    try:
        assert gpu_slots.claim_for_job("cpu") is None
        slot = gpu_slots.claim_for_job("auto")
        assert slot.gpu == "5" and os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert gpu_slots.job_gpu() == "5" and gpu_slots.describe("cuda") == "cuda (GPU 5)"
        assert gpu_slots.claim_for_job("auto") is slot  # one slot per process
        os.close(slot.fd)
    finally:
        os.close(other.fd)
    monkeypatch.setattr(gpu_slots, "_HELD", None)
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # Slurm chose the GPU: nothing allocated
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu_slots.claim_for_job("auto") is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and gpu_slots.job_gpu() == "3"


def test_check_request_names_both_numbers():
    with pytest.raises(ValueError, match=r"gpu=4: this machine shows 2 GPUs.*gpu=1\.\.2"):
        gpu_slots.check_request(4, 2)
    gpu_slots.check_request(2, 2)
    gpu_slots.check_request(None, 2)  # not given
    gpu_slots.check_request(1, 0)  # a CPU machine: `--resources gpu=1` stays harmless


@pytest.mark.slow
def test_snakemake_refuses_more_gpus_than_the_machine_has(tmp_path):
    work = tmp_path / "w"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(
        ".venv", "results", ".snakemake", "reports", "data", ".git", "*.egg-info", ".make"))  # fmt: skip
    env = {**os.environ, gpu_slots.ENV_COUNT: "2"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("SLURM_JOB_ID", None)
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "2"]
    cmd += ["--config", "scale=smoke", "--resources"]
    res = subprocess.run([*cmd, "gpu=3"], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode != 0
    assert "--resources gpu=3: this machine shows 2 GPUs" in res.stdout + res.stderr
    assert not (work / "results" / "runs").exists()  # nothing ran
    res = subprocess.run([*cmd, "gpu=2"], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
