"""Seed 003's comparison of BN / LN / IN / GN / GN+WS / BN+WS, here on ResNet-20 at a normal and
a tiny batch size, with the GN paper's ImageNet numbers by method as a reference."""

from __future__ import annotations

from normrepro import references as ref
from normrepro.claim_cells import REFERENCE
from normrepro.claims import Claim
from normrepro.studies.batch_sweep import ANCHORS_TRAINED_ON, GN_WS_CLAIMS
from normrepro.studies.common import (
    StudyData,
    by_batch_table,
    choices_note,
    groups_note,
    model_names,
    ran,
    ref_label,
    reference_note,
    test_bars,
    train_images_choice,
    with_series,
)

QUANTITY = "error"  # seed 003 and the GN paper beside it speak of error

CHOICES = [
    *ref.RESNET20_CHOICES,
    ("GN and GN+WS groups", "norm_kw.groups", "seed 001's G = 8 for ResNet-20"),
    ("batch", "batch_size", "the project's: a normal and a tiny batch (seed 003 ran Pets at 4, 1)"),
]
EXPECTED = (
    "seed 003 reports that GN+WS beats BN at tiny batches and GN alone did not; the GN paper's "
    "ResNet-50 at 32 images per GPU ranks BN < GN < LN < IN in ImageNet error (an error, not an "
    "accuracy; another dataset and network: compare the ranking only)."
)


def build(sd: StudyData) -> list[dict]:
    s = with_series(sd.summary, names=model_names(sd))
    norms = dict(zip(s["series"], s["norm"], strict=True))

    def gn_paper(series):
        v = ref.GN_ERROR_BY_METHOD.get(norms[series])
        return v and f"{v:.1f}"

    caption = f"Ours: test error %, mean ± 95% CI (n) ({ran(sd)})."
    label = ref_label("GN paper err % (batch 32)", sd, ref.GN_PAPER_DATASET)
    blocks = [
        test_bars(sd, s, QUANTITY),
        by_batch_table(caption, s, "test_err", "Norm", {label: gn_paper}),
        reference_note(ref.GN_PAPER_SOURCE, EXPECTED, sd, ref.GN_PAPER_DATASET),
    ]
    trained = [train_images_choice(sd, ANCHORS_TRAINED_ON)]
    return [*blocks, groups_note(sd), choices_note(sd, CHOICES, trained)]


# ---------------------------------------------------------------------------- claims (ledger)
# The GN paper's claims as tests (src/normrepro/claims.py), after seed 003's GN+WS claims
# (declared in batch_sweep, which every GN+WS study shares).


def gn_paper_gap(norm: str) -> float:
    """The GN paper's error of `norm` minus GN's at 32 images per GPU (ImageNet, ResNet-50)."""
    return round(ref.GN_ERROR_BY_METHOD[norm] - ref.GN_ERROR_BY_METHOD["gn"], 2)


GN_PAPER_GAP = f"{ref.GN_PAPER_SOURCE}, batch 32 per GPU (another dataset and network)"
CLAIMS = [
    *GN_WS_CLAIMS,
    Claim(
        id="gn_beats_ln_at_reference",
        source="GN paper (Wu & He 2018), quoted by seeds 001 and 003",
        statement="At the reference batch GN's error is lower than LN's.",
        test="difference",
        a={"norm": "gn", "batch_size": REFERENCE},
        b={"norm": "ln", "batch_size": REFERENCE},
        direction="a_lower",
        published=gn_paper_gap("ln"),
        published_source=GN_PAPER_GAP,
    ),
    Claim(
        id="gn_beats_in_at_reference",
        source="GN paper (Wu & He 2018), quoted by seeds 001 and 003",
        statement="At the reference batch GN's error is lower than IN's.",
        test="difference",
        a={"norm": "gn", "batch_size": REFERENCE},
        b={"norm": "in", "batch_size": REFERENCE},
        direction="a_lower",
        published=gn_paper_gap("in"),
        published_source=GN_PAPER_GAP,
    ),
]
