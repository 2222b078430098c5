"""Where and in which precision to run: one device policy for every command, and half precision only where the
hardware computes it natively.

Device: the accelerator torch sees (CUDA, else another through `torch.accelerator`: XPU, MPS, ...), else the CPU;
with several processes on one machine, each process's own accelerator (its local rank).

Precision: on a CPU, bfloat16 matrix products are fast only with bf16 instructions (x86 AVX512-BF16 or AMX-BF16, Arm
BF16 or SVE-BF16); elsewhere torch converts to float32 and back, and bfloat16 is slower than float32. The capability
comes from torch's own CPU feature detection (`torch.cpu.get_capabilities`), not from guessing."""

import torch


NATIVE_CPU_FEATURES = {
    torch.bfloat16: ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"),
    torch.float16: ("avx512_fp16", "amx_fp16", "fp16_arith"),
}
"""Per half-precision dtype, the CPU features (names of `torch.cpu.get_capabilities()`) that compute it natively."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes weights are loaded, converted or stored in, by name."""
HOST_DEVICE_TYPES = ("cpu", "meta")
"""Devices every machine has."""


def cpu_capabilities() -> dict[str, bool | int | str]:
    """torch's CPU feature flags (`torch.cpu.get_capabilities()`)."""
    return dict(torch.cpu.get_capabilities())


def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU computes `dtype` matrix products natively (always true for float32)."""
    features = NATIVE_CPU_FEATURES.get(dtype)
    if features is None:
        return True
    capabilities = cpu_capabilities()
    return any(capabilities.get(feature, False) for feature in features)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16, AMX-BF16, Arm BF16 / SVE-BF16)."""
    return cpu_has_native(torch.bfloat16)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matrix products natively: CUDA GPUs from Ampere on, CPUs per
    `cpu_has_native_bf16`. Other devices count as not native."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_native_bf16()


def default_device(process_index: int | None = None) -> torch.device:
    """The accelerator torch sees (CUDA, XPU, MPS, ...), else the CPU. `process_index` (the local rank of one of
    several processes on a machine) picks that process's own accelerator."""
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None:
        return torch.device("cpu")
    return torch.device(accelerator.type, process_index)


def resolve_device(requested: str | torch.device | None = None, process_index: int | None = None) -> torch.device:
    """`requested`, else `default_device(process_index)`. With several processes, a bare accelerator type ("cuda")
    becomes the process's own accelerator. A device this machine lacks is a `ValueError` naming it."""
    if requested is None:
        return default_device(process_index)
    device = torch.device(requested)
    if device.type in HOST_DEVICE_TYPES:
        return device
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None or accelerator.type != device.type:
        available = f"its accelerator is {accelerator.type}" if accelerator else "it has none"
        raise ValueError(f"device {str(requested)!r} is not available on this machine ({available})")
    if device.index is None and process_index is not None:
        return torch.device(device.type, process_index)
    return device


def auto_dtype(device: torch.device | str) -> torch.dtype | str:
    """The dtype to load a model in for inference on `device`: on a CPU, bfloat16 where it has native bf16 and
    float32 elsewhere; on an accelerator, `"auto"` (the saved dtype)."""
    if torch.device(device).type != "cpu":
        return "auto"
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


__all__ = [
    "DTYPES",
    "NATIVE_CPU_FEATURES",
    "auto_dtype",
    "cpu_capabilities",
    "cpu_has_native",
    "cpu_has_native_bf16",
    "default_device",
    "native_bf16",
    "resolve_device",
]
