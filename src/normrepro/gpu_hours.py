"""GPU-hours of the grid from measured step times: the README's "Expected GPU hours" table, made
from `make gpu-check`'s measurement instead of a model of a GPU.

A run costs steps x step time, steps = epochs x batches per epoch of its training images (45,000
for full-scale CIFAR-10: 50,000 less the 5,000 of the val split), as train.py counts them.
Evaluation passes are not counted (the README's table never did). A pack of K runs of a cell
(runtime.pack) takes one packed step per step of each run: each run costs packed step time / K.

Step times come from `StepTimes`: the seconds of one training step that benchmarks/gpu_check.py
measured per (model, norm, batch size, K), with the trainer's CUDA settings. The grid has more
cells than the check measures, so a run without an exact measurement borrows one:
- norm: a norm the check did not time for that model uses its stand-in (NORM_STAND_IN): the
  weight-standardized variants cost about their plain norm, LN and IN are GN with one group or
  one channel a group (the same kernels); GN's group count does not change its cost;
- batch size: between two measured batch sizes the step time is interpolated linearly (a step is
  a fixed overhead plus a per-image cost); above the largest it grows in proportion to the batch
  (compute-bound); below the smallest it is the smallest's (overhead-bound);
- a model the check did not time at all is left out of the totals and counted as unmeasured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from normrepro import grid, runs
from normrepro.augment import batches_per_epoch
from normrepro.data import FULL_SIZES

NORM_STAND_IN = {"bn_ws": "bn", "gn_ws": "gn", "ln": "gn", "in": "gn"}


def train_images(cfg: dict) -> int:
    """Training images of a run (the train pool after the val split, or its subset)."""
    data = cfg["data"]
    if data.get("train_subset") is not None:
        return data["train_subset"]
    if data["name"] not in FULL_SIZES:
        raise ValueError(
            f"data.name {data['name']!r}: its size is not known without loading it; "
            f"allowed: {', '.join(FULL_SIZES)} or a data.train_subset"
        )
    return FULL_SIZES[data["name"]][0] - data.get("val_size", 0)


def steps_per_run(cfg: dict) -> int:
    """Training steps of a run: epochs x batches per epoch (train.py drops a last batch of one)."""
    n, b = train_images(cfg), cfg["batch_size"]
    return cfg["epochs"] * batches_per_epoch(n, b, drop_last=n % b == 1 and b > 1)


@dataclass
class StepTimes:
    """Measured seconds per training step: (model, norm, batch size, K) -> seconds."""

    measured: dict[tuple[str, str, int, int], float] = field(default_factory=dict)

    def add(self, model: str, norm: str, batch: int, k: int, seconds: float) -> None:
        self.measured[(model, norm, batch, k)] = seconds

    def _norm(self, model: str, norm: str, k: int) -> str | None:
        have = {n for (m, n, _, kk) in self.measured if m == model and kk == k}
        if norm in have:
            return norm
        stand_in = NORM_STAND_IN.get(norm)
        return stand_in if stand_in in have else None

    def seconds(self, model: str, norm: str, batch: int, k: int = 1) -> float | None:
        """Seconds of one step (of a pack of k runs) at this batch size; None if unmeasured."""
        norm = self._norm(model, norm, k)
        if norm is None:
            return None
        curve = sorted((b, t) for (m, n, b, kk), t in self.measured.items()
                       if (m, n, kk) == (model, norm, k))  # fmt: skip
        below = [(b, t) for b, t in curve if b <= batch]
        above = [(b, t) for b, t in curve if b >= batch]
        if below and above:
            (b0, t0), (b1, t1) = below[-1], above[0]
            return t0 if b0 == b1 else t0 + (t1 - t0) * (batch - b0) / (b1 - b0)
        if below:  # above the largest measured batch: compute-bound, in proportion
            b0, t0 = below[-1]
            return t0 * batch / b0
        return above[0][1]  # below the smallest: overhead-bound


def study_hours(cfgs: list[dict], times: StepTimes, pack: int) -> dict:
    """One study's GPU-hours, unpacked and with runtime.pack = `pack` (each cell's runs in packs
    of at most `pack`; a pack size the check did not time costs as unpacked)."""
    cells: dict[str, list[dict]] = {}
    for cfg in cfgs:
        cells.setdefault(runs.cell_key(cfg), []).append(cfg)
    row = {"runs": len(cfgs), "unmeasured": 0, "hours": 0.0, "packed_hours": 0.0,
           "steps": [], "step_s": [], "run_h": []}  # fmt: skip
    for members in cells.values():
        cfg = members[0]
        model, norm, batch = cfg["model"], cfg["norm"], cfg["batch_size"]
        alone = times.seconds(model, norm, batch)
        if alone is None:
            row["unmeasured"] += len(members)
            continue
        steps = steps_per_run(cfg)
        row["steps"].append(steps)
        row["step_s"].append(alone)
        row["run_h"].append(steps * alone / 3600)
        row["hours"] += len(members) * steps * alone / 3600
        for i in range(0, len(members), pack):
            k = len(members[i : i + pack])
            packed = times.seconds(model, norm, batch, k) if k > 1 else None
            per_pack_step = packed if packed is not None else k * alone
            row["packed_hours"] += steps * per_pack_step / 3600
    return row


def grid_hours(params: dict, times: StepTimes, pack: int = 5) -> dict[str, dict]:
    """Study name -> study_hours over the enabled studies of the (full-scale) params, plus an
    'all' row. params: params.yaml as read (no validation needed: nothing is trained)."""
    out = {name: study_hours(grid.study_runs(params, name), times, pack)
           for name in grid.studies(params)}  # fmt: skip
    out["all"] = {
        "runs": sum(r["runs"] for r in out.values()),
        "unmeasured": sum(r["unmeasured"] for r in out.values()),
        "hours": sum(r["hours"] for r in out.values()),
        "packed_hours": sum(r["packed_hours"] for r in out.values()),
        "steps": [s for r in out.values() for s in r["steps"]],
        "step_s": [s for r in out.values() for s in r["step_s"]],
        "run_h": [s for r in out.values() for s in r["run_h"]],
    }
    return out


def markdown(hours: dict[str, dict], device_name: str, pack: int) -> list[str]:
    """The README table's rows: per study, runs, steps per run, step time, totals."""

    def span(values, fmt) -> str:
        if not values:
            return "-"
        lo, hi = min(values), max(values)
        return fmt(lo) if math.isclose(lo, hi) else f"{fmt(lo)} ... {fmt(hi)}"

    lines = [
        f"| study | runs | steps per run | step time ({device_name}) | per run | study total | "
        f"packed (K = {pack}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in hours.items():
        note = f" ({r['unmeasured']} runs unmeasured)" if r["unmeasured"] else ""
        lines.append(
            f"| `{name}` | {r['runs']} | {span(r['steps'], _count)} | "
            f"{span(r['step_s'], lambda s: f'{s * 1000:.2f} ms')} | "
            f"{span(r['run_h'], lambda h: f'{h:.2f} h')} | "
            f"{r['hours']:.1f} GPU-h{note} | {r['packed_hours']:.1f} GPU-h |"
        )
    return lines


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else str(n)
