"""Seed 003's comparison of BN / LN / IN / GN / GN+WS / BN+WS, here on ResNet-20 at a normal and
a tiny batch size, with the GN paper's ImageNet numbers by method as a reference."""

from __future__ import annotations

from normrepro import references as ref
from normrepro.studies.common import (
    StudyData,
    accuracy_bars,
    by_batch_table,
    choices_note,
    groups_note,
    ran,
    ref_label,
    reference_note,
    with_series,
)

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
    s = with_series(sd.summary)
    norms = dict(zip(s["series"], s["norm"], strict=True))

    def gn_paper(series):
        v = ref.GN_ERROR_BY_METHOD.get(norms[series])
        return v and f"{v:.1f}"

    caption = f"Ours: test accuracy %, mean ± 95% CI (n) ({ran(sd)})."
    label = ref_label("GN paper err % (batch 32)", sd, ref.GN_PAPER_DATASET)
    blocks = [
        accuracy_bars(sd, s),
        by_batch_table(caption, s, "test_acc", "Norm", {label: gn_paper}),
        reference_note(ref.GN_PAPER_SOURCE, EXPECTED, sd, ref.GN_PAPER_DATASET),
    ]
    return [*blocks, groups_note(sd), choices_note(sd, CHOICES)]
