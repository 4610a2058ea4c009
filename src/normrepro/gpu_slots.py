"""One GPU per live train job: `snakemake --cores 8 --resources gpu=4` on a 4-GPU machine runs
four train jobs, each on a GPU of its own.

Snakemake counts the `gpu` resource but assigns no device (every job would open GPU 0). Here each
job, before CUDA initialises, takes a slot: an exclusive flock on SLOTS_DIR/gpu-<id>.lock for one
of the GPUs it may use, tried in order without blocking, so no two live jobs ever hold the same
one; then it sets CUDA_VISIBLE_DEVICES to that GPU alone (torch then sees it as cuda:0). The
kernel drops the lock when the process ends, however it ends (exit, crash, SIGKILL): nothing is
left for anyone to clean up. The locks live in one folder per user of the machine (not per
checkout), since two grids of two checkouts share the same GPUs.

- The GPUs a job may use: CUDA_VISIBLE_DEVICES's entries when the user narrows them, otherwise
  the machine's NVIDIA GPUs 0..n-1 (counted from the /dev/nvidiaN nodes or `nvidia-smi -L`,
  without initialising CUDA). The run's train.log and metrics.json (`gpu`) name the GPU used.
- Under Slurm (SLURM_JOB_ID set) Slurm has assigned the GPU: nothing is allocated here.
- A packed job (several runs in one process) is one process and takes one slot.
- `check_request` (workflow/rules/common.smk, at parse time): `--resources gpu=N` above the
  machine's count is refused before any job starts.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ENV_DIR = "NORMREPRO_GPU_SLOTS_DIR"  # where the slot locks live (tests point it elsewhere)
ENV_COUNT = "NORMREPRO_GPU_COUNT"  # the machine's GPU count, for tests on a CPU machine
POLL_S = 0.05  # all slots busy: how often to try again


@dataclass
class Slot:
    """A GPU this process holds: `gpu` is its id as CUDA_VISIBLE_DEVICES names it (an index or
    a UUID), `index` its position among the usable GPUs, `fd` the held lock (open for life)."""

    index: int
    gpu: str
    fd: int


def slots_dir() -> Path:
    """/tmp/normrepro-gpu-slots-<uid>: a fixed path, not $TMPDIR, which Snakemake may set per job
    (every job of the machine must see the same locks)."""
    return Path(os.environ.get(ENV_DIR) or f"/tmp/normrepro-gpu-slots-{os.getuid()}")


def machine_gpu_count() -> int:
    """NVIDIA GPUs this machine (or container) exposes, without initialising CUDA: the
    /dev/nvidiaN device nodes, else `nvidia-smi -L`; 0 without a driver. NORMREPRO_GPU_COUNT
    overrides it (tests simulate a multi-GPU machine on the CPU)."""
    forced = os.environ.get(ENV_COUNT, "")
    if forced.isdigit():
        return int(forced)
    nodes = [p for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)]
    if nodes:
        return len(nodes)
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def usable_gpus(env=None, machine_count: int | None = None) -> list[str]:
    """The GPUs a job may use, as CUDA_VISIBLE_DEVICES names them: its entries when it is set
    (an empty value or -1 hides every GPU), else '0'..'n-1' for the machine's n GPUs; none on
    a machine without GPUs."""
    env = os.environ if env is None else env
    n = machine_gpu_count() if machine_count is None else machine_count
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if n == 0:
        return []  # no GPU here, whatever CUDA_VISIBLE_DEVICES says
    if visible is not None:
        ids = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry or entry.startswith("-"):  # CUDA stops at the first invalid entry
                break
            ids.append(entry)
        return ids
    return [str(i) for i in range(n)]


def _lock_path(folder: Path, gpu: str) -> Path:
    return folder / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock"


def claim(gpus: list[str], folder: str | os.PathLike | None = None, wait: bool = True) -> Slot:
    """Hold the first free slot of `gpus` (waiting while all are held, if `wait`). The returned
    Slot's lock is released when its fd is closed or the process ends."""
    if not gpus:
        raise ValueError("gpu_slots.claim: no GPU to claim (the list of usable GPUs is empty)")
    folder = Path(folder) if folder is not None else slots_dir()
    folder.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        for index, gpu in enumerate(gpus):
            fd = os.open(_lock_path(folder, gpu), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for a human
            return Slot(index, gpu, fd)
        if not wait:
            raise BlockingIOError(f"every GPU slot is held: {', '.join(gpus)} (in {folder})")
        if not said:
            print(f"all {len(gpus)} GPUs are in use by other jobs; waiting", file=sys.stderr)
            said = True
        time.sleep(POLL_S)


_HELD: Slot | None = None  # this process's slot, kept (and its lock held) until it exits


def claim_for_job(device: str) -> Slot | None:
    """The train job's hook, called before CUDA initialises: on a GPU machine (device auto or
    cuda), hold a slot and show the job that GPU alone. None on the CPU, under Slurm (which
    assigned the GPU itself) and where no GPU is visible. Repeated calls return the same slot."""
    global _HELD
    if _HELD is not None:
        return _HELD
    if device == "cpu" or os.environ.get("SLURM_JOB_ID"):
        return None
    gpus = usable_gpus()
    if not gpus:
        return None
    _HELD = claim(gpus)
    os.environ["CUDA_VISIBLE_DEVICES"] = _HELD.gpu
    return _HELD


def job_gpu() -> str | None:
    """The GPU this process trains on, as CUDA_VISIBLE_DEVICES names it (torch's cuda:0): the
    slot's, Slurm's or the user's choice; '0' when nothing narrows the view."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[0].strip() if visible else "0"


def describe(device) -> str:
    """The device for a log line: 'cuda (GPU 2)' names the machine's GPU; 'cpu' as is."""
    return f"{device} (GPU {job_gpu()})" if str(device).startswith("cuda") else str(device)


def resource_value(resource) -> int | None:
    """An int from Snakemake's `workflow.global_resources[...]` (a Resource object in Snakemake
    9, a plain int before); None when not given."""
    value = getattr(resource, "value", resource)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_request(requested: int | None, available: int) -> None:
    """`--resources gpu=N` must not promise more GPUs than the machine shows."""
    if requested is not None and available > 0 and requested > available:
        raise ValueError(
            f"--resources gpu={requested}: this machine shows {available} GPU"
            f"{'s' if available != 1 else ''} (CUDA_VISIBLE_DEVICES or the driver); "
            f"allowed: gpu=1..{available}"
        )
