"""What trains in each stage: the authors' `MERV.freeze_backbones`, plus LoRA."""

from torch import nn
from transformers.utils import logging

from ..modeling_merv import MervForConditionalGeneration


logger = logging.get_logger(__name__)

VISUAL_ADAPTERS = ("projectors", "fusion")
"""Attributes of `MervModel` that align the encoders to the LLM; they train in every stage."""
LANGUAGE_MODEL = ("language_model",)

STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "align": VISUAL_ADAPTERS,
    "full-align": VISUAL_ADAPTERS + LANGUAGE_MODEL,
    "finetune": VISUAL_ADAPTERS + LANGUAGE_MODEL,
    "lora": VISUAL_ADAPTERS,
}
"""Per stage, the `MervModel` attributes trained in full (the LM head follows the language model). `full-align` is
the authors' stage 1 of merv-full (same parameters as `finetune`, align data and recipe); under `lora` PEFT adds the
adapters to the frozen LLM."""
TRAINING_STAGES = tuple(STAGE_MODULES)


def trainable_modules(model: MervForConditionalGeneration, stage: str) -> dict[str, nn.Module]:
    """The modules trained in full in `stage`, by their name in `model`."""
    if stage not in STAGE_MODULES:
        raise ValueError(f"Unknown training stage {stage!r}; choose one of {list(TRAINING_STAGES)}")
    if not isinstance(model, MervForConditionalGeneration):
        raise TypeError(f"Expected a MervForConditionalGeneration, got {type(model).__name__}")
    modules = {f"model.{name}": getattr(model.model, name) for name in STAGE_MODULES[stage]}
    if "language_model" in STAGE_MODULES[stage]:
        modules["lm_head"] = model.lm_head
    return modules


def set_trainable(model: MervForConditionalGeneration, stage: str) -> None:
    """Freeze `model` for `stage`: `align` trains the projectors and the fusion, `finetune` (and the authors'
    `full-align`) also the language model (embeddings, layers, norm, LM head), `lora` the projectors and the fusion
    in full while PEFT adds adapters to the frozen LLM. The video encoders are always frozen and kept in eval mode
    (`MervModel.train()` leaves frozen encoders in eval mode, and they run without autograd)."""
    modules = trainable_modules(model, stage)
    model.requires_grad_(False)
    for module in modules.values():
        module.requires_grad_(True)
    model.model.vision_towers.eval()
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in model.parameters())
    logger.info(f"Stage {stage!r}: training {sorted(modules)} ({trainable:,} of {total:,} parameters)")
