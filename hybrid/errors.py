"""One exception tree for everything hybrid raises on purpose.

User errors (bad config, bad path, bad data) derive from :class:`HybridError`; the CLI prints their
message on one line and exits with status 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HybridError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ConfigError(HybridError, ValueError):
    """A config key is unknown, a value is out of range, or a referenced path is missing."""


class DataError(HybridError, ValueError):
    """Input data cannot be used at all (wrong schema, empty after validation, unreadable file)."""


class MissingDependencyError(HybridError, ImportError):
    """An optional extra is not installed; the message carries the ``pip install`` line that fixes it."""


class RuntimeStartError(HybridError, RuntimeError):
    """Ray or Spark-on-Ray could not be started or reached."""


class ClusterFitError(HybridError, RuntimeError):
    """A resource request fits no node of the Ray cluster (Ray would wait for it forever)."""


class TrainingError(HybridError, RuntimeError):
    """Training failed in a way the user can act on (e.g. a non-finite loss)."""


class SelectionError(HybridError, RuntimeError):
    """No candidate can be shipped under the configured rule (``compression.select``): every candidate
    lacks a metric, or none meets the constraints. ``pareto`` holds the front's record, so that the caller
    can still write ``compression.pareto`` to ``summary.json`` before it stops."""

    def __init__(self, message: str, *, pareto: dict | None = None) -> None:
        super().__init__(message)
        self.pareto = pareto


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""`` when none is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


class WorkerEnvironmentError(HybridError, RuntimeError):
    """Spark's Python workers cannot run hybrid's code: another interpreter, or one without hybrid's packages."""
