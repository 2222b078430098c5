"""transformers-merv: MERV (Multi-Encoder Representation of Videos) for Hugging Face transformers.

Importing the package registers MERV with transformers' Auto classes."""

from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForMultimodalLM
from transformers import AutoProcessor

from .compat import register_video_processor
from .configuration_merv import MervConfig, MervLanguageBindVideoConfig
from .modeling_languagebind import MervLanguageBindVideoModel
from .modeling_merv import (
    MervForConditionalGeneration,
    MervModel,
    MervPreTrainedModel,
    MervVideoFeaturesOutput,
)
from .processing_merv import PROMPT_FORMATS, MervProcessor, merv_chat_templates
from .video_io import VideoDecodingError, open_video, read_video
from .video_processing_merv import MERV_FULL_ENCODER_SETTINGS, MervBatchFeature, MervVideoProcessor
from .inference.devices import auto_dtype, cpu_has_native_bf16
from .inference.prefix_cache import (
    VideoChat,
    VideoPrefix,
    VideoPrefixCache,
    answer_questions,
    encode_video,
    prefill_video,
)
from .inference.windows import (
    DEFAULT_CAPTION_PROMPT,
    WindowAnswer,
    answer_windows,
    caption_windows,
    iter_answer_windows,
    iter_caption_windows,
)


AutoConfig.register(MervConfig.model_type, MervConfig, exist_ok=True)
AutoConfig.register(MervLanguageBindVideoConfig.model_type, MervLanguageBindVideoConfig, exist_ok=True)
AutoModel.register(MervLanguageBindVideoConfig, MervLanguageBindVideoModel, exist_ok=True)
# `AutoModel` gives the model that answers questions (the package's main entry point); `MervModel` is the
# headless base model, reachable as `model.model`.
AutoModel.register(MervConfig, MervForConditionalGeneration, exist_ok=True)
# transformers' `AutoVideoProcessor` works only with torchvision, which MERV does not need; `MervProcessor` loads its
# video processor itself, so `AutoProcessor` works either way.
register_video_processor(MervConfig, MervVideoProcessor)
AutoProcessor.register(MervConfig, MervProcessor, exist_ok=True)
AutoModelForImageTextToText.register(MervConfig, MervForConditionalGeneration, exist_ok=True)
AutoModelForMultimodalLM.register(MervConfig, MervForConditionalGeneration, exist_ok=True)

DEFAULT_MODEL_DIRECTORY = Path(__file__).resolve().parent / "default_model"


def default_model_path() -> Path:
    """Folder of the small MERV shipped with the package (trained on synthetic videos by
    `examples/build_default_model.py`; see its model card): `AutoModel.from_pretrained(default_model_path())`."""
    return DEFAULT_MODEL_DIRECTORY


__all__ = [
    "default_model_path",
    "MervConfig",
    "MervLanguageBindVideoConfig",
    "MervLanguageBindVideoModel",
    "MervPreTrainedModel",
    "MervModel",
    "MervForConditionalGeneration",
    "MervVideoFeaturesOutput",
    "MervVideoProcessor",
    "MervProcessor",
    "MervBatchFeature",
    "MERV_FULL_ENCODER_SETTINGS",
    "PROMPT_FORMATS",
    "merv_chat_templates",
    "VideoDecodingError",
    "open_video",
    "read_video",
    "prefill_video",
    "encode_video",
    "answer_questions",
    "VideoChat",
    "VideoPrefix",
    "VideoPrefixCache",
    "DEFAULT_CAPTION_PROMPT",
    "WindowAnswer",
    "answer_windows",
    "caption_windows",
    "iter_answer_windows",
    "iter_caption_windows",
    "auto_dtype",
    "cpu_has_native_bf16",
]
