"""Everything a training run needs to continue after a kill, saved without pickle; and the one rule
that picks a run's best epoch.

A checkpoint written by the training loop is a directory::

    model/                    a hybrid model directory (weights, model.json, manifest): what is adopted
    train_state/state.json    epoch, best so far, per-epoch history, optimiser param groups, LR schedule,
                              grad scaler (JSON)
    train_state/state.safetensors   the optimiser's tensors (Adam moments, momentum buffers...)
    train_state/rng.rank<r>.safetensors / .json   torch (CPU and CUDA), numpy and Python RNG of worker r

Only ``model/`` belongs in a model that leaves training (a teacher, a student): copy that, never the
whole checkpoint. The maths here is pure and runs on tiny tensors in tests.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hybrid import _atomic
from hybrid.errors import TrainingError

MODEL_DIR = "model"
STATE_DIR = "train_state"
STATE_JSON, STATE_TENSORS = "state.json", "state.safetensors"
FORMAT = 1
NEW_BEST = "new_best_epoch"
"""Reported every epoch: the epoch number when it is a new best by :func:`improves`, else -1. Ray's
keep-policy orders checkpoints by it (largest kept), so Ray keeps exactly the epoch hybrid records."""
START_EPOCH = "start_epoch"
"""Reported every epoch: how many epochs the run had finished when this attempt started (0: fresh)."""

Mode = Literal["min", "max"]


# ---------------------------------------------------------------------------------------------
# The best-epoch rule
# ---------------------------------------------------------------------------------------------


def improves(value: float | None, best: float | None, mode: Mode) -> bool:
    """Whether ``value`` is a strict improvement over ``best`` (ties do not improve).

    A non-finite or missing ``value`` never improves; any finite value improves on no best yet.
    """
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def best_index(history: Sequence[Mapping[str, Any]], metric: str, mode: Mode) -> int | None:
    """Index of the best epoch in ``history``: the best ``metric``, ties going to the EARLIER epoch.

    This is the rule the training loop's :data:`NEW_BEST` marks encode, so the epoch it picks is
    the checkpoint Ray keeps. None when no epoch has a finite value.
    """
    best, index = None, None
    for i, row in enumerate(history):
        value = row.get(metric)
        if isinstance(value, (int, float)) and improves(float(value), best, mode):
            best, index = float(value), i
    return index


# ---------------------------------------------------------------------------------------------
# Optimiser, schedule and scaler: tensors to safetensors, the rest to JSON
# ---------------------------------------------------------------------------------------------


def flatten_optimizer_state(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into named tensors and JSON-safe data.

    Returns:
        ``(tensors, meta)``: tensors keyed ``state.<param index>.<name>``; ``meta`` holds
        ``param_groups`` and the non-tensor per-parameter values.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [_jsonable(group) for group in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *, like: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`.

    Args:
        tensors: As returned by :func:`flatten_optimizer_state` (or read back from safetensors).
        meta: Likewise.
        like: The ``state_dict()`` of the optimiser about to load this: a param-group value that is
            a tuple there (Adam's ``betas``) comes back as a tuple, not JSON's list.
    """
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = [dict(group) for group in meta["param_groups"]]
    if like is not None:
        for group, reference in zip(groups, like["param_groups"]):
            for key, value in group.items():
                if isinstance(reference.get(key), tuple) and isinstance(value, list):
                    group[key] = tuple(value)
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TrainingError(f"training state must be plain data to be saved without pickle, but got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------


def rng_state(device: torch.device | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's torch (CPU, and ``device`` when CUDA), numpy and Python RNG states."""
    tensors = {"torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, list(internal), gauss]}
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["cuda"], device)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------------------------
# Save and load a whole training state
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run stood after its last finished epoch."""

    epoch: int = 0
    """Epochs finished (the next one to run is ``epoch + 1``, 1-based)."""
    best_value: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every finished epoch's reported metrics."""
    run: dict[str, Any] | None = None
    """What the run trains (see :func:`same_run`): a checkpoint only resumes the run that wrote it."""

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best_value": self.best_value, "best_epoch": self.best_epoch,
                "history": _jsonable(self.history), "run": _jsonable(self.run)}


def run_identity(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a training run's spec a resume must match: all of it but ``train.max_epochs``
    (a run may be extended), as plain JSON data."""
    identity = {k: v for k, v in spec.items()}
    identity["train"] = {k: v for k, v in dict(spec.get("train", {})).items() if k != "max_epochs"}
    return json.loads(json.dumps(_jsonable(identity)))


def run_differences(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two :func:`run_identity` values (empty: same run)."""
    if saved is None:
        return ["(no record of the run that wrote it)"]
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{key}.{sub}" for sub in run_differences(a, b)]
        elif a != b:
            out.append(key)
    return out


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    _atomic.write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def save_train_state(
    directory: str | Path,
    state: TrainState,
    *,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    scaler: torch.amp.GradScaler | None,
    rank: int = 0,
    device: torch.device | None = None,
) -> Path:
    """Write ``directory/train_state/``: the RNG of worker ``rank``, and (rank 0, ``optimizer`` given)
    the epoch, history, optimiser, schedule and scaler. Model weights go to ``directory/model/``
    separately (:func:`hybrid.artifacts.save_model`)."""
    out = Path(directory) / STATE_DIR
    out.mkdir(parents=True, exist_ok=True)
    rng_tensors, rng_meta = rng_state(device)
    _write_safetensors(out / f"rng.rank{rank}.safetensors", rng_tensors)
    _atomic.write_json(out / f"rng.rank{rank}.json", rng_meta)
    if optimizer is None:
        return out
    tensors, optim_meta = flatten_optimizer_state(optimizer.state_dict())
    _write_safetensors(out / STATE_TENSORS, tensors)
    _atomic.write_json(out / STATE_JSON, {
        "format": FORMAT,
        **state.to_json(),
        "optimizer": optim_meta,
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        "scaler": _jsonable(scaler.state_dict()) if scaler is not None else None,
    })
    return out


def _state(meta: Mapping[str, Any]) -> TrainState:
    return TrainState(epoch=int(meta["epoch"]), best_value=meta.get("best_value"), best_epoch=meta.get("best_epoch"),
                      history=list(meta.get("history", [])), run=meta.get("run"))


def read_train_state(directory: str | Path) -> TrainState | None:
    """Epoch, best and history of a checkpoint (no tensors); None when it holds no readable state."""
    meta = _atomic.read_json(Path(directory) / STATE_DIR / STATE_JSON, what="training state")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return _state(meta)


def load_train_state(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    scaler: torch.amp.GradScaler | None,
    rank: int = 0,
    device: torch.device | None = None,
) -> TrainState:
    """Load a checkpoint written by the training loop into ``model`` (a DDP wrapper is unwrapped),
    ``optimizer``, ``scheduler``, ``scaler`` and this process's RNG; return where the run stood.

    Raises:
        TrainingError: If the checkpoint has no readable training state (it was not written by
            this loop, or by an incompatible version).
    """
    from safetensors.torch import load_file

    from hybrid.artifacts import WEIGHTS

    directory = Path(directory)
    state_dir = directory / STATE_DIR
    meta = _atomic.read_json(state_dir / STATE_JSON, what="training state")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TrainingError(
            f"{directory} holds no training state of format {FORMAT} to resume from; start the run under a new "
            "name (or remove that storage directory)"
        )
    module = getattr(model, "module", model)
    module.load_state_dict(load_file(str(directory / MODEL_DIR / WEIGHTS), device=str(device or "cpu")))
    like = optimizer.state_dict()
    tensors = load_file(str(state_dir / STATE_TENSORS))
    optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta["optimizer"], like=like))
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    rng_file = state_dir / f"rng.rank{rank}.safetensors"
    if rng_file.is_file():
        rng_meta = json.loads((state_dir / f"rng.rank{rank}.json").read_text())
        set_rng_state(load_file(str(rng_file)), rng_meta, device)
    return _state(meta)
