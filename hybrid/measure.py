"""Measure a saved model as it will be shipped: test metrics, file size and latency, side by side.

Shared by the tune, distill and quantize stages, so that every model in ``summary.json`` is measured
the same way (same rows, batch size and threads). :func:`float_costs` is what each tune trial measures
when ``tune.objectives`` names ``latency_ms``, ``size_bytes`` or ``params``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    import ray.data

LATENCY_BATCH = 256
"""Rows per timed forward pass."""
TUNE_LATENCY_THREADS = 1
"""Threads of the latency a tune trial measures. A trial's worker holds at least one CPU and shares its node
with other trials, so one thread is the setting every trial can time alike: these latencies rank trials
against each other; they are not the all-core figures of the models in ``summary.json``."""
COST_METRICS = ("latency_ms", "size_bytes", "params")
"""What :func:`float_costs` returns: the candidate metrics a search may minimise besides the validation ones."""


@dataclass
class ModelReport:
    """One model measured on the test split."""

    test: dict[str, float]
    """Test metrics (accuracy and macro metrics, or exact match and F1)."""
    test_confusion_matrix: list[list[int]]
    size_bytes: int
    """Size of the model file (safetensors weights, or the int8 ONNX/torch.export file)."""
    latency_ms_per_sample: float
    """At :data:`LATENCY_BATCH` rows, all of this machine's cores."""

    def block(self) -> dict[str, Any]:
        """The model's block in ``summary.json`` (more fields are added by the stage)."""
        return {"test": self.test, "test_confusion_matrix": self.test_confusion_matrix, "size_bytes": self.size_bytes,
                "latency_ms_per_sample": self.latency_ms_per_sample}


def measure_model(
    model: Any, directory: Path, test: ray.data.Dataset, *, num_classes: int, eval_batch_size: int, file_bytes: int,
    latency_batch: int = LATENCY_BATCH,
) -> ModelReport:
    """Test metrics, size and latency (``latency_batch`` rows per timed pass: ``quantize.latency_batch_size``
    in a run) of the float or int8 ``model`` saved in ``directory``."""
    import json

    import torch

    from hybrid.artifacts import model_collate
    from hybrid.models import batch_inputs, get_family
    from hybrid.quantize import latency_ms_per_sample
    from hybrid.train import evaluate

    meta = json.loads((directory / "model.json").read_text())
    family, collate = meta["family"], model_collate(directory, meta)
    result = evaluate(model, test, model_name=family, num_classes=num_classes, batch_size=eval_batch_size,
                      collate=collate, model_config=meta["config"])
    sample = test.take_batch(latency_batch, batch_format="numpy")
    inputs = batch_inputs(sample, get_family(family).input_columns, collate)
    with torch.no_grad():
        latency = latency_ms_per_sample(model, inputs, batch_size=latency_batch, threads=os.cpu_count() or 1)
    return ModelReport(test=result.metrics, test_confusion_matrix=result.confusion_matrix, size_bytes=file_bytes,
                       latency_ms_per_sample=latency)


def float_costs(model: Any, inputs: tuple[Any, ...], *, threads: int = TUNE_LATENCY_THREADS) -> dict[str, Any]:
    """A float model's candidate metrics (:data:`COST_METRICS`), measured on CPU in eval mode.

    Args:
        model: An ``nn.Module`` (a DDP wrapper is unwrapped; one on a GPU is timed as a CPU copy).
        inputs: ``forward``'s tensors for a fixed batch (:func:`hybrid.models.batch_inputs` of a sample).
        threads: Torch threads while timing.

    Returns:
        ``latency_ms``: ms per sample, fastest of the repeats at :data:`LATENCY_BATCH` rows (recycled from
        ``inputs``), as :func:`hybrid.quantize.latency_ms_per_sample` times every model; ``size_bytes``: of its
        ``model.safetensors``, the size ``summary.json`` gives the float models; ``params``: parameter count.
    """
    import copy

    import torch

    from hybrid.quantize import float_size_bytes, latency_ms_per_sample

    module = getattr(model, "module", model)
    if any(p.device.type != "cpu" for p in module.parameters()):
        module = copy.deepcopy(module).cpu()
    training = module.training
    module.eval()  # dropout off: time what inference runs
    try:
        with torch.no_grad():
            latency = latency_ms_per_sample(module, inputs, batch_size=LATENCY_BATCH, threads=threads)
    finally:
        module.train(training)
    return {"latency_ms": float(latency), "size_bytes": float_size_bytes(module),
            "params": int(sum(p.numel() for p in module.parameters()))}


def side_by_side(
    models: Mapping[str, Any], val: ray.data.Dataset, *, collate: Any, columns: Sequence[str],
    sizes: Mapping[str, int], rounds: int = 3, batch_size: int = LATENCY_BATCH,
) -> dict[str, Any]:
    """Latency of ``models`` on the same validation rows (``batch_size`` per timed pass), timed round robin
    (best of ``rounds``), so that the ratios are not skewed by the machine's load changing between stages;
    sizes and ratios to the first model (the teacher)."""
    import torch

    from hybrid.models import batch_inputs
    from hybrid.quantize import latency_ms_per_sample

    sample = val.take_batch(batch_size, batch_format="numpy")
    inputs = batch_inputs(sample, columns, collate)
    best = dict.fromkeys(models, float("inf"))
    for _ in range(rounds):
        for name, model in models.items():
            with torch.no_grad():
                ms = latency_ms_per_sample(model, inputs, batch_size=batch_size, repeats=2,
                                           threads=os.cpu_count() or 1)
            best[name] = min(best[name], ms)
    reference = next(iter(models))
    return {
        "latency_ms_per_sample": best,
        "size_bytes": dict(sizes),
        "speedup": {name: best[reference] / ms for name, ms in best.items()},
        "size_ratio": {name: sizes[reference] / size for name, size in sizes.items()},
    }
