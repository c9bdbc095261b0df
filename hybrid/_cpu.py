"""What the CPU can do, where it changes how hybrid computes (the int8 range today).

Capabilities come from ``torch.cpu.get_capabilities()`` (the cpuinfo library: the same answer on Linux,
macOS and Windows, no ``/proc/cpuinfo`` parsing). The decisions are pure functions of that mapping, so
tests can hand them any CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_VNNI = ("avx512_vnni", "avx_vnni")
"""x86 instructions that multiply u8 x s8 and add four products straight into int32 (AMX-int8 CPUs have
AVX512-VNNI too)."""


def cpu_capabilities() -> Mapping[str, Any]:
    """This machine's instruction sets, as ``torch.cpu.get_capabilities()`` reports them (cached there)."""
    import torch

    return torch.cpu.get_capabilities()


def int8_reduce_range(capabilities: Mapping[str, Any] | None = None) -> bool:
    """Whether int8 models should be quantized with one bit less of range on this CPU.

    An x86 CPU without VNNI computes u8 x s8 dot products with ``vpmaddubsw``, which adds two products into
    a *saturating* int16: 255 x 127 x 2 = 64,770 does not fit in 32,767, so large activations times large
    weights are clipped and the logits drift. ONNX Runtime (MLAS) and oneDNN both take that path on AVX2.
    Quantizing one operand to 7 bits keeps every pair sum in range (255 x 64 x 2 = 32,640 and
    127 x 128 x 2 = 32,512); with VNNI (``vpdpbusd``) or on ARM there is no int16 step, and the full
    8 bits are kept. This is the remedy both quantizers document (``reduce_range``).

    Args:
        capabilities: A mapping like ``torch.cpu.get_capabilities()``; ``None`` reads this machine's.

    Returns:
        True on x86 (the mapping has an ``avx2`` entry) without AVX512-VNNI or AVX-VNNI.
    """
    caps = cpu_capabilities() if capabilities is None else capabilities
    is_x86 = "avx2" in caps  # cpuinfo reports the x86 instruction sets, True or False, only on x86
    return is_x86 and not any(caps.get(name, False) for name in _VNNI)


_BF16 = ("avx512_bf16", "amx_bf16")
"""x86 instructions that compute in bfloat16 natively (oneDNN's bf16 convolutions and matmuls need them)."""


def native_bf16(capabilities: Mapping[str, Any] | None = None) -> bool:
    """Whether bf16 autocast speeds training up on this CPU rather than slowing it down.

    Measured (README, "Mixed precision"): with AVX512-BF16, bf16 autocast trained the default CNN 1.6x
    faster than fp32; on an AVX2-only CPU it was about 4x *slower*, because oneDNN has no bf16
    convolution there and PyTorch falls back to ``slow_conv2d``.

    Args:
        capabilities: A mapping like ``torch.cpu.get_capabilities()``; ``None`` reads this machine's.
    """
    caps = cpu_capabilities() if capabilities is None else capabilities
    return any(caps.get(name, False) for name in _BF16)


def resolve_precision(precision: str, *, use_gpu: bool, capabilities: Mapping[str, Any] | None = None) -> str:
    """``auto`` -> ``bf16`` on a GPU or a CPU with native bf16, else ``fp32``; other values unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if use_gpu or native_bf16(capabilities) else "fp32"
