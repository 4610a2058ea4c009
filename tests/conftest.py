"""Shared test setup. The code under test is the installed package `normrepro` (pip install -e .)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
