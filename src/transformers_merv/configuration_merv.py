"""MERV configuration: one sub-config per visual encoder, the language model's config, and the alignment/fusion
settings of the authors' model registry (princetonvisualai/merv)."""

from typing import Literal, get_args

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, CLIPVisionConfig, PreTrainedConfig

from .compat import SubConfigSpec, build_sub_configs, sub_config_classes

ENCODER_CONFIG_KEYS = {
    "languagebind": "languagebind_config",
    "dinov2": "dinov2_config",
    "vivit": "vivit_config",
    "siglip": "siglip_config",
}
"""Encoder name -> the `MervConfig` field holding that encoder's config."""

Encoder = Literal["languagebind", "dinov2", "vivit", "siglip"]
AlignmentPooling = Literal["3davg", "3dconv", "avg", "attntv", "conv", "none"]
AlignmentProjector = Literal["linear", "gelu-mlp", "fused-gelu-mlp"]
FusionType = Literal["cross_attention", "concat_tokens", "concat_channel", "concat_channel_ln", "first", "scalar"]
FeatureSelectStrategy = Literal["default", "full"]
"""The values of `MervConfig`'s choice fields, checked by transformers' strict config validation."""

ALIGNMENT_POOLINGS = get_args(AlignmentPooling)
"""Token resamplers of the authors' `arch_specifier`: 3D/2D average pooling, 3D convolution, JEPA attentive pooling,
Honeybee C-Abstractor, or none (every encoder token is projected)."""
PARAMETER_FREE_POOLINGS = ("3davg", "avg", "none")
"""Resamplers without parameters: they never train, so the frozen part of the model (what a feature store keeps)
ends after them; the others train with the projector and the frozen part ends at the encoders' tokens."""

ALIGNMENT_PROJECTORS = get_args(AlignmentProjector)
"""Channel projectors of the authors' `arch_specifier` (its suffix)."""

FUSION_TYPES = get_args(FusionType)
"""How per-encoder visual tokens become one sequence. `cross_attention` is MERV's learnable-query mixing."""

FEATURE_SELECT_STRATEGIES = get_args(FeatureSelectStrategy)
"""`default` drops an encoder's prefix tokens (CLS, registers); `full` keeps them."""

# merv-full's per-encoder settings: the config's defaults, and the video processor's (`MERV_FULL_ENCODER_SETTINGS`)
MERV_FULL_IMAGE_SIZE = 224
"""Input side of every encoder: the sub-configs' `image_size` and the video processor's resize target."""
MERV_FULL_NUM_FRAMES = {"languagebind": 16, "dinov2": 16, "vivit": 32, "siglip": 16}
MERV_FULL_FEATURE_LAYERS = {"languagebind": -2, "dinov2": -2, "vivit": -1, "siglip": -2}
MERV_FULL_FEATURE_FINAL_NORM = {"languagebind": False, "dinov2": False, "vivit": True, "siglip": False}

LLAMA2_7B_TEXT_CONFIG = {
    "vocab_size": 32064,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 32000,
    "tie_word_embeddings": False,
}
DINOV2_LARGE_REG4_CONFIG = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": MERV_FULL_IMAGE_SIZE,
    "num_register_tokens": 4,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1e-5,
}
VIVIT_B_16X2_CONFIG = {
    "image_size": MERV_FULL_IMAGE_SIZE,
    "num_frames": MERV_FULL_NUM_FRAMES["vivit"],
    "tubelet_size": [2, 16, 16],
}
SIGLIP_B16_224_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 16,
    "image_size": MERV_FULL_IMAGE_SIZE,
    # timm's SigLIP uses the exact (erf) GELU; transformers' default is the tanh approximation.
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}


@strict
class MervLanguageBindVideoConfig(CLIPVisionConfig):
    r"""
    Config of the LanguageBind video tower: a CLIP vision transformer whose layers also attend over time.

    temporal_group_size (`int`, *optional*, defaults to 8):
        Number of consecutive frames that attend to each other in the temporal attention (LanguageBind's
        `vision_config.num_frames`). Longer clips are processed as independent groups of this many frames, each
        receiving the same temporal embeddings.
    add_time_attn (`bool`, *optional*, defaults to `True`):
        Whether every layer carries the temporal embedding and temporal attention.
    """

    model_type = "merv_languagebind_video"
    base_config_key = "languagebind_config"

    hidden_size: int = 1024
    intermediate_size: int = 4096
    projection_dim: int = 768
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    patch_size: int | list[int] | tuple[int, int] | None = 14
    image_size: int | list[int] | tuple[int, int] | None = MERV_FULL_IMAGE_SIZE
    hidden_act: str = "gelu"
    temporal_group_size: int = 8
    add_time_attn: bool = True


@strict
class MervConfig(PreTrainedConfig):
    r"""
    Configuration of a MERV model. The defaults build the authors' `merv-full` architecture: LanguageBind, DINOv2,
    ViViT and SigLIP on 16/16/32/16 frames, 3D average pooling to an 8x8 grid per frame, a linear projector per
    encoder, learnable-query cross-attention fusion, and Llama-2-7B.

    text_config (`dict` or `PreTrainedConfig`, *optional*):
        Config of the language model (Llama-2-7B with MERV's 32064-row vocabulary by default).
    languagebind_config, dinov2_config, vivit_config, siglip_config (`dict` or `PreTrainedConfig`, *optional*):
        Config of each visual encoder. Only the encoders named in `vision_encoders` are built.
    vision_encoders (`tuple[str]`, *optional*):
        Ordered names of the encoders in use, from `languagebind`, `dinov2`, `vivit`, `siglip`. The order is the
        fusion order (and the order of the authors' checkpoint).
    num_frames (`dict[str, int]`, *optional*):
        Frames fed to each encoder. The video is decoded once at `max(num_frames)` frames and each encoder takes
        every `max // n`-th frame, so every count must divide the largest.
    vision_feature_layer (`dict[str, int]`, *optional*):
        Per encoder, the index into its hidden states (0 = embeddings, -1 = last layer) whose tokens are used.
    vision_feature_final_norm (`dict[str, bool]`, *optional*):
        Per encoder, whether the encoder's final LayerNorm is applied to the selected tokens (only ViViT in MERV).
    vision_feature_select_strategy (`dict[str, str]`, *optional*):
        Per encoder, `default` drops the prefix tokens (CLS and registers), `full` keeps them.
    alignment_pooling (`str`, *optional*, defaults to `"3davg"`):
        Token resampler applied per encoder before (or around) the projector, one of `ALIGNMENT_POOLINGS`.
    alignment_projector (`str`, *optional*, defaults to `"linear"`):
        Channel projector into the language model's width, one of `ALIGNMENT_PROJECTORS`.
    alignment_tokens_per_frame (`int`, *optional*, defaults to 64):
        Spatial tokens per output frame after resampling; a perfect square (8x8 in MERV).
    alignment_temporal_stride (`int`, *optional*, defaults to 1):
        Temporal down-sampling factor of the 3D resamplers (the authors' `frame<k>` specifier).
    alignment_attention_heads (`int`, *optional*, defaults to 8):
        Heads of the attentive-pooling resampler (`attntv`).
    alignment_conv_depth (`int`, *optional*, defaults to 3):
        Blocks per RegNet stage of the C-Abstractor resampler (`conv`).
    fusion_type (`str`, *optional*, defaults to `"cross_attention"`):
        How the encoders' token sequences are combined, one of `FUSION_TYPES`.
    fusion_hidden_size (`int`, *optional*, defaults to 3072):
        Width of the learnable query of the cross-attention fusion.
    concurrent_encoders (`bool`, *optional*, defaults to `False`):
        Run the encoders (each with its projector) concurrently, one thread (and CUDA stream) per encoder, for
        encoders placed on different GPUs; outputs are identical to sequential execution. On one GPU it is slower
        (1.6-6x on an H200, benchmarks/README.md), as on a CPU.
    video_token_id (`int`, *optional*, defaults to 32001):
        Id of the `<video>` placeholder whose embeddings are replaced by the visual tokens. MERV keeps it in one
        of the unused padded vocabulary rows so the vocabulary (and every logit) stays the authors'.
    """

    model_type = "merv"
    _auto_class = "AutoConfig"  # saved configs carry `auto_map` and this file, for `trust_remote_code=True`
    attribute_map = {"video_token_index": "video_token_id"}
    sub_configs_defaults = {
        "text_config": SubConfigSpec(AutoConfig, model_type="llama", init_kwargs=LLAMA2_7B_TEXT_CONFIG),
        "languagebind_config": SubConfigSpec(MervLanguageBindVideoConfig),
        "dinov2_config": SubConfigSpec(
            AutoConfig, model_type="dinov2_with_registers", init_kwargs=DINOV2_LARGE_REG4_CONFIG
        ),
        "vivit_config": SubConfigSpec(AutoConfig, model_type="vivit", init_kwargs=VIVIT_B_16X2_CONFIG),
        "siglip_config": SubConfigSpec(
            AutoConfig, model_type="siglip_vision_model", init_kwargs=SIGLIP_B16_224_CONFIG
        ),
    }
    sub_configs = sub_config_classes(sub_configs_defaults)

    text_config: dict | PreTrainedConfig | None = None
    languagebind_config: dict | PreTrainedConfig | None = None
    dinov2_config: dict | PreTrainedConfig | None = None
    vivit_config: dict | PreTrainedConfig | None = None
    siglip_config: dict | PreTrainedConfig | None = None
    vision_encoders: list[Encoder] | tuple[Encoder, ...] = ("languagebind", "dinov2", "vivit", "siglip")
    num_frames: dict[str, int] | None = None
    vision_feature_layer: dict[str, int] | None = None
    vision_feature_final_norm: dict[str, bool] | None = None
    vision_feature_select_strategy: dict[str, FeatureSelectStrategy] | None = None
    alignment_pooling: AlignmentPooling = "3davg"
    alignment_projector: AlignmentProjector = "linear"
    alignment_tokens_per_frame: int = 64
    alignment_temporal_stride: int = 1
    alignment_attention_heads: int = 8
    alignment_conv_depth: int = 3
    fusion_type: FusionType = "cross_attention"
    fusion_hidden_size: int = 3072
    concurrent_encoders: bool = False
    video_token_id: int = 32001
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        self.vision_encoders = list(self.vision_encoders)
        self.num_frames = {**MERV_FULL_NUM_FRAMES, **(self.num_frames or {})}
        self.vision_feature_layer = {**MERV_FULL_FEATURE_LAYERS, **(self.vision_feature_layer or {})}
        self.vision_feature_final_norm = {**MERV_FULL_FEATURE_FINAL_NORM, **(self.vision_feature_final_norm or {})}
        self.vision_feature_select_strategy = {
            **dict.fromkeys(ENCODER_CONFIG_KEYS, "default"),
            **(self.vision_feature_select_strategy or {}),
        }
        build_sub_configs(self)
        super().__post_init__(**kwargs)
        self.check_merv_settings()

    def validate_merv(self):
        """Part of `@strict` validation (also run by `save_pretrained`)."""
        self.check_merv_settings()

    def check_merv_settings(self) -> None:
        """Raise a `ValueError` naming the field and the valid values for any invalid combination of MERV settings
        (a value outside a choice field's `Literal` is refused by the strict validation itself)."""
        if not self.vision_encoders or len(set(self.vision_encoders)) != len(self.vision_encoders):
            raise ValueError(f"`vision_encoders` must list distinct encoders, got {self.vision_encoders}")
        self._check_frames()
        _check_value_ranges(self)
        self._check_grids()
        if self.siglip_config.vision_use_head:
            raise ValueError("`siglip_config.vision_use_head` must be False: MERV uses SigLIP's patch tokens")
        if self.fusion_hidden_size <= 0:
            raise ValueError(f"`fusion_hidden_size` must be positive, got {self.fusion_hidden_size}")

    def _check_frames(self) -> None:
        counts = {name: self.num_frames[name] for name in self.vision_encoders}
        check_frame_counts(counts, "num_frames")
        if "vivit" in counts and counts["vivit"] != self.vivit_config.num_frames:
            raise ValueError(
                f"`num_frames['vivit']` = {counts['vivit']} must equal `vivit_config.num_frames` = "
                f"{self.vivit_config.num_frames} (ViViT's position table is built for that many frames)"
            )
        group = self.languagebind_config.temporal_group_size
        if "languagebind" in counts and counts["languagebind"] % group:
            raise ValueError(
                f"`num_frames['languagebind']` = {counts['languagebind']} must be a multiple of "
                f"`languagebind_config.temporal_group_size` = {group}"
            )

    def _check_grids(self) -> None:
        side = round(self.alignment_tokens_per_frame**0.5)
        if self.alignment_pooling != "none" and side * side != self.alignment_tokens_per_frame:
            raise ValueError(
                f"`alignment_tokens_per_frame` = {self.alignment_tokens_per_frame} must be a perfect square "
                "(the pooled token grid is square)"
            )
        if self.alignment_temporal_stride <= 0 or (
            self.alignment_temporal_stride != 1 and self.alignment_pooling not in ("3davg", "3dconv")
        ):
            raise ValueError(
                f"`alignment_temporal_stride` = {self.alignment_temporal_stride} must be a positive integer, and 1 "
                f"unless `alignment_pooling` is '3davg' or '3dconv' (got {self.alignment_pooling!r})"
            )
        for name in self.vision_encoders:
            frames, height, width = self.encoder_token_grid(name)
            if self.alignment_pooling != "none" and height != width:
                raise ValueError(f"encoder {name!r} has a {height}x{width} token grid; pooling needs a square grid")
            if self.alignment_pooling != "none" and frames % self.alignment_temporal_stride:
                raise ValueError(
                    f"`alignment_temporal_stride` = {self.alignment_temporal_stride} must divide the {frames} "
                    f"temporal positions of encoder {name!r}"
                )
            if (
                self.alignment_pooling != "none"
                and self.vision_feature_select_strategy[name] == "full"
                and (self.encoder_num_prefix_tokens(name))
            ):
                raise ValueError(
                    f"`vision_feature_select_strategy[{name!r}]` = 'full' keeps prefix tokens, which do not fit the "
                    f"token grid that `alignment_pooling` = {self.alignment_pooling!r} pools over"
                )
        if self.fusion_type != "concat_tokens":
            lengths = {name: self.encoder_num_visual_tokens(name) for name in self.vision_encoders}
            if len(set(lengths.values())) > 1:
                raise ValueError(
                    f"`fusion_type` = {self.fusion_type!r} needs the same number of visual tokens from every encoder, "
                    f"got {lengths}; adjust `num_frames`, `alignment_*` or use `fusion_type='concat_tokens'`"
                )

    def encoder_config(self, name: str) -> PreTrainedConfig:
        """The sub-config of encoder `name`."""
        return getattr(self, ENCODER_CONFIG_KEYS[name])

    def video_pixel_shapes(self) -> dict[str, tuple[int, int, int, int]]:
        """Per encoder of `vision_encoders` (in that order), the `(frames, channels, height, width)` pixels one video
        gives it. `pixel_values_videos` packs them: each flattened, concatenated in this order."""
        shapes = {}
        for name in self.vision_encoders:
            config = self.encoder_config(name)
            shapes[name] = (self.num_frames[name], config.num_channels, *_pair(config.image_size))
        return shapes

    def encoder_token_grid(self, name: str) -> tuple[int, int, int]:
        """(temporal positions, grid height, grid width) of the tokens encoder `name` produces for one video."""
        config = self.encoder_config(name)
        frames = self.num_frames[name]
        if name == "vivit":
            frame_step, patch_height, patch_width = config.tubelet_size
            image_height, image_width = _pair(config.image_size)
            return frames // frame_step, image_height // patch_height, image_width // patch_width
        image_height, image_width = _pair(config.image_size)
        patch_height, patch_width = _pair(config.patch_size)
        return frames, image_height // patch_height, image_width // patch_width

    def encoder_num_prefix_tokens(self, name: str) -> int:
        """Tokens the encoder puts before its patch tokens (CLS, registers)."""
        if name == "siglip":
            return 0
        if name == "dinov2":
            return 1 + self.dinov2_config.num_register_tokens
        return 1

    def encoder_num_selected_tokens(self, name: str) -> int:
        """Tokens encoder `name` yields for one video at its feature layer, prefix tokens dropped or kept as
        `vision_feature_select_strategy` says."""
        frames, height, width = self.encoder_token_grid(name)
        kept_prefix = self.vision_feature_select_strategy[name] == "full"
        return frames * (height * width + kept_prefix * self.encoder_num_prefix_tokens(name))

    def encoder_num_visual_tokens(self, name: str) -> int:
        """Visual tokens one video yields from encoder `name` after alignment."""
        frames = self.encoder_token_grid(name)[0]
        if self.alignment_pooling == "none":
            return self.encoder_num_selected_tokens(name)
        if self.alignment_pooling in ("avg", "attntv", "conv"):
            return frames * self.alignment_tokens_per_frame
        return frames // self.alignment_temporal_stride * self.alignment_tokens_per_frame

    def frozen_feature_shapes(self) -> dict[str, tuple[int, int]]:
        """Per encoder of `vision_encoders`, the `(tokens, dim)` of one video's frozen features: the encoder's
        selected tokens, pooled to the shared grid when `alignment_pooling` has no parameters
        (`PARAMETER_FREE_POOLINGS`). They are what `MervModel.get_frozen_video_features` returns and a feature store
        keeps; everything after them trains."""
        pooled = self.alignment_pooling in PARAMETER_FREE_POOLINGS
        return {
            name: (
                self.encoder_num_visual_tokens(name) if pooled else self.encoder_num_selected_tokens(name),
                self.encoder_config(name).hidden_size,
            )
            for name in self.vision_encoders
        }

    @property
    def num_video_tokens(self) -> int:
        """Placeholder tokens one video occupies in the prompt."""
        lengths = [self.encoder_num_visual_tokens(name) for name in self.vision_encoders]
        return sum(lengths) if self.fusion_type == "concat_tokens" else lengths[0]

    @num_video_tokens.setter
    def num_video_tokens(self, value: int) -> None:
        # `from_pretrained` sets every keyword argument that names an attribute; the processor's own `num_video_tokens`
        # reaches the config when a processor loads from a model folder. A derived count can only be confirmed.
        if value != self.num_video_tokens:
            raise ValueError(
                f"`num_video_tokens` = {value} disagrees with the config, whose encoders, `num_frames` and `alignment_*` "
                f"settings give {self.num_video_tokens} visual tokens per video"
            )


def _check_value_ranges(config: MervConfig) -> None:
    """Indices that must point inside what they index: each encoder's feature layer within its hidden states, token
    ids within the vocabulary, ViViT's frames in whole tubelets. Raises a `ValueError` naming field, value and range."""
    for name in config.vision_encoders:
        depth = config.encoder_config(name).num_hidden_layers
        layers = f"{name} has {depth} layers: hidden states 0 (embeddings) to {depth}, or -1 to -{depth + 1}"
        _check_range(f"vision_feature_layer[{name!r}]", config.vision_feature_layer[name], -(depth + 1), depth, layers)
    vocab_size = config.text_config.vocab_size
    token_ids = {"video_token_id": config.video_token_id}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config.text_config, key, None)
        for position, token_id in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            suffix = f"[{position}]" if isinstance(value, (list, tuple)) else ""
            token_ids[f"text_config.{key}{suffix}"] = token_id
    for field, token_id in token_ids.items():
        if token_id is not None:
            _check_range(field, token_id, 0, vocab_size - 1, f"the vocabulary has {vocab_size} tokens")
    if "vivit" in config.vision_encoders:
        tubelet_frames = config.vivit_config.tubelet_size[0]
        if config.num_frames["vivit"] % tubelet_frames:
            raise ValueError(
                f"`num_frames['vivit']` = {config.num_frames['vivit']} must be a multiple of ViViT's tubelet length "
                f"`vivit_config.tubelet_size[0]` = {tubelet_frames}"
            )


def _check_range(field: str, value: int, low: int, high: int, reason: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"`{field}` = {value!r} is out of range: valid values are {low} to {high} ({reason})")


def check_frame_counts(counts: dict[str, int], setting: str) -> None:
    """Every encoder's frame count must be positive and divide the largest: a video is decoded once, at the largest
    count, and each encoder takes every `max // count`-th frame (the config and the video processor both check)."""
    decode_count = max(counts.values())
    for name, count in counts.items():
        if count <= 0 or decode_count % count:
            raise ValueError(
                f"`{setting}` of {name!r} = {count}: every encoder's frame count must divide the shared decode count "
                f"max = {decode_count} and be positive; got {counts}"
            )


def _pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


__all__ = ["MervConfig", "MervLanguageBindVideoConfig"]
