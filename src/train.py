"""Train one run (or one pack of runs): the command the Snakemake train rule calls.

    python src/train.py --config RUN.json --out RUN_DIR [--device auto|cpu|cuda]

A short entry into the installed package (`pip install -e .`); the trainer is normrepro.train.
"""

import sys

from normrepro.train import main

if __name__ == "__main__":
    sys.exit(main())
