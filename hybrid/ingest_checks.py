"""Checks on what ingest counted, before any training starts. Pure: no Spark, no Ray.

Each check fails with one line that names the split, the rule, the counts and the fix, or returns
warnings (one line each) for data that trains but will mislead: classes the training split lacks, or
test and validation splits that lack classes training has. Ingest calls :func:`check_test_source`
before its first Spark job and :func:`check_splits` / :func:`check_classes` before handing the splits
to Ray; the pipeline calls :func:`check_trainable` (or :func:`check_trainable_search`) once it knows the
training settings, before the first trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hybrid.config import DataConfig
from hybrid.errors import ConfigError, DataError

if TYPE_CHECKING:
    from hybrid.config import TrainConfig

SPLITS = ("train", "val", "test")
LISTED_CLASSES = 12
"""Classes named in one message; the rest are counted ("... and 30 more")."""


def has_test_table(config: DataConfig) -> bool:
    """Whether the source brings its own test table (else ``data.test_fraction`` of ``data.path`` is held out)."""
    return config.source == "fashion_mnist" or config.test_path is not None


def check_test_source(config: DataConfig) -> None:
    """Fail before any Spark job when there is neither a test table nor a fraction to hold out.

    Raises:
        ConfigError: If the source has no test table and ``data.test_fraction`` is 0.
    """
    if has_test_table(config) or config.test_fraction > 0:
        return
    with_path = " or data.test_path" if config.source in ("parquet", "csv", "squad") else ""
    raise ConfigError(
        f"data.source={config.source!r} without a test table holds out data.test_fraction of each class as the "
        f"test split, so data.test_fraction > 0 must hold, but got {config.test_fraction}: set "
        f"data.test_fraction (e.g. 0.15){with_path}"
    )


def check_splits(counts: Mapping[str, int], *, quarantined: Mapping[str, int], config: DataConfig) -> None:
    """Every split needs at least one row: fail naming the first empty split, where it came from and the fix.

    Args:
        counts: Rows per split (``train``, ``val``, ``test``) after validation.
        quarantined: Rejected rows per rule (all tables), for the message.
        config: The ``data`` section the splits were made with.

    Raises:
        DataError: If a split has no rows.
    """
    for split in SPLITS:
        if counts.get(split, 0) > 0:
            continue
        origin, fix = _origin(split, config)
        bad = {k: v for k, v in quarantined.items() if v}
        raise DataError(
            f"{split} split has 0 rows after validation, but every split needs at least 1 ({origin}; rows per "
            f"split {dict(counts)}; quarantined {sum(bad.values())} {bad or ''}".rstrip() + f"): {fix}"
        )


def _origin(split: str, config: DataConfig) -> tuple[str, str]:
    """Where ``split``'s rows come from, and how to get some."""
    if split == "val":
        return (f"data.val_fraction={config.val_fraction} of each class of the training rows, rounded per class",
                "raise data.val_fraction or add rows")
    if split == "test" and has_test_table(config):
        where = config.test_path or f"the test files under {config.path}"
        return f"the test table {where!r}", "add valid rows to the test table (rejected ones are in quarantine.parquet)"
    if split == "test":
        return (f"data.test_fraction={config.test_fraction} of each class of {config.path!r}, rounded per class",
                "raise data.test_fraction or add rows")
    return (f"the training table {config.path!r}, less what val and test hold out",
            "add valid rows to the training table (rejected ones are in quarantine.parquet)")


def check_classes(
    class_counts: Mapping[str, Mapping[int, int]], *, label_names: tuple[str, ...]
) -> list[str]:
    """Fail on a training split with a single class; warn about classes a split lacks.

    Args:
        class_counts: Rows per class index per split, e.g. ``{"train": {0: 40, 1: 38}, "val": ..., "test": ...}``.
        label_names: Class names by index; their number is the model's number of classes.

    Returns:
        Warnings, one line each: the classes the training split lacks (with their counts in every split:
        the model cannot learn them, and test accuracy and macro metrics count them as misses), then, per
        split, the classes training has that val or test lacks.

    Raises:
        DataError: If the training split holds exactly one class.
    """
    counts = {split: {c: int(class_counts.get(split, {}).get(c, 0)) for c in range(len(label_names))}
              for split in SPLITS}

    def describe(classes: list[int]) -> str:
        shown = [
            f"{label_names[c]!r} (label {c}: " + ", ".join(f"{s} {counts[s][c]}" for s in SPLITS) + ")"
            for c in classes[:LISTED_CLASSES]
        ]
        more = f" and {len(classes) - LISTED_CLASSES} more" if len(classes) > LISTED_CLASSES else ""
        return ", ".join(shown) + more

    present = [c for c, n in counts["train"].items() if n > 0]
    if len(present) == 1:
        raise DataError(
            f"train split holds a single class, {describe(present)}, but a classifier needs at least 2 of its "
            f"{len(label_names)} classes: add rows of other classes (or check data.label_column)"
        )
    warnings = []
    absent = [c for c, n in counts["train"].items() if n == 0]
    if absent:
        only_test = [c for c in absent if counts["test"][c] > 0]
        note = f"; the test split holds {len(only_test)} of them" if only_test else ""
        warnings.append(
            f"train split lacks {len(absent)} of {len(label_names)} classes: {describe(absent)}{note}; the model "
            "cannot learn them, and test accuracy and macro metrics count them as misses"
        )
    for split in ("val", "test"):
        missing = [c for c in present if counts[split][c] == 0]
        if missing:
            warnings.append(
                f"{split} split lacks {len(missing)} of the {len(present)} classes in training: {describe(missing)}; "
                f"{split} metrics say nothing about them"
            )
    return warnings


def check_trainable(
    counts: Mapping[str, int], *, batch_size: int, num_workers: int, grad_accum_steps: int = 1
) -> int:
    """Fail when a worker's share of the training split cannot fill one batch.

    The training loop drops the last incomplete batch (``drop_last=True``) and Ray Train gives every worker
    an equal share, ``train // num_workers`` rows; with fewer than ``batch_size`` rows a worker would train
    zero steps and checkpoint an untrained model. A last, incomplete round of gradient accumulation still
    steps, so one full batch per worker is enough.

    Args:
        counts: Rows per split; ``train`` is read.
        batch_size: Rows per batch per worker: with a search space, the largest it can sample
            (see :func:`largest_sampled`).
        num_workers: Ray Train workers per trial.
        grad_accum_steps: Batches per optimiser step.

    Returns:
        Optimiser steps per epoch on each worker (at least 1).

    Raises:
        DataError: If ``train // num_workers < batch_size``.
    """
    label = f"train.batch_size={batch_size}"
    return _steps_per_epoch(counts["train"], batch_size, num_workers, grad_accum_steps, label)


def check_trainable_search(
    counts: Mapping[str, int], *, train: TrainConfig, space: Mapping[str, Any] | None = None
) -> int:
    """:func:`check_trainable` for every trial a search can run: the largest ``train.batch_size`` and
    ``train.num_workers`` the search space can sample (else ``train``'s own values).

    Args:
        counts: Rows per split; ``train`` is read.
        train: The ``train`` section, before the search space is applied.
        space: Optuna distributions keyed by dotted config keys (``hybrid.search_space.load_search_space``).

    Returns:
        Optimiser steps per epoch on each worker for the largest batch and most workers.

    Raises:
        DataError: If some trial's workers could not fill one batch each.
    """
    space = space or {}
    batch = largest_sampled(space, "train.batch_size", default=train.batch_size)
    workers = largest_sampled(space, "train.num_workers", default=train.num_workers)
    accum = largest_sampled(space, "train.grad_accum_steps", default=train.grad_accum_steps)
    label = f"train.batch_size={batch}"
    if batch != train.batch_size:
        label += " (the largest the search space samples)"
    return _steps_per_epoch(counts["train"], batch, workers, accum, label)


def _steps_per_epoch(rows: int, batch_size: int, num_workers: int, grad_accum_steps: int, batch_label: str) -> int:
    if min(batch_size, num_workers, grad_accum_steps) < 1:
        raise ConfigError(
            "batch_size, num_workers and grad_accum_steps must be >= 1, but got "
            f"{batch_size}, {num_workers}, {grad_accum_steps}"
        )
    per_worker = rows // num_workers
    if per_worker < batch_size:
        raise DataError(
            f"train split has {rows} rows, fewer than {batch_label} x train.num_workers={num_workers} "
            f"(= {batch_size * num_workers}): each worker would train 0 steps; lower train.batch_size or add rows"
        )
    return math.ceil((per_worker // batch_size) / grad_accum_steps)


def largest_sampled(space: Mapping[str, Any], key: str, *, default: int) -> int:
    """The largest value the distribution at ``key`` of ``space`` can sample, or ``default`` when not searched.

    Raises:
        ConfigError: If the distribution at ``key`` holds no integer values.
    """
    from optuna.distributions import CategoricalDistribution, IntDistribution

    dist = space.get(key)
    if dist is None:
        return default
    if isinstance(dist, IntDistribution):
        return dist.low + (dist.high - dist.low) // dist.step * dist.step
    if isinstance(dist, CategoricalDistribution) and all(
        isinstance(c, int) and not isinstance(c, bool) for c in dist.choices
    ):
        return max(dist.choices)
    raise ConfigError(f"{key} must be searched over integers (IntDistribution or integer choices), but got {dist!r}")
