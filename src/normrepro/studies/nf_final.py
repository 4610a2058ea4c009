"""Seed 002's final NF-ResNet run (lr 0.01, batch 64, 200 epochs): test and best validation
accuracy, and the training curves."""

from __future__ import annotations

from normrepro import plots
from normrepro.claims import Claim
from normrepro.studies.common import (
    StudyData,
    choices_note,
    config_values,
    curve_bands,
    figure_if,
    join_numbers,
    no_curve_text,
    note,
    ran,
    ref_label,
    ref_num,
    reference_note,
    stat_cell,
    table,
)
from normrepro.studies.nf_grid import CHOICES

QUANTITY = "accuracy"  # seed 002 prints test and validation accuracy
SOURCE = "seed 002 (NF-ResNet, Potala): final run, CIFAR-10"
PUBLISHED = {"lr": 0.01, "batch_size": 64, "epochs": 200, "test_acc": 89.28, "best_val_acc": 89.78}
EXPECTED = "89.28 % test accuracy (best validation 89.78 %) after 200 epochs at lr 0.01, batch 64."


def build(sd: StudyData) -> list[dict]:
    pub = PUBLISHED
    body = []
    for _, r in sd.summary.iterrows():
        setting = f"lr {r['lr']:g}, batch {r['batch_size']}"
        for label, metric in (
            ("test accuracy %", "test_acc"),
            ("best val accuracy %", "best_val_acc"),
        ):
            body.append([setting, label, stat_cell(r, metric), ref_num(pub[metric])])
    cols = [("Our run", False), ("Metric", False), ("Ours", True)]
    seed = f"Seed 002 (lr {pub['lr']:g}, batch {pub['batch_size']}, {pub['epochs']} epochs)"
    cols += [(ref_label(seed, sd), True, "ref")]
    loss, acc = curve_bands(sd, "train_loss"), curve_bands(sd, "val_acc", 100.0)
    panels = [(loss, "training loss"), (acc, "validation accuracy (%)", (0.0, 100.0))]
    caption = (
        f"Ours ({ran(sd)}): training loss and validation accuracy vs epoch, mean over seeds, "
        "shaded 95% CI (a series whose runs did not all finish is named with n/planned)."
        + no_curve_text(sd)
    )
    return [
        setting_note(sd),
        table(f"Final run, ours ({ran(sd)}): mean ± 95% CI (n).", cols, body),
        reference_note(SOURCE, EXPECTED, sd),
        choices_note(sd, CHOICES),
        figure_if(not loss.empty, caption, plots.curves, panels, "series"),
    ]


def setting_note(sd: StudyData) -> dict:
    """Which setting this is: seed 002's choice from seed 002's own grid, not the best cell of
    the NF grid in this report (which may rank the cells otherwise), and the one that ran."""
    pub = PUBLISHED
    lrs = join_numbers(config_values(sd, "lr"))
    batches = join_numbers(config_values(sd, "batch_size"))
    return note(
        f"Setting: seed 002's choice (lr {pub['lr']:g}, batch {pub['batch_size']}, picked on "
        "seed 002's own grid), not the best cell of this report's NF-ResNet grid; ours ran at "
        f"lr {lrs}, batch {batches}."
    )


# ---------------------------------------------------------------------------- claims (ledger)
# Seed 002's final run as a value claim (src/normrepro/claims.py): only where ours follows its
# recipe (full scale, CIFAR-10).
CLAIMS = [
    Claim(
        id="final_test_acc",
        source=SOURCE,
        statement=f"At lr {PUBLISHED['lr']:g}, batch {PUBLISHED['batch_size']}, our test error "
        f"equals seed 002's {100 - PUBLISHED['test_acc']:.2f} % ({PUBLISHED['test_acc']} % "
        "accuracy) within the margin.",
        test="value",
        a={"lr": PUBLISHED["lr"], "batch_size": PUBLISHED["batch_size"]},
        margin_key="published_value",
        published=round(100 - PUBLISHED["test_acc"], 2),
        published_source=f"{SOURCE}: 89.28 % test accuracy after 200 epochs (one run)",
        needs_recipe=True,
    ),
]
