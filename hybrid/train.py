"""The one training loop, run by Ray Train's ``TorchTrainer`` for every model family and every trial.

Each worker reads its shard with ``iter_torch_batches``, trains with the configured optimiser,
schedule, accumulation and precision, then evaluates on its validation shard. Confusion matrices
are summed across workers, so the reported metrics are exact for any number of workers. Every
epoch ends with a checkpoint ``epoch_<NNNN>/`` (safetensors + JSON, see :mod:`hybrid.train_state`):
the model under ``model/`` and everything needed to continue the run under ``train_state/``, so a
run killed at any moment resumes from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hybrid._dataclass_io import from_dict, to_dict
from hybrid.config import TrainConfig
from hybrid.errors import TrainingError
from hybrid.models import batch_inputs, collate_fn, create_model, get_family, model_config
from hybrid.models.tasks import CLASSIFICATION, LABEL, TEACHER_LOGITS, Task, model_inputs
from hybrid.schedules import build_scheduler
from hybrid.train_state import (
    MODEL_DIR,
    NEW_BEST,
    START_EPOCH,
    TrainState,
    improves,
    load_train_state,
    read_train_state,
    run_differences,
    run_identity,
    save_train_state,
)

log = logging.getLogger(__name__)

_NOT_IDENTITY = ("shipped", "cost_sample")
"""``LoopSpec`` fields a resumed run need not match: objects and data, not settings."""

if TYPE_CHECKING:
    import ray.data
    from ray.train import Checkpoint


@dataclass(frozen=True)
class LoopSpec:
    """Everything one training run needs, as plain data that crosses to Ray workers."""

    model_name: str
    model: dict[str, Any]
    train: dict[str, Any]
    num_classes: int
    train_rows: int
    """Rows of the whole training split (each worker sees about ``train_rows / num_workers``)."""
    metadata: dict[str, Any]
    """Extra fields written into every checkpoint's ``model.json`` (normaliser, label names...)."""
    distill: dict[str, Any] | None = None
    """``alpha`` and ``temperature`` when training a student on a ``teacher_logits`` column."""
    metric: str = "val_accuracy"
    """Validation metric that picks the run's best epoch (and so the checkpoint Ray keeps)."""
    mode: Literal["min", "max"] = "max"
    """Whether ``metric`` is minimised or maximised."""
    shipped: dict[str, Any] = field(default_factory=dict)
    """``model`` fields naming directories (the family's ``path_fields``) -> their
    :class:`~hybrid.shipping.ShippedDir`: what the workers open instead of the driver's paths, which
    ``model`` keeps (a run's identity and records name the user's paths). See :func:`ship_paths`."""
    cost_sample: dict[str, Any] | None = None
    """Validation rows (numpy columns, :data:`hybrid.measure.LATENCY_BATCH` of them) on which rank 0 measures
    the model's ``latency_ms``, ``size_bytes`` and ``params`` (:func:`hybrid.measure.float_costs`) once per
    attempt, before its first epoch, and adds them to every epoch's metrics; None: not measured. Those three
    depend on the architecture, not the weights, so measuring after each epoch would cost time for nothing.
    Not part of the run's identity (it is data, like ``shipped``)."""

    def to_dict(self) -> dict[str, Any]:
        """The ``train_loop_config`` handed to ``TorchTrainer`` (``shipped`` and ``cost_sample`` stay objects)."""
        return {**to_dict(dataclasses.replace(self, shipped={}, cost_sample=None)), "shipped": dict(self.shipped),
                "cost_sample": self.cost_sample}


def ship_paths(model_name: str, model: dict[str, Any], shipped: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ship the directories ``model`` names in its family's ``path_fields`` (on the driver; see
    :mod:`hybrid.shipping`); fields already in ``shipped`` are kept as they are.

    Raises:
        ConfigError: If such a field names no directory.
    """
    from hybrid import shipping

    out = dict(shipped or {})
    for key in get_family(model_name).path_fields:
        if model.get(key) and key not in out:
            out[key] = shipping.ship_dir(model[key], what=f"model.{key}")
    return out


def local_model(spec: LoopSpec) -> dict[str, Any]:
    """``spec.model`` with each shipped directory replaced by its copy on this node (in a worker)."""
    from hybrid.shipping import local_path

    return {**spec.model, **{key: local_path(value) for key, value in spec.shipped.items()}}


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled decay) or SGD with Nesterov momentum; no weight decay on norms and biases."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def autocast_context(config: TrainConfig, device: torch.device) -> Any:
    """Autocast for ``bf16``/``fp16``, a no-op for ``fp32``; ``auto`` as :func:`hybrid._cpu.resolve_precision`."""
    from hybrid._cpu import resolve_precision

    precision = resolve_precision(config.precision, use_gpu=config.use_gpu)
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    columns: Sequence[str],
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    epoch: int = 0,
    distill: dict[str, Any] | None = None,
    task: Task = CLASSIFICATION,
) -> tuple[float, int]:
    """One pass over ``batches``; returns ``(mean training loss, samples seen)``.

    With ``distill`` (``alpha``, ``temperature``) the loss is ``task.distillation_loss`` (the family's
    :attr:`~hybrid.models.registry.ModelFamily.evaluation`) against each batch's ``teacher_logits``;
    otherwise cross-entropy on the labels (classes ``(batch, C)`` against ``(batch,)``, or spans
    ``(windows, L, 2)`` against ``(windows, 2)``: the mean of the start and end losses). Samples are
    rows of the batch's labels (windows, for spans).

    Raises:
        TrainingError: On a NaN or infinite loss, so that the run (or trial) fails loudly.
    """
    model.train()
    total_loss, seen, micro = 0.0, 0, 0
    optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(batches):
        labels = batch[LABEL].to(device).long()
        with autocast_context(config, device):
            logits = model(*(x.to(device) for x in model_inputs(batch, columns)))
        if distill is not None:
            loss = task.distillation_loss(
                logits, batch[TEACHER_LOGITS].to(device), labels, alpha=distill["alpha"],
                temperature=distill["temperature"], label_smoothing=config.label_smoothing,
            )
        else:
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at epoch {epoch}, batch {step}: training diverged")
        scaled = loss / config.grad_accum_steps
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        micro += 1
        if micro == config.grad_accum_steps:
            _optimizer_step(optimizer, scheduler, scaler)
            micro = 0
        total_loss += loss.item() * len(labels)
        seen += len(labels)
    if micro:
        _optimizer_step(optimizer, scheduler, scaler)
    return (total_loss / seen if seen else float("nan")), seen


def _optimizer_step(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def _all_reduce_sum(array: np.ndarray) -> np.ndarray:
    """Sum an array across Ray Train workers (identity with one worker)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return array
    tensor = torch.as_tensor(array, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.numpy()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: build the model from ``loop_config`` (a :class:`LoopSpec`) and train it.

    When Ray hands the run a checkpoint (``ray.train.get_checkpoint()``: the run's storage already
    holds one, because it was killed or stopped), the model, optimiser, LR schedule, grad scaler,
    RNG, best-so-far and history are restored from it and training continues at the next epoch.
    """
    import ray.train
    import ray.train.torch

    spec = LoopSpec(**loop_config)
    config = from_dict(TrainConfig, spec.train, prefix="train")
    family = get_family(spec.model_name)
    arch = model_config(spec.model_name, local_model(spec))
    context = ray.train.get_context()
    world, rank = context.get_world_size(), context.get_world_rank()

    torch.manual_seed(config.seed)
    if not config.use_gpu:
        torch.set_num_threads(config.cpus_per_worker)
    model = ray.train.torch.prepare_model(create_model(spec.model_name, config=arch))
    collate = collate_fn(spec.model_name, arch)
    device = ray.train.torch.get_device()
    optimizer = make_optimizer(model, config)
    rows_per_worker = math.ceil(spec.train_rows / world)
    micro_batches = max(1, rows_per_worker // config.batch_size)  # drop_last below
    steps_per_epoch = math.ceil(micro_batches / config.grad_accum_steps)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None

    identity = run_identity({k: v for k, v in loop_config.items() if k not in _NOT_IDENTITY})
    state = TrainState(run=identity)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = read_train_state(directory)
            differences = run_differences(saved.run, identity) if saved is not None else []
            if differences:
                raise TrainingError(
                    f"the run storage {Path(checkpoint.path).parent} holds checkpoints of a different run "
                    f"({', '.join(differences[:5])} differ); train under a new name to start afresh"
                )
            state = load_train_state(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                                     scaler=scaler, rank=rank, device=device)
        state.run = identity
    start_epoch = state.epoch
    costs = _costs(model, spec, family, collate) if rank == 0 and spec.cost_sample is not None else {}

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, config.max_epochs):
        t0 = time.perf_counter()
        batches = train_shard.iter_torch_batches(
            batch_size=config.batch_size,
            drop_last=True,
            local_shuffle_buffer_size=min(spec.train_rows, 8 * config.batch_size + 4096),
            local_shuffle_seed=config.seed * 10_000 + epoch,
            collate_fn=collate,
        )
        train_loss, seen = train_epoch(
            model, batches, optimizer=optimizer, scheduler=scheduler, config=config,
            columns=family.input_columns, device=device, scaler=scaler, epoch=epoch, distill=spec.distill,
            task=family.evaluation,
        )
        train_time = time.perf_counter() - t0
        val_batches = val_shard.iter_torch_batches(batch_size=config.eval_batch_size, collate_fn=collate)
        # The task's validation sums and this worker's training loss, summed over workers in one all-reduce.
        sums = family.evaluation.evaluate(
            model, val_batches, columns=family.input_columns, device=device, num_classes=spec.num_classes,
            model_config=arch, autocast=autocast_context(config, device))
        totals = _all_reduce_sum(np.concatenate([sums, [train_loss * seen, seen]]))
        val = family.evaluation.summarize(totals[:-2], spec.num_classes)
        train_loss_sum, seen_all = totals[-2:]
        scores, cm = val.scores, val.confusion_matrix
        metrics = {
            "epoch": epoch + 1,
            "train_loss": float(train_loss_sum / max(seen_all, 1)),
            "val_loss": val.loss,
            **{f"val_{name}": value for name, value in scores.items()},
            "lr": float(scheduler.get_last_lr()[0]),
            "epoch_time_s": time.perf_counter() - t0,
            "train_samples_per_s": float(seen_all / train_time) if train_time > 0 else 0.0,
            **costs,
        }
        metrics["node_id"] = ray.get_runtime_context().get_node_id()  # rank 0's: where this epoch ran
        _mark_best(state, metrics, spec, epoch + 1, start_epoch)
        _report(rank, model, spec, arch, epoch, metrics, scores, cm, state=state, optimizer=optimizer,
                scheduler=scheduler, scaler=scaler, device=device)


def _costs(model: nn.Module, spec: LoopSpec, family: Any, collate: Any) -> dict[str, Any]:
    """``latency_ms``, ``size_bytes`` and ``params`` of ``model`` on ``spec.cost_sample`` (see its docstring)."""
    from hybrid.measure import float_costs

    return float_costs(model, batch_inputs(spec.cost_sample or {}, family.input_columns, collate))


def _mark_best(state: TrainState, metrics: dict[str, Any], spec: LoopSpec, epoch: int, start_epoch: int) -> None:
    """Add :data:`NEW_BEST` and :data:`START_EPOCH` to ``metrics`` and move ``state`` past this epoch."""
    value = metrics.get(spec.metric)
    if value is None:
        raise TrainingError(
            f"the tuned metric {spec.metric!r} is not among the metrics this model reports: {sorted(metrics)}"
        )
    new_best = improves(float(value), state.best_value, spec.mode)
    if new_best:
        state.best_value, state.best_epoch = float(value), epoch
    metrics[NEW_BEST] = epoch if new_best else -1
    metrics[START_EPOCH] = start_epoch
    state.epoch = epoch
    state.history.append(dict(metrics))


def _report(
    rank: int, model: nn.Module, spec: LoopSpec, arch: Any, epoch: int, metrics: dict[str, float],
    scores: dict[str, float], cm: list[list[int]] | None, *, state: TrainState, optimizer: torch.optim.Optimizer,
    scheduler: Any, scaler: torch.amp.GradScaler | None, device: torch.device,
) -> None:
    """Report one epoch's metrics to Ray Train with a checkpoint ``epoch_<NNNN>``: the model and the
    training state from rank 0, each worker's RNG state from that worker."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            from hybrid.artifacts import save_model

            extra = {"val_confusion_matrix": cm} if cm is not None else {}
            save_model(
                Path(tmp) / MODEL_DIR, model, family=spec.model_name, config=arch, epoch=epoch + 1,
                val_metrics=scores, train=spec.train, **extra, **spec.metadata,
            )
        save_train_state(tmp, state, optimizer=optimizer if rank == 0 else None, scheduler=scheduler,
                         scaler=scaler, rank=rank, device=device)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpoint_name(epoch + 1))


def checkpoint_name(epoch: int) -> str:
    """Directory name of the checkpoint written after ``epoch`` (1-based) in a run's storage."""
    return f"epoch_{epoch:04d}"


def build_trainer(
    spec: LoopSpec,
    datasets: dict[str, ray.data.Dataset],
    *,
    storage_path: str | Path,
    name: str,
    metric: str = "val_accuracy",
    mode: Literal["min", "max"] = "max",
    callbacks: Sequence[Any] = (),
) -> Any:
    """A ``TorchTrainer`` running :func:`train_loop_per_worker` on ``datasets['train']`` and ``['val']``.

    The run's storage is ``storage_path/name``. If that already holds checkpoints of this loop (an
    earlier fit with the same ``storage_path`` and ``name`` was killed or stopped), Ray hands the
    latest one to the loop, which **resumes** from it (model, optimiser, schedule, RNG, history) and
    trains only the remaining epochs. To start from scratch, pass a name (or storage) not used before;
    nothing else reuses old checkpoints.

    Ray keeps two checkpoints: the latest (for resuming) and the best epoch by ``metric`` (ties go to
    the earlier epoch, see :func:`hybrid.train_state.best_index`); :func:`best_model_dir` finds the
    latter's model. A failure is not retried (a diverged run should fail, not restart).

    Directories the model config names (a BERT's ``pretrained_dir``) are shipped to the workers through
    Ray's object store (:func:`ship_paths`), so the nodes need not share a disk; ``storage_path`` must
    still be a path (or URI) every node sees.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hybrid.cluster import worker_request

    spec = dataclasses.replace(spec, metric=metric, mode=mode,
                               shipped=ship_paths(spec.model_name, spec.model, spec.shipped))
    config = from_dict(TrainConfig, spec.train, prefix="train")
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker=worker_request(cpus=config.cpus_per_worker, use_gpu=config.use_gpu),
        ),
        datasets={"train": datasets["train"], "val": datasets["val"]},
        # One worker reads the whole dataset: splitting it would start a SplitCoordinator actor per dataset
        # (a Python process each, seconds of start-up per trial) to hand out a single shard.
        dataset_config=DataConfig(datasets_to_split="all" if config.num_workers > 1 else []),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            # The NEW_BEST mark is the epoch number of each strict improvement: the largest is the
            # earliest best epoch, the very one hybrid records. Ray also keeps the latest checkpoint.
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=NEW_BEST, checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=0),
            callbacks=list(callbacks),
        ),
    )


_INFRA_ERRORS = (
    # a worker's actor, process or node died, or its objects went with it (ray.exceptions)
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
    "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError", "LocalRayletDiedError",
    # Ray Train V2: workers that stopped answering or could not be (re)started in time
    "WorkerHealthCheckFailedError", "WorkerHealthCheckTimeoutError", "WorkerGroupStartupTimeoutError",
    "WorkerGroupStartupFailedError",
)


def _causes(error: BaseException) -> list[BaseException]:
    """``error``, the errors Ray Train wraps in it (per worker, the controller's), and their causes."""
    out, todo = [], [error]
    while todo:
        err = todo.pop()
        if err is None or any(err is seen for seen in out):
            continue
        out.append(err)
        todo.extend(getattr(err, "worker_failures", {}).values())
        todo.extend([getattr(err, "controller_failure", None), err.__cause__])
    return out


def is_infrastructure_failure(error: BaseException) -> bool:
    """Whether a failed fit lost a node or worker process (retry from the checkpoint) rather than failed
    in the training itself (a diverged loss, a bug: never retried).

    One rank's death makes the others fail too (collective aborts, reset connections), so a lost worker
    anywhere makes it an infrastructure failure, unless some rank raised hybrid's own training error.
    """
    causes = _causes(error)
    if any(isinstance(c, TrainingError) for c in causes):
        return False
    return any(cls.__name__ in _INFRA_ERRORS for c in causes for cls in type(c).__mro__)


def fit_resilient(make_trainer: Callable[[], Any], *, what: str, max_failures: int,
                  echo: Callable[[str], None] | None = None) -> Any:
    """``make_trainer().fit()``, started again from the run's last checkpoint after an infrastructure failure.

    Each attempt builds a fresh trainer on the same storage, so Ray hands the loop the latest checkpoint and
    it continues from there (see :func:`build_trainer`). A failure in the training itself is raised at once.
    """
    for attempt in range(max_failures + 1):
        try:
            return make_trainer().fit()
        except Exception as err:
            if attempt >= max_failures or not is_infrastructure_failure(err):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            (echo or log.warning)(f"{what}: lost a worker ({type(err).__name__}: {first[:200]}); resuming from its "
                                  f"last checkpoint (retry {attempt + 1} of {max_failures})")
    raise AssertionError("unreachable")


def best_model_dir(result: Any, *, what: str = "the run") -> Path:
    """The model directory of a finished ``TorchTrainer`` fit's best epoch.

    Raises:
        TrainingError: If the fit failed, reported no checkpoint, or the checkpoint is gone from disk.
    """
    if result.error is not None:
        raise TrainingError(f"{what} failed: {result.error}")
    best = result.best_checkpoints[-1][0] if result.best_checkpoints else result.checkpoint
    if best is None:
        raise TrainingError(f"{what} reported no checkpoint")
    directory = checkpoint_dir(best)
    if not directory.is_dir():
        raise TrainingError(f"{what}: its best checkpoint {directory} is missing from disk")
    return directory


@dataclass
class EvalResult:
    """Metrics of one model on one split."""

    metrics: dict[str, float]
    """``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``, ``loss``; for span models
    ``exact_match``, ``f1`` and ``loss``."""
    confusion_matrix: list[list[int]]
    rows: int


def evaluate(
    model: nn.Module | Any,
    dataset: ray.data.Dataset,
    *,
    model_name: str,
    num_classes: int,
    batch_size: int = 1024,
    collate: Any = None,
    model_config: Any = None,
) -> EvalResult:
    """Evaluate ``model`` (a module, or any callable from inputs to logits such as an int8 model) on a
    Ray dataset in this process (the driver); exact over every row.

    ``collate`` batches rows for families that pad their own batches (text:
    :func:`hybrid.artifacts.model_collate`); ``model_config`` (the model's config or its dict) carries the
    task's decoding options (spans: ``max_answer_length``).
    """
    family = get_family(model_name)
    batches = dataset.iter_torch_batches(batch_size=batch_size, collate_fn=collate)
    sums = family.evaluation.evaluate(model, batches, columns=family.input_columns, device=torch.device("cpu"),
                                      num_classes=num_classes, model_config=model_config)
    result = family.evaluation.summarize(sums, num_classes)
    cm = result.confusion_matrix if result.confusion_matrix is not None else []
    return EvalResult(metrics={**result.scores, "loss": result.loss}, confusion_matrix=cm, rows=result.rows)


def checkpoint_dir(checkpoint: Checkpoint | str) -> Path:
    """The model directory inside a Ray Train checkpoint of this loop (or a path string reported to Tune).

    The checkpoint also holds the optimiser and RNG state (``train_state/``): adopt only this directory.
    """
    path = Path(checkpoint if isinstance(checkpoint, str) else checkpoint.path)
    return path / MODEL_DIR if (path / MODEL_DIR).is_dir() or not path.exists() else path
