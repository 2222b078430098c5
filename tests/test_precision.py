"""Native half precision on CPUs: read from torch's CPU feature detection; `auto_dtype` picks bfloat16 only there."""

from unittest import mock

import pytest
import torch

from transformers_merv.inference.devices import auto_dtype, cpu_capabilities, cpu_has_native, cpu_has_native_bf16


@pytest.mark.parametrize(
    ("capabilities", "bf16", "fp16"),
    [
        ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}, False, False),
        ({"architecture": "x86_64", "avx512_bf16": True}, True, False),
        ({"architecture": "x86_64", "amx_bf16": True, "amx_fp16": True}, True, True),
        ({"architecture": "arm64", "neon": True, "bf16": True}, True, False),
        ({"architecture": "arm64", "neon": True, "fp16_arith": True}, False, True),
        ({"architecture": "x86_64", "avx2": True}, False, False),
    ],
    ids=["avx512-without-bf16", "avx512-bf16", "amx", "arm-bf16", "arm-fp16", "avx2"],
)
def test_native_half_precision_comes_from_torch_cpu_capabilities(capabilities, bf16, fp16):
    with mock.patch.object(torch.cpu, "get_capabilities", return_value=capabilities):
        assert cpu_has_native_bf16() is bf16 and cpu_has_native(torch.bfloat16) is bf16
        assert cpu_has_native(torch.float16) is fp16
        assert cpu_has_native(torch.float32)
        assert auto_dtype("cpu") == (torch.bfloat16 if bf16 else torch.float32)
        assert auto_dtype(torch.device("cuda", 1)) == "auto"  # accelerators keep the saved dtype


def test_capabilities_are_torch_own():
    assert cpu_capabilities() == dict(torch.cpu.get_capabilities())
