"""Seed 002's NF-ResNet grid: validation accuracy over learning rate x batch size."""

from __future__ import annotations

import math

import pandas as pd

from normrepro import plots
from normrepro.claim_cells import EACH, OTHERS
from normrepro.claims import Claim
from normrepro.studies.common import (
    StudyData,
    choices_note,
    config_values,
    figure_if,
    finished,
    join_numbers,
    num,
    pct,
    ran,
    ref_label,
    ref_num,
    reference_note,
    stat_cell,
    survivorship,
    table,
)

QUANTITY = "accuracy"  # seed 002 prints validation accuracy
SOURCE = "seed 002 (NF-ResNet, Potala): CIFAR-10 validation accuracy % after 40 epochs"
VAL_ACC = {  # (lr, batch_size) -> validation accuracy % after 40 epochs
    (0.001, 32): 79.88,
    (0.001, 64): 73.54,
    (0.001, 128): 65.76,
    (0.001, 256): 54.54,
    (0.01, 32): 83.65,
    (0.01, 64): 85.01,
    (0.01, 128): 84.23,
    (0.01, 256): 81.36,
    (0.1, 32): 10.14,
    (0.1, 64): 10.14,
    (0.1, 128): 10.14,
    (0.1, 256): 10.14,
}
DIVERGED_LR = 0.1  # every lr = 0.1 cell of the published grid stayed at chance (10.14 %)
EXPECTED = (
    "lr 0.01 best at every batch size (81–85 %), lr 0.001 falling with batch size (80 → 55 %), "
    f"lr {DIVERGED_LR:g} diverged (10.14 % = chance)."
)
# Seed 002 is silent on the optimizer: the NF-ResNets paper's (Brock et al. 2021).
CHOICES = [
    ("Nesterov", "optim.nesterov", "seed 002 silent: the NF-ResNets paper's SGD + Nesterov"),
    ("momentum", "optim.momentum", "seed 002 silent: the NF-ResNets paper's"),
    ("weight decay", "optim.weight_decay", "seed 002 silent: the NF-ResNets paper's"),
    ("weight decay on the gains", "optim.wd_on_norm", "gains are scales, not weights"),
    ("schedule", "optim.schedule", "seed 002 silent: the NF-ResNets paper's cosine"),
    ("adaptive gradient clipping", "optim.agc", "seed 002 did not use it"),
]


def build(sd: StudyData) -> list[dict]:
    s = sd.summary
    lrs = sorted(set(s["lr"]))
    batches = sorted(set(s["batch_size"]))
    cells = {(r["lr"], r["batch_size"]): r for _, r in s.iterrows()}
    # Heatmap inputs (lr rows x batch columns) and the table (batch rows x lr column pairs).
    values = pd.DataFrame(math.nan, index=[f"{lr:g}" for lr in lrs], columns=batches)
    labels = pd.DataFrame("not planned", index=values.index, columns=batches)
    body = {b: [num(b)] for b in batches}
    for lr in lrs:
        for b in batches:
            r = cells.get((lr, b))
            c = stat_cell(r, "val_acc") if r is not None else num("not planned", "missing")
            lost = survivorship(r) if r is not None else ""
            if r is not None and not pd.isna(r["val_acc_mean"]):
                values.loc[f"{lr:g}", b] = 100 * r["val_acc_mean"]
                text = pct(r["val_acc_mean"], 1)
            else:
                text = c["text"].split(" ")[0]  # diverged, missing, ...
            labels.loc[f"{lr:g}", b] = f"{text}\n{lost}" if lost else text
            pub = VAL_ACC.get((float(lr), int(b)))
            body[b] += [c, ref_num(pub, 2, "diverged" if lr == DIVERGED_LR else "")]
    cols = [("batch", True)]
    for lr in lrs:
        cols += [(f"lr {lr:g}: ours", True), (ref_label(f"lr {lr:g}: seed 002", sd), True, "ref")]
    epochs = join_numbers(config_values(sd, "epochs"))
    fig_caption = (
        f"Ours ({ran(sd)}): validation accuracy (%) after the last epoch, mean over seeds; "
        "hatched: no ok run; n/planned and the diverged count (div.) under a cell that lost runs."
    )
    caption = (
        f"Learning rate × batch size, ours ({ran(sd)}): validation accuracy % at the last epoch, "
        "mean ± 95% CI (n), beside seed 002's."
    )
    return [
        figure_if(
            finished(sd),
            fig_caption,
            plots.heatmap,
            values,
            labels,
            "batch size",
            "learning rate",
            f"validation accuracy after {epochs} epochs (%)",
        ),
        table(caption, cols, list(body.values())),
        reference_note(SOURCE, EXPECTED, sd),
        choices_note(sd, CHOICES),
    ]


# ---------------------------------------------------------------------------- claims (ledger)
# Seed 002's grid as tests (src/normrepro/claims.py), one entry per batch size of the grid (and
# per other lr): validation error, as seed 002 printed validation accuracy.
GRID = "seed 002 (NF-ResNet, Potala): lr x batch grid, validation accuracy after 40 epochs"
BEST_LR = 0.01


def _lr_gap(cells: dict) -> float | None:
    """Seed 002's validation accuracy at lr 0.01 minus at the other lr, at the entry's batch:
    the error lr 0.01 saves (None where seed 002 did not run that cell)."""
    b = cells["b"]
    try:
        key = (float(b["lr"]), int(b["batch_size"]))
    except (TypeError, ValueError):
        return None
    best, other = VAL_ACC.get((BEST_LR, key[1])), VAL_ACC.get(key)
    return None if best is None or other is None else round(best - other, 2)


CLAIMS = [
    Claim(
        id="lr0p1_diverges",
        source=GRID,
        statement=f"At lr {DIVERGED_LR:g} the net stays at chance (seed 002: diverged, 10.14 % "
        "validation accuracy): its validation error equals 89.86 % within the margin, a diverged "
        "run counting at chance.",
        test="value",
        a={"lr": DIVERGED_LR, "batch_size": EACH},
        margin_key="chance",
        published=round(100 - VAL_ACC[(DIVERGED_LR, 32)], 2),
        published_source=f"{SOURCE}: 10.14 % at every batch size",
        metric="val_acc",
        chance_counts=True,
    ),
    Claim(
        id="lr0p01_best",
        source=GRID,
        statement=f"lr {BEST_LR:g} has a lower validation error than the other lr at this batch.",
        test="difference",
        a={"lr": BEST_LR, "batch_size": EACH},
        b={"lr": OTHERS, "batch_size": EACH},
        direction="a_lower",
        published=_lr_gap,
        published_source=SOURCE,
        metric="val_acc",
    ),
]
