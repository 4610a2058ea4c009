"""One module per study kind (`kind:` in params.yaml): its view builder, its published
references and its captions. Adding a kind is adding one module here with a `build(sd)`.

    table2        seed 000's Table 2 and Figure 2
    batch_sweep   seed 001's Figure 1: error vs batch size
    group_sweep   number of groups / channels per group (seed 001, GN paper Table 3)
    norm_compare  BN / LN / IN / GN / GN+WS / BN+WS (seed 003)
    nf_grid       seed 002's lr x batch grid
    nf_final      seed 002's final run
    pets          seed 003's Oxford Pets experiment
    generic       any other study: the shared cells table only

`common` holds what every kind shares (study data, cells, survivorship notes), `what_ran` the
names of the data and models as they ran, `quantity` the one quantity (error or accuracy %) a
kind shows everywhere (its module's QUANTITY). This file imports nothing heavy, so
`kind_names()` is cheap at parse time.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

SHARED = {"common", "what_ran", "quantity"}  # modules of this package that are not a kind


def kind_names() -> list[str]:
    """Every study kind: the modules of this package (without importing them)."""
    names = (m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]))
    return sorted(n for n in names if n not in SHARED and not n.startswith("_"))


def builder(kind: str):
    """The kind's `build(sd) -> [block, ...]`; ValueError naming the kind and the kinds there are."""
    if kind not in kind_names():
        raise ValueError(f"unknown study kind {kind!r}; allowed: {', '.join(kind_names())}")
    return importlib.import_module(f"normrepro.studies.{kind}").build


def kind_quantity(kind: str) -> str:
    """The quantity the kind shows everywhere: its module's QUANTITY, 'error' when it has none
    (seeds 001 and 003 speak of error; a user-added study follows them)."""
    return getattr(importlib.import_module(f"normrepro.studies.{kind}"), "QUANTITY", "error")
