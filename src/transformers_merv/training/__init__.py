"""Training MERV with transformers' `Trainer` and PEFT: the authors' stages, their data format, LoRA and QLoRA."""

from .data import (
    IGNORE_INDEX,
    BadExample,
    BadExampleError,
    MervDataCollator,
    VideoLlavaDataset,
    parse_example,
)
from .lora import (
    LORA_DEFAULTS,
    check_qlora_available,
    llm_lora_target_modules,
    lora_config,
    lora_defaults,
    qlora_quantization_config,
    projector_and_fusion_module_names,
)
from .stages import STAGE_MODULES, TRAINING_STAGES, set_trainable, trainable_modules


__all__ = [
    "IGNORE_INDEX",
    "BadExample",
    "BadExampleError",
    "MervDataCollator",
    "VideoLlavaDataset",
    "parse_example",
    "LORA_DEFAULTS",
    "check_qlora_available",
    "llm_lora_target_modules",
    "lora_config",
    "lora_defaults",
    "qlora_quantization_config",
    "projector_and_fusion_module_names",
    "STAGE_MODULES",
    "TRAINING_STAGES",
    "set_trainable",
    "trainable_modules",
]
