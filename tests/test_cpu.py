"""CPU-dependent choices are pure functions of the CPU's capabilities."""

from __future__ import annotations

import pytest

from hybrid._cpu import native_bf16, resolve_precision

AVX2_ONLY = {"avx2": True, "avx512_bf16": False, "amx_bf16": False}
SAPPHIRE_RAPIDS = {"avx2": True, "avx512_bf16": True, "amx_bf16": True}
ARM = {"sve": True}


@pytest.mark.parametrize(("caps", "expected"), [(AVX2_ONLY, "fp32"), (SAPPHIRE_RAPIDS, "bf16"), (ARM, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(caps, expected):
    assert native_bf16(caps) is (expected == "bf16")
    assert resolve_precision("auto", use_gpu=False, capabilities=caps) == expected


def test_auto_precision_is_bf16_on_a_gpu_and_explicit_choices_stand():
    assert resolve_precision("auto", use_gpu=True, capabilities=AVX2_ONLY) == "bf16"
    assert resolve_precision("bf16", use_gpu=False, capabilities=AVX2_ONLY) == "bf16"
    assert resolve_precision("fp32", use_gpu=True, capabilities=SAPPHIRE_RAPIDS) == "fp32"
