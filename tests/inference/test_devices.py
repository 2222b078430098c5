"""The device policy (`transformers_merv.inference.devices`): native half precision on CPUs, read from torch's CPU
feature detection (`auto_dtype` picks bfloat16 only there), and the accelerator if there is one, else the CPU."""

from unittest import mock

import pytest
import torch

from transformers_merv.inference.devices import (
    auto_dtype,
    cpu_capabilities,
    cpu_has_native,
    cpu_has_native_bf16,
    default_device,
    native_bf16,
    resolve_device,
)

from conftest import with_cpu_bf16


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


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_follows_the_cpus_instructions(native):
    with with_cpu_bf16(native):
        assert native_bf16(torch.device("cpu")) is native
    assert native_bf16(torch.device("meta")) is False


def test_capabilities_are_torch_own():
    assert cpu_capabilities() == dict(torch.cpu.get_capabilities())


def _machine_with(accelerator: str | None):
    """torch seeing `accelerator` ("cuda", "mps", ...) or none."""
    device = torch.device(accelerator) if accelerator else None
    return mock.patch.object(torch.accelerator, "current_accelerator", return_value=device)


def test_the_device_policy_takes_the_accelerator_else_the_cpu():
    with _machine_with(None):
        assert default_device() == resolve_device() == torch.device("cpu")
        assert resolve_device("meta") == torch.device("meta")
    with _machine_with("mps"):
        assert resolve_device() == torch.device("mps") and resolve_device("cpu") == torch.device("cpu")
    with _machine_with("cuda"):
        assert default_device(process_index=1) == resolve_device(process_index=1) == torch.device("cuda", 1)
        assert resolve_device("cuda", process_index=1) == torch.device("cuda", 1)  # a bare type: the process's own
        assert resolve_device("cuda:0", process_index=1) == torch.device("cuda", 0)  # an index: as given


@pytest.mark.parametrize(
    "accelerator, requested, message",
    [(None, "cuda", "it has none"), ("cuda", "mps", "its accelerator is cuda"), ("mps", "xpu:1", "is mps")],
)
def test_a_device_the_machine_lacks_is_refused_naming_it(accelerator, requested, message):
    with _machine_with(accelerator), pytest.raises(ValueError, match=rf"device .{requested}. is not available.*{message}"):
        resolve_device(requested)
