"""hybrid: Spark DataFrames in, Ray-tuned and compressed PyTorch models out, scored back in Spark.

Stages, one module each, in data-flow order: :mod:`hybrid.ingest` (Spark -> Ray via RayDP),
:mod:`hybrid.tune` (Ray Tune + Optuna + ASHA) over :mod:`hybrid.train` (Ray Train), with model
families in :mod:`hybrid.models` and typed configs in :mod:`hybrid.config`.
"""

from __future__ import annotations

__version__ = "0.1.0"
