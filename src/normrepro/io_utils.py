"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every writer goes through `atomic_write`: write a temporary file in the target's directory
(same filesystem, so the rename is atomic), fsync it, `os.replace` it over the target, then
fsync the directory so the rename itself survives a crash. A killed process leaves at most a
stray `.<name>.<random>.tmp`, which nothing reads.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once: os.umask can only be read by setting it


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to `path`; on a clean exit, fsync it and rename it to `path`.

    `mode` is "w" (text, UTF-8) or "wb". On an exception the temporary file is removed and
    `path` keeps what it had.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file owner-only (0600); give it the mode open() would have given,
        # so a report or summary can be shared or served like any other file.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if err.filename is None:  # a full disk at write/fsync: say which file it was
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some filesystems refuse to open a directory, which is harmless.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(binary_file)` on a temporary file, then rename it to `path` (e.g. torch.save)."""
    with atomic_open(path, "wb") as f:
        write(f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def json_safe(obj: Any) -> Any:
    """Non-finite floats -> None, recursively: JSON has no NaN (strict readers reject it)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Pretty JSON (sorted keys, NaN/inf written as null), written atomically."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
