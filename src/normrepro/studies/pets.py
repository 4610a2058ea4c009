"""Seed 003's Oxford Pets experiment: ResNet-34 with BN, GN and GN+WS at batch 4 and 1."""

from __future__ import annotations

from normrepro.studies.common import (
    StudyData,
    accuracy_bars,
    by_batch_table,
    note,
    ran,
    with_series,
)

CLAIM = (
    "seed 003 (ResNet-34/50 on Oxford Pets): GN alone was worse than BN even at batch 4; "
    "GN + WS beat BN at batch 1."
)


def build(sd: StudyData) -> list[dict]:
    s = with_series(sd.summary)
    ours = f"Ours: test accuracy %, mean ± 95% CI (n), by batch size ({ran(sd)})."
    return [
        accuracy_bars(sd, s),
        by_batch_table(ours, s, "test_acc", "Model / norm"),
        note(f"Published claim (no numbers printed): {CLAIM}", "ref"),
    ]
