"""A run directory that tells the truth: one process at a time, stage records committed atomically.

``stages/<stage>.json`` is a stage's commit point: it is written (atomically) only after every output of
the stage is in place, and it records the stage's fingerprint. Before a stage starts, its own record and
those of every later stage are removed, so a run killed half-way never leaves a record that describes
outputs which were already being replaced. A record that is unreadable, or whose fingerprint is not
the current one, counts as not done.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hybrid import _atomic
from hybrid.errors import HybridError
from hybrid.fingerprint import STAGE_ORDER, Fingerprint

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
DEFAULT_RUNS_DIR = "runs"
"""Where run directories go when a config sets no ``runs_dir`` (relative: from the working directory)."""
SUMMARY_FILE = "summary.json"
"""A run's figures, rewritten at the end of every invocation (:func:`hybrid.pipeline.run`)."""


class RunLockedError(HybridError):
    """Another process is working in the same run directory."""


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for the block; a second holder fails at once.

    ``flock`` locks die with their process (a SIGKILLed run leaves no stale lock) and are not
    inherited by the processes Ray starts (Python opens files non-inheritable).

    Raises:
        RunLockedError: If another live process holds the lock, naming it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    handle: IO[str] = open(path, "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunLockedError(
                f"run directory {run_dir} is in use by another hybrid process ({holder}); wait for it to "
                "finish or choose another name (--set name=...)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


@dataclass
class StageStore:
    """The stage records of one run directory (``stages/<stage>.json``)."""

    run_dir: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def directory(self) -> Path:
        return self.run_dir / "stages"

    def path(self, stage: str) -> Path:
        return self.directory / f"{stage}.json"

    def record(self, stage: str) -> dict[str, Any] | None:
        """The stage's committed record, or None when absent or unreadable (one warning line)."""
        path = self.path(stage)
        data = _atomic.read_json(path, what=f"{stage} stage record")
        if data is None and path.exists():
            self.warnings.append(f"{stage}: its record {path} is unreadable; the stage will be redone")
        if data is not None and not (isinstance(data, dict) and isinstance(data.get("result"), dict)):
            self.warnings.append(f"{stage}: its record {path} is not a stage record; the stage will be redone")
            return None
        return data

    def result_if_current(self, stage: str, fingerprint: Fingerprint) -> tuple[dict[str, Any] | None, list[str]]:
        """``(result, [])`` when the stage's record matches ``fingerprint``, else ``(None, reasons)``."""
        data = self.record(stage)
        if data is None:
            return None, ["never run" if not self.path(stage).exists() else "its record is unreadable"]
        if data.get("fingerprint") == fingerprint.digest:
            return data["result"], []
        return None, fingerprint.changes(data.get("inputs"))

    def invalidate_from(self, stage: str) -> None:
        """Remove the records of ``stage`` and every later stage (before ``stage`` changes its outputs)."""
        for later in STAGE_ORDER[STAGE_ORDER.index(stage):]:
            self.path(later).unlink(missing_ok=True)

    def commit(self, stage: str, fingerprint: Fingerprint, result: dict[str, Any]) -> None:
        """Write the stage's record atomically: its outputs are in place, this makes them count."""
        _atomic.write_json(self.path(stage), {"fingerprint": fingerprint.digest, "inputs": fingerprint.inputs,
                                              "result": result})


def shipped_choice(choice: str, results: dict[str, dict[str, Any]]) -> str:
    """The model ``score`` ships: ``choice`` (``score.model``), or for ``auto`` the int8 student if it passed
    the gate and the float student otherwise.

    Args:
        choice: ``score.model`` of the run's config.
        results: Stage results by stage name, as committed in the stage records.
    """
    if choice != "auto":
        return choice
    int8 = results.get("quantize", {}).get("models", {}).get("student_int8", {})
    return "student_int8" if int8.get("passed_gate") else "student"
