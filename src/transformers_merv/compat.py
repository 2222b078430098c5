"""Every difference between the supported transformers releases (5.18 to 5.25) that the package touches.

The rest of the package imports these names from here and never checks a version itself. Each shim says which
release introduced the API; on that release and later, the name is transformers' own object. Everything is detected
by feature (does the name exist, what does the signature say), not by version number.
"""

import inspect
from dataclasses import field, make_dataclass
from functools import cache, wraps

import torch
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import ModelOutput
from transformers.processing_utils import ProcessorMixin
from transformers.utils.deprecation import deprecate_kwarg


# --- configuration ---------------------------------------------------------------------------------------------------

try:  # transformers >= 5.20: composite configs declare `sub_configs_defaults` and the base class builds them
    from transformers.configuration_utils import SubConfigSpec

    def build_sub_configs(config) -> None:
        """Nothing to do: `PreTrainedConfig.__post_init__` builds the sub-configs from `sub_configs_defaults`."""

except ImportError:  # transformers < 5.20

    class SubConfigSpec:
        """Stand-in for transformers' `SubConfigSpec` (5.20): the class, default `model_type` and default kwargs of
        one sub-config of a composite config."""

        def __init__(self, config_class, model_type: str | None = None, init_kwargs: dict | None = None):
            self.config_class = config_class
            self.model_type = model_type if model_type is not None else config_class.model_type
            self.init_kwargs = init_kwargs or {}

        def create_subconfig(self, key: str, subconfig=None):
            from transformers import PreTrainedConfig
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING

            if isinstance(subconfig, PreTrainedConfig):
                return subconfig
            if subconfig is not None and not isinstance(subconfig, dict):
                raise TypeError(f"`{key}` must be a `dict`, `PreTrainedConfig`, or `None`, got `{type(subconfig)}`")
            if issubclass(self.config_class, PreTrainedConfig):
                config_class = self.config_class
            else:
                config_class = CONFIG_MAPPING[(subconfig or {}).get("model_type", self.model_type)]
            return config_class(**(self.init_kwargs if subconfig is None else subconfig))

    def build_sub_configs(config) -> None:
        """Turn the `dict`/`None` sub-configs of `config` into configs, as `PreTrainedConfig.__post_init__` does from
        `sub_configs_defaults` in transformers >= 5.20."""
        for key, spec in config.sub_configs_defaults.items():
            setattr(config, key, spec.create_subconfig(key, getattr(config, key)))


def sub_config_classes(specs: dict[str, SubConfigSpec]) -> dict[str, type]:
    """The `sub_configs` class attribute (key -> config class) that transformers < 5.20 reads; later releases derive
    the same mapping from `sub_configs_defaults`."""
    return {key: spec.config_class for key, spec in specs.items()}


# --- modeling --------------------------------------------------------------------------------------------------------

try:  # transformers >= 5.21
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:  # transformers < 5.21

    def slice_logits_to_keep(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
        """The positions of `hidden_states` to compute logits for: the last `logits_to_keep` (0: all) or the given
        indices (as `slice_logits_to_keep` of transformers 5.21, 1D indices and ints)."""
        if isinstance(logits_to_keep, int):
            logits_to_keep = slice(-logits_to_keep, None)
        return hidden_states[:, logits_to_keep, :]


CACHE_KWARG = (
    "cache"
    if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)
"""Name of the KV cache in forward signatures and outputs: `cache` from transformers 5.24, `past_key_values` before."""


def cache_kwargs(cache: Cache | None) -> dict[str, Cache | None]:
    """`cache` as the keyword argument the installed transformers' models take (see `CACHE_KWARG`)."""
    return {CACHE_KWARG: cache}


def output_cache(output: ModelOutput) -> Cache | None:
    """The KV cache of a `generate` output (`cache` from transformers 5.24, `past_key_values` before)."""
    return getattr(output, CACHE_KWARG)


def accept_legacy_cache_kwarg(forward):
    """Decorator for a `forward(..., cache=...)`: also accept `past_key_values`, the name generation passes before
    transformers 5.24 (silently there; with transformers' own deprecation warning from 5.24 on)."""
    if CACHE_KWARG == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)

    @wraps(forward)
    def renamed(*args, **kwargs):
        if "past_key_values" in kwargs:
            kwargs["cache"] = kwargs.pop("past_key_values")
        return forward(*args, **kwargs)

    return renamed


try:  # transformers >= 5.24
    from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast
except ImportError:  # transformers < 5.24: the same outputs, with the cache under its old name `past_key_values`
    MODALITY_OUTPUTS = ("image_outputs", "video_outputs", "audio_outputs")

    class _MultimodalOutput(ModelOutput):
        @property
        def cache(self) -> Cache | None:
            """The KV cache (`past_key_values` before transformers 5.24)."""
            return self.past_key_values

        def to_tuple(self) -> tuple:
            return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in self.values())

    _OUTPUT_ARGS = """
    Args:
        last_hidden_state / loss / logits:
            As in transformers' `BaseModelOutputWithPast` / `CausalLMOutputWithPast`.
        past_key_values (`Cache`, *optional*):
            The language model's KV cache (also readable as `cache`, its name from transformers 5.24).
        hidden_states, attentions:
            The language model's, when asked for.
        image_outputs, video_outputs, audio_outputs (`BaseModelOutputWithPooling`, *optional*):
            The outputs of each modality's encoder, `None` where it did not run.
    """

    def _multimodal_output(name: str, leading_fields: tuple[str, ...], summary: str) -> type:
        """transformers 5.24's output class `name`: `leading_fields`, then the cache, the language model's hidden
        states and attentions, and one output per modality, all optional."""
        trailing_fields = ("past_key_values", "hidden_states", "attentions", *MODALITY_OUTPUTS)
        fields = [(field_name, object, field(default=None)) for field_name in (*leading_fields, *trailing_fields)]
        output_class = make_dataclass(name, fields, bases=(_MultimodalOutput,))
        output_class.__doc__ = summary + _OUTPUT_ARGS
        output_class.__module__ = __name__
        return output_class

    MultimodalBaseModelOutputWithPast = _multimodal_output(
        "MultimodalBaseModelOutputWithPast",
        ("last_hidden_state",),
        "The language model's outputs plus the encoders' outputs (transformers 5.24's class of the same name).",
    )
    MultimodalCausalLMOutputWithPast = _multimodal_output(
        "MultimodalCausalLMOutputWithPast",
        ("loss", "logits"),
        "Loss, logits, and the language model's and encoders' outputs (transformers 5.24's class of that name).",
    )


# --- training --------------------------------------------------------------------------------------------------------


@cache
def activation_checkpointing_argument() -> str:
    """The `TrainingArguments` field that turns on activation checkpointing: `activation_checkpointing` from
    transformers 5.23 (where `gradient_checkpointing` became its deprecated alias), `gradient_checkpointing` before."""
    from transformers import TrainingArguments  # imported on first use: it loads the whole Trainer stack

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def enable_activation_checkpointing(model, **kwargs) -> None:
    """`model.activation_checkpointing_enable(...)` (transformers 5.23), `gradient_checkpointing_enable` before."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(**kwargs)


# --- video processing ------------------------------------------------------------------------------------------------

try:  # transformers >= 5.19: the video processor base without the torchvision backend
    from transformers.video_processing_utils import VideoProcessorMixin
except ImportError:  # transformers < 5.19: `BaseVideoProcessor` is the only base
    from transformers.image_processing_utils import BaseImageProcessor
    from transformers.video_processing_utils import BaseVideoProcessor

    class VideoProcessorMixin(BaseVideoProcessor):
        """`BaseVideoProcessor`'s loading, saving and `__call__`, without its torchvision backend's set-up (which
        turns every `VideosKwargs` key into an attribute): what `VideoProcessorMixin` is from transformers 5.19."""

        def __init__(self, **kwargs) -> None:
            BaseImageProcessor.__init__(self, **kwargs)


# --- processor loading -----------------------------------------------------------------------------------------------

RESOLVES_SUBPROCESSORS = hasattr(ProcessorMixin, "_resolve_subprocessors")
"""transformers >= 5.25 builds a processor's parts in `ProcessorMixin._resolve_subprocessors`, loading a video
processor through `AutoVideoProcessor` (which needs torchvision); before, in `_get_arguments_from_pretrained`."""


class DirectVideoProcessorLoading(ProcessorMixin):
    """`ProcessorMixin` whose video processor is loaded as `direct_video_processor_class` itself rather than through
    transformers' `AutoVideoProcessor`, which refuses to work without torchvision (every release; from 5.25
    `ProcessorMixin.from_pretrained` goes through it). A processor derives from it in place of `ProcessorMixin`."""

    direct_video_processor_class: type

    if RESOLVES_SUBPROCESSORS:

        @classmethod
        def _resolve_subprocessors(cls, pretrained_model_name_or_path, processor_dict, **kwargs):
            if kwargs.get("video_processor") is None:
                kwargs["video_processor"] = cls.direct_video_processor_class.from_pretrained(
                    pretrained_model_name_or_path, **kwargs
                )
                # the video processor's own options are used up, as `AutoVideoProcessor` would report them
                kwargs = {key: value for key, value in kwargs.items() if key not in _video_processor_options(cls)}
            return super()._resolve_subprocessors(pretrained_model_name_or_path, processor_dict, **kwargs)

    else:

        @classmethod
        def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs) -> list:
            subfolder = kwargs.pop("subfolder", "")
            video_processor = cls.direct_video_processor_class.from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolder, **kwargs
            )
            tokenizer = cls._load_tokenizer_from_pretrained(
                "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
            )
            return [video_processor, tokenizer]


def _video_processor_options(processor_class: type) -> set[str]:
    """The keyword arguments the video processor's `from_dict` takes as its own settings."""
    return set(processor_class.direct_video_processor_class.valid_kwargs.__annotations__)


def register_video_processor(config_class: type, video_processor_class: type) -> None:
    """Register `video_processor_class` with `AutoVideoProcessor` for `config_class`, for every backend where
    transformers keys video processors by backend (5.25: the one-class form means "torchvision" only). A processor
    that needs no torchvision serves both the "torchvision" and the "pil" backend. Without torchvision,
    `AutoVideoProcessor` cannot be used at all, and nothing is registered."""
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        return
    from transformers import AutoVideoProcessor

    if "video_processor_classes" in inspect.signature(AutoVideoProcessor.register).parameters:
        classes = {"torchvision": video_processor_class, "pil": video_processor_class}
        AutoVideoProcessor.register(config_class, video_processor_classes=classes, exist_ok=True)
    else:
        AutoVideoProcessor.register(config_class, video_processor_class, exist_ok=True)


__all__ = [
    "DirectVideoProcessorLoading",
    "RESOLVES_SUBPROCESSORS",
    "register_video_processor",
    "CACHE_KWARG",
    "MultimodalBaseModelOutputWithPast",
    "MultimodalCausalLMOutputWithPast",
    "SubConfigSpec",
    "VideoProcessorMixin",
    "accept_legacy_cache_kwarg",
    "activation_checkpointing_argument",
    "build_sub_configs",
    "cache_kwargs",
    "enable_activation_checkpointing",
    "output_cache",
    "slice_logits_to_keep",
    "sub_config_classes",
]
