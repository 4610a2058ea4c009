"""The git state of the code (commit, dirty flag) for provenance; no torch import."""

from __future__ import annotations

import subprocess
from pathlib import Path

SRC = Path(__file__).resolve().parent


def git(*args: str) -> str | None:
    """Output of a git command run in src/'s repository; None outside one or without git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(SRC), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
