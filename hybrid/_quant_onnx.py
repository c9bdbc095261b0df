"""The ONNX Runtime backend of :mod:`hybrid.quantize`: export to ONNX, quantize, and run int8 ONNX models."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hybrid._quant_torch import batch_dynamic_shapes, quiet
from hybrid.errors import MissingDependencyError

Inputs = tuple[torch.Tensor, ...]


def require_onnxruntime() -> Any:
    """Return ``onnxruntime.quantization``, or raise with the ``pip install`` line that fixes its absence."""
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import onnxruntime.quantization as ort_quant
        import onnxscript  # noqa: F401 - torch.onnx.export needs it
    except ImportError as err:
        raise MissingDependencyError(
            f"the onnxruntime int8 backend needs {err.name}: pip install onnx onnxruntime onnxscript "
            "(pyproject.toml has the tested pins)"
        ) from None
    return ort_quant


def export(
    model: nn.Module, example: Inputs, path: str, *, input_names: Sequence[str], output_name: str, opset: int
) -> None:
    """Write ``model`` as a float ONNX file with a dynamic batch dimension (the ``torch.export``-based exporter)."""
    require_onnxruntime()
    with quiet():
        torch.onnx.export(
            model, example, path, dynamo=True, opset_version=opset, input_names=list(input_names),
            output_names=[output_name], dynamic_shapes=batch_dynamic_shapes(len(example), example),
            external_data=False, verbose=False,
        )


def quantize_to_bytes(
    model: nn.Module,
    calibration: list[Inputs],
    example: Inputs,
    *,
    input_names: Sequence[str],
    output_name: str,
    dynamic: bool,
    per_channel: bool,
    reduce_range: bool,
    opset: int,
) -> bytes:
    """Export ``model`` to ONNX and quantize it with ONNX Runtime; returns the int8 ``.onnx`` bytes.

    Static: QDQ format, uint8 activations with MinMax ranges calibrated on ``calibration``, int8 weights.
    Dynamic: int8 weights of MatMul/Gemm and embedding tables (Gather), activations quantized per batch at run time.
    ``reduce_range``: 7-bit weights, so that CPUs without VNNI do not saturate int16 sums of products (see
    :func:`hybrid._cpu.int8_reduce_range`); ONNX Runtime keeps embedding tables (Gather) at 8 bits regardless.
    """
    ort_quant = require_onnxruntime()
    with tempfile.TemporaryDirectory(prefix="hybrid-onnx-") as tmp:
        float_path, pre_path, int8_path = (str(Path(tmp) / n) for n in ("float.onnx", "pre.onnx", "int8.onnx"))
        export(model, example, float_path, input_names=input_names, output_name=output_name, opset=opset)
        # Shape inference and graph optimisation (folds batch norm into convolutions) before quantizing,
        # as ONNX Runtime's quantization guide recommends.
        # Symbolic shape inference cannot follow a free sequence length through attention masks
        # ("Incomplete symbolic shape inference"); ONNX's own shape inference still runs.
        free_length = any(not x.is_floating_point() and x.dim() == 2 for x in example)
        ort_quant.shape_inference.quant_pre_process(float_path, pre_path, skip_symbolic_shape=free_length)
        with _root_logger_at(logging.WARNING):
            _quantize(
                ort_quant, pre_path, int8_path, calibration, input_names,
                dynamic=dynamic, per_channel=per_channel, reduce_range=reduce_range,
            )
        return Path(int8_path).read_bytes()


def _quantize(
    ort_quant: Any, pre_path: str, int8_path: str, calibration: list[Inputs], input_names: Sequence[str], *,
    dynamic: bool, per_channel: bool, reduce_range: bool,
) -> None:
    if dynamic:
        # Matrix products and embedding lookups (Gather: a BERT's word embeddings are a third of its
        # weights), not convolutions: ONNX Runtime's dynamic ConvInteger ran about 10x slower than float here.
        ort_quant.quantize_dynamic(
            pre_path, int8_path, weight_type=ort_quant.QuantType.QInt8, per_channel=per_channel,
            reduce_range=reduce_range, op_types_to_quantize=["MatMul", "Gemm", "Gather"],
        )
    else:
        ort_quant.quantize_static(
            pre_path, int8_path, _reader(ort_quant, calibration, input_names),
            quant_format=ort_quant.QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
            activation_type=ort_quant.QuantType.QUInt8, weight_type=ort_quant.QuantType.QInt8,
            calibrate_method=ort_quant.CalibrationMethod.MinMax,
        )


@contextmanager
def _root_logger_at(level: int) -> Iterator[None]:
    """ONNX Runtime's quantizer logs one INFO line per tensor it skips through the root logger (which Ray
    sets to INFO): raise the root level for the duration of the call only."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, level))
    try:
        yield
    finally:
        root.setLevel(previous)


def _reader(ort_quant: Any, calibration: list[Inputs], names: Sequence[str]) -> Any:
    class CalibrationReader(ort_quant.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            inputs = next(self._batches, None)
            return None if inputs is None else {n: x.numpy() for n, x in zip(names, inputs)}

    return CalibrationReader()


def runner(
    payload: bytes, *, input_names: Sequence[str], output_name: str, num_threads: int | None
) -> Callable[[Inputs], torch.Tensor]:
    """An ONNX Runtime CPU session over ``payload``; returns ``inputs -> float32 logits``.

    Raises:
        ValueError: If the model's inputs are not ``input_names`` (in order).
    """
    require_onnxruntime()
    import onnxruntime as ort

    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    actual = [i.name for i in session.get_inputs()]
    if actual != list(input_names):
        raise ValueError(f"the ONNX model takes inputs {actual}, but its metadata names {list(input_names)}")

    def run(inputs: Inputs) -> torch.Tensor:
        feeds = {n: x.numpy() for n, x in zip(input_names, inputs)}
        return torch.from_numpy(session.run([output_name], feeds)[0])

    return run
