"""One quantity per study, everywhere it is shown (tables, Welch tests, figures): test error %
where the study's seed document and the paper beside it speak of error (seeds 001 and 003, the
GN paper), accuracy % where they print accuracy (seed 000's Table 2, seed 002's NF-ResNet). A
reader then never ranks one column against another that runs the opposite way.

Each kind module says its quantity (`QUANTITY`, default error); this module turns the accuracy
columns of aggregate.py's tables into errors (error = 1 − accuracy, so a mean's CI half-width is
the same and min and max swap).
"""

from __future__ import annotations

import pandas as pd

ERROR, ACCURACY = "error", "accuracy"
QUANTITIES = (ERROR, ACCURACY)
STATS = ("mean", "std", "ci95", "min", "max")


def metric(quantity: str, split: str = "test") -> str:
    """The summary column stem of `split` ('test', 'val', 'best_val') in `quantity`:
    'test_err', 'best_val_acc'."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity {quantity!r} is not allowed; allowed: {', '.join(QUANTITIES)}")
    return f"{split}_{'err' if quantity == ERROR else 'acc'}"


def label(quantity: str, split: str = "test") -> str:
    """'test error', 'best val accuracy' (the caller adds the unit)."""
    metric(quantity, split)  # checks the quantity
    return f"{split.replace('_', ' ')} {quantity}"


def with_errors(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with val_err_* and best_val_err_* beside their accuracies (test_err_* comes
    from aggregate.py): mean = 1 − mean, the same std and CI, min and max swapped."""
    out = summary.copy()
    for split in ("test", "val", "best_val"):
        acc, err = f"{split}_acc", f"{split}_err"
        if f"{err}_mean" in out or f"{acc}_mean" not in out:
            continue
        out[f"{err}_mean"] = 1.0 - out[f"{acc}_mean"]
        out[f"{err}_std"], out[f"{err}_ci95"] = out[f"{acc}_std"], out[f"{acc}_ci95"]
        out[f"{err}_min"], out[f"{err}_max"] = 1.0 - out[f"{acc}_max"], 1.0 - out[f"{acc}_min"]
    return out


def welch_in(quantity: str, welch: pd.DataFrame) -> pd.DataFrame:
    """aggregate.py's Welch tests (of test_acc) in `quantity`: for error the means are
    1 − the accuracies, and the difference and t change sign (p does not change)."""
    if quantity == ACCURACY or welch.empty or (welch["metric"] != "test_acc").any():
        return welch
    out = welch.copy()
    out["mean_a"], out["mean_b"] = 1.0 - out["mean_a"], 1.0 - out["mean_b"]
    out["diff"], out["t"] = -out["diff"], -out["t"]
    out["metric"] = "test_err"
    return out
