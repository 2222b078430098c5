"""LoRA on the language model only (PEFT), the visual adapters trained in full, and the 4-bit LLM of QLoRA."""

import importlib.util
import re

import torch
from peft import LoraConfig
from torch import nn
from transformers import BitsAndBytesConfig
from transformers.utils import logging

from ..modeling_merv import MervForConditionalGeneration


logger = logging.get_logger(__name__)

LORA_DEFAULTS = {"r": 128, "lora_alpha": 256, "lora_dropout": 0.05}
"""LLaVA-1.5's LoRA recipe (the authors train no LoRA)."""
LORA_REFERENCE_WIDTH = 4096
"""Hidden size of Llama-2-7B, the LLM that LLaVA-1.5's LoRA rank was chosen for."""
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


def projector_and_fusion_module_names(model: MervForConditionalGeneration) -> list[str]:
    """Leaf names of the projectors and the fusion for PEFT's `modules_to_save`, which rejects `ModuleDict`s and
    matches entries as plain name suffixes (regexes are silently ignored there)."""
    return [f"projectors.{name}" for name in model.config.vision_encoders] + ["fusion"]


def lora_defaults(model: MervForConditionalGeneration) -> dict[str, float]:
    """LLaVA-1.5's recipe (`LORA_DEFAULTS`) with the rank scaled to the LLM: r 128 is 1/32 of Llama-2-7B's width,
    and a narrower LLM keeps that fraction (at least rank 1), alpha staying twice the rank; a logged note says so."""
    width = model.config.text_config.hidden_size
    rank = max(1, min(LORA_DEFAULTS["r"], LORA_DEFAULTS["r"] * width // LORA_REFERENCE_WIDTH))
    if rank == LORA_DEFAULTS["r"]:
        return dict(LORA_DEFAULTS)
    alpha = rank * LORA_DEFAULTS["lora_alpha"] // LORA_DEFAULTS["r"]
    logger.warning(
        f"LoRA rank {LORA_DEFAULTS['r']} (LLaVA-1.5's, for a {LORA_REFERENCE_WIDTH}-wide LLM) would adapt a large part "
        f"of this {width}-wide LLM; using r={rank}, lora_alpha={alpha} (the same fraction of the width). "
        "Pass r / lora_alpha (--lora_r / --lora_alpha) to choose"
    )
    return {**LORA_DEFAULTS, "r": rank, "lora_alpha": alpha}


def lora_config(model: MervForConditionalGeneration, **overrides) -> LoraConfig:
    """A `LoraConfig` for MERV: adapters on the LLM's linear layers only, projectors and fusion trained in full
    through `modules_to_save`, `task_type="CAUSAL_LM"`; `overrides` (`r`, `lora_alpha`, `lora_dropout`, ...) win.
    Defaults: `lora_defaults(model)` (LLaVA-1.5's `r=128, lora_alpha=256, lora_dropout=0.05`, the rank scaled down
    for LLMs narrower than Llama-2-7B)."""
    settings = {
        **lora_defaults(model),
        "target_modules": llm_lora_target_modules(model),
        "modules_to_save": projector_and_fusion_module_names(model),
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
