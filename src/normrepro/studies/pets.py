"""Seed 003's Oxford Pets experiment: ResNet-34 with BN, GN and GN+WS at batch 4 and 1."""

from __future__ import annotations

from normrepro.studies.batch_sweep import GN_WS_CLAIMS
from normrepro.studies.common import (
    StudyData,
    by_batch_table,
    model_names,
    note,
    ran,
    test_bars,
    with_series,
)

QUANTITY = "error"  # seed 003 speaks of error

CLAIM = (
    "seed 003 (ResNet-34/50 on Oxford Pets): GN alone was worse than BN even at batch 4; "
    "GN + WS beat BN at batch 1."
)


def build(sd: StudyData) -> list[dict]:
    s = with_series(sd.summary, names=model_names(sd))
    ours = f"Ours: test error %, mean ± 95% CI (n), by batch size ({ran(sd)})."
    return [
        test_bars(sd, s, QUANTITY),
        by_batch_table(ours, s, "test_err", "Model / norm"),
        note(f"Published claim (no numbers printed): {CLAIM}", "ref"),
    ]


# ---------------------------------------------------------------------------- claims (ledger)
# Seed 003's own experiment: its GN+WS claims (declared in batch_sweep, src/normrepro/claims.py).
CLAIMS = list(GN_WS_CLAIMS)
