"""int8 post-training quantization with two backends, measured side by side.

* ``torch``: ``torch.export`` -> torchao's PT2E flow (``prepare_pt2e`` / calibrate / ``convert_pt2e`` with the
  ``X86InductorQuantizer``). The quantize/dequantize program is saved with ``torch.export.save`` (``model.pt2``:
  JSON graph + raw tensor bytes); loading lowers it to oneDNN int8 kernels (see :mod:`hybrid._quant_torch`).
* ``onnxruntime``: ``torch.onnx.export`` (the ``torch.export``-based exporter) -> ONNX Runtime's
  ``quantize_static`` (QDQ format, calibrated) or ``quantize_dynamic`` -> ``model.onnx`` (:mod:`hybrid._quant_onnx`).

``static`` (weights and activations int8, activation ranges calibrated on training rows) suits convolutional
models; ``dynamic`` (int8 weights, activation ranges taken per batch at run time) suits Linear-heavy ones.

Not ``torch.ao.quantization``: in torch 2.13 every call of it raises a ``DeprecationWarning`` ("deprecated and
will be removed ... migrate to torchao"), and the ``torch.qint8``/``quint8`` tensors its eager and FX flows build
are deprecated too. The PT2E code now lives in torchao and works on plain ``uint8``/``int8`` tensors.

An int8 model directory holds the model file, ``model.json`` and ``manifest.json`` (see :mod:`hybrid.artifacts`);
loading checks the manifest first and never unpickles.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hybrid import _quant_onnx, _quant_torch
from hybrid._cpu import int8_reduce_range
from hybrid._dataclass_io import require, to_dict
from hybrid._atomic import write_bytes, write_json
from hybrid.artifacts import (
    INT8_FILES,
    MANIFEST,
    META,
    WEIGHTS,
    ArtifactError,
    link_or_copy,
    list_files,
    build_model_dir,
    check_metadata,
    read_metadata,
    verify_manifest,
)
from hybrid.errors import DataError, HybridError

Backend = Literal["auto", "torch", "onnxruntime"]
Mode = Literal["auto", "static", "dynamic"]
LABEL = "label"
OUTPUT = "logits"
MODEL_FILES = INT8_FILES
"""The model file of each backend inside an int8 model directory."""
_FORMATS = {"torch": "torch.export.pt2", "onnxruntime": "onnx"}


class QuantizationError(HybridError, RuntimeError):
    """A model could not be quantized (or a quantized model could not be loaded) with the chosen backend."""


@dataclass(frozen=True)
class QuantizeConfig:
    """How a trained float model is turned into int8 and how the result is measured."""

    backend: Backend = "auto"
    """``auto`` quantizes with both backends and keeps the faster one that passes the accuracy gate."""
    mode: Mode = "auto"
    """``static`` or ``dynamic`` quantization; ``auto``: static when the model has a convolution."""
    calibration_samples: int = 1024
    """Training rows whose activation ranges calibrate static quantization (the first N of the batches)."""
    per_channel: bool = True
    """ONNX Runtime: one weight scale per output channel (the torch backend always does this)."""
    reduce_range: bool | None = None
    """Quantize with one bit less of range (ONNX Runtime: 7-bit weights; torch: 7-bit activations), which
    x86 CPUs without VNNI need: their int8 kernels add pairs of products in saturating int16. ``null``:
    only where the quantizing CPU lacks VNNI (AVX2-only x86); set ``true`` when quantizing on a VNNI machine
    for scoring on AVX2-only ones."""
    max_accuracy_drop: float = 0.01
    """Gate: the int8 model's headline metric (the family's: accuracy; F1 for span models) must be >= the
    reference's minus this (0.01 = one percentage point)."""
    min_accuracy_ratio: float | None = None
    """Gate, relative form: when set, the int8 model's headline metric must be >= the reference's times this
    (0.97 = keeps 97% of the teacher's accuracy, or F1) and ``max_accuracy_drop`` is not used."""
    latency_batch_size: int = 256
    """Rows per forward pass when timing any model of the run (teacher, student, int8 candidates)."""
    latency_repeats: int = 5
    """Timed passes per model after one warm-up; the fastest is reported (least disturbed by other work)."""
    num_threads: int | None = None
    """Intra-op threads while timing (torch and ONNX Runtime alike); ``null``: ``torch.get_num_threads()``."""
    opset: int = 18
    """ONNX opset of the exported graph."""

    def __post_init__(self) -> None:
        require(self.calibration_samples >= 1, f"calibration_samples must be >= 1, but got {self.calibration_samples}")
        require(
            0.0 <= self.max_accuracy_drop <= 1.0,
            f"max_accuracy_drop must be in [0, 1], but got {self.max_accuracy_drop}",
        )
        require(
            self.min_accuracy_ratio is None or 0.0 < self.min_accuracy_ratio <= 1.0,
            f"min_accuracy_ratio must be in (0, 1], but got {self.min_accuracy_ratio}",
        )
        require(self.latency_batch_size >= 1, f"latency_batch_size must be >= 1, but got {self.latency_batch_size}")
        require(self.latency_repeats >= 1, f"latency_repeats must be >= 1, but got {self.latency_repeats}")
        require(
            self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, but got {self.num_threads}"
        )
        require(self.opset >= 17, f"opset must be >= 17, but got {self.opset}")

    def threshold(self, reference: float) -> float:
        """The lowest int8 score (of the headline metric) the gate accepts against ``reference``."""
        if self.min_accuracy_ratio is not None:
            return reference * self.min_accuracy_ratio
        return reference - self.max_accuracy_drop


@dataclass(frozen=True)
class InputSpec:
    """One input of a quantized model: its name (the dataset column), shape (``None`` = batch) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


PAD_LOGIT = -1e4
"""Per-position output at a padding position a dynamic int8 model never ran on (no span starts there)."""


class Int8Model:
    """A runnable int8 model together with the exact bytes of its model file.

    Built only from those bytes (by :func:`quantize` and :func:`load_quantized` alike), so what was measured
    is what gets saved and later loaded.
    """

    def __init__(
        self,
        *,
        backend: Literal["torch", "onnxruntime"],
        mode: Literal["static", "dynamic"],
        inputs: Sequence[InputSpec],
        payload: bytes,
        num_threads: int | None = None,
        padding_mask: str | None = None,
    ) -> None:
        self.backend, self.mode, self.inputs, self.payload = backend, mode, tuple(inputs), payload
        names = [spec.name for spec in self.inputs]
        if padding_mask is not None and padding_mask not in names:
            raise ValueError(f"padding_mask must name one of the inputs {names}, but got {padding_mask!r}")
        self.padding_mask = padding_mask
        self._mask_index = names.index(padding_mask) if padding_mask is not None else None
        self._run: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]
        if backend == "torch":
            self._run = _quant_torch.runner(payload, _example_from_specs(self.inputs))
        else:
            names = [spec.name for spec in self.inputs]
            self._run = _quant_onnx.runner(payload, input_names=names, output_name=OUTPUT, num_threads=num_threads)

    @property
    def size_bytes(self) -> int:
        """Size of the model file."""
        return len(self.payload)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Map inputs (in :attr:`inputs` order, batch first) to ``(batch, num_classes)`` float32 logits."""
        if len(inputs) != len(self.inputs):
            names = [spec.name for spec in self.inputs]
            raise ValueError(f"expected {len(names)} inputs {names}, but got {len(inputs)}")
        cast = []
        for spec, x in zip(self.inputs, inputs):
            if x.dim() != len(spec.shape) or any(d is not None and d != n for d, n in zip(spec.shape, x.shape)):
                shape = ["batch" if d is None else d for d in spec.shape]
                raise ValueError(f"input {spec.name!r} must have shape {shape}, but got {list(x.shape)}")
            cast.append(x.detach().cpu().to(getattr(torch, spec.dtype)))
        if self.mode == "dynamic":
            return self._row_by_row(tuple(cast))
        return self._run(tuple(cast))

    def _row_by_row(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Run each row alone, cut to its own length: dynamic quantization takes one activation range over
        the whole input tensor, so in a batch a row's logits would depend on its batch mates (and their
        padding). Alone, a row gets the same answer in any batch, order or Spark partition."""
        rows = inputs[0].shape[0]
        if rows == 0:
            return self._run(inputs)
        lengths = self._lengths(inputs)
        sequence = [len(spec.shape) == 2 and spec.shape[1] is None for spec in self.inputs]
        width = next((x.shape[1] for x, seq in zip(inputs, sequence) if seq), None)
        out = []
        for i in range(rows):
            n = lengths[i] if lengths is not None else None
            logits = self._run(tuple(x[i : i + 1, :n] if n is not None and seq else x[i : i + 1]
                                     for x, seq in zip(inputs, sequence)))
            if n is not None and width is not None and logits.dim() >= 2 and logits.shape[1] == n < width:
                # Per-position outputs (a span head's start/end logits): the cut-off padding gets PAD_LOGIT.
                pad = logits.new_full((1, width - n, *logits.shape[2:]), PAD_LOGIT)
                logits = torch.cat([logits, pad], dim=1)
            out.append(logits)
        return torch.cat(out)

    def _lengths(self, inputs: tuple[torch.Tensor, ...]) -> list[int] | None:
        """Each row's length before its padding (right-padded rows: a mask of ones, then zeros), if the model
        names a padding mask; a row whose mask is not of that shape is run uncut."""
        if self._mask_index is None:
            return None
        mask = inputs[self._mask_index] != 0
        return [int(n) if int(n) > 0 and bool(mask[i, : int(n)].all()) else mask.shape[1]
                for i, n in enumerate(mask.sum(dim=1))]

    def __repr__(self) -> str:
        return f"Int8Model(backend={self.backend!r}, mode={self.mode!r}, size_bytes={self.size_bytes})"


@dataclass
class Measurement:
    """One model measured on the evaluation rows."""

    accuracy: float
    """Fraction of labels equal to the top-1 output (argmax over dimension 1: a classifier's class; a span
    model's start and end token of each window)."""
    agreement: float
    """Fraction of top-1 outputs equal to the float model's."""
    max_abs_logit_diff: float
    """Largest ``|logit - float logit|`` over all rows and classes (or positions)."""
    latency_ms_per_sample: float
    """Fastest timed pass at ``latency_batch_size`` rows, divided by the rows."""
    size_bytes: int
    """Model file size (float: the safetensors weights)."""
    passed_gate: bool | None = None
    """int8 only: ``score >= QuantizeConfig.threshold(reference)``."""
    score: float | None = None
    """The gate's metric (:attr:`QuantizeResult.metric`): ``accuracy`` unless :func:`quantize` was given a
    scorer (the family's headline metric, e.g. a span model's F1)."""


@dataclass
class QuantizeResult:
    """The int8 model picked, and every candidate's measurements next to the float model's."""

    model: Int8Model
    """The chosen backend's model: the fastest that passed the gate, or the fastest if none did."""
    passed_gate: bool
    """False: no int8 model kept the accuracy; the caller should ship the float model and say so."""
    reference: float
    """The score the gate compares against (the teacher's, or else the float model's)."""
    baseline: Measurement
    """The float model."""
    candidates: dict[str, Measurement]
    """Backend name -> measurement of its int8 model."""
    models: dict[str, Int8Model] = field(repr=False)
    """Backend name -> int8 model (all candidates, for benchmarks)."""
    failures: dict[str, str] = field(default_factory=dict)
    """Backend name -> error, for backends that ``auto`` tried and could not use."""
    metric: str = "accuracy"
    """The gate's metric: what :attr:`Measurement.score` and :attr:`reference` measure."""

    @property
    def backend(self) -> str:
        """Backend of the chosen model."""
        return self.model.backend

    @property
    def speedup(self) -> float:
        """Float latency / chosen int8 latency."""
        return self.baseline.latency_ms_per_sample / self.candidates[self.backend].latency_ms_per_sample

    @property
    def size_ratio(self) -> float:
        """Float size / chosen int8 size."""
        return self.baseline.size_bytes / self.model.size_bytes

    def summary(self) -> dict[str, Any]:
        """Plain data for ``summary.json`` and reports."""
        return {
            "backend": self.backend,
            "mode": self.model.mode,
            "passed_gate": self.passed_gate,
            "metric": self.metric,
            "reference": self.reference,
            "speedup": self.speedup,
            "size_ratio": self.size_ratio,
            "float": to_dict(self.baseline),
            "int8": {name: to_dict(m) for name, m in self.candidates.items()},
            "failures": dict(self.failures),
        }


def quantize(
    model: nn.Module,
    calibration_batches: Iterable[Mapping[str, torch.Tensor]],
    config: QuantizeConfig = QuantizeConfig(),
    *,
    eval_batches: Iterable[Mapping[str, torch.Tensor]],
    reference: float | None = None,
    input_columns: Sequence[str] = ("pixels",),
    padding_mask: str | None = None,
    scorer: tuple[str, Callable[[Callable[..., torch.Tensor]], float]] | None = None,
) -> QuantizeResult:
    """Quantize a trained float model to int8, measure it against the float model and apply the gate.

    Args:
        model: The trained float model (left unchanged; it is run in eval mode).
        calibration_batches: Training batches shaped like Ray's ``iter_torch_batches`` (``input_columns``
            as float tensors, batch first); the first ``calibration_samples`` rows are used.
        config: Backend, mode, gate and timing settings.
        eval_batches: Held-out labelled batches (``input_columns`` and ``label``) for accuracy, agreement
            and latency.
        reference: The gate's reference (the teacher's score); ``None``: the float model's.
        input_columns: Columns fed to ``model.forward`` positionally, in order.
        padding_mask: The input column whose zeros mark a row's trailing padding (a BERT's attention mask):
            a dynamically quantized model runs each row cut to its length (see :class:`Int8Model`).
        scorer: ``(metric, score)``: the gate's metric and how a runnable model (the float one or an int8
            one) scores on held-out rows, in ``[0, 1]`` (the family's headline metric through its task,
            e.g. a span model's F1 after decoding); ``None``: ``accuracy`` on ``eval_batches``.

    Returns:
        A :class:`QuantizeResult`; check ``passed_gate`` before shipping ``model``.

    Raises:
        QuantizationError: If the requested backend (or, for ``auto``, every backend) fails.
        MissingDependencyError: If a backend's packages are not installed (``auto`` skips that backend).
        DataError: If the batches lack a column or hold no rows.
        ValueError: If ``reference`` is outside ``[0, 1]``.
    """
    if reference is not None and not 0.0 <= reference <= 1.0:
        raise ValueError(f"reference must be in [0, 1], but got {reference}")
    metric = scorer[0] if scorer is not None else "accuracy"
    was_training = model.training
    model.eval()
    try:
        calibration = _take_rows(calibration_batches, input_columns, config.calibration_samples)
        eval_inputs, eval_labels = _eval_rows(eval_batches, input_columns)
        specs = tuple(
            InputSpec(name, _dynamic_shape(t), str(t.dtype).removeprefix("torch."))
            for name, t in zip(input_columns, calibration[0])
        )
        mode = config.mode if config.mode != "auto" else ("static" if _has_conv(model) else "dynamic")
        threads = config.num_threads or torch.get_num_threads()
        reduce_range = config.reduce_range if config.reduce_range is not None else int8_reduce_range()
        with torch.no_grad():
            float_logits = _batched(model, eval_inputs)
        baseline = _measure(model, float_logits, float_logits, eval_labels, eval_inputs, config, threads)
        baseline.size_bytes = float_size_bytes(model)
        # float(): a task's metrics are numpy scalars, and a numpy bool from comparing them is no JSON.
        baseline.score = float(scorer[1](model)) if scorer is not None else baseline.accuracy
        reference = baseline.score if reference is None else float(reference)

        backends = ["torch", "onnxruntime"] if config.backend == "auto" else [config.backend]
        models: dict[str, Int8Model] = {}
        candidates: dict[str, Measurement] = {}
        failures: dict[str, str] = {}
        for backend in backends:
            try:
                payload = _quantize_bytes(backend, model, calibration, specs, mode, config, reduce_range=reduce_range)
                int8 = Int8Model(backend=backend, mode=mode, inputs=specs, payload=payload, num_threads=threads,
                                padding_mask=padding_mask)
            except Exception as err:  # noqa: BLE001 - auto tries the other backend; an explicit one re-raises
                if config.backend != "auto":
                    if isinstance(err, HybridError):
                        raise
                    raise QuantizationError(f"{backend} int8 quantization failed: {err}") from err
                failures[backend] = f"{type(err).__name__}: {err}"
                continue
            with torch.no_grad():
                logits = _batched(int8, eval_inputs)
            measured = _measure(int8, logits, float_logits, eval_labels, eval_inputs, config, threads)
            measured.size_bytes = int8.size_bytes
            measured.score = float(scorer[1](int8)) if scorer is not None else measured.accuracy
            measured.passed_gate = bool(measured.score >= config.threshold(reference))
            models[backend], candidates[backend] = int8, measured
        if not models:
            raise QuantizationError(f"no backend could quantize the model: {failures}")
        chosen, passed = choose_backend(candidates)
        return QuantizeResult(
            model=models[chosen],
            passed_gate=passed,
            reference=reference,
            baseline=baseline,
            candidates=candidates,
            models=models,
            failures=failures,
            metric=metric,
        )
    finally:
        model.train(was_training)


def _quantize_bytes(
    backend: str, model: nn.Module, calibration: list[tuple[torch.Tensor, ...]], specs: Sequence[InputSpec],
    mode: str, config: QuantizeConfig, *, reduce_range: bool,
) -> bytes:
    example = _example(calibration)
    if backend == "torch":
        return _quant_torch.quantize_to_bytes(
            model, calibration, example, dynamic=mode == "dynamic", reduce_range=reduce_range
        )
    return _quant_onnx.quantize_to_bytes(
        model, calibration, example, input_names=[s.name for s in specs], output_name=OUTPUT,
        dynamic=mode == "dynamic", per_channel=config.per_channel, reduce_range=reduce_range, opset=config.opset,
    )


def choose_backend(candidates: Mapping[str, Measurement]) -> tuple[str, bool]:
    """The fastest candidate that passed the gate, else the fastest of all; and whether any passed.

    Raises:
        ValueError: If there are no candidates.
    """
    if not candidates:
        raise ValueError("choose_backend needs at least one candidate")
    passing = [name for name, m in candidates.items() if m.passed_gate]
    chosen = min(passing or list(candidates), key=lambda name: candidates[name].latency_ms_per_sample)
    return chosen, bool(passing)


def save_quantized(
    directory: str | Path, int8: Int8Model, *, family: str, config: Any, assets_from: str | Path | None = None,
    **metadata: Any,
) -> Path:
    """Write an int8 model directory (the model file, ``model.json`` and ``manifest.json``) atomically.

    The directory is built under a temporary name and swapped in whole, so a killed writer leaves the old
    directory or the new one.

    Args:
        directory: Created if missing; a model file already there (of either backend), ``model.json`` and the
            manifest are replaced, and any other file there (a tokenizer copied in) is kept and hashed.
        int8: The model (its bytes are written as they are).
        family: Registry name of the float model's family.
        config: The family's config dataclass (or plain dict).
        assets_from: A float model directory whose sub-directories (a BERT's ``encoder/``: tokenizer and
            encoder config) are copied in after verifying its manifest, so the int8 model is self-contained.
        **metadata: JSON-serialisable extras (preprocessing, label names, metrics...).

    Raises:
        ArtifactError: If ``directory`` holds a float model or a symbolic link, ``assets_from`` does not
            verify, or the config names a path outside the directory.
    """
    directory = Path(directory)
    if (directory / WEIGHTS).exists():
        raise ArtifactError(f"{directory} holds a float model ({WEIGHTS}); write the int8 model to its own directory")
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise ArtifactError(f"{directory}: an int8 model is written to a directory, but this is a link or a file")
    meta = check_metadata(directory, {
        "family": family,
        "config": to_dict(config),
        "format": _FORMATS[int8.backend],
        "backend": int8.backend,
        "quantization": {"dtype": "int8", "mode": int8.mode, "padding_mask": int8.padding_mask},
        "inputs": [to_dict(spec) for spec in int8.inputs],
        "outputs": [OUTPUT],
        "size_bytes": int8.size_bytes,
        **to_dict(metadata),
    })
    assets = {}
    if assets_from is not None:
        assets = {name: Path(assets_from) / name for name in verify_manifest(assets_from) if "/" in name}
    replaced = {*MODEL_FILES.values(), META, MANIFEST}
    kept = [name for name in list_files(directory) if name not in replaced] if directory.is_dir() else []
    with build_model_dir(directory) as tmp:
        for name in kept:
            link_or_copy(directory / name, tmp / name)
        for name, source in assets.items():
            link_or_copy(source, tmp / name, link=False)
        write_bytes(tmp / MODEL_FILES[int8.backend], int8.payload)
        write_json(tmp / META, meta)
    return directory


def load_quantized(directory: str | Path, *, num_threads: int | None = None) -> tuple[Int8Model, dict[str, Any]]:
    """Load an int8 model directory after checking every file against its manifest.

    Args:
        directory: Written by :func:`save_quantized`.
        num_threads: Intra-op threads of an ONNX Runtime session (``None``: ONNX Runtime's default);
            the torch backend uses ``torch.get_num_threads()`` at call time.

    Raises:
        ArtifactError: If the directory is incomplete, malformed, a file does not match the manifest, or the
            model file could only be read by unpickling.
    """
    directory = Path(directory)
    present = [name for name in MODEL_FILES.values() if (directory / name).is_file()]
    if len(present) != 1:
        raise ArtifactError(
            f"{directory}: an int8 model directory holds exactly one of {sorted(MODEL_FILES.values())}, "
            f"but it has {present or 'none'}"
        )
    meta = read_metadata(directory)
    backend = meta.get("backend")
    if not isinstance(backend, str) or MODEL_FILES.get(backend) != present[0]:
        raise ArtifactError(f"{directory}: model.json names backend {backend!r}, but the model file is {present[0]}")
    specs, mode = _saved_inputs(directory, meta)
    payload = (directory / present[0]).read_bytes()
    try:
        model = Int8Model(backend=backend, mode=mode, inputs=specs, payload=payload, num_threads=num_threads,
                          padding_mask=meta["quantization"].get("padding_mask"))
    except ValueError as err:  # a pickle inside the .pt2 archive, or ONNX inputs that disagree with model.json
        raise ArtifactError(f"{directory}: {err}") from None
    except HybridError:
        raise
    except Exception as err:  # noqa: BLE001 - hashed bytes that are no model: ONNX Runtime raises its own types
        detail = " ".join(str(err).split())[:300]
        raise ArtifactError(f"{directory}: {present[0]} is not a loadable {backend} model: {detail}") from err
    return model, meta


def _saved_inputs(directory: Path, meta: dict[str, Any]) -> tuple[tuple[InputSpec, ...], Literal["static", "dynamic"]]:
    """The inputs and mode recorded in an int8 ``model.json``, checked for shape."""
    rule = (f"{directory}: {META} must hold 'inputs' [{{name: str, shape: [int or null...], dtype: torch dtype}}...] "
            "and 'quantization.mode' 'static' or 'dynamic'")
    inputs, quantization = meta.get("inputs"), meta.get("quantization")
    mode = quantization.get("mode") if isinstance(quantization, dict) else None
    if mode not in ("static", "dynamic") or not isinstance(inputs, list) or not inputs:
        raise ArtifactError(f"{rule}, but has inputs={inputs!r:.80} and quantization={quantization!r:.80}")
    specs = []
    for spec in inputs:
        if not (
            isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("shape"), list)
            and all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 1) for d in spec["shape"])
            and isinstance(spec.get("dtype"), str) and isinstance(getattr(torch, spec["dtype"], None), torch.dtype)
        ):
            raise ArtifactError(f"{rule}, but one input is {spec!r:.80}")
        specs.append(InputSpec(spec["name"], tuple(spec["shape"]), spec["dtype"]))
    return tuple(specs), mode


# --- measuring -------------------------------------------------------------------------------------------


def _measure(
    run: Callable[..., torch.Tensor], logits: list[torch.Tensor], float_logits: list[torch.Tensor],
    labels: torch.Tensor, inputs: list[tuple[torch.Tensor, ...]], config: QuantizeConfig, threads: int,
) -> Measurement:
    """Accuracy and closeness of ``logits`` (computed by ``run``, batch by batch), and ``run``'s latency on the
    first batch's rows; size and score are filled in later.

    Top-1 is the argmax over dimension 1, so the same code measures a classifier (``(rows, classes)`` against
    ``(rows,)`` labels) and a span model (``(windows, L, 2)`` against ``(windows, 2)`` start and end tokens);
    batches are compared one by one because a span model's batches differ in window length.
    """
    top1 = torch.cat([x.argmax(1) for x in logits])
    float_top1 = torch.cat([x.argmax(1) for x in float_logits])
    return Measurement(
        accuracy=float((top1 == labels).float().mean()),
        agreement=float((top1 == float_top1).float().mean()),
        max_abs_logit_diff=max((float((x - f).abs().max()) for x, f in zip(logits, float_logits) if x.numel()),
                               default=0.0),
        latency_ms_per_sample=_latency_ms(run, inputs[0], config, threads),
        size_bytes=0,
    )


def latency_ms_per_sample(
    run: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], *, batch_size: int = 256,
    repeats: int = 5, threads: int | None = None,
) -> float:
    """Fastest of ``repeats`` forward passes of ``batch_size`` rows (recycled from ``inputs``), per row, in ms."""
    config = QuantizeConfig(latency_batch_size=batch_size, latency_repeats=repeats)
    return _latency_ms(run, inputs, config, threads or torch.get_num_threads())


def _latency_ms(
    run: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], config: QuantizeConfig, threads: int
) -> float:
    rows = config.latency_batch_size
    reps = math.ceil(rows / len(inputs[0]))
    batch = tuple(x.repeat(reps, *([1] * (x.dim() - 1)))[:rows].contiguous() for x in inputs)
    with _torch_threads(threads), torch.no_grad():
        run(*batch)
        best = math.inf
        for _ in range(config.latency_repeats):
            start = time.perf_counter()
            run(*batch)
            best = min(best, time.perf_counter() - start)
    return best * 1e3 / rows


@contextmanager
def _torch_threads(n: int) -> Any:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def float_size_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s weights as safetensors: the size of the ``model.safetensors`` that
    :func:`hybrid.artifacts.save_model` writes (a DDP wrapper is unwrapped)."""
    from safetensors.torch import save

    model = getattr(model, "module", model)

    return len(save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))


# --- data ------------------------------------------------------------------------------------------------


def _columns(batch: Mapping[str, Any], columns: Sequence[str]) -> tuple[torch.Tensor, ...]:
    missing = [c for c in columns if c not in batch]
    if missing:
        raise DataError(f"batches must have the columns {list(columns)}, but {missing} are missing (got {list(batch)})")
    return tuple(torch.as_tensor(batch[c]) for c in columns)


def _take_rows(
    batches: Iterable[Mapping[str, Any]], columns: Sequence[str], limit: int
) -> list[tuple[torch.Tensor, ...]]:
    taken: list[tuple[torch.Tensor, ...]] = []
    rows = 0
    for batch in batches:
        inputs = tuple(x[: limit - rows] for x in _columns(batch, columns))
        if len(inputs[0]):
            taken.append(inputs)
            rows += len(inputs[0])
        if rows >= limit:
            break
    if not taken:
        raise DataError("calibration_batches hold no rows")
    return taken


def _eval_rows(
    batches: Iterable[Mapping[str, Any]], columns: Sequence[str]
) -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor]:
    """The batches' inputs, batch by batch (text batches differ in padded length), and all labels."""
    inputs, labels = [], []
    for batch in batches:
        *features, label = _columns(batch, (*columns, LABEL))
        inputs.append(tuple(features))
        labels.append(label.long())
    if not labels or not sum(len(y) for y in labels):
        raise DataError("eval_batches hold no rows")
    return inputs, torch.cat(labels)


def _batched(run: Callable[..., torch.Tensor], batches: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    return [run(*inputs).float() for inputs in batches]


def _dynamic_shape(example: torch.Tensor) -> tuple[int | None, ...]:
    """``None`` for the batch dimension, and for the sequence length of integer (token) inputs."""
    if not example.is_floating_point() and example.dim() == 2:
        return (None, None)
    return (None, *example.shape[1:])


def _example(calibration: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    # Two rows: a batch of one would let torch.export specialise the batch dimension to 1.
    first = calibration[0]
    return tuple(x.repeat(2, *([1] * (x.dim() - 1)))[:2].clone() for x in first)


def _example_from_specs(specs: Sequence[InputSpec]) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.zeros([2 if d is None else d for d in spec.shape], dtype=getattr(torch, spec.dtype)) for spec in specs
    )


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


# --- the quantize stage ----------------------------------------------------------------------------------


@dataclass
class StudentInt8:
    """What the quantize stage produced: the int8 student, its gate and how it compares to the teacher."""

    result: QuantizeResult
    directory: Path
    """The int8 model directory (``run_dir/student_int8``)."""
    report: Any
    """Its :class:`~hybrid.measure.ModelReport` on the test split."""
    vs_teacher: dict[str, Any]
    """Latency and size of teacher, student and int8 student, timed side by side, and ratios to the teacher."""

    def summary(self) -> dict[str, Any]:
        """The ``quantize`` block of ``summary.json``."""
        return {**self.result.summary(), "vs_teacher": self.vs_teacher}

    def model_block(self) -> dict[str, Any]:
        """The ``models.student_int8`` block of ``summary.json``."""
        from hybrid.artifacts import read_metadata

        meta = read_metadata(self.directory)
        return {**self.report.block(), "path": str(self.directory), "family": meta["family"],
                "backend": self.result.backend, "passed_gate": self.result.passed_gate,
                "val": {self.result.metric: self.result.candidates[self.result.backend].score}}


def teacher_reference(teacher_dir: Path, val: Any, *, num_classes: int, eval_batch_size: int) -> float:
    """The gate's reference: the teacher's headline metric (its family's) on the validation split ``val``."""
    from hybrid.artifacts import load_model, model_collate
    from hybrid.models import get_family
    from hybrid.train import evaluate

    teacher, meta = load_model(teacher_dir)
    family = meta["family"]
    return float(evaluate(teacher, val, model_name=family, num_classes=num_classes, batch_size=eval_batch_size,
                          collate=model_collate(teacher_dir, meta),
                          model_config=meta["config"]).metrics[get_family(family).headline])


def quantize_dir(
    model_dir: Path, datasets: Mapping[str, Any], *, config: QuantizeConfig, reference: float | None,
    num_classes: int, eval_batch_size: int,
) -> tuple[QuantizeResult, nn.Module, dict[str, Any], Any]:
    """:func:`quantize` the float model saved in ``model_dir``: calibrated on ``datasets['train']``, scored on
    ``datasets['val']`` by its family's headline metric and gated against ``reference``.

    What the quantize stage and each compression-search candidate (:mod:`hybrid.compress`) both run, so a
    candidate's int8 score is the one the stage would compute. Returns ``(result, float model, its metadata,
    its collate)``.
    """
    from hybrid.artifacts import load_model, model_collate
    from hybrid.models import get_family
    from hybrid.train import evaluate

    model, meta = load_model(model_dir)
    family = meta["family"]
    metric = get_family(family).headline
    columns = get_family(family).input_columns
    collate = model_collate(model_dir, meta)

    def score(runnable: Callable[..., torch.Tensor]) -> float:
        return evaluate(runnable, datasets["val"], model_name=family, num_classes=num_classes,
                        batch_size=eval_batch_size, collate=collate, model_config=meta["config"]).metrics[metric]

    result = quantize(
        model, datasets["train"].iter_torch_batches(batch_size=256, collate_fn=collate), config,
        eval_batches=datasets["val"].iter_torch_batches(batch_size=1024, collate_fn=collate),
        reference=reference, input_columns=columns, padding_mask=get_family(family).padding_mask,
        scorer=(metric, score),
    )
    return result, model, meta, collate


def quantize_student(
    student_dir: Path,
    teacher_dir: Path,
    datasets: Mapping[str, Any],
    *,
    config: QuantizeConfig,
    num_classes: int,
    eval_batch_size: int,
    out_dir: Path,
    echo: Callable[[str], None] = print,
) -> StudentInt8:
    """Quantize the float student in ``student_dir`` to int8 in ``out_dir``, gated against the teacher.

    The gate compares the family's headline metric (:attr:`~hybrid.models.registry.ModelFamily.headline`:
    accuracy, or F1 for span models) of each int8 candidate with the teacher's, both on the validation split
    and evaluated by the family's task exactly as the test split is. ``out_dir`` is written whole or not at all.
    """
    from hybrid import _atomic
    from hybrid.artifacts import read_metadata
    from hybrid.measure import measure_model, side_by_side
    from hybrid.models import get_family

    reference = teacher_reference(teacher_dir, datasets["val"], num_classes=num_classes,
                                  eval_batch_size=eval_batch_size)
    result, model, meta, collate = quantize_dir(student_dir, datasets, config=config, reference=reference,
                                                num_classes=num_classes, eval_batch_size=eval_batch_size)
    from hybrid.artifacts import load_model

    teacher, _ = load_model(teacher_dir)
    family = meta["family"]
    metric, columns = result.metric, get_family(family).input_columns
    shipped = {k: v for k, v in read_metadata(student_dir).items() if k in ("normalizer", "label_names", "max_seq_length")}
    with _atomic.replace_dir(out_dir) as tmp:  # a fresh directory: nothing of an earlier attempt stays
        save_quantized(tmp, result.model, family=family, config=meta["config"], assets_from=student_dir, **shipped)
    report = measure_model(result.model, out_dir, datasets["test"], num_classes=num_classes,
                           eval_batch_size=eval_batch_size, file_bytes=result.model.size_bytes,
                           latency_batch=config.latency_batch_size)
    versus = side_by_side(
        {"teacher": teacher, "student": model, "student_int8": result.model}, datasets["val"], collate=collate,
        columns=columns, sizes={"teacher": (teacher_dir / WEIGHTS).stat().st_size,
                                "student": (student_dir / WEIGHTS).stat().st_size,
                                "student_int8": result.model.size_bytes},
        batch_size=config.latency_batch_size,
    )
    verdict = "passed" if result.passed_gate else "FAILED: the float student will be shipped instead"
    echo(f"[quantize] {result.backend} int8: val {metric} {result.candidates[result.backend].score:.4f} vs teacher "
         f"{reference:.4f} (gate: >= {config.threshold(reference):.4f}) {verdict}; "
         f"{result.speedup:.1f}x faster, {result.size_ratio:.1f}x smaller than the float student")
    echo("[quantize] side by side (ms/sample): " + ", ".join(
        f"{name} {ms:.3f}" for name, ms in versus["latency_ms_per_sample"].items())
        + f"; int8 student vs teacher: {versus['speedup']['student_int8']:.1f}x faster, "
        f"{versus['size_ratio']['student_int8']:.1f}x smaller")
    return StudentInt8(result=result, directory=out_dir, report=report, vs_teacher=versus)
