"""Seed 001's Figure 1: ResNet-20 test error vs batch size, BN vs GN, with the GN paper's
ImageNet table and public CIFAR-10 reproductions as references."""

from __future__ import annotations

from normrepro import plots
from normrepro import references as ref
from normrepro.claim_cells import REFERENCE, SMALLEST
from normrepro.claims import Claim
from normrepro.studies.common import (
    SURVIVORSHIP,
    StudyData,
    band,
    by_batch_table,
    choices_note,
    dataset_names,
    figure_if,
    finished,
    groups_note,
    model_names,
    norm_display_name,
    ran,
    ref_label,
    ref_num,
    reference_note,
    table,
    train_images_choice,
    with_series,
)

QUANTITY = "error"  # seed 001 and the GN paper plot test error
# What the ResNet-20 numbers set beside ours trained on (our full-scale runs hold out val_size).
ANCHORS_TRAINED_ON = (
    "the ResNet-20 anchors quoted here, He et al. 2015's 8.75 % and the public reproductions, "
    "trained on all 50,000 images of their training set"
)

CLAIM = (
    "seed 001 (ResNet-20, CIFAR-10, 5 seeds): GN error flat across batch sizes; "
    "BN error rises fast below batch 8."
)
# Public BN-vs-GN reproductions of ResNet-20 on CIFAR-10: test error % by batch size.
REPRODUCTIONS = {
    "BeFranke/GroupNorm results.csv (Keras ResNet-20, 100 epochs, 5 seeds, mean)": {
        "bn": {2: 19.70, 4: 15.23, 8: 13.86, 16: 13.60, 32: 13.60},
        "gn": {2: 14.21, 4: 14.03, 8: 14.23, 16: 14.29, 32: 14.05},
    },
    "HickmannLautaro/GroupNorm logs (ResNet-20, 30 epochs, no weight decay, 5 runs, last epoch)": {
        "bn": {2: 20.6, 4: 16.4, 8: 15.7, 16: 15.6, 32: 15.3},
        "gn": {2: 15.6, 4: 15.6, 8: 15.9, 16: 16.1, 32: 16.0},
    },
}
EXPECTED = (
    "from batch 32 to batch 2, BN's error rises by 5–6 points (1–1.6 points at batch 4) while "
    "GN's stays within about ±0.4 points; at batch ≥ 16 GN trails BN by 0.5–1.3 points (public "
    "ResNet-20 reproductions, table above); ResNet-20 BN at batch 128 with the ResNet recipe "
    "reaches 8.3–8.8 % error (He et al. 8.75 %)."
)


def build(sd: StudyData) -> list[dict]:
    s = with_series(sd.summary, names=model_names(sd))
    data = " / ".join(dataset_names(sd, False))
    caption = (
        f"Figure 1, ours ({ran(sd)}): test error vs batch size, mean over seeds, shaded 95% CI. "
        + SURVIVORSHIP
    )
    # A cell without ok runs is a gap in its line (its note still says what happened).
    fig = figure_if(
        finished(sd),
        caption,
        plots.line_bands,
        band(s, "test_err"),
        "batch_size",
        "series",
        "batch size (images per step, log2 scale)",
        f"test error on {data} (%)",
        logx2=True,
        bounds=(0.0, 100.0),
    )
    ours = f"Ours: test error %, mean ± 95% CI (n), by batch size ({ran(sd)})."
    batches = sorted({b for rows in REPRODUCTIONS.values() for b in rows["bn"]})
    rep_cols = [("Source", False), ("Norm", False)]
    rep_cols += [(f"batch {b}", True) for b in batches]
    rep_rows = [
        [src, norm_display_name(norm)] + [ref_num(by_batch.get(b), 2) for b in batches]
        for src, rows in REPRODUCTIONS.items()
        for norm, by_batch in rows.items()
    ]
    gn_batches = list(ref.GN_ERROR_BY_BATCH["bn"])
    gn_cols = [("Norm", False)]
    gn_cols += [(f"{b} / GPU", True) for b in gn_batches]
    gn_rows = [
        [norm_display_name(norm)] + [ref_num(v, 1) for v in by_batch.values()]
        for norm, by_batch in ref.GN_ERROR_BY_BATCH.items()
    ]
    return [
        fig,
        by_batch_table(ours, s, "test_err", "Norm"),
        table(
            ref_label("Published: public ResNet-20 reproductions on CIFAR-10, test error %", sd)
            + ".",
            rep_cols,
            rep_rows,
            cls="ref",
        ),
        table(
            ref_label(f"Published: {ref.GN_PAPER_SOURCE}, by images per GPU", sd, "imagenet")
            + "; another dataset and network: compare the shape only.",
            gn_cols,
            gn_rows,
            cls="ref",
        ),
        reference_note(f"{CLAIM} Second anchor: the public reproductions above", EXPECTED, sd),
        groups_note(sd),
        choices_note(sd, ref.RESNET20_CHOICES, [train_images_choice(sd, ANCHORS_TRAINED_ON)]),
    ]


# ---------------------------------------------------------------------------- claims (ledger)
# Seed 001's Figure 1 as tests (src/normrepro/claims.py). The published effects are seed 001's
# own numbers: its author's results.csv (REPRODUCTIONS' first source), read at the batches the
# grid resolves SMALLEST and REFERENCE to.
SEED_001 = "seed 001 (Franke), Figure 1"
FRANKE = next(iter(REPRODUCTIONS))
FRANKE_SOURCE = "seed 001's results.csv (BeFranke/GroupNorm): mean error of 5 seeds, ResNet-20"


def franke_err(norm: str, batch) -> float | None:
    """Seed 001's error % of a norm at a batch; a batch above the table's largest (32) reads as
    32 (BN and GN are flat from 16 up there); None where the table has no such batch."""
    table = REPRODUCTIONS[FRANKE][norm]
    try:
        return table.get(min(int(batch), max(table)))
    except (TypeError, ValueError):  # an unresolved selector: the grid has no batch
        return None


def franke_effect(norm_a: str, norm_b: str, sign: float):
    """published(cells) = sign * (err_a - err_b) at the resolved batches (claims.Claim)."""

    def effect(cells: dict) -> float | None:
        a = franke_err(norm_a, cells["a"]["batch_size"])
        b = franke_err(norm_b, cells["b"]["batch_size"])
        return None if a is None or b is None else round(sign * (a - b), 2)

    return effect


# Seed 003's GN+WS claims: they hold in any study with GN+WS beside BN and GN (this one at
# laptop scale, norm_compare, pets), declared here where those kinds import them from.
SEED_003 = "seed 003 (GN blog post): GN+WS beat BN at batch 4 and 1 on Oxford Pets, GN did not"
SEED_000_GNWS = (
    "seed 000's Table 2: WRN-28-10 GN+WS 94.75 % vs BN 91.13 % at batch 128, the only "
    "printed GN+WS vs BN difference on CIFAR-10 (seed 003 prints no numbers)"
)
GN_WS_CLAIMS = [
    Claim(
        id="gnws_beats_bn_at_smallest_batch",
        source=SEED_003,
        statement="At the smallest batch GN+WS's error is lower than BN's.",
        test="difference",
        a={"norm": "gn_ws", "batch_size": SMALLEST},
        b={"norm": "bn", "batch_size": SMALLEST},
        direction="a_lower",
        published=round(94.75 - 91.13, 2),
        published_source=SEED_000_GNWS,
    ),
    Claim(
        id="gnws_beats_gn_at_smallest_batch",
        source=f"{SEED_003}; seed 000 (WS is what makes GN beat BN)",
        statement="At the smallest batch GN+WS's error is lower than GN's.",
        test="difference",
        a={"norm": "gn_ws", "batch_size": SMALLEST},
        b={"norm": "gn", "batch_size": SMALLEST},
        direction="a_lower",
        published_source="not printed by any seed",
    ),
]
CLAIMS = [
    Claim(
        id="bn_worse_at_smallest_batch",
        source=SEED_001,
        statement="BN's error at the smallest batch exceeds BN's at the reference batch.",
        test="difference",
        a={"norm": "bn", "batch_size": SMALLEST},
        b={"norm": "bn", "batch_size": REFERENCE},
        direction="a_higher",
        published=franke_effect("bn", "bn", 1.0),
        published_source=FRANKE_SOURCE,
    ),
    Claim(
        id="gn_flat",
        source=SEED_001,
        statement="GN's error at the smallest batch is equivalent to GN's at the reference batch.",
        test="equivalence",
        a={"norm": "gn", "batch_size": SMALLEST},
        b={"norm": "gn", "batch_size": REFERENCE},
        margin_key="gn_flat",
        published=franke_effect("gn", "gn", 1.0),
        published_source=FRANKE_SOURCE,
    ),
    Claim(
        id="gn_beats_bn_at_smallest_batch",
        source=SEED_001,
        statement="At the smallest batch GN's error is lower than BN's.",
        test="difference",
        a={"norm": "gn", "batch_size": SMALLEST},
        b={"norm": "bn", "batch_size": SMALLEST},
        direction="a_lower",
        published=franke_effect("gn", "bn", -1.0),
        published_source=FRANKE_SOURCE,
    ),
    Claim(
        id="gn_close_to_bn_at_reference",
        source=f"{SEED_001}; the public reproductions (GN trails BN by 0.5-1.3 points)",
        statement="At the reference batch GN's error is within the margin of BN's.",
        test="equivalence",
        a={"norm": "gn", "batch_size": REFERENCE},
        b={"norm": "bn", "batch_size": REFERENCE},
        margin_key="gn_vs_bn",
        published=franke_effect("gn", "bn", 1.0),
        published_source=FRANKE_SOURCE,
    ),
    *GN_WS_CLAIMS,  # not run unless the grid has GN+WS (the laptop preset adds it)
]
