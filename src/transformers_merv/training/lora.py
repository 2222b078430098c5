"""LoRA on the language model only (PEFT), the visual adapters trained in full, and the 4-bit LLM of QLoRA."""

import importlib.util
import re

import torch
from peft import LoraConfig
from torch import nn
from transformers import BitsAndBytesConfig

from ..modeling_merv import MervForConditionalGeneration


LORA_DEFAULTS = {"r": 128, "lora_alpha": 256, "lora_dropout": 0.05}
"""LLaVA-1.5's LoRA recipe (the authors train no LoRA)."""
LLM_LAYERS_PREFIX = "model.language_model.layers"
QLORA_SKIPPED_MODULES = ["model.vision_towers", "model.projectors", "model.fusion", "lm_head"]
"""Everything but the LLM's decoder layers stays in full precision under QLoRA."""


def llm_linear_layer_names(model: MervForConditionalGeneration) -> list[str]:
    """Names of the linear layers inside one decoder layer of the LLM, e.g. `self_attn.q_proj`, `mlp.up_proj`."""
    names = set()
    for name, module in model.model.language_model.layers.named_modules():
        if isinstance(module, nn.Linear):
            names.add(name.split(".", 1)[1])  # drop the layer index
    return sorted(names)


def llm_lora_target_modules(model: MervForConditionalGeneration) -> str:
    """A regex that PEFT full-matches against module names: every linear layer of the LLM's decoder layers and
    nothing else (a plain list of names would match by suffix and also hit the encoders' `q_proj`...)."""
    alternatives = "|".join(re.escape(name) for name in llm_linear_layer_names(model))
    return rf"{re.escape(LLM_LAYERS_PREFIX)}\.\d+\.(?:{alternatives})"


def visual_adapter_module_names(model: MervForConditionalGeneration) -> list[str]:
    """Leaf names of the projectors and the fusion for PEFT's `modules_to_save`, which rejects `ModuleDict`s and
    matches entries as plain name suffixes (regexes are silently ignored there)."""
    return [f"projectors.{name}" for name in model.config.vision_encoders] + ["fusion"]


def lora_config(model: MervForConditionalGeneration, **overrides) -> LoraConfig:
    """A `LoraConfig` for MERV: adapters on the LLM's linear layers only, projectors and fusion trained in full
    through `modules_to_save`, `task_type="CAUSAL_LM"`; `overrides` (`r`, `lora_alpha`, `lora_dropout`, ...) win.
    Defaults: `r=128, lora_alpha=256, lora_dropout=0.05` (LLaVA-1.5's LoRA recipe)."""
    settings = {
        **LORA_DEFAULTS,
        "target_modules": llm_lora_target_modules(model),
        "modules_to_save": visual_adapter_module_names(model),
        "task_type": "CAUSAL_LM",
        **overrides,
    }
    return LoraConfig(**settings)


def check_qlora_available() -> None:
    """Raise a clear error unless a CUDA GPU and bitsandbytes are there (4-bit weights need both)."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (none is visible)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes (`pip install bitsandbytes`)")
    if missing:
        raise RuntimeError(
            f"QLoRA loads the LLM in 4 bits with bitsandbytes and needs {' and '.join(missing)}. "
            "Use plain LoRA (`--stage lora` without `--qlora`) on this machine."
        )


def qlora_quantization_config(compute_dtype: torch.dtype = torch.bfloat16) -> BitsAndBytesConfig:
    """NF4 double-quantized weights for the LLM's decoder layers (QLoRA); encoders, projectors, fusion and LM head
    stay unquantized. Pass it to `from_pretrained(quantization_config=...)`."""
    check_qlora_available()
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=QLORA_SKIPPED_MODULES,
    )
