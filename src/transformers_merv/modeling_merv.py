"""MERV: several frozen video encoders, aligned to one token grid, fused by a learnable query, read by an LLM.

Data flow (`MervModel.get_video_features`): each encoder in `config.vision_encoders` turns its own frames into tokens
(`_encode`), a per-encoder `MervVisualProjector` pools them to the shared grid and projects them to the LLM width, and
the fusion module mixes the encoders into one sequence. `MervModel.forward` scatters that sequence into the
`<video>` placeholder positions of the prompt embeddings and runs the language model."""

import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import chain
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, auto_docstring, torch_compilable_check
from transformers.utils.generic import can_return_tuple

from .compat import (
    CACHE_KWARG,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
    accept_legacy_cache_kwarg,
    cache_kwargs,
    slice_logits_to_keep,
)
from .configuration_merv import PARAMETER_FREE_POOLINGS, MervConfig
from .modeling_languagebind import MervLanguageBindVideoModel


IGNORE_INDEX = -100
MAX_SHARD_SIZE = "5GB"
"""Default shard size of `save_pretrained`/`push_to_hub` (transformers' own default is 50GB)."""
GENERATION_AUTO_CLASSES = ("AutoModel", "AutoModelForImageTextToText", "AutoModelForMultimodalLM")
"""Auto classes that load `MervForConditionalGeneration` from a saved directory with `trust_remote_code=True`."""

ProjectorPart = Literal["whole", "frozen", "trained"]
"""What a `MervVisualProjector` call runs: all of it, the frozen part (a resampler without parameters) or the rest."""
VIDEO_INPUT_TOWERS = ("vivit",)
"""Towers whose embeddings take whole videos `(batch, frames, C, H, W)` (ViViT's tubelets span frames); the others
take frames folded into the batch, frame-major (LanguageBind's temporal groups are runs of consecutive rows)."""


@dataclass(frozen=True)
class TowerLayout:
    """Where a tower's pieces are (the modules before its layers, its layer list, each layer's attention module, its
    final norm), so that MERV runs the tower piece by piece and stops at the layer it reads instead of computing (and
    discarding) the later ones; the towers keep every layer, so checkpoints stay complete.

    This relies on that layout, on each layer's attention module returning `(output, weights)` and on the layers being
    callable as
    `layer(hidden_states, attention_mask)`: transformers internals, not API. `tests/model/test_tower_layouts.py`
    compares every layout with the tower's own `forward(output_hidden_states=True, output_attentions=True)` on the
    installed transformers, so a release that changes them fails there, loudly."""

    stem: tuple[str, ...]
    layers: str
    attention: str
    """Path of the attention module inside one layer (the one the tower reports as that layer's attentions)."""
    final_norm: str

    def num_layers(self, tower: nn.Module) -> int:
        return len(tower.get_submodule(self.layers))

    def hidden_states(self, tower: nn.Module, pixels: torch.Tensor, num_layers: int) -> Iterator[torch.Tensor]:
        """The tower's hidden states 0 (the embeddings' output) to `num_layers`, one at a time; no later layer runs."""
        hidden = pixels
        for stem in self.stem:
            hidden = getattr(tower, stem)(hidden)
        yield hidden
        for layer in tower.get_submodule(self.layers)[:num_layers]:
            hidden = layer(hidden, None)
            yield hidden

    @contextmanager
    def recording_attentions(self, tower: nn.Module, num_layers: int) -> Iterator[list[torch.Tensor]]:
        """Within the block, the attention weights of the tower's first `num_layers` layers are appended to the yielded
        list as the layers run (only the eager implementation computes them; the others give None)."""
        weights = []
        hooks = [
            layer.get_submodule(self.attention).register_forward_hook(
                lambda module, args, output: weights.append(output[1])
            )
            for layer in tower.get_submodule(self.layers)[:num_layers]
        ]
        try:
            yield weights
        finally:
            for hook in hooks:
                hook.remove()

    def normalize(self, tower: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The tower's final norm applied to `hidden`."""
        return getattr(tower, self.final_norm)(hidden)


TOWER_LAYOUTS = {
    "languagebind": TowerLayout(("embeddings", "pre_layrnorm"), "encoder.layers", "self_attn", "post_layernorm"),
    "dinov2": TowerLayout(("embeddings",), "encoder.layer", "attention", "layernorm"),
    "vivit": TowerLayout(("embeddings",), "layers", "attention", "layernorm"),
    "siglip": TowerLayout(("embeddings",), "encoder.layers", "self_attn", "post_layernorm"),
}


@dataclass
class MervVideoFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    pooler_output (`torch.FloatTensor` of shape `(num_videos, num_video_tokens, text_hidden_size)`):
        The fused visual tokens that replace the `<video>` placeholders (also in `last_hidden_state`).
    hidden_states (`tuple[torch.FloatTensor]`, *optional*):
        With `output_hidden_states`: the hidden states of the towers, tower after tower in `config.vision_encoders`
        order, each from its embeddings' output (state 0) to its feature layer (the later layers do not run), frames
        folded into the batch except for ViViT. A tower contributes `depth + 1` states, `depth` being its feature
        layer's index among its layers; `encoder_hidden_states` holds the same tensors per encoder.
    attentions (`tuple[torch.FloatTensor]`, *optional*):
        With `output_attentions` (eager attention only): the attention weights of the layers that ran, tower after
        tower in the same order, one `(batch, heads, tokens, tokens)` tensor per layer (LanguageBind's: its spatial
        attention); `encoder_attentions` holds the same tensors per encoder.
    fusion_weights (`torch.FloatTensor` of shape `(num_videos, num_encoders)`, *optional*):
        How much each encoder contributes to the fused tokens (weighted fusions only).
    encoder_features (`dict[str, torch.FloatTensor]`, *optional*):
        Per encoder, the selected tokens `(num_videos, tokens, encoder_hidden_size)` before alignment.
    projected_features (`dict[str, torch.FloatTensor]`, *optional*):
        Per encoder, the pooled and projected tokens `(num_videos, tokens, text_hidden_size)` before fusion.
    encoder_hidden_states (`dict[str, tuple[torch.FloatTensor]]`, *optional*):
        `hidden_states` per encoder (the encoders asked for them).
    encoder_attentions (`dict[str, tuple[torch.FloatTensor]]`, *optional*):
        `attentions` per encoder (the encoders asked for them).
    """

    fusion_weights: torch.FloatTensor | None = None
    encoder_features: dict[str, torch.FloatTensor] | None = None
    projected_features: dict[str, torch.FloatTensor] | None = None
    encoder_hidden_states: dict[str, tuple[torch.FloatTensor, ...]] | None = None
    encoder_attentions: dict[str, tuple[torch.FloatTensor, ...]] | None = None


class TowerRecording(NamedTuple):
    """Which intermediate outputs of one tower `get_video_features` returns."""

    hidden_states: bool = False
    attentions: bool = False


class TowerOutput(NamedTuple):
    """One tower's selected tokens and, if asked, its hidden states and attention weights up to the feature layer."""

    features: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class EncoderBranch(NamedTuple):
    """One encoder's results: its tower's output and its pooled and projected tokens."""

    tower: TowerOutput
    projected: torch.Tensor


# --- alignment: token resamplers -------------------------------------------------------------------------------------


def _grid_side(num_tokens: int) -> int:
    side = round(num_tokens**0.5)
    if side * side != num_tokens:
        raise ValueError(f"expected a square token grid per frame, got {num_tokens} tokens")
    return side


def _frames_as_images(features: torch.Tensor) -> torch.Tensor:
    # (batch, frames, h * w, dim) -> (batch * frames, dim, h, w)
    side = _grid_side(features.shape[2])
    return features.flatten(0, 1).unflatten(1, (side, side)).permute(0, 3, 1, 2)


def _video_as_volume(features: torch.Tensor) -> torch.Tensor:
    # (batch, frames, h * w, dim) -> (batch, dim, frames, h, w)
    side = _grid_side(features.shape[2])
    return features.unflatten(2, (side, side)).permute(0, 4, 1, 2, 3)


def _volume_as_tokens(volume: torch.Tensor) -> torch.Tensor:
    # (batch, dim, frames, h, w) -> (batch, frames * h * w, dim)
    return volume.flatten(2).transpose(1, 2)


def _images_as_tokens(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    # (batch * frames, dim, h, w) -> (batch, frames * h * w, dim)
    return images.flatten(2).transpose(1, 2).reshape(batch_size, -1, images.shape[1])


class MervNoPooling(nn.Module):
    """Keeps every encoder token."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.flatten(1, 2)


class MervAveragePool3d(nn.Module):
    """Adaptive 3D average pooling of the (frames, h, w) token volume (the MERV alignment)."""

    def __init__(self, output_frames: int, output_side: int):
        super().__init__()
        self.output_size = (output_frames, output_side, output_side)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return _volume_as_tokens(F.adaptive_avg_pool3d(_video_as_volume(features), self.output_size))


class MervAveragePool2d(nn.Module):
    """Adaptive 2D average pooling of every frame's token grid (Emu-2 style)."""

    def __init__(self, output_side: int):
        super().__init__()
        self.output_side = output_side

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(_frames_as_images(features), self.output_side)
        return _images_as_tokens(pooled, features.shape[0])


class MervConv3dPool(nn.Module):
    """3x3x3 convolution into the LLM width followed by adaptive 3D average pooling."""

    def __init__(self, in_dim: int, out_dim: int, output_frames: int, output_side: int):
        super().__init__()
        self.conv = nn.Conv3d(in_dim, out_dim, kernel_size=3, padding=1)
        self.output_size = (output_frames, output_side, output_side)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        volume = self.conv(_video_as_volume(features))
        return _volume_as_tokens(F.adaptive_avg_pool3d(volume, self.output_size))


class MervAttentivePooler(nn.Module):
    """JEPA attentive pooler: learned queries cross-attend to every frame's tokens (one block, keys pre-normed)."""

    def __init__(self, dim: int, num_queries: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"attentive pooling width {dim} must be divisible by `alignment_attention_heads`={num_heads}"
            )
        self.num_heads = num_heads
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.key_norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.o_proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch_size = features.shape[0]
        tokens = features.flatten(0, 1)  # (batch * frames, tokens, dim)
        queries = self.query_tokens.expand(tokens.shape[0], -1, -1)
        # (rows, length, dim) -> (rows, heads, length, head_dim)
        query = self.q_proj(queries).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        key, value = self.kv_proj(self.key_norm(tokens)).unflatten(-1, (2, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).flatten(2)
        queries = queries + self.o_proj(attended)
        queries = queries + self.fc2(F.gelu(self.fc1(self.mlp_norm(queries))))
        return queries.reshape(batch_size, -1, queries.shape[-1])


class MervLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a `(batch, channels, h, w)` map."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MervRegNetBlock(nn.Module):
    """RegNet bottleneck (timm's `Bottleneck` with group width 1, SE ratio 1/4, LayerNorm2d, SiLU)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False)
        self.norm1 = MervLayerNorm2d(out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, groups=out_dim, bias=False)
        self.norm2 = MervLayerNorm2d(out_dim)
        squeeze_dim = round(in_dim / 4)
        self.se_reduce = nn.Conv2d(out_dim, squeeze_dim, kernel_size=1)
        self.se_expand = nn.Conv2d(squeeze_dim, out_dim, kernel_size=1)
        self.conv3 = nn.Conv2d(out_dim, out_dim, kernel_size=1, bias=False)
        self.norm3 = MervLayerNorm2d(out_dim)
        if in_dim != out_dim:
            self.shortcut_conv = nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False)
            self.shortcut_norm = MervLayerNorm2d(out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.norm1(self.conv1(images)))
        hidden = F.silu(self.norm2(self.conv2(hidden)))
        gate = self.se_expand(F.silu(self.se_reduce(hidden.mean((2, 3), keepdim=True))))
        hidden = self.norm3(self.conv3(hidden * gate.sigmoid()))
        shortcut = self.shortcut_norm(self.shortcut_conv(images)) if hasattr(self, "shortcut_conv") else images
        return F.silu(hidden + shortcut)


class MervConvAbstractor(nn.Module):
    """Honeybee C-Abstractor: RegNet stage into the LLM width, adaptive 2D pooling per frame, RegNet stage."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, output_side: int):
        super().__init__()
        self.stage_in = nn.Sequential(*[MervRegNetBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(depth)])
        self.stage_out = nn.Sequential(*[MervRegNetBlock(out_dim, out_dim) for _ in range(depth)])
        self.output_side = output_side

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        images = F.adaptive_avg_pool2d(self.stage_in(_frames_as_images(features)), self.output_side)
        return _images_as_tokens(self.stage_out(images), features.shape[0])


class MervProjectorMLP(nn.Module):
    """`linear`, `gelu-mlp` (Linear-GELU-Linear) or `fused-gelu-mlp` (widening 4x first) projector."""

    def __init__(self, in_dim: int, out_dim: int, kind: str):
        super().__init__()
        widths = {
            "linear": [in_dim, out_dim],
            "gelu-mlp": [in_dim, out_dim, out_dim],
            "fused-gelu-mlp": [in_dim, 4 * in_dim, out_dim, out_dim],
        }[kind]
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            hidden = layer(F.gelu(hidden) if index else hidden)
        return hidden

    @torch.no_grad()
    def standardize_first_layer(self, inputs: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Re-initialise the first layer so that it maps `inputs` (`(samples, in_dim)`) to zero-mean, unit-variance
        outputs: random weights with unit-norm rows divided by the inputs' per-channel std, and a bias cancelling
        their mean. Channels that vary little from video to video then weigh as much as the rest."""
        layer = self.layers[0]
        inputs = inputs.to(layer.weight.dtype)
        mean, std = inputs.mean(0), inputs.std(0).clamp_min(torch.finfo(inputs.dtype).eps)
        weight = torch.randn(layer.weight.shape, generator=generator, dtype=inputs.dtype) / layer.in_features**0.5
        weight = weight.to(layer.weight.device) / std
        layer.weight.copy_(weight)
        layer.bias.copy_(-weight @ mean)


class MervVisualProjector(nn.Module):
    """Aligns one encoder: resamples its `(batch, frames, tokens, dim)` features to the shared token grid, then
    projects them into the language model's width. A resampler without parameters never trains: it belongs to the
    frozen part (`part="frozen"`), the rest to the trained part (`part="trained"`). The parts run through `forward`,
    so that device-map hooks (accelerate) see every call."""

    def __init__(self, config: MervConfig, encoder_name: str):
        super().__init__()
        encoder_dim = config.encoder_config(encoder_name).hidden_size
        text_dim = config.text_config.hidden_size
        frames = config.encoder_token_grid(encoder_name)[0]
        side = round(config.alignment_tokens_per_frame**0.5)
        pooled_frames = frames // config.alignment_temporal_stride
        self.resampler = {
            "none": lambda: MervNoPooling(),
            "3davg": lambda: MervAveragePool3d(pooled_frames, side),
            "avg": lambda: MervAveragePool2d(side),
            "3dconv": lambda: MervConv3dPool(encoder_dim, text_dim, pooled_frames, side),
            "attntv": lambda: MervAttentivePooler(
                encoder_dim, config.alignment_tokens_per_frame, config.alignment_attention_heads
            ),
            "conv": lambda: MervConvAbstractor(encoder_dim, text_dim, config.alignment_conv_depth, side),
        }[config.alignment_pooling]()
        mlp_in_dim = text_dim if config.alignment_pooling in ("3dconv", "conv") else encoder_dim
        self.mlp = MervProjectorMLP(mlp_in_dim, text_dim, config.alignment_projector)
        self.grid_frames = frames
        self.has_frozen_resampler = config.alignment_pooling in PARAMETER_FREE_POOLINGS

    def forward(self, features: torch.Tensor, part: ProjectorPart = "whole") -> torch.Tensor:
        """`part="whole"` and `"frozen"` take the encoder's `(batch, frames, tokens per frame, dim)` tokens,
        `"trained"` the frozen part's output."""
        if part == "frozen":
            return self.pool_frozen(features)
        if part == "trained":
            return self.project_frozen(features)
        return self.project_frozen(self.pool_frozen(features))

    def pool_frozen(self, features: torch.Tensor) -> torch.Tensor:
        """`(batch, frames, tokens per frame, dim)` encoder tokens -> the frozen features `(batch, tokens, dim)`:
        pooled when the resampler has no parameters, else only flattened."""
        return self.resampler(features) if self.has_frozen_resampler else features.flatten(1, 2)

    def project_frozen(self, frozen: torch.Tensor) -> torch.Tensor:
        """Frozen features (`pool_frozen`) -> `(batch, visual tokens, text_hidden_size)`: the trained part."""
        if not self.has_frozen_resampler:
            frozen = self.resampler(frozen.unflatten(1, (self.grid_frames, -1)))
        return self.mlp(frozen)


# --- fusion ----------------------------------------------------------------------------------------------------------


class MervUnusedLinear(nn.Module):
    """Weights of a linear layer that the model carries but never applies, held as buffers: saved and loaded with
    the checkpoint, never trained (so distributed training sees no parameter without gradient)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(out_features, in_features))
        self.register_buffer("bias", torch.zeros(out_features))


class MervCrossAttentionFusion(nn.Module):
    """MERV's fusion: one learnable query scores every encoder by its token-mean (single-head attention), and the
    fused tokens are the score-weighted sum of the encoders' projected tokens.

    `value_proj` and `out_proj` exist in the authors' checkpoints (their `nn.MultiheadAttention`) but the attention
    output they would produce is discarded by the authors; they are kept so converted checkpoints stay complete."""

    def __init__(self, config: MervConfig):
        super().__init__()
        text_dim, width = config.text_config.hidden_size, config.fusion_hidden_size
        self.query = nn.Parameter(torch.zeros(1, width))
        self.query_proj = nn.Linear(width, width)
        self.key_proj = nn.Linear(text_dim, width)
        self.value_proj = MervUnusedLinear(text_dim, width)
        self.out_proj = MervUnusedLinear(width, width)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = torch.stack(features, dim=1)  # (batch, encoders, tokens, dim)
        keys = self.key_proj(stacked.mean(2))  # (batch, encoders, width)
        query = self.query_proj(self.query) * keys.shape[-1] ** -0.5  # (1, width)
        weights = torch.softmax(keys @ query.transpose(0, 1), dim=1).squeeze(-1)  # (batch, encoders)
        fused = torch.bmm(weights.unsqueeze(1), stacked.flatten(2)).view_as(stacked[:, 0])
        return fused, weights


class MervScalarFusion(nn.Module):
    """Softmax over one learned scalar per encoder, shared by all videos."""

    def __init__(self, config: MervConfig):
        super().__init__()
        self.scalar = nn.Parameter(torch.zeros(len(config.vision_encoders)))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = torch.stack(features, dim=1)
        weights = self.scalar.softmax(0).expand(stacked.shape[0], -1)
        return torch.einsum("be,bend->bnd", weights, stacked), weights


class MervChannelFusion(nn.Module):
    """Concatenates the encoders along channels ([LayerNorm] and) Linear back to the LLM width."""

    def __init__(self, config: MervConfig):
        super().__init__()
        text_dim = config.text_config.hidden_size
        concat_dim = len(config.vision_encoders) * text_dim
        self.norm = nn.LayerNorm(concat_dim) if config.fusion_type == "concat_channel_ln" else nn.Identity()
        self.projector = nn.Linear(concat_dim, text_dim)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, None]:
        return self.projector(self.norm(torch.cat(features, dim=-1))), None


class MervTokenConcatFusion(nn.Module):
    """Concatenates the encoders' token sequences (one after the other)."""

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, None]:
        return torch.cat(features, dim=1), None


class MervFirstEncoderFusion(nn.Module):
    """Uses the first encoder only."""

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, None]:
        return features[0], None


def build_fusion(config: MervConfig) -> nn.Module:
    """The fusion module named by `config.fusion_type`: `forward(features)` takes each encoder's projected tokens
    `(videos, tokens, width)`, in `config.vision_encoders` order, and returns the fused tokens and the per-encoder
    weights (None where the fusion weighs no encoder)."""
    return {
        "cross_attention": lambda: MervCrossAttentionFusion(config),
        "scalar": lambda: MervScalarFusion(config),
        "concat_channel": lambda: MervChannelFusion(config),
        "concat_channel_ln": lambda: MervChannelFusion(config),
        "concat_tokens": lambda: MervTokenConcatFusion(),
        "first": lambda: MervFirstEncoderFusion(),
    }[config.fusion_type]()


# --- encoders --------------------------------------------------------------------------------------------------------


def build_vision_tower(config: MervConfig, name: str) -> PreTrainedModel:
    """The encoder `name`, built from its sub-config (transformers' own model where one exists)."""
    sub_config = config.encoder_config(name)
    if name == "languagebind":
        return MervLanguageBindVideoModel._from_config(sub_config)
    if name == "vivit":
        return AutoModel.from_config(sub_config, add_pooling_layer=False)
    return AutoModel.from_config(sub_config)


def _execution_device(module: nn.Module) -> torch.device:
    """Where `module` runs: its accelerate hook's device when dispatched with a device map, else its weights'."""
    hook = getattr(module, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    return next(module.parameters()).device


def _has_trainable_parameters(module: nn.Module) -> bool:
    return any(parameter.requires_grad for parameter in module.parameters())


def _recorded(towers: dict[str, TowerOutput], output: str) -> dict[str, tuple[torch.Tensor, ...]] | None:
    """`output` ("hidden_states" or "attentions") of the towers that recorded it, or None if none did."""
    recorded = {name: getattr(tower, output) for name, tower in towers.items() if getattr(tower, output) is not None}
    return recorded or None


def _concatenated(per_encoder: dict[str, tuple[torch.Tensor, ...]] | None) -> tuple[torch.Tensor, ...] | None:
    """The encoders' tuples one after the other (in the dict's order, `config.vision_encoders`)."""
    return None if per_encoder is None else tuple(chain.from_iterable(per_encoder.values()))


@auto_docstring
class MervPreTrainedModel(PreTrainedModel):
    config: MervConfig
    base_model_prefix = "model"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_KWARG]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    # saving copies this module (and its relative imports) and maps `AutoModel` to the saved class in `auto_map`
    _auto_class = "AutoModel"
    _no_split_modules = [
        "MervLanguageBindVideoModel",
        "Dinov2WithRegistersModel",
        "VivitModel",
        "SiglipVisionModel",
        "MervVisualProjector",
        "MervCrossAttentionFusion",
        "MervScalarFusion",
        "MervChannelFusion",
    ]

    @classmethod
    def is_custom_code(cls) -> bool:
        """False, though MERV lives outside transformers: its modeling follows transformers' own conventions (weights
        set through `transformers.initialization`, parameter tying only), so the accommodations transformers makes for
        remote code must not apply. One of them passes to the towers and skips their composite modules' inits (SigLIP's
        attention and MLP) for weights missing from a checkpoint."""
        return False

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """True: `set_attn_implementation` reaches every attention layer, in the towers and the language model (each
        from its sub-config). transformers' source heuristic would answer False on seeing `MervCrossAttentionFusion`,
        a scoring of the encoders that is no attention layer."""
        return True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MervCrossAttentionFusion):
            init.xavier_uniform_(module.query)
        elif isinstance(module, MervUnusedLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MervScalarFusion):
            init.normal_(module.scalar)
        elif isinstance(module, MervAttentivePooler):
            init.trunc_normal_(module.query_tokens, std=self.config.initializer_range)

    def save_pretrained(self, save_directory, *args, max_shard_size: int | str = MAX_SHARD_SIZE, **kwargs):
        """`PreTrainedModel.save_pretrained` with 5 GB shards, plus the code files and `auto_map` that let a
        directory (or Hub repo) load with `trust_remote_code=True` where `transformers_merv` is not installed."""
        self._set_remote_code_auto_map()
        return super().save_pretrained(save_directory, *args, max_shard_size=max_shard_size, **kwargs)

    def push_to_hub(self, repo_id: str, *args, max_shard_size: int | str = MAX_SHARD_SIZE, **kwargs):
        """`PreTrainedModel.push_to_hub` with 5 GB shards and remote code (see `save_pretrained`)."""
        self._set_remote_code_auto_map()
        return super().push_to_hub(repo_id, *args, max_shard_size=max_shard_size, **kwargs)

    def _set_remote_code_auto_map(self) -> None:
        """`AutoModel` is mapped by `_auto_class` when saving; the generation model also answers to the other Auto
        classes users of video LLMs call."""
        if isinstance(self, GenerationMixin):
            model_class = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                **dict.fromkeys(GENERATION_AUTO_CLASSES, model_class),
            }

    def enable_input_require_grads(self) -> None:
        """Make the LLM's input embeddings require grad (for adapters with activation checkpointing). Only the
        LLM is hooked: hooking the frozen encoders' patch embeddings would make autograd keep their activations."""

        def make_output_require_grad(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        hook = self.get_input_embeddings().register_forward_hook(make_output_require_grad)
        self._require_grads_hooks = [hook]
        self._require_grads_hook = hook

    def split_pixel_values_videos(self, pixel_values_videos: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-encoder view of packed `pixel_values_videos` (`(num_videos, D)`, as `MervVideoProcessor` returns
        it): `{encoder: (num_videos, frames, channels, height, width)}` in `config.vision_encoders` order, views of
        the packed tensor (nothing is copied). Raises a `ValueError` naming the expected shapes if it is not
        `(num_videos, D)` with this config's `D`."""
        if not isinstance(pixel_values_videos, torch.Tensor):
            raise TypeError(
                "`pixel_values_videos` must be a tensor (num_videos, D) or a dict {encoder: (num_videos, frames, "
                f"channels, height, width)}}, got {type(pixel_values_videos).__name__}"
            )
        shapes = self.config.video_pixel_shapes()
        sizes = [math.prod(shape) for shape in shapes.values()]
        if pixel_values_videos.ndim != 2 or pixel_values_videos.shape[1] != sum(sizes):
            listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
            raise ValueError(
                f"`pixel_values_videos` must have shape (num_videos, {sum(sizes)}): the (frames, channels, height, "
                f"width) pixels of each encoder ({listed}) flattened and concatenated in that order; got "
                f"{tuple(pixel_values_videos.shape)}"
            )
        parts = pixel_values_videos.split(sizes, dim=1)
        return {name: part.view(part.shape[0], *shape) for (name, shape), part in zip(shapes.items(), parts)}


@auto_docstring(
    custom_intro="MERV's video half: the encoders, their alignment and the fusion (`get_video_features`), without the "
    "language model. `MervModel` adds the language model; serving engines that run their own (vLLM) use this alone."
)
class MervVideoModel(MervPreTrainedModel):
    main_input_name = "pixel_values_videos"  # no text: activation checkpointing hooks no input embeddings
    _keys_to_ignore_on_load_unexpected = [r"^model\.language_model\.", r"^lm_head\."]
    """Loaded from a whole MERV checkpoint (`MervForConditionalGeneration`'s), the video half leaves the language
    model's weights and the head unread, without listing them as unexpected."""

    def __init__(self, config: MervConfig):
        super().__init__(config)
        self.vision_towers = nn.ModuleDict({name: build_vision_tower(config, name) for name in config.vision_encoders})
        self.projectors = nn.ModuleDict({name: MervVisualProjector(config, name) for name in config.vision_encoders})
        self.fusion = build_fusion(config)
        # a subclass (`MervModel`) runs `post_init` once its own modules exist: on the half-built model, it would
        # apply `config.gradient_checkpointing` without the language model (and fail looking for its embeddings)
        if type(self) is MervVideoModel:
            self.post_init()

    def train(self, mode: bool = True) -> "MervVideoModel":
        """`nn.Module.train`, except that frozen encoders (no trainable parameter) stay in eval mode."""
        super().train(mode)
        for tower in self.vision_towers.values():
            if not _has_trainable_parameters(tower):
                tower.eval()
        return self

    @can_return_tuple
    @auto_docstring(custom_intro="Encodes videos with every encoder, aligns and fuses them into the visual tokens.")
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor | dict[str, torch.Tensor],
        output_encoder_features: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MervVideoFeaturesOutput:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(num_videos, D)`):
            Every encoder's pixels packed by `MervVideoProcessor`: for each encoder of `config.vision_encoders`, its
            `(frames, channels, height, width)` (`config.video_pixel_shapes()`) flattened, then concatenated. The
            per-encoder dict `{encoder: (num_videos, frames, channels, height, width)}` is taken too.
        output_encoder_features (`bool`, *optional*, defaults to `False`):
            Also return each encoder's selected tokens and projected tokens.
        output_hidden_states (`bool`, *optional*):
            Also return the towers' hidden states up to their feature layers. Unset: per tower,
            `config.output_hidden_states` or the tower's sub-config's.
        output_attentions (`bool`, *optional*):
            Also return the attention weights of the towers' layers that run (eager attention only). Unset: as for
            `output_hidden_states`.
        """
        recordings = self._tower_recordings(kwargs)
        pixels = self._pixels_by_encoder(pixel_values_videos)
        branches = self._run_encoder_branches(pixels, recordings)
        projected = {name: branch.projected for name, branch in branches.items()}
        fused, weights = self._fuse(projected)
        towers = {name: branch.tower for name, branch in branches.items()}
        hidden_states, attentions = _recorded(towers, "hidden_states"), _recorded(towers, "attentions")
        return MervVideoFeaturesOutput(
            last_hidden_state=fused,
            pooler_output=fused,
            hidden_states=_concatenated(hidden_states),
            attentions=_concatenated(attentions),
            fusion_weights=weights,
            encoder_features={name: tower.features for name, tower in towers.items()}
            if output_encoder_features
            else None,
            projected_features=projected if output_encoder_features else None,
            encoder_hidden_states=hidden_states,
            encoder_attentions=attentions,
        )

    def get_frozen_video_features(
        self, pixel_values_videos: torch.Tensor | Mapping[str, torch.Tensor], encoders: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Per encoder (of `encoders`, default all), what the modules that never train compute: its tokens at the
        feature layer, pooled to the shared grid when the resampler has no parameters,
        `(videos, *config.frozen_feature_shapes()[encoder])`. A feature store keeps them;
        `get_video_features_from_frozen` completes them into `get_video_features`'s output."""
        pixels = self._pixels_by_encoder(pixel_values_videos)
        return {
            name: self._frozen_features(name, self._encode(name, pixels[name]).features)
            for name in encoders or self.config.vision_encoders
        }

    @can_return_tuple
    def get_video_features_from_frozen(
        self, frozen_video_features: Mapping[str, torch.Tensor], output_encoder_features: bool = False
    ) -> MervVideoFeaturesOutput:
        """`get_video_features` from `get_frozen_video_features`'s output (e.g. read from a feature store): runs the
        projectors and the fusion only. With `output_encoder_features`, `projected_features` is returned (the
        encoders' tokens are not: they were pooled)."""
        self._check_per_encoder(frozen_video_features, self.config.frozen_feature_shapes(), "frozen_video_features")
        projected = {
            name: self._project_frozen(name, frozen_video_features[name]) for name in self.config.vision_encoders
        }
        fused, weights = self._fuse(projected)
        return MervVideoFeaturesOutput(
            last_hidden_state=fused,
            pooler_output=fused,
            fusion_weights=weights,
            projected_features=projected if output_encoder_features else None,
        )

    def _fuse(self, projected: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fusion of every encoder's projected tokens (on the first encoder's device), and its weights."""
        target = next(iter(projected.values())).device
        return self.fusion([features.to(target) for features in projected.values()])

    def _tower_recordings(self, kwargs: dict) -> dict[str, TowerRecording]:
        """What each tower records for `get_video_features(**kwargs)`: `output_hidden_states` / `output_attentions`
        where given, else the MERV config's flag or the tower's sub-config's. Attention weights need eager
        attention."""
        flags = [f"output_{output}" for output in TowerRecording._fields]
        unsupported = set(kwargs) - set(flags)
        if unsupported:
            raise TypeError(
                f"get_video_features() got unsupported arguments {sorted(unsupported)}; it takes "
                f"`output_encoder_features`, {', '.join(f'`{flag}`' for flag in flags)}"
            )
        recordings = {
            name: TowerRecording(*(self._output_flag(flag, name, kwargs) for flag in flags))
            for name in self.config.vision_encoders
        }
        not_eager = {
            name: self.config.encoder_config(name)._attn_implementation
            for name, recording in recordings.items()
            if recording.attentions and self.config.encoder_config(name)._attn_implementation != "eager"
        }
        if not_eager:
            raise ValueError(
                f"`output_attentions` needs the eager attention implementation, but these encoders use another: "
                f"{not_eager}; load the model with `attn_implementation='eager'` or call "
                "`model.set_attn_implementation('eager')`"
            )
        return recordings

    def _output_flag(self, flag: str, name: str, kwargs: dict) -> bool:
        if kwargs.get(flag) is not None:
            return bool(kwargs[flag])
        return bool(getattr(self.config, flag) or getattr(self.config.encoder_config(name), flag))

    def _pixels_by_encoder(
        self, pixel_values_videos: torch.Tensor | Mapping[str, torch.Tensor]
    ) -> Mapping[str, torch.Tensor]:
        """`{encoder: (num_videos, frames, channels, height, width)}` of packed pixels, or the per-encoder form as
        given; checked against the config either way."""
        if isinstance(pixel_values_videos, Mapping):
            self._check_per_encoder(pixel_values_videos, self.config.video_pixel_shapes(), "pixel_values_videos")
            return pixel_values_videos
        return self.split_pixel_values_videos(pixel_values_videos)

    def _run_encoder_branches(
        self, pixel_values_videos: Mapping[str, torch.Tensor], recordings: dict[str, TowerRecording]
    ) -> dict[str, EncoderBranch]:
        """Every encoder's branch, one after the other or, with
        `config.concurrent_encoders`, each in its own thread (and CUDA stream), so encoders on different GPUs (or
        sharing one) overlap. Results are identical either way."""
        names = self.config.vision_encoders
        if not self.config.concurrent_encoders or len(names) == 1:
            return {name: self._encoder_branch(name, pixel_values_videos[name], recordings[name]) for name in names}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ValueError(
                "`config.concurrent_encoders` cannot be used in distributed training (FSDP / DeepSpeed gather "
                "parameters per module, which worker threads would race); set it to False"
            )
        grad_enabled, inference_mode = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(name: str) -> EncoderBranch:
            # grad and inference modes are thread-local: carry the caller's into the worker
            with torch.inference_mode(inference_mode), torch.set_grad_enabled(grad_enabled):
                return self._encoder_branch_on_own_stream(name, pixel_values_videos[name], recordings[name])

        with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="merv-encoder") as pool:
            futures = {name: pool.submit(run, name) for name in names}
            return {name: future.result() for name, future in futures.items()}

    def _encoder_branch_on_own_stream(
        self, name: str, pixels: torch.Tensor, recording: TowerRecording
    ) -> EncoderBranch:
        device = _execution_device(self.vision_towers[name])
        if device.type != "cuda":
            return self._encoder_branch(name, pixels, recording)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))  # the inputs may still be in flight on the caller's
        with torch.cuda.stream(stream):
            result = self._encoder_branch(name, pixels, recording)
        stream.synchronize()  # blocks this worker only; the caller then reads finished tensors
        return result

    @torch.no_grad()
    def standardize_projector_inputs(
        self, pixel_values_videos: torch.Tensor | dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> None:
        """Data-dependent initialisation of the projectors (before training): each encoder's first projector layer
        is set to standardise that encoder's pooled features over the given videos (`pixel_values_videos` as
        `get_video_features` takes them). Encoder features mix a large video-independent part (position embeddings,
        background) with a small video-dependent one; without this, the visual tokens start almost identical for
        every video (measured on randomly initialised encoders: ~10% of the feature magnitude varies between
        videos), and the language model is slow to learn to read them."""
        pixels = self._pixels_by_encoder(pixel_values_videos)
        for name in self.config.vision_encoders:
            projector = self.projectors[name]
            features = self._encode(name, pixels[name]).features.to(_execution_device(projector))
            grid_frames = self.config.encoder_token_grid(name)[0]
            pooled = projector.resampler(
                features.unflatten(1, (grid_frames, -1)).to(next(projector.parameters()).dtype)
            )
            projector.mlp.standardize_first_layer(pooled.flatten(0, 1), generator)

    def _encoder_branch(self, name: str, pixels: torch.Tensor, recording: TowerRecording) -> EncoderBranch:
        tower = self._encode(name, pixels, recording)
        return EncoderBranch(tower, self._align(name, tower.features))

    def _check_per_encoder(
        self, tensors: Mapping[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], argument: str
    ) -> None:
        """Checks a per-encoder input: every encoder of the config, each `(videos, *shapes[encoder])`, the same
        number of videos."""
        missing = [name for name in self.config.vision_encoders if name not in tensors]
        if missing:
            raise ValueError(f"`{argument}` lacks encoders {missing}; expected keys {self.config.vision_encoders}")
        batch_sizes = set()
        for name, expected in shapes.items():
            tensor = tensors[name]
            if tensor.ndim != len(expected) + 1 or tuple(tensor.shape[1:]) != expected:
                raise ValueError(
                    f"`{argument}[{name!r}]` must have shape (videos, {', '.join(map(str, expected))}), "
                    f"got {tuple(tensor.shape)}"
                )
            batch_sizes.add(tensor.shape[0])
        if len(batch_sizes) != 1:
            raise ValueError(
                f"every encoder of `{argument}` needs the same number of videos, got {sorted(batch_sizes)}"
            )

    def _encode(self, name: str, pixels: torch.Tensor, recording: TowerRecording = TowerRecording()) -> TowerOutput:
        """Selected tokens of encoder `name`, `(videos, frames) -> (videos, tokens, encoder_hidden_size)`, with the
        tower's hidden states and attention weights up to the feature layer as `recording` asks."""
        tower = self.vision_towers[name]
        num_videos = pixels.shape[0]
        pixels = pixels.to(device=_execution_device(tower), dtype=tower.dtype)
        tower_input = pixels if name in VIDEO_INPUT_TOWERS else pixels.flatten(0, 1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and _has_trainable_parameters(tower)):
            output = self._tower_hidden_state(name, tower, tower_input, recording)
            hidden = output.features
            if self.config.vision_feature_final_norm[name]:
                hidden = TOWER_LAYOUTS[name].normalize(tower, hidden)
        if self.config.vision_feature_select_strategy[name] == "default":
            hidden = hidden[:, self.config.encoder_num_prefix_tokens(name) :]
        return output._replace(features=hidden.reshape(num_videos, -1, hidden.shape[-1]))

    def _tower_hidden_state(
        self, name: str, tower: nn.Module, pixels: torch.Tensor, recording: TowerRecording = TowerRecording()
    ) -> TowerOutput:
        """Hidden state `config.vision_feature_layer[name]` of the tower (0 = after the embeddings) as `features`,
        running only the layers up to it; as `recording` asks, also every hidden state up to it (else only one is
        held at a time) and the attention weights of the layers that ran."""
        layout = TOWER_LAYOUTS[name]
        num_layers = self.config.vision_feature_layer[name] % (layout.num_layers(tower) + 1)
        recorder = layout.recording_attentions(tower, num_layers) if recording.attentions else nullcontext()
        with recorder as attentions:
            states = layout.hidden_states(tower, pixels, num_layers)
            kept = tuple(states) if recording.hidden_states else (deque(states, maxlen=1).pop(),)
        return TowerOutput(
            features=kept[-1],
            hidden_states=kept if recording.hidden_states else None,
            attentions=None if attentions is None else tuple(attentions),
        )

    def _align(self, name: str, features: torch.Tensor) -> torch.Tensor:
        """Pool and project one encoder's tokens to `(videos, visual_tokens, text_hidden_size)`."""
        return self._project_frozen(name, self._frozen_features(name, features))

    def _frozen_features(self, name: str, features: torch.Tensor) -> torch.Tensor:
        """One encoder's `(videos, tokens, dim)` tokens -> its frozen features (`MervVisualProjector.pool_frozen`)."""
        projector = self.projectors[name]
        # (videos, tokens, dim) -> (videos, frames, tokens per frame, dim)
        features = features.to(_execution_device(projector), next(projector.parameters()).dtype)
        return projector(features.unflatten(1, (projector.grid_frames, -1)), part="frozen")

    def _project_frozen(self, name: str, frozen: torch.Tensor) -> torch.Tensor:
        projector = self.projectors[name]
        return projector(frozen.to(_execution_device(projector), next(projector.parameters()).dtype), part="trained")


@auto_docstring(custom_intro="MERV's encoders, alignment and fusion, and the language model without its head.")
class MervModel(MervVideoModel):
    main_input_name = "input_ids"

    def __init__(self, config: MervConfig):
        super().__init__(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_encoder(self, modality: str | None = None) -> nn.Module:
        return self.vision_towers if modality in ("image", "video") else super().get_encoder(modality)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, video_features: torch.Tensor | None
    ) -> torch.BoolTensor:
        """Positions of the `<video>` placeholders, as a mask broadcast over the hidden size; checks that their count
        equals the number of visual tokens."""
        if input_ids is None:
            placeholder = self.get_input_embeddings()(
                torch.tensor(self.config.video_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            mask = input_ids == self.config.video_token_id
        num_placeholders = mask.sum()
        num_features = 0 if video_features is None else video_features.shape[0] * video_features.shape[1]
        # transformers' check that torch.compile / torch.export can trace (a hint to the compiler there)
        torch_compilable_check(
            num_placeholders == num_features,
            lambda: (
                f"The prompt holds {int(num_placeholders)} video placeholder tokens (id {self.config.video_token_id}) "
                f"but the videos give {num_features} visual tokens ({self.config.num_video_tokens} per video); each "
                "`<video>` must be expanded to `config.num_video_tokens` placeholders (MervProcessor does this)"
            ),
        )
        return mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    @can_return_tuple
    @auto_docstring
    @accept_legacy_cache_kwarg
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | dict[str, torch.Tensor] | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, MervVideoFeaturesOutput] | None = None,
        frozen_video_features: dict[str, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MultimodalBaseModelOutputWithPast:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(num_videos, D)`, *optional*):
            Every encoder's pixels, packed by `MervVideoProcessor` (or the per-encoder dict); see
            `get_video_features`.
        cache (`Cache`, *optional*):
            The language model's KV cache from earlier steps (`past_key_values`, its name before transformers 5.24, is
            accepted too).
        mm_encoder_outputs (`dict[str, MervVideoFeaturesOutput]`, *optional*):
            Precomputed `{"video": get_video_features(...)}` (used by `generate` to encode videos once).
        frozen_video_features (`dict[str, torch.FloatTensor]`, *optional*):
            The videos' frozen features (`get_frozen_video_features`, e.g. from a feature store) in place of
            `pixel_values_videos`: only the projectors and the fusion run. For a forward without a cache (training,
            scoring); `generate` takes `mm_encoder_outputs={"video": get_video_features_from_frozen(...)}`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`")
        video_outputs = self._video_outputs(pixel_values_videos, frozen_video_features, mm_encoder_outputs, cache)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        if video_outputs is not None:
            video_features = video_outputs.pooler_output.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, video_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, video_features)
        elif cache is None or (not torch.compiler.is_compiling() and cache.get_seq_length() == 0):
            # a prompt with placeholders but no video would feed the untrained placeholder embedding to the LLM (a
            # compiled forward decodes after an eager prefill: its cache is never empty, and this test would break the
            # graph on a static cache's length tensor)
            self.get_placeholder_mask(input_ids, inputs_embeds, None)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **cache_kwargs(cache),
            **kwargs,
        )
        return MultimodalBaseModelOutputWithPast(**outputs, video_outputs=video_outputs)

    def _video_outputs(
        self,
        pixel_values_videos: torch.Tensor | dict[str, torch.Tensor] | None,
        frozen_video_features: dict[str, torch.Tensor] | None,
        mm_encoder_outputs: dict[str, MervVideoFeaturesOutput] | None,
        cache: Cache | None,
    ) -> MervVideoFeaturesOutput | None:
        """The videos' visual tokens from whichever of the three video inputs is given (at most one)."""
        precomputed = (mm_encoder_outputs or {}).get("video")
        given = {
            "pixel_values_videos": pixel_values_videos,
            "frozen_video_features": frozen_video_features,
            "mm_encoder_outputs": precomputed,
        }
        given = [name for name, value in given.items() if value is not None]
        if len(given) > 1:
            raise ValueError(
                f"Pass one of `pixel_values_videos`, `frozen_video_features` or `mm_encoder_outputs`, got {given}"
            )
        if frozen_video_features is not None:
            if cache is not None:
                raise ValueError(
                    "`frozen_video_features` is for a forward without a cache (training, scoring); to generate, pass "
                    "`mm_encoder_outputs={'video': model.get_video_features_from_frozen(frozen_video_features)}`"
                )
            return self.get_video_features_from_frozen(frozen_video_features)
        if pixel_values_videos is not None:
            return self.get_video_features(pixel_values_videos)
        return precomputed


@auto_docstring(
    custom_intro="MERV with the language-model head: answers questions about videos (`generate`) and computes the loss."
)
class MervForConditionalGeneration(MervPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # the LLM's own plan (from `config.text_config`) is gathered under `model.language_model.` by `post_init`
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: MervConfig):
        super().__init__(config)
        self.model = MervModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @auto_docstring(custom_intro="Encodes videos with every encoder, aligns and fuses them into the visual tokens.")
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor | dict[str, torch.Tensor],
        output_encoder_features: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MervVideoFeaturesOutput:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(num_videos, D)`):
            Every encoder's pixels, packed by `MervVideoProcessor` (or the per-encoder dict).
        output_encoder_features (`bool`, *optional*, defaults to `False`):
            Also return each encoder's selected tokens and projected tokens.
        output_hidden_states (`bool`, *optional*):
            Also return the towers' hidden states; see `MervModel.get_video_features`.
        output_attentions (`bool`, *optional*):
            Also return the towers' attention weights (eager attention only); see `MervModel.get_video_features`.
        """
        return self.model.get_video_features(pixel_values_videos, output_encoder_features, **kwargs)

    @can_return_tuple
    @auto_docstring
    @accept_legacy_cache_kwarg
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | dict[str, torch.Tensor] | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, MervVideoFeaturesOutput] | None = None,
        frozen_video_features: dict[str, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MultimodalCausalLMOutputWithPast:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(num_videos, D)`, *optional*):
            Every encoder's pixels, packed by `MervVideoProcessor` (or the per-encoder dict); see
            `get_video_features`.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Target ids; -100 is ignored. Positions holding the `<video>` placeholder are never scored.
        cache (`Cache`, *optional*):
            The language model's KV cache from earlier steps (`past_key_values`, its name before transformers 5.24, is
            accepted too).
        mm_encoder_outputs (`dict[str, MervVideoFeaturesOutput]`, *optional*):
            Precomputed `{"video": get_video_features(...)}`.
        frozen_video_features (`dict[str, torch.FloatTensor]`, *optional*):
            The videos' frozen features in place of `pixel_values_videos` (see `MervModel.forward`).
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values_videos=pixel_values_videos,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
            frozen_video_features=frozen_video_features,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.video_token_id, IGNORE_INDEX)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return MultimodalCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **cache_kwargs(outputs.cache),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            video_outputs=outputs.video_outputs,
        )


__all__ = [
    "MervPreTrainedModel",
    "MervVideoModel",
    "MervModel",
    "MervForConditionalGeneration",
    "MervVideoFeaturesOutput",
]
