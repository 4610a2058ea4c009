"""What `runtime.pack: auto` packs, read from measured speed ratios (never a hand-written rule).

benchmarks/pack_policy.json holds, per device type, the packed / separate images-per-second
ratios a benchmark measured (benchmarks/pack_throughput.py on the CPU, benchmarks/gpu_check.py
on CUDA, each with `--write-policy`), with the command, date and machine that produced them.
This module turns them into the K that `auto` uses for a batch size on a device:

- per batch size and K, the ratio that counts is the lowest median over the norms measured
  (packing must pay for every norm, since a cell of any norm is packed by the same rule);
- K is the pack size with the best such ratio if that ratio exceeds MIN_GAIN, else 1;
- a batch size that was not measured takes the decision of the next larger measured one (or
  the largest): packing shares the per-step overhead, whose share shrinks as the batch grows,
  so the larger neighbour's measurement is the cautious one;
- a device type with no entry is unmeasured: auto does not pack there (K = 1). That is the case
  of CUDA until `make gpu-check` has run on a GPU and its result is committed.

Pure Python (Snakemake imports grid, which calls this, at parse time: no torch import).
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from normrepro.io_utils import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
POLICY_PATH = REPO / "benchmarks" / "pack_policy.json"
ENV_PATH = "NORMREPRO_PACK_POLICY"  # another policy file (tests; a machine of one's own)
# A pack must be at least 5 % faster than its runs one after another: below that, the measured
# gain is within the spread of repeated rounds on a shared machine and not worth a fused job.
MIN_GAIN = 1.05
RECORD_KEYS = ("norm", "batch", "k", "median", "low", "high", "rounds")


class PolicyError(ValueError):
    """The policy file cannot be read; the message names the file and the entry."""


def policy_path() -> Path:
    return Path(os.environ.get(ENV_PATH) or POLICY_PATH)


def load(path: str | os.PathLike | None = None) -> dict:
    """The policy file's content; {"devices": {}} when there is none (nothing measured)."""
    path = Path(path) if path is not None else policy_path()
    try:
        policy = json.loads(path.read_text())
    except FileNotFoundError:
        return {"devices": {}}
    except (OSError, ValueError) as err:
        raise PolicyError(f"{path}: not a readable JSON policy ({err})") from None
    if not isinstance(policy, dict) or not isinstance(policy.get("devices"), dict):
        raise PolicyError(f"{path}: expected an object with a 'devices' object")
    return policy


def _ratios(ratios: list[dict], where: str) -> dict[int, dict[int, float]]:
    """batch -> K -> the lowest median ratio over the norms measured."""
    out: dict[int, dict[int, float]] = {}
    for i, rec in enumerate(ratios):
        try:
            batch, k, median = int(rec["batch"]), int(rec["k"]), float(rec["median"])
        except (KeyError, TypeError, ValueError):
            raise PolicyError(
                f"{where}[{i}]: got {rec!r}; expected keys {', '.join(RECORD_KEYS)}"
            ) from None
        by_k = out.setdefault(batch, {})
        by_k[k] = min(by_k.get(k, median), median)
    return out


def choose(ratios: list[dict], where: str = "ratios") -> dict[int, tuple[int, float]]:
    """Measured batch size -> (K auto uses, the best ratio measured there: K's when K > 1),
    from a device's ratio records (RECORD_KEYS)."""
    out = {}
    for batch, by_k in sorted(_ratios(ratios, where).items()):
        k, ratio = max(by_k.items(), key=lambda item: (item[1], -item[0]))
        out[batch] = (k if ratio > MIN_GAIN else 1, ratio)
    return out


def decisions(device_type: str, path=None) -> dict[int, tuple[int, float]]:
    """choose() over the committed measurement of a device type; empty when unmeasured."""
    entry = load(path)["devices"].get(device_type)
    return choose(entry.get("ratios", []), f"devices.{device_type}.ratios") if entry else {}


def auto_pack_size(batch_size: int, device_type: str, path=None) -> int:
    """Runs per pack that `runtime.pack: auto` uses for this batch size on this device type."""
    table = decisions(device_type, path)
    if not table:  # unmeasured device: no pack (an integer runtime.pack still packs)
        return 1
    larger = [b for b in table if b >= batch_size]
    return table[min(larger) if larger else max(table)][0]


def describe(device_type: str, path=None) -> str:
    """One line for people: what auto does on this device type, and from which measurement."""
    entry = load(path)["devices"].get(device_type)
    if not entry:
        return (
            f"auto on {device_type}: not measured ({policy_path().name} has no "
            f"{device_type} entry), so it does not pack"
        )
    packs = [f"batch {b}: K={k} ({r:.2f}x)" for b, (k, r) in decisions(device_type, path).items()]
    return (
        f"auto on {device_type}: {'; '.join(packs)} | measured {entry.get('date')} on "
        f"{entry.get('machine')} by {entry.get('source')}"
    )


def record(device_type: str, ratios: list[dict], source: str, machine: str, **extra) -> Path:
    """Write one device type's measured ratios into the policy file (the others kept)."""
    for i, rec in enumerate(ratios):
        missing = [k for k in RECORD_KEYS if k not in rec]
        if missing:
            raise PolicyError(f"ratios[{i}]: missing {', '.join(missing)}; got {rec!r}")
    path = policy_path()
    policy = load(path)
    policy.setdefault(
        "about",
        "Measured packed/separate images-per-second ratios; runtime.pack auto picks K from "
        "them (src/normrepro/pack_policy.py). Written by the benchmarks' --write-policy, "
        "never by hand.",
    )
    policy["devices"][device_type] = {
        "source": source,
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        **extra,
        "ratios": [{k: rec[k] for k in RECORD_KEYS} for rec in ratios],
    }
    atomic_write_text(path, json.dumps(policy, indent=1) + "\n")
    return path
