"""LanguageBind video tower: CLIP ViT whose layers add a temporal embedding and attend over groups of frames.

transformers has the CLIP parts (embeddings, attention, MLP) but not the temporal layer; this module adds it and
reuses the rest. Frames are folded into the batch (`(batch * frames, tokens, dim)`) as in the original."""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention, CLIPVisionEmbeddings
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_merv import MervLanguageBindVideoConfig


class MervLanguageBindEncoderLayer(GradientCheckpointingLayer):
    """Pre-LN CLIP layer preceded by a temporal branch: temporal embedding (kept in the residual stream) and
    attention across the frames of each group, separately for every token position."""

    def __init__(self, config: MervLanguageBindVideoConfig):
        super().__init__()
        self.add_time_attn = config.add_time_attn
        self.temporal_group_size = config.temporal_group_size
        if self.add_time_attn:
            self.temporal_embedding = nn.Parameter(torch.zeros(1, config.temporal_group_size, config.hidden_size))
            self.temporal_attn = CLIPAttention(config)
            self.temporal_layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        if self.add_time_attn:
            hidden_states = self._temporal_block(hidden_states, **kwargs)

        attended, _ = self.self_attn(self.layer_norm1(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))

    def _temporal_block(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        group = self.temporal_group_size
        rows, num_tokens, dim = hidden_states.shape
        # (groups * group, tokens, dim) -> (groups, group, tokens, dim): frames of one group are consecutive rows
        grouped = hidden_states.view(rows // group, group, num_tokens, dim)
        if group != 1:
            grouped = grouped + self.temporal_embedding.view(1, group, 1, dim)
        # (groups, group, tokens, dim) -> (groups * tokens, group, dim): attend across time per token position
        over_time = grouped.transpose(1, 2).reshape(-1, group, dim)
        attended, _ = self.temporal_attn(self.temporal_layer_norm1(over_time), None, **kwargs)
        attended = attended.view(rows // group, num_tokens, group, dim).transpose(1, 2)
        return (grouped + attended).reshape(rows, num_tokens, dim)


class MervLanguageBindEncoder(nn.Module):
    def __init__(self, config: MervLanguageBindVideoConfig):
        super().__init__()
        self.layers = nn.ModuleList([MervLanguageBindEncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, inputs_embeds: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class MervLanguageBindVideoPreTrainedModel(PreTrainedModel):
    config: MervLanguageBindVideoConfig
    base_model_prefix = "languagebind"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPVisionEmbeddings", "MervLanguageBindEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # a layer's attentions are its spatial attention's (as CLIP's); the temporal attention's are not recorded
    _can_record_outputs = {
        "hidden_states": MervLanguageBindEncoderLayer,
        "attentions": OutputRecorder(CLIPAttention, index=1, layer_name="self_attn"),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        config = self.config
        if isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, std=config.hidden_size**-0.5 * config.initializer_factor)
            init.normal_(module.patch_embedding.weight, std=config.initializer_range * config.initializer_factor)
            init.normal_(module.position_embedding.weight, std=config.initializer_range * config.initializer_factor)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, MervLanguageBindEncoderLayer) and module.add_time_attn:
            init.normal_(module.temporal_embedding, std=config.hidden_size**-0.5)


class MervLanguageBindVideoModel(MervLanguageBindVideoPreTrainedModel):
    """The LanguageBind video tower without projection head. Takes `(batch, frames, channels, height, width)`;
    hidden states are returned with frames folded into the batch: `(batch * frames, 1 + patches, hidden)`."""

    def __init__(self, config: MervLanguageBindVideoConfig):
        super().__init__(config)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = MervLanguageBindEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
            Normalised frames; `num_frames` must be a multiple of `config.temporal_group_size`.
        """
        if pixel_values.ndim != 5 or pixel_values.shape[1] % self.config.temporal_group_size:
            raise ValueError(
                "LanguageBind expects pixel_values of shape (batch, frames, channels, height, width) with frames a "
                f"multiple of temporal_group_size={self.config.temporal_group_size}, got {tuple(pixel_values.shape)}"
            )
        batch_size, num_frames = pixel_values.shape[:2]
        hidden_states = self.embeddings(pixel_values.flatten(0, 1))
        hidden_states = self.pre_layrnorm(hidden_states)
        last_hidden_state = self.encoder(hidden_states, **kwargs).last_hidden_state
        # the CLS token of every frame, normalised and averaged over the frames of each video
        pooled_output = self.post_layernorm(last_hidden_state[:, 0]).view(batch_size, num_frames, -1).mean(1)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)


__all__ = ["MervLanguageBindVideoModel", "MervLanguageBindVideoPreTrainedModel"]
