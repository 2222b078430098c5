"""Which precision to run in: half precision only where the hardware computes it natively.

On a CPU, bfloat16 matrix products are fast only with bf16 instructions (x86 AVX512-BF16 or AMX-BF16, Arm BF16 or
SVE-BF16); elsewhere torch converts to float32 and back, and bfloat16 is slower than float32. The capability comes
from torch's own CPU feature detection (`torch.cpu.get_capabilities`), not from guessing."""

import torch


NATIVE_CPU_FEATURES = {
    torch.bfloat16: ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"),
    torch.float16: ("avx512_fp16", "amx_fp16", "fp16_arith"),
}
"""Per half-precision dtype, the CPU features (names of `torch.cpu.get_capabilities()`) that compute it natively."""


LEGACY_CPU_CHECKS = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
"""Feature name -> the private `torch.cpu` check that older torch releases (without `get_capabilities`) offer."""


def cpu_capabilities() -> dict[str, bool | int | str]:
    """torch's CPU feature flags (`torch.cpu.get_capabilities()`; on older torch, the x86 bf16 checks it has)."""
    if hasattr(torch.cpu, "get_capabilities"):
        return dict(torch.cpu.get_capabilities())
    return {feature: bool(getattr(torch.cpu, check, lambda: False)()) for feature, check in LEGACY_CPU_CHECKS.items()}


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


def auto_dtype(device: torch.device | str) -> torch.dtype | str:
    """The dtype to load a model in for inference on `device`: on a CPU, bfloat16 where it has native bf16 and
    float32 elsewhere; on an accelerator, `"auto"` (the saved dtype)."""
    if torch.device(device).type != "cpu":
        return "auto"
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


__all__ = ["NATIVE_CPU_FEATURES", "auto_dtype", "cpu_capabilities", "cpu_has_native", "cpu_has_native_bf16"]
