"""A single-node Slurm on this machine, for the cluster-path tests (tests/test_slurm.py).

Debian's packages (`apt-get install slurm-wlm munge`; .ci/run installs them): munged, slurmctld
and slurmd, with every file they write (config, state, spool, pid files, logs, munge socket) in
one temporary folder, on localhost and on ports of their own, so the machine's /etc and any
other Slurm or munge are left alone. No accounting database: the executor plugin is told to ask
`squeue` for job states (`--slurm-status-command squeue`), which also is the status source that
resubmits a `scancel`ed job.

Jobs find the config through a small `srun` wrapper first on PATH: the jobstep plugin strips
every SLURM_* variable (SLURM_CONF included) before it runs `srun` inside the job, and the
wrapper sets SLURM_CONF again. Completed jobs are written, one line each, to `jobcomp.txt`
(jobcomp/filetxt): an independent record of how many jobs Slurm ran and how each ended.

    with SlurmCluster(Path(tempfile.mkdtemp())) as cluster:
        env = cluster.env(os.environ)        # SLURM_CONF + wrapper dir on PATH
        subprocess.run(["sbatch", ...], env=env)
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged")
PARTITION = "debug"


def missing_binaries() -> list[str]:
    """What of Debian's slurm-wlm / munge is not installed (empty when all is there)."""
    needed = (*DAEMONS, "munge", "sbatch", "squeue", "scancel", "scontrol", "srun", "sinfo")
    return [b for b in needed if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> tuple[str, int, int]:
    """(node name, CPUs, RealMemory MiB) as `slurmd -C` sees this machine."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    return fields["NodeName"], int(fields["CPUs"]), int(fields["RealMemory"])


def _wait(condition, what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"Slurm test cluster: {what} not within {timeout:.0f} s\n{tail}")
        time.sleep(0.2)


class SlurmCluster:
    """munged + slurmctld + slurmd under `root`, stopped (by their pid files) on exit.

    cpus: the CPUs the node declares. More than the machine has is allowed
    (SlurmdParameters=config_overrides), so that a packed group job asking for the CPUs of all
    its jobs is scheduled instead of pending forever; the jobs then share the real cores.
    """

    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.node, real_cpus, real_mem = _node_line()
        self.cpus = cpus or real_cpus
        self.mem_mb = max(1000, real_mem - 1000)  # RealMemory must not exceed what slurmd sees
        self.conf = self.root / "slurm.conf"
        self.bin = self.root / "bin"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.jobcomp = self.root / "jobcomp.txt"
        self.ctld_log = self.root / "slurmctld.log"
        self.slurmd_log = self.root / "slurmd.log"
        self._pidfiles = {
            "munged": self.munge_dir / "munged.pid",
            "slurmctld": self.root / "slurmctld.pid",
            "slurmd": self.root / "slurmd.pid",
        }

    # ------------------------------------------------------------------ set up

    def write_config(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        text = f"""\
# Written by tests/slurm_cluster.py: one node, localhost, no cgroups, no accounting.
ClusterName=normrepro-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self._pidfiles["slurmctld"]}
SlurmdPidFile={self._pidfiles["slurmd"]}
SlurmctldLogFile={self.ctld_log}
SlurmdLogFile={self.slurmd_log}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=300
DefMemPerCPU=500
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        self.conf.write_text(text)
        # srun inside a job runs with SLURM_* stripped by the jobstep plugin: restore SLURM_CONF.
        self.bin.mkdir(exist_ok=True)
        wrapper = self.bin / "srun"
        wrapper.write_text(
            f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {shutil.which("srun")} "$@"\n'
        )
        wrapper.chmod(0o755)

    def env(self, base: dict | None = None) -> dict:
        """An environment whose Slurm commands (and jobs' srun) talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _start_munged(self) -> None:
        munge = pwd.getpwnam("munge")
        # munged (as user munge) refuses a socket folder others can write to, and needs to
        # reach it: the folder and its parent 0755, owned by munge.
        self.root.chmod(0o755)
        self.munge_dir.mkdir(exist_ok=True)
        self.munge_dir.chmod(0o755)
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        cmd = [
            "runuser", "-u", "munge", "--", "munged",
            f"--socket={self.munge_socket}",
            f"--pid-file={self._pidfiles['munged']}",
            f"--log-file={self.munge_dir / 'munged.log'}",
            f"--seed-file={self.munge_dir / 'munged.seed'}",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        _wait(self.munge_socket.exists, "munged socket", 20, self.munge_dir / "munged.log")

    def start(self) -> SlurmCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._start_munged()
        env = self.env()
        subprocess.run(["slurmctld", "-f", str(self.conf)], env=env, check=True)
        _wait(lambda: self._ping(env), "slurmctld answering", 30, self.ctld_log)
        subprocess.run(["slurmd", "-f", str(self.conf)], env=env, check=True)
        _wait(lambda: self.node_state() == "idle", "node idle", 60, self.slurmd_log)
        return self

    def _ping(self, env: dict) -> bool:
        proc = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True)
        return "is UP" in proc.stdout

    # ------------------------------------------------------------------ queries

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm command (scontrol, squeue, scancel, ...) against this cluster."""
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr}")
        return proc

    def node_state(self) -> str:
        proc = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return proc.stdout.strip()

    def queue(self) -> list[dict]:
        """Jobs Slurm still holds: id, name, state, comment (the plugin puts rule/wildcards there)."""
        out = self.run("squeue", "-h", "-o", "%i|%j|%T|%k").stdout
        rows = [line.split("|", 3) for line in out.splitlines() if line.strip()]
        return [dict(zip(("id", "name", "state", "comment"), r, strict=True)) for r in rows]

    def completed_jobs(self) -> list[dict]:
        """One dict per job end jobcomp/filetxt recorded (JobId, JobState, ...)."""
        if not self.jobcomp.exists():
            return []
        rows = []
        for line in self.jobcomp.read_text().splitlines():
            rows.append(dict(re.findall(r"(\w+)=(\S*)", line)))
        return rows

    # ------------------------------------------------------------------ tear down

    def stop(self) -> None:
        env = self.env()
        if self._pidfiles["slurmctld"].exists():
            subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self._alive("slurmctld"):
                try:
                    if not self.queue():
                        break
                except (RuntimeError, subprocess.TimeoutExpired):
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            self._kill(name)

    def _pid(self, name: str) -> int | None:
        try:
            return int(self._pidfiles[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _alive(self, name: str) -> bool:
        pid = self._pid(name)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _kill(self, name: str) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while self._alive(name) and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._alive(name):
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
