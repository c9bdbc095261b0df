"""The Ray Tune pieces of the compression search (imported only when one runs; see :mod:`hybrid.compress`).

- :func:`run_candidate`: the Tune trainable. One candidate = distill's training loop for one student (a
  ``TorchTrainer`` named by the stable trial id), then the quantize stage's :func:`~hybrid.quantize.quantize_dir`
  on its best checkpoint; it writes the candidate's record, then reports the int8 model's metrics once.
- :class:`CandidateRecorder`: records a candidate that raised, and prints one line per candidate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from hybrid.compress import CandidatePaths, CandidateRecord, read_candidates, write_candidate
from hybrid.tune_records import error_text


def run_candidate(
    params: dict[str, Any], *, config: Any, teacher: dict[str, Any], spec_fields: dict[str, Any],
    datasets: dict[str, Any], paths: CandidatePaths, reference: float,
) -> None:
    """Tune trainable: distil, quantize and measure one candidate with the sampled ``params`` applied.

    Args:
        params: Sampled ``distill.*`` / ``quantize.*`` values and the hidden stable trial id.
        config: The run config.
        teacher: The teacher's recorded ``config``, tuned ``params``, ``family`` and shipped ``dir``.
        spec_fields: ``num_classes``, ``train_rows`` and ``metadata`` of the training loop.
        datasets: ``train`` (with the teacher's logits), ``val`` and ``calibration`` (the plain training split:
            the rows the quantize stage calibrates on).
        paths: The search's files.
        reference: The teacher's validation headline (the accuracy gate's reference).
    """
    from ray import tune as rt

    from hybrid import _atomic, cluster
    from hybrid._dataclass_io import to_dict
    from hybrid._tune_ray import TRIAL_KEY
    from hybrid.artifacts import read_metadata
    from hybrid.distill import student_config, student_train_config
    from hybrid.measure import TUNE_LATENCY_THREADS
    from hybrid.quantize import quantize_dir, save_quantized
    from hybrid.runtime import quiet_ray_data
    from hybrid.search_space import apply_params
    from hybrid.shipping import local_path
    from hybrid.train import LoopSpec, best_model_dir, build_trainer, fit_resilient

    quiet_ray_data()
    started = time.perf_counter()
    params = dict(params)
    name = params.pop(TRIAL_KEY)
    candidate = apply_params(config, params)
    family = teacher["family"]
    student = student_config(family, teacher["config"], candidate.distill.student,
                             width_multiplier=candidate.distill.width_multiplier, teacher_dir=local_path(teacher["dir"]))
    train_cfg = student_train_config({"params": teacher["params"]}, candidate)
    cluster.check_workers_fit("distill", train_cfg, what=f"candidate {name}'s training worker")
    spec = LoopSpec(model_name=family, model=to_dict(student), train=to_dict(train_cfg),
                    distill={"alpha": candidate.distill.alpha, "temperature": candidate.distill.temperature},
                    **spec_fields)
    result = fit_resilient(
        lambda: build_trainer(spec, {"train": datasets["train"], "val": datasets["val"]}, storage_path=paths.train,
                              name=name, metric=config.tune.metric, mode=config.tune.mode),
        what=f"compression candidate {name}", max_failures=config.runtime.max_failures,
    )
    best = best_model_dir(result, what=f"compression candidate {name}'s student")
    # Timed at one thread, as tune trials time their costs: candidates share the machine.
    qcfg = dataclasses.replace(candidate.quantize, num_threads=TUNE_LATENCY_THREADS)
    quantized, model, meta, _ = quantize_dir(
        best, {"train": datasets["calibration"], "val": datasets["val"]}, config=qcfg, reference=reference,
        num_classes=config.data.num_classes, eval_batch_size=config.train.eval_batch_size,
    )
    shipped = {k: v for k, v in read_metadata(best).items() if k in ("normalizer", "label_names", "max_seq_length")}
    int8_dir = paths.int8 / name
    with _atomic.replace_dir(int8_dir) as tmp:
        save_quantized(tmp, quantized.model, family=family, config=meta["config"], assets_from=best, **shipped)
    measured = quantized.candidates[quantized.backend]
    metric = quantized.metric
    metrics: dict[str, Any] = {
        f"val_{metric}": float(measured.score if measured.score is not None else measured.accuracy),
        "latency_ms": float(measured.latency_ms_per_sample),
        "size_bytes": int(measured.size_bytes),
        "params": int(sum(p.numel() for p in model.parameters())),
        f"float_val_{metric}": float(quantized.baseline.score or 0.0),  # quantize_dir always scores it
        "passed_gate": bool(quantized.passed_gate),
        "backend": quantized.backend,
        "mode": quantized.model.mode,
    }
    write_candidate(paths, CandidateRecord(
        name, params, "completed", metrics=metrics, checkpoint_path=str(best), int8_path=str(int8_dir),
        duration_s=round(time.perf_counter() - started, 3),
    ))
    # Optuna is told the numeric objectives (Ray's OptunaSearch reads them from this report).
    rt.report({k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)})


class CandidateRecorder(Callback):
    """Writes the record of a candidate that raised, and prints one line as each candidate ends."""

    def __init__(self, *, paths: CandidatePaths, total: int, done: int, echo: Callable[[str], None] | None) -> None:
        self.paths, self.total, self.done, self.echo = paths, total, done, echo
        self.started = time.perf_counter()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; the echo function may not pickle.
        return {**self.__dict__, "echo": None}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(_trial_id(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = _trial_id(trial)
        params = {k: v for k, v in (trial.config or {}).items() if not k.startswith("__")}
        try:
            text = Path(trial.error_file).read_text(encoding="utf-8", errors="replace")
        except (OSError, TypeError):
            text = trial.get_error() or "unknown error (Tune recorded no error text)"
        write_candidate(self.paths, CandidateRecord(tid, params, "failed", error=error_text(text)))
        self._line(tid)

    def _line(self, tid: str) -> None:
        self.done += 1
        record = read_candidates(self.paths).get(tid)
        if record is None:
            what = "ended without a record"
        elif record.status == "failed":
            what = f"failed: {record.error}"
        else:
            what = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.metrics.items())
        params = ", ".join(f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[-1]}={v}"
                           for k, v in sorted(record.params.items())) if record else ""
        (self.echo or print)(f"[compress {self.done}/{self.total} {time.perf_counter() - self.started:6.0f}s] "
                             f"candidate {tid}: {what} ({params})")


def _trial_id(trial: Any) -> str:
    from hybrid._tune_ray import TRIAL_KEY

    return (trial.config or {}).get(TRIAL_KEY, trial.trial_id)
