"""Key tables mapping each source's tensor names to `MervForConditionalGeneration` state-dict names.

Renames are data (`KeyRule`s, regex -> templates); tensors that change shape (fused qkv, DINOv2's position table)
carry a transform. A `KeyMap` also lists the source keys dropped on purpose and target tensors with no source."""

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import ConversionError


def _split_in_three(tensor: torch.Tensor) -> list[torch.Tensor]:
    return list(tensor.chunk(3, dim=0))


@dataclass(frozen=True)
class KeyRule:
    """Renames the source keys matching `pattern` to `targets` (regex replacement templates). With `transform`, the
    source tensor becomes one tensor per target (e.g. a fused qkv split in three)."""

    pattern: str
    targets: tuple[str, ...]
    transform: Callable[[torch.Tensor], list[torch.Tensor]] | None = None

    def apply(self, key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return None
        outputs = self.transform(tensor) if self.transform else [tensor]
        if len(outputs) != len(self.targets):
            raise ConversionError(
                f"{key} of shape {tuple(tensor.shape)} does not split into its {len(self.targets)} targets "
                f"{[match.expand(target) for target in self.targets]}"
            )
        return {match.expand(target): output for target, output in zip(self.targets, outputs)}


def rename(pattern: str, target: str) -> KeyRule:
    return KeyRule(pattern, (target,))


@dataclass
class KeyMap:
    """Rules for one source (one file or one checkpoint group), the source keys dropped on purpose, and target
    tensors that have no source (synthesised)."""

    rules: list[KeyRule]
    unused: list[str] = field(default_factory=list)
    synthesized: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)


LANGUAGEBIND_KEYS = KeyMap(
    rules=[rename(r"vision_model\.(.+)", r"\1")],
    # LanguageBind ships a CLIP text tower and projections; MERV uses only the vision tower.
    unused=[r"text_model\..+", r"text_projection\..+", r"visual_projection\..+", r"logit_scale", r".+\.position_ids"],
)


def _timm_block_rules(layers: str, attention: str, out_proj: str, norm: str) -> list[KeyRule]:
    """timm ViT blocks (`blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp}`) -> a transformers encoder whose layers
    live at `{layers}.N`, with attention module `attention`, output projection `out_proj` and norms `{norm}1/2`."""
    block = r"blocks\.(\d+)"
    return [
        rename(rf"{block}\.norm(1|2)\.(weight|bias)", rf"{layers}.\1.{norm}\2.\3"),
        KeyRule(
            rf"{block}\.attn\.qkv\.(weight|bias)",
            tuple(rf"{layers}.\1.{attention}.{part}_proj.\2" for part in "qkv"),
            _split_in_three,
        ),
        rename(rf"{block}\.attn\.proj\.(weight|bias)", rf"{layers}.\1.{attention}.{out_proj}.\2"),
        rename(rf"{block}\.mlp\.(fc1|fc2)\.(weight|bias)", rf"{layers}.\1.mlp.\2.\3"),
    ]


def dinov2_keys(grid: tuple[int, int], hidden_size: int) -> KeyMap:
    """timm `vit_*_reg4_dinov2` -> transformers `Dinov2WithRegistersModel`, position embeddings resampled to `grid`
    exactly as timm does when MERV builds the model at 224 px (bicubic, antialiased, float32). transformers' model
    also has a mask token for masked pre-training, which no inference path reads: it is set to zeros."""
    return KeyMap(
        rules=[
            rename(r"cls_token", "embeddings.cls_token"),
            rename(r"reg_token", "embeddings.register_tokens"),
            KeyRule(r"pos_embed", ("embeddings.position_embeddings",), lambda t: [_dinov2_position_table(t, grid)]),
            rename(r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
            *_timm_block_rules("encoder.layer", "attention", "o_proj", "norm"),
            rename(r"blocks\.(\d+)\.ls(1|2)\.gamma", r"encoder.layer.\1.layer_scale\2.lambda1"),
            rename(r"norm\.(weight|bias)", r"layernorm.\1"),
        ],
        synthesized={"embeddings.mask_token": lambda: torch.zeros(1, hidden_size)},
    )


def siglip_keys(grid: tuple[int, int]) -> KeyMap:
    """timm `vit_*_siglip_*` -> transformers `SiglipVisionModel` (no head: MERV uses patch tokens)."""
    return KeyMap(
        rules=[
            rename(r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
            KeyRule(r"pos_embed", ("embeddings.position_embedding.weight",), lambda t: [resample_grid(t, grid)[0]]),
            *_timm_block_rules("encoder.layers", "self_attn", "out_proj", "layer_norm"),
            rename(r"norm\.(weight|bias)", r"post_layernorm.\1"),
        ],
        # the attention-pooling (MAP) head is not used by MERV; open_clip checkpoints also hold the text tower
        unused=[r"attn_pool\..+", r"text\..+", r"logit_scale", r"logit_bias"],
    )


VIVIT_KEYS = KeyMap(
    rules=[
        rename(r"vivit\.embeddings\.(.+)", r"embeddings.\1"),
        rename(
            r"vivit\.encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)",
            r"layers.\1.attention.q_proj.\2",
        ),
        rename(
            r"vivit\.encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)", r"layers.\1.attention.k_proj.\2"
        ),
        rename(
            r"vivit\.encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)",
            r"layers.\1.attention.v_proj.\2",
        ),
        rename(
            r"vivit\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"layers.\1.attention.o_proj.\2"
        ),
        rename(r"vivit\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"layers.\1.mlp.fc1.\2"),
        rename(r"vivit\.encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"layers.\1.mlp.fc2.\2"),
        rename(r"vivit\.encoder\.layer\.(\d+)\.(layernorm_before|layernorm_after)\.(weight|bias)", r"layers.\1.\2.\3"),
        rename(r"vivit\.layernorm\.(weight|bias)", r"layernorm.\1"),
    ],
    # the Kinetics-400 classifier (and the unused pooler) of VivitForVideoClassification
    unused=[r"classifier\..+", r"vivit\.pooler\..+"],
)

LLM_KEYS = KeyMap(
    rules=[rename(r"llm\.model\.(.+)", r"model.language_model.\1"), rename(r"llm\.lm_head\.weight", "lm_head.weight")],
    unused=[r".+\.rotary_emb\.inv_freq"],
)

FUSION_KEYS = {
    "cross_attention": KeyMap(
        rules=[
            rename(r"Q", "model.fusion.query"),
            rename(r"attention\.q_proj_weight", "model.fusion.query_proj.weight"),
            rename(r"attention\.k_proj_weight", "model.fusion.key_proj.weight"),
            rename(r"attention\.v_proj_weight", "model.fusion.value_proj.weight"),
            KeyRule(
                r"attention\.in_proj_bias",
                ("model.fusion.query_proj.bias", "model.fusion.key_proj.bias", "model.fusion.value_proj.bias"),
                _split_in_three,
            ),
            rename(r"attention\.out_proj\.(weight|bias)", r"model.fusion.out_proj.\1"),
        ]
    ),
    "concat_channel": KeyMap(rules=[rename(r"projector\.(weight|bias)", r"model.fusion.projector.\1")]),
    "concat_channel_ln": KeyMap(
        rules=[
            rename(r"0\.(weight|bias)", r"model.fusion.norm.\1"),
            rename(r"1\.projector\.(weight|bias)", r"model.fusion.projector.\1"),
        ]
    ),
    "scalar": KeyMap(rules=[rename(r"scalar", "model.fusion.scalar")]),
    "concat_tokens": KeyMap(rules=[]),
    "first": KeyMap(rules=[]),
}

_ATTENTIVE_POOLER_RULES = [
    rename(r"query_tokens", "resampler.query_tokens"),
    rename(r"cross_attn\.norm1\.(weight|bias)", r"resampler.key_norm.\1"),
    rename(r"cross_attn\.xattn\.q\.(weight|bias)", r"resampler.q_proj.\1"),
    rename(r"cross_attn\.xattn\.kv\.(weight|bias)", r"resampler.kv_proj.\1"),
    rename(r"cross_attn\.xattn\.proj\.(weight|bias)", r"resampler.o_proj.\1"),
    rename(r"cross_attn\.norm2\.(weight|bias)", r"resampler.mlp_norm.\1"),
    rename(r"cross_attn\.mlp\.(fc1|fc2)\.(weight|bias)", r"resampler.\1.\2"),
]


def _regnet_stage_rules(source_index: str, stage: str) -> list[KeyRule]:
    block = rf"convolution_pooling\.{source_index}\.b(\d+)"
    renames = {
        r"conv1\.conv\.weight": "conv1.weight",
        r"conv1\.bn\.(weight|bias)": r"norm1.\2",
        r"conv2\.conv\.weight": "conv2.weight",
        r"conv2\.bn\.(weight|bias)": r"norm2.\2",
        r"se\.fc1\.(weight|bias)": r"se_reduce.\2",
        r"se\.fc2\.(weight|bias)": r"se_expand.\2",
        r"conv3\.conv\.weight": "conv3.weight",
        r"conv3\.bn\.(weight|bias)": r"norm3.\2",
        r"downsample\.conv\.weight": "shortcut_conv.weight",
        r"downsample\.bn\.(weight|bias)": r"shortcut_norm.\2",
    }
    # timm names blocks b1, b2, ...; ours are 0-based positions in an nn.Sequential
    return [
        KeyRule(rf"{block}\.{source}", (rf"resampler.{stage}.BLOCK\1.{target}",)) for source, target in renames.items()
    ]


RESAMPLER_RULES = {
    "none": [],
    "3davg": [],
    "avg": [],
    "3dconv": [rename(r"convolution_pooling\.0\.(weight|bias)", r"resampler.conv.\1")],
    "attntv": _ATTENTIVE_POOLER_RULES,
    "conv": _regnet_stage_rules("0", "stage_in") + _regnet_stage_rules("2", "stage_out"),
}


def projector_keys(pooling: str, projector: str) -> KeyMap:
    """One encoder's projector: the authors' resampler holds a `projector` (LinearProjector / MLPProjector) whose
    own Linear/Sequential is also called `projector`; without a resampler there is only one level."""
    prefix = r"projector\." if pooling == "none" else r"projector\.projector\."
    if projector == "linear":
        mlp_rules = [rename(rf"{prefix}(weight|bias)", r"mlp.layers.0.\1")]
    else:  # nn.Sequential of Linear, GELU, Linear[, GELU, Linear]: Linear layers sit at even indices
        mlp_rules = [KeyRule(rf"{prefix}(\d+)\.(weight|bias)", (r"mlp.layers.LINEAR\1.\2",))]
    return KeyMap(rules=[*RESAMPLER_RULES[pooling], *mlp_rules])


def _renumber(target: str) -> str:
    """Resolve the index placeholders of projector rules: timm's 1-based `b<k>` blocks and Sequential positions of
    Linear layers (0, 2, 4 -> 0, 1, 2)."""
    target = re.sub(r"BLOCK(\d+)", lambda m: str(int(m.group(1)) - 1), target)
    return re.sub(r"LINEAR(\d+)", lambda m: str(int(m.group(1)) // 2), target)


def map_tensors(
    source: Mapping[str, torch.Tensor], key_map: KeyMap, target_prefix: str, origin: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(target key, tensor)` for every source tensor; raise listing the source keys no rule maps."""
    unmapped = []
    for key, tensor in source.items():
        for rule in key_map.rules:
            mapped = rule.apply(key, tensor)
            if mapped is not None:
                for target, value in mapped.items():
                    yield target_prefix + _renumber(target), value
                break
        else:
            if not any(re.fullmatch(pattern, key) for pattern in key_map.unused):
                unmapped.append(key)
    if unmapped:
        raise ConversionError(f"{origin}: no mapping for source keys {sorted(unmapped)}")
    for target, make in key_map.synthesized.items():
        yield target_prefix + target, make()


# --- position embeddings ---------------------------------------------------------------------------------------------


def resample_grid(position_table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample a `(1, h * w, dim)` table of square-grid position embeddings to `grid` as timm's
    `resample_abs_pos_embed` does (bicubic, antialiased, computed in float32)."""
    num_positions, dim = position_table.shape[1:]
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise ConversionError(f"position table with {num_positions} entries is not a square grid")
    if (side, side) == tuple(grid):
        return position_table
    # (1, h * w, dim) -> (1, dim, h, w)
    image = position_table.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(image, size=grid, mode="bicubic", antialias=True)
    return resized.permute(0, 2, 3, 1).reshape(1, -1, dim).to(position_table.dtype)


def _dinov2_position_table(position_table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """timm's DINOv2 has no CLS position (`no_embed_class`); transformers adds `position_embeddings[:, 0]` to the
    CLS token, so that row is zero."""
    patches = resample_grid(position_table, grid)
    return torch.cat([torch.zeros_like(patches[:, :1]), patches], dim=1)


def _grid(image_size: int, patch_size: int) -> tuple[int, int]:
    return image_size // patch_size, image_size // patch_size


def encoder_keys(config, name: str) -> KeyMap:
    """The key map of encoder `name`'s public weights for `config` (a `MervConfig`)."""
    if name == "dinov2":
        sub = config.dinov2_config
        return dinov2_keys(_grid(sub.image_size, sub.patch_size), sub.hidden_size)
    if name == "siglip":
        return siglip_keys(_grid(config.siglip_config.image_size, config.siglip_config.patch_size))
    return {"languagebind": LANGUAGEBIND_KEYS, "vivit": VIVIT_KEYS}[name]


def mapped_tensors(
    config,
    encoder_weights: dict[str, Mapping[str, torch.Tensor]],
    trainable: dict[str, dict[str, torch.Tensor]],
    checkpoint: str,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every `(state-dict name, tensor)` of `MervForConditionalGeneration(config)`, produced one at a time from the
    encoders' weights and the authors' checkpoint groups (`projectors`, `llm_backbone`, `feature_fusion`)."""
    for name in config.vision_encoders:
        yield from map_tensors(
            encoder_weights[name], encoder_keys(config, name), f"model.vision_towers.{name}.", f"--{name}"
        )
    projector_map = projector_keys(config.alignment_pooling, config.alignment_projector)
    for name, tensors in _split_projectors(trainable["projectors"], config.vision_encoders, checkpoint).items():
        yield from map_tensors(tensors, projector_map, f"model.projectors.{name}.", f"{checkpoint} projectors")
    yield from map_tensors(trainable["llm_backbone"], LLM_KEYS, "", f"{checkpoint} llm_backbone")
    yield from map_tensors(
        trainable["feature_fusion"], FUSION_KEYS[config.fusion_type], "", f"{checkpoint} feature_fusion"
    )


def _split_projectors(
    projectors: Mapping[str, torch.Tensor], names: list[str], origin: str
) -> dict[str, dict[str, torch.Tensor]]:
    """The authors index projectors by encoder position (`0.`, `1.`, ...); ours are keyed by encoder name."""
    by_encoder = {name: {} for name in names}
    for key, tensor in projectors.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) >= len(names):
            raise ConversionError(f"{origin}: projector key {key!r} does not belong to one of {len(names)} encoders")
        by_encoder[names[int(index)]][rest] = tensor
    return by_encoder
