"""The torch backend of :mod:`hybrid.quantize`: PT2E int8 quantization, ``.pt2`` archives without pickle,
and the lowering of PT2E programs to oneDNN int8 kernels.

Kept apart because it leans on the layout of torch 2.13's PT2 archive and on two ``torch._inductor``
passes, which a torch or torchao upgrade must re-check (the tests do).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hybrid.errors import MissingDependencyError

Inputs = tuple[torch.Tensor, ...]


class UnsafeArchiveError(ValueError):
    """A ``.pt2`` archive holds something that ``torch.export.load`` would unpickle."""


# Files of a PT2 archive (paths below its root folder) that hold no pickle: JSON, raw tensor bytes, plain
# text. ``torch.export.load`` unpickles legacy ``*.pt`` weight files, tensors flagged ``use_pickle``, custom
# and opaque objects, and non-empty sample inputs: none of those is allowed.
_PLAIN_FILES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the import and export chatter that users cannot act on, and nothing else.

    torchao logs a warning for each CUDA kernel library it cannot load into a CPU-only torch; torch logs a
    deprecation of its own ``register_constant`` call made by torchao, skipped torchvision ops in the ONNX
    exporter, and warns from inside its own modules (``torch.utils.mkldnn`` uses ``torch.jit.script_method``,
    pytree's ``LeafSpec`` check). Errors still propagate.
    """
    names = ("torchao", "torch.utils._pytree", "torch.onnx._internal.exporter._registration")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method.* is deprecated")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).* is deprecated")
            # the ONNX exporter names a shared dynamic dimension once and says so for every other input
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quantize_to_bytes(
    model: nn.Module, calibration: list[Inputs], example: Inputs, *, dynamic: bool, reduce_range: bool
) -> bytes:
    """torchao PT2E quantization for x86 (per-channel int8 weights, uint8 activations); returns ``.pt2`` bytes.

    Args:
        model: Float model in eval mode.
        calibration: Input batches; static quantization records activation ranges on them.
        example: Inputs of two rows, for tracing (the batch dimension stays dynamic).
        dynamic: Quantize activations per batch at run time instead of with calibrated ranges.
        reduce_range: Activations in ``[0, 127]`` instead of ``[0, 255]``, so that oneDNN on CPUs without VNNI
            does not saturate int16 sums of products (see :func:`hybrid._cpu.int8_reduce_range`).
    """
    with quiet():
        try:
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
                X86InductorQuantizer,
                get_default_x86_inductor_quantization_config,
            )
        except ImportError:
            raise MissingDependencyError(
                "the torch int8 backend needs torchao: pip install torchao (pyproject.toml has the tested pin)"
            ) from None

        shapes = batch_dynamic_shapes(len(example), example)
        exported = torch.export.export(model, example, dynamic_shapes=shapes)
        config = get_default_x86_inductor_quantization_config(is_dynamic=dynamic, reduce_range=reduce_range)
        quantizer = X86InductorQuantizer().set_global(config)
        prepared = prepare_pt2e(exported.module(), quantizer)
        with torch.no_grad():
            for inputs in calibration:
                prepared(*inputs)
        converted = convert_pt2e(prepared)
        drop_unused_attributes(converted)
        return save_bytes(torch.export.export(converted, example, dynamic_shapes=shapes))


def runner(payload: bytes, example: Inputs) -> Callable[[Inputs], torch.Tensor]:
    """Load ``.pt2`` bytes (refusing pickle) and lower them for x86; returns ``inputs -> float32 logits``.

    Intra-op threads are torch's process-wide setting, which the caller owns.
    """
    with quiet():
        module = lower_for_x86(load_bytes(payload).module(), example)

    def run(inputs: Inputs) -> torch.Tensor:
        with torch.no_grad():
            return module(*inputs).float()

    return run


def batch_dynamic_shapes(num_inputs: int, example: Inputs | None = None) -> tuple[dict[int, Any], ...]:
    """``dynamic_shapes`` making dimension 0 of every input one shared, free batch size.

    With ``example``, dimension 1 of integer inputs (token ids and masks) is one shared, free sequence
    length too, so a text model takes batches padded to any length up to 512 positions.
    """
    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("seq", min=2, max=512)
    if example is None:
        return tuple({0: batch} for _ in range(num_inputs))
    return tuple(
        {0: batch, 1: seq} if not x.is_floating_point() and x.dim() == 2 else {0: batch} for x in example
    )


def drop_unused_attributes(module: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers no graph node reads.

    ``convert_pt2e`` adds the int8 weights as new constants but leaves the float originals on the module,
    where a later ``torch.export`` would save both (the file came out 4x larger).
    """
    used = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    for name in {name for name, _ in named} - used:
        owner, _, attr = name.rpartition(".")
        delattr(module.get_submodule(owner) if owner else module, attr)


def save_bytes(program: torch.export.ExportedProgram) -> bytes:
    """``torch.export.save`` to bytes, without example inputs (the one part it always pickles)."""
    program.example_inputs = None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    payload = buffer.getvalue()
    check_no_pickle(payload)  # a torch upgrade that starts pickling something fails here, not at load time
    return payload


def load_bytes(payload: bytes) -> torch.export.ExportedProgram:
    """``torch.export.load`` from bytes, after :func:`check_no_pickle` has passed.

    Raises:
        UnsafeArchiveError: If the archive holds anything that loading would unpickle.
    """
    check_no_pickle(payload)
    _register_quant_ops()
    return torch.export.load(io.BytesIO(payload))


def _register_quant_ops() -> None:
    """Register the ``quantized_decomposed`` operators an int8 program calls: torchao defines them on import,
    and a process that never quantized (a scorer, a test reading a saved model) has not imported it, so
    ``torch.export.load`` could not resolve them ("We failed to resolve torch.ops.quantized_decomposed...")."""
    try:
        with quiet():
            import torchao.quantization.pt2e  # noqa: F401 - imported for its operator registrations
    except ImportError as err:
        raise MissingDependencyError(
            f"loading a torch int8 model needs torchao ({err}); install it with `pip install torchao`"
        ) from None


def check_no_pickle(payload: bytes) -> None:
    """Refuse a PT2 archive unless every file in it is JSON, raw tensor bytes or plain text.

    Raises:
        UnsafeArchiveError: Naming the first file or entry that ``torch.export.load`` would unpickle.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except zipfile.BadZipFile:
        raise UnsafeArchiveError("the model file is not a PT2 (zip) archive") from None
    with archive:
        roots = {name.split("/", 1)[0] for name in archive.namelist()}
        if len(roots) != 1:
            raise UnsafeArchiveError(f"a PT2 archive has one root folder, but this one has {sorted(roots)}")
        root = roots.pop() + "/"
        files = {info.filename[len(root) :]: info for info in archive.infolist() if not info.is_dir()}
        for name, info in files.items():
            if name in _PLAIN_FILES or name in (_WEIGHTS_CONFIG, _CONSTANTS_CONFIG, "models/model.json"):
                continue
            base = name.rsplit("/", 1)[-1]
            if name.startswith(("data/weights/weight_", "data/constants/tensor_")) and "." not in base:
                continue  # raw tensor bytes; their config entries are checked below
            if name.startswith("data/sample_inputs/") and info.file_size == 0:
                continue
            raise UnsafeArchiveError(f"the PT2 archive holds {name!r}, which loading could unpickle; refusing it")
        for config_name, allowed_prefix in ((_WEIGHTS_CONFIG, "weight_"), (_CONSTANTS_CONFIG, "tensor_")):
            if config_name not in files:
                raise UnsafeArchiveError(f"the PT2 archive lacks {config_name}")
            try:
                entries = json.loads(archive.read(root + config_name))["config"]
            except (ValueError, KeyError, TypeError):
                raise UnsafeArchiveError(f"{config_name} in the PT2 archive is not valid") from None
            for fqn, entry in entries.items():
                stored_as = str(entry.get("path_name", ""))
                if entry.get("use_pickle") is not False or not stored_as.startswith(allowed_prefix):
                    raise UnsafeArchiveError(f"{config_name} stores {fqn!r} as a pickle or custom object; refusing it")


def lower_for_x86(module: torch.fx.GraphModule, example: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """Replace a PT2E int8 program's quantize/dequantize patterns by oneDNN int8 kernels; runs eagerly.

    This is torchao 0.18's ``lower_pt2e_quantized_to_x86`` with two changes: the batch dimension stays
    dynamic (torchao re-exports with static shapes, so the lowered model accepted only the example's batch
    size), and ``view`` becomes ``reshape`` (oneDNN's quantized convolution returns channels-last tensors,
    on which the ``view`` behind ``Flatten`` fails with "view size is not compatible with input tensor's size
    and stride"). No ``torch.compile`` and no C++ compiler are needed.
    """
    from torch._export.utils import _is_cia_op
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    # As torchao does: decompose only composite (CIA) ops and keep every other op as exported, so the
    # quantize/dequantize patterns that the freezing passes fuse into oneDNN kernels stay intact.
    table = {op: fn for op, fn in torch.export.default_decompositions().items() if _is_cia_op(op)}
    lowered = (
        torch.export.export(module, example, dynamic_shapes=batch_dynamic_shapes(len(example), example), strict=False)
        .run_decompositions(table)
        .module()
    )
    graph = lowered.graph
    for node in list(graph.nodes):
        if node.target == torch.ops.aten.t.default:
            with graph.inserting_before(node):
                permuted = graph.call_function(torch.ops.aten.permute.default, args=(node.args[0], [1, 0]))
            node.replace_all_uses_with(permuted)
            graph.erase_node(node)
        elif node.target == torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
    graph.lint()
    lowered.recompile()
    freezing_passes(lowered, example)
    constant_fold(lowered)
    return lowered
