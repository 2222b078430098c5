"""What the machine offers: its accelerator, and whether a device computes bf16 natively (where bf16 is faster than
float32; elsewhere it is emulated and slower)."""

import torch


def default_device() -> torch.device:
    """The accelerator torch sees (CUDA, XPU, MPS, ...), else the CPU."""
    return torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` has native bf16 matrix multiplication: CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or
    AMX. Other devices count as not native."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False
