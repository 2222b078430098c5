"""transformers-merv: MERV (Multi-Encoder Representation of Videos) for Hugging Face transformers.

Importing the package registers MERV with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForMultimodalLM

from .configuration_merv import MervConfig, MervLanguageBindVideoConfig
from .modeling_languagebind import MervLanguageBindVideoModel
from .modeling_merv import (
    MervForConditionalGeneration,
    MervModel,
    MervPreTrainedModel,
    MervVideoFeaturesOutput,
)


AutoConfig.register(MervConfig.model_type, MervConfig, exist_ok=True)
AutoConfig.register(MervLanguageBindVideoConfig.model_type, MervLanguageBindVideoConfig, exist_ok=True)
AutoModel.register(MervLanguageBindVideoConfig, MervLanguageBindVideoModel, exist_ok=True)
# `AutoModel` gives the model that answers questions (the package's main entry point); `MervModel` is the
# headless base model, reachable as `model.model`.
AutoModel.register(MervConfig, MervForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MervConfig, MervForConditionalGeneration, exist_ok=True)
AutoModelForMultimodalLM.register(MervConfig, MervForConditionalGeneration, exist_ok=True)

__all__ = [
    "MervConfig",
    "MervLanguageBindVideoConfig",
    "MervLanguageBindVideoModel",
    "MervPreTrainedModel",
    "MervModel",
    "MervForConditionalGeneration",
    "MervVideoFeaturesOutput",
]
