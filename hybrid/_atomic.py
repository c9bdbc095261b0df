"""Crash-safe writes: every state file, record and model directory appears whole or not at all.

A file is written to a temporary name beside its target, flushed to disk and renamed into place
(``os.replace`` is atomic on POSIX), so a process killed at any moment leaves either the old file
or the new one, never a truncated one. A directory is built under a temporary name and swapped in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"
"""Part of every temporary name made here; a leftover one is debris of a killed process."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path, *, what: str = "state file") -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable (then one warning line, no crash).

    An unreadable file can only come from outside hybrid (hybrid writes atomically); it counts as absent.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        log.warning("ignoring unreadable %s %s (%s): it counts as not written", what, path, type(err).__name__)
        return None


@contextlib.contextmanager
def replace_dir(target: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it in for ``target`` when the block succeeds.

    Yields the temporary directory to fill. On an exception it is removed and ``target`` is untouched.
    The swap is two renames (old out, new in); a kill between them leaves ``target`` missing, never
    half-written, and the old copy under a temporary name that :func:`remove_debris` clears.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = _tmp_name(target)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_debris(directory: str | Path) -> int:
    """Remove temporary files and directories that killed writers left directly in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for path in directory.iterdir():
        if path.name.startswith(".") and TMP_MARK in path.name:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed
