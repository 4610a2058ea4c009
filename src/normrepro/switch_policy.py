"""Which runtime switches the trainer uses on CUDA (train.DEVICE_SWITCHES["cuda"]), read from
the GPU check's committed measurement (benchmarks/switch_policy.json), never a hand edit.

`make gpu-check ARGS=--write-policy` on a GPU writes that file: for ResNet-20 at each batch
size and norm it timed, the images/s of the four eager combinations of channels_last and bf16
autocast (fp32 NCHW, channels_last, bf16, both), of torch.compile (default mode) on top of the
trainer's setting, and the bf16 - fp32 test-accuracy differences of its parity runs. This
module decides from them:

- bf16 may be on only if the parity runs' mean bf16 - fp32 difference is above -PARITY_DROP
  (no parity result: as before any measurement);
- channels_last and bf16: the allowed combination with the best geometric-mean speed over the
  timed cells (every cell counts once, so no batch size dominates);
- compile: on if its geometric-mean speed ratio beats MIN_GAIN (its compile time, a minute or
  so per job, is small beside a full-scale run's hours).

With no file (no GPU has run the check yet) the switches stay what they were before any
measurement, UNMEASURED: the seeds' setting, all three on where the run config allows them.
The measurement that would change them is exactly the one above.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

from normrepro.io_utils import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
POLICY_PATH = REPO / "benchmarks" / "switch_policy.json"
ENV_PATH = "NORMREPRO_SWITCH_POLICY"
UNMEASURED = {"channels_last": True, "bf16": True, "compile": True}
MIN_GAIN = 1.05  # as pack_policy: a smaller gain is within the rounds' spread
PARITY_DROP = 0.01  # one point of test accuracy: what 2 seeds x 3 epochs can resolve at best
COMBOS = {  # name of the timed eager variant -> (channels_last, bf16)
    "fp32": (False, False),
    "cl": (True, False),
    "bf16": (False, True),
    "cl_bf16": (True, True),
}


def policy_path() -> Path:
    return Path(os.environ.get(ENV_PATH) or POLICY_PATH)


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def decide(measured: dict) -> tuple[dict[str, bool], list[str]]:
    """(switches, one reason per switch) from a measurement: measured["speed"][variant] is a
    list of per-cell images/s ratios to fp32 (cl_bf16's compile: measured["compile"], ratios to
    cl_bf16), measured["parity"]["mean"] the mean bf16 - fp32 test-accuracy difference."""
    speed, parity = measured["speed"], measured.get("parity") or {}
    unmeasured = parity.get("mean") is None  # the parity runs did not run: bf16 as it was
    bf16_ok = UNMEASURED["bf16"] if unmeasured else parity["mean"] > -PARITY_DROP
    allowed = {n: v for n, v in COMBOS.items() if bf16_ok or not v[1]}
    gains = {"fp32": 1.0}
    gains.update({n: geomean(speed[n]) for n in allowed if n != "fp32" and speed.get(n)})
    best = max(gains, key=gains.get)
    cl, bf16 = COMBOS[best]
    why = [
        f"channels_last={cl}, bf16={bf16}: the fastest allowed eager setting ({best}: "
        f"{gains[best]:.2f}x fp32 NCHW, geometric mean over the timed cells)",
        f"bf16 {'allowed' if bf16_ok else 'not allowed'}: parity bf16 - fp32 = "
        + (
            f"{parity['mean'] * 100:+.2f} points"
            if parity.get("mean") is not None
            else "unmeasured (unchanged)"
        )
        + f" (limit -{PARITY_DROP * 100:.0f})",
    ]
    if measured.get("compile"):
        gain = geomean(measured["compile"])
        on = gain > MIN_GAIN
        why.append(f"compile={on}: {gain:.2f}x the eager trainer setting (needs > {MIN_GAIN}x)")
    else:
        on = UNMEASURED["compile"]
        why.append(f"compile={on}: not measured, unchanged")
    return {"channels_last": cl, "bf16": bf16, "compile": on}, why


def cuda_switches(path=None) -> dict[str, bool]:
    """The CUDA switches: decided from the committed measurement, UNMEASURED without one."""
    path = Path(path) if path is not None else policy_path()
    try:
        measured = json.loads(path.read_text())["measured"]
    except FileNotFoundError:
        return dict(UNMEASURED)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable switch policy ({err!r})") from None
    return decide(measured)[0]


def record(measured: dict, source: str, machine: str, **extra) -> Path:
    """Write the CUDA measurement (see decide) with its provenance and the decision it implies."""
    switches, why = decide(measured)
    path = policy_path()
    body = {
        "about": "GPU check measurement that train.DEVICE_SWITCHES['cuda'] is decided from "
        "(src/normrepro/switch_policy.py). Written by benchmarks/gpu_check.py --write-policy, "
        "never by hand.",
        "source": source,
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        **extra,
        "decision": switches,
        "why": why,
        "measured": measured,
    }
    atomic_write_text(path, json.dumps(body, indent=1) + "\n")
    return path
