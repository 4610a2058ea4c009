"""One GPU check: every GPU estimate of the project turned into a measurement (issue 22).

    make gpu-check                     # on a machine with one NVIDIA GPU, <= 8 minutes
    python benchmarks/gpu_check.py [--out benchmarks/gpu-check] [--data-tarball TGZ]
        [--data-root DIR] [--budget-s 420] [--write-policy] [--cpu]

Needs PyTorch (with torchvision, PyYAML, tqdm: the project's own imports) and the project's code
(installed, or PYTHONPATH=src); never Snakemake or DVC. Prints progress as it goes and, after
every section, rewrites OUT/gpu_check.json and OUT/gpu_check.md. Sections, in this order:

  resnet20    step time and images/s of ResNet-20, BN and GN (G = 8), at batch 2, 8, 32, 128:
              fp32, channels_last, bf16 autocast, both (src/train.py's CUDA setting), packs of
              2 and 5 runs in that setting; interleaved rounds after the same warm-up
  big_models  the grid's other models (wrn_table, NF-ResNet) in the trainer's setting
  pipeline    crop + flip + normalize of a resident uint8 tensor (src/augment.py), no model
  parity      ResNet-20 BN and GN, 3 epochs on the CIFAR-10 JPEG subset, fp32 vs bf16,
              2 seeds each, trained by src/train.py: the bf16 - fp32 test-accuracy difference
  slots       two trainer processes asking for one GPU: the second must wait (src/gpu_slots.py)
  cuda_tests  the suite's tests that skip without CUDA
  compile     torch.compile default and reduce-overhead vs eager, as the time budget allows
  gpu_hours   the README's GPU-hour table per study from the measured step times

--write-policy (CUDA only) records the implied decisions' measurements in
benchmarks/pack_policy.json (what runtime.pack auto packs on CUDA) and
benchmarks/switch_policy.json (train.DEVICE_SWITCHES["cuda"]). --cpu runs the same code paths
with tiny sizes in seconds (the test suite's guard against rot). Without CUDA and without --cpu
it says so in one line and exits with 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "cuda": {"batches": [2, 8, 32, 128], "norms": ["bn", "gn"], "steps": 30, "rounds": 5,
             "warmup": 3, "big_steps": 10, "big_rounds": 3, "big_batch_cap": None, "image_size": 32,
             "model_kw": {}, "pipeline_images": 8192, "parity_epochs": 3, "parity_batch": 128,
             "parity_seeds": 2, "slot_epochs": 3, "slot_images": 4096, "compile_est_s": 60},
    "cpu": {"batches": [2], "norms": ["bn", "gn"], "steps": 2, "rounds": 2, "warmup": 1,
            "big_steps": 1, "big_rounds": 1, "big_batch_cap": 4, "image_size": 16,
            "model_kw": {"depth": 8, "base_width": 8}, "pipeline_images": 256,
            "parity_epochs": 1, "parity_batch": 8, "parity_seeds": 2, "slot_epochs": 1,
            "slot_images": 64, "compile_est_s": 0},
}  # fmt: skip
SECTIONS = ("resnet20", "big_models", "pipeline", "parity", "slots", "cuda_tests", "compile",
            "gpu_hours")  # fmt: skip
FORBIDDEN = ("snakemake", "dvc")  # the GPU image has neither: importing one is a bug here


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu-check")
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (seconds)")
    ap.add_argument("--data-root", help="CIFAR-10 JPEG imagefolder (default data/cifar10-jpeg)")
    ap.add_argument("--data-tarball", help="cifar10-jpeg-10k.tar.gz, extracted into data/")
    ap.add_argument("--budget-s", type=float, default=420, help="wall-clock budget (compile)")
    ap.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to skip")
    ap.add_argument("--write-policy", action="store_true",
                    help="CUDA: record pack and switch measurements for auto")  # fmt: skip
    ap.add_argument("--keep-runs", action="store_true", help="keep the runs under OUT/work")
    ap.add_argument("--policy-from", type=Path, metavar="JSON",
                    help="only record a finished CUDA check's gpu_check.json for auto (no GPU)")  # fmt: skip
    return ap.parse_args(argv)


def preflight(args) -> str | None:
    """Why the check cannot run here, in one line; None when it can."""
    if args.cpu and args.write_policy:
        return "gpu_check: --write-policy records GPU measurements; it cannot go with --cpu"
    try:
        import torch

        import normrepro.train  # noqa: F401 - the trainer and everything it imports
    except ImportError as err:
        return (f"gpu_check: cannot import {err.name or err} ({err}); run from the repository "
                "root with PYTHONPATH=src (make gpu-check does), or pip install -e .")  # fmt: skip
    try:
        import jsonschema  # noqa: F401 - the trainer validates every run config with it
    except ImportError:
        return ("gpu_check: cannot import jsonschema, which the trainer needs: pip install "
                "jsonschema, or on a machine without internet carry the wheels that "
                "`make gpu-check-wheels` fetches (README: GPU check)")  # fmt: skip
    if not args.cpu and not torch.cuda.is_available():
        return (f"gpu_check: no CUDA device here (torch {torch.__version__} sees none); run it "
                "on a machine with an NVIDIA GPU, or add --cpu for the quick CPU mode")  # fmt: skip
    return None


class Check:
    """The results so far, the clock, and the files they are written to after every section."""

    def __init__(self, args, mode: str):
        self.args, self.mode, self.t0 = args, mode, time.perf_counter()
        self.sizes = SIZES[mode]
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.result = {"check": "benchmarks/gpu_check.py", "mode": mode,
                       "command": " ".join(["benchmarks/gpu_check.py", *sys.argv[1:]]),
                       "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                       "sizes": self.sizes, "sections": {}}  # fmt: skip

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)

    def section(self, name: str, fn) -> None:
        """Run one section; record its result, or why it failed or was skipped; write files."""
        if name in self.args.skip:
            entry = {"status": "skipped", "why": "--skip"}
        elif self.mode == "cuda" and self.elapsed() > self.args.budget_s:
            entry = {"status": "skipped", "why": f"time budget ({self.args.budget_s:.0f} s) spent"}
        else:
            self.say(f"{name} ...")
            t0 = time.perf_counter()
            try:
                entry = {"status": "ok", "result": fn(self)}
            except Exception as err:  # one broken section must not cost the others' numbers
                (self.out / f"{name}.error.txt").write_text(traceback.format_exc())
                entry = {"status": "failed", "why": f"{type(err).__name__}: {err}"}
            entry["seconds"] = round(time.perf_counter() - t0, 1)
        self.result["sections"][name] = entry
        self.say(f"{name}: {entry['status']}" + (f" ({entry['why']})" if "why" in entry else ""))
        self.write()

    def write(self) -> None:
        from gpu_check_report import markdown

        from normrepro.io_utils import atomic_write_text

        self.result["elapsed_s"] = round(self.elapsed(), 1)
        atomic_write_text(self.out / "gpu_check.json", json.dumps(self.result, indent=1) + "\n")
        atomic_write_text(self.out / "gpu_check.md", "\n".join(markdown(self.result)) + "\n")


def environment(device) -> dict:
    import torch

    from normrepro.gitinfo import git
    from normrepro.train import cpu_name

    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "git_rev": git("rev-parse", "HEAD"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.policy_from:  # a GPU's result brought back: record it here, no GPU needed
        import gpu_check_sections as sections

        try:
            lines = sections.write_policies(json.loads(args.policy_from.read_text()))
        except (OSError, ValueError, KeyError) as err:
            print(f"gpu_check: --policy-from {args.policy_from}: {err}", file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 0
    problem = preflight(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    import gpu_check_sections as sections
    import torch

    from normrepro import pack_policy, switch_policy, train

    mode = "cpu" if args.cpu else "cuda"
    device = torch.device(mode)
    # The parity runs call train.main in this process, which claims a GPU slot for life: a
    # folder of its own, so that the check never blocks (or is blocked by) a grid's jobs.
    os.environ.setdefault("NORMREPRO_GPU_SLOTS_DIR", tempfile.mkdtemp(prefix="gpu-check-slots-"))
    train.setup_runtime({"deterministic": False, "threads": None}, device)  # as the trainer
    check = Check(args, mode)
    check.result["env"] = environment(device)
    env = check.result["env"]
    check.say(f"{env['device_name']} | torch {env['torch']} | CUDA {env['cuda']} | "
              f"out: {check.out}")  # fmt: skip
    check.device = device
    for name in SECTIONS:
        check.section(name, sections.SECTIONS[name])
    check.result["decisions"] = sections.decisions(check.result)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    check.result["forbidden_imports"] = loaded
    check.write()
    if args.write_policy:
        for line in sections.write_policies(check.result):
            check.say(line)
        for path in (pack_policy.policy_path(), switch_policy.policy_path()):  # $OUT brings
            if path.is_file():  # back only what is under it (the device tool)
                shutil.copy(path, check.out / path.name)
    failed = [n for n, e in check.result["sections"].items() if e["status"] == "failed"]
    check.say(f"done in {check.elapsed():.0f} s: {check.out / 'gpu_check.md'}"
              + (f"; FAILED: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed or loaded else 0


if __name__ == "__main__":
    sys.exit(main())
