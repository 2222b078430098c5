"""Conversion of the authors' MERV checkpoints to a `MervForConditionalGeneration` directory.

Inputs are the authors' run directory (`config.json` + `checkpoints/latest-checkpoint.pt`, holding the projectors,
the fine-tuned LLM and the fusion) and each encoder's public weights in the format its users have (LanguageBind's
own directory, timm state dicts for DINOv2 and SigLIP, a transformers directory for ViViT), plus the LLM directory
for its config and tokenizer. Key renames are data (`KeyRule` tables); every source tensor must be mapped or listed
as deliberately unused, and every target parameter must be filled, or the conversion fails naming the keys."""

import json
import math
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from .configuration_merv import MervConfig, MervLanguageBindVideoConfig
from .modeling_merv import MervForConditionalGeneration


MERV_IMAGE_SIZE = 224
"""Input resolution the authors build every encoder at (`default_image_size`)."""

ZIP_MAGIC = b"PK\x03\x04"
PAD_TOKEN = "<PAD>"
VIDEO_TOKEN = "<video>"
LLAMA2_PAD_MULTIPLE = 64
"""The authors resize Llama-2/Vicuna embeddings to a multiple of 64 rows after adding `<PAD>` (32001 -> 32064)."""

ENCODER_IDS = {
    "languagebind-video-noclass": "languagebind",
    "dinov2-video-all-tokens": "dinov2",
    "vivit-google-b-all-no-cls-16frames": "vivit",
    "siglip-vit-b16-224px-all-no-cls": "siglip",
}
"""The authors' `video_backbone_ids` this converter supports -> our encoder names."""

FUSION_TYPES = {
    "cross_attention_avg_lq": "cross_attention",
    "concat": "concat_tokens",
    "concat_channel": "concat_channel",
    "concat_channel_ln": "concat_channel_ln",
    "first": "first",
    "scalar": "scalar",
}
"""The authors' `feature_fusion` values -> `MervConfig.fusion_type`."""

RESAMPLER_PARTS = ("avg", "attntv", "conv", "3davg", "3dconv")
"""`arch_specifier` parts selecting a token resampler, in the order the authors test them."""

PROJECTOR_SUFFIXES = ("linear", "fused-gelu-mlp", "gelu-mlp")
"""`arch_specifier` endings selecting the channel projector, in the order the authors test them."""

TIMM_ARCHITECTURES = {
    "vit_large_patch14_reg4_dinov2": {"num_heads": 16},
    "vit_base_patch16_siglip_224": {"num_heads": 12},
}
"""Hyper-parameters of timm models that cannot be read off tensor shapes (overridden by `model_args`)."""


class ConversionError(ValueError):
    """The inputs cannot be converted; the message names the file or keys at fault."""


# --- loading ----------------------------------------------------------------------------------------------------------


def load_checkpoint(path: Path) -> dict:
    """`torch.load` with `weights_only=True`: a checkpoint that needs arbitrary code to unpickle is refused."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip_checkpoint(path))
    except (pickle.UnpicklingError, RuntimeError) as err:
        raise ConversionError(
            f"{path} cannot be loaded safely (weights_only=True refused it: it needs arbitrary code to unpickle, or "
            f"is not a torch checkpoint). Only plain tensor checkpoints are accepted. Cause: {err}"
        ) from err


def _is_zip_checkpoint(path: Path) -> bool:
    """Whether `path` uses torch's zip serialisation, which can be memory-mapped instead of read into RAM."""
    with path.open("rb") as handle:
        return handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"expected a JSON file at {path}")
    return json.loads(path.read_text())


def _safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of `directory/*.safetensors` (opened lazily, read when asked)."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    tensors = {}
    for file in files:
        with safe_open(file, "pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    return tensors


# --- key mapping ------------------------------------------------------------------------------------------------------


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
        return {match.expand(target): output for target, output in zip(self.targets, outputs, strict=True)}


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
        # the attention-pooling (MAP) head is not used by MERV
        unused=[r"attn_pool\..+"],
    )


VIVIT_KEYS = KeyMap(
    rules=[
        rename(r"vivit\.embeddings\.(.+)", r"embeddings.\1"),
        rename(r"vivit\.encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)", r"layers.\1.attention.q_proj.\2"),
        rename(r"vivit\.encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)", r"layers.\1.attention.k_proj.\2"),
        rename(r"vivit\.encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)", r"layers.\1.attention.v_proj.\2"),
        rename(r"vivit\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"layers.\1.attention.o_proj.\2"),
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
    source: dict[str, torch.Tensor], key_map: KeyMap, target_prefix: str, origin: str
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


# --- configs ----------------------------------------------------------------------------------------------------------


@dataclass
class EncoderSources:
    """Directories holding each encoder's public weights, and the input resolution MERV runs each encoder at."""

    directories: dict[str, Path]
    image_sizes: dict[str, int] = field(default_factory=dict)

    def directory(self, name: str) -> Path:
        if name not in self.directories or self.directories[name] is None:
            raise ConversionError(f"the run uses encoder {name!r}: pass its weights with --{name} DIR")
        path = Path(self.directories[name])
        if not path.is_dir():
            raise FileNotFoundError(f"--{name}: {path} is not a directory")
        return path

    def image_size(self, name: str) -> int:
        return self.image_sizes.get(name, MERV_IMAGE_SIZE)


def parse_arch_specifier(arch_specifier: str) -> dict:
    """The authors' `arch_specifier` (e.g. `3davg+linear`, `no-align+3davg+frame2+linear`) as `MervConfig` fields."""
    parts = arch_specifier.split("+")
    projector = next((suffix for suffix in PROJECTOR_SUFFIXES if arch_specifier.endswith(suffix)), None)
    if projector is None:
        raise ConversionError(
            f"arch_specifier {arch_specifier!r}: unsupported projector; it must end with one of {list(PROJECTOR_SUFFIXES)}"
        )
    pooling = next((part for part in RESAMPLER_PARTS if part in parts), "none")
    frame_factor = re.search(r"frame(\d+)", arch_specifier)
    stride = int(frame_factor.group(1)) if frame_factor and pooling in ("3davg", "3dconv") else 1
    return {"alignment_pooling": pooling, "alignment_projector": projector, "alignment_temporal_stride": stride}


def languagebind_config(directory: Path, image_size: int) -> MervLanguageBindVideoConfig:
    vision = _read_json(directory / "config.json").get("vision_config")
    if vision is None:
        raise ConversionError(f"{directory / 'config.json'} has no `vision_config` (expected a LanguageBindVideo dir)")
    if vision["image_size"] != image_size:
        raise ConversionError(
            f"LanguageBind in {directory} is built for {vision['image_size']} px but MERV runs it at {image_size} px"
        )
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
              "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout", "add_time_attn")
    return MervLanguageBindVideoConfig(
        **{name: vision[name] for name in fields if name in vision}, temporal_group_size=vision["num_frames"]
    )


def _timm_vit_config(directory: Path, tensors: dict[str, torch.Tensor], image_size: int) -> dict:
    """transformers config fields of a timm ViT, from its `config.json` (`architecture`, `model_args`: heads cannot
    be read off shapes) and its tensor shapes. timm ViTs use exact GELU and LayerNorm eps 1e-6."""
    timm_config = _read_json(directory / "config.json")
    architecture = timm_config.get("architecture")
    if architecture not in TIMM_ARCHITECTURES:
        raise ConversionError(
            f"{directory / 'config.json'}: timm architecture {architecture!r} is not supported; "
            f"supported: {sorted(TIMM_ARCHITECTURES)}"
        )
    arch = {**TIMM_ARCHITECTURES[architecture], **timm_config.get("model_args", {})}
    patch_embedding = tensors["patch_embed.proj.weight"]
    return {
        "hidden_size": patch_embedding.shape[0],
        "intermediate_size": tensors["blocks.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": 1 + max(int(key.split(".")[1]) for key in tensors if key.startswith("blocks.")),
        "num_attention_heads": arch["num_heads"],
        "patch_size": patch_embedding.shape[-1],
        "image_size": image_size,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
    }


def dinov2_config(directory: Path, tensors: dict[str, torch.Tensor], image_size: int) -> dict:
    vit = _timm_vit_config(directory, tensors, image_size)
    mlp_ratio = vit.pop("intermediate_size") // vit["hidden_size"]
    num_registers = tensors["reg_token"].shape[1]
    return {"model_type": "dinov2_with_registers", **vit, "mlp_ratio": mlp_ratio, "num_register_tokens": num_registers}


def siglip_config(directory: Path, tensors: dict[str, torch.Tensor], image_size: int) -> dict:
    return {"model_type": "siglip_vision_model", **_timm_vit_config(directory, tensors, image_size), "vision_use_head": False}


def vivit_config(directory: Path, image_size: int, num_frames: int) -> dict:
    source = _read_json(directory / "config.json")
    if source.get("image_size") != image_size or source.get("num_frames") != num_frames:
        raise ConversionError(
            f"ViViT in {directory} is built for {source.get('num_frames')} frames at {source.get('image_size')} px; "
            f"MERV runs it on {num_frames} frames at {image_size} px (its position table cannot be resampled)"
        )
    fields = ("image_size", "num_frames", "tubelet_size", "num_channels", "hidden_size", "num_hidden_layers",
              "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps", "qkv_bias")
    return {"model_type": "vivit", **{name: source[name] for name in fields if name in source}}


def _grid(image_size: int, patch_size: int) -> tuple[int, int]:
    return image_size // patch_size, image_size // patch_size


# --- orchestration ----------------------------------------------------------------------------------------------------


@dataclass
class RunDirectory:
    """The authors' run directory: its model config and trainable weights."""

    path: Path

    @property
    def model_config(self) -> dict:
        model = _read_json(self.path / "config.json").get("model")
        if model is None:
            raise ConversionError(f"{self.path / 'config.json'} has no `model` section (is this a MERV run dir?)")
        return model

    def trainable_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """`{"projectors", "llm_backbone", "feature_fusion"}` groups, accepting the authors' older names
        (`projector` for a single projector, `adapter` for the fusion)."""
        checkpoint = load_checkpoint(self.path / "checkpoints" / "latest-checkpoint.pt")
        model = checkpoint.get("model") if isinstance(checkpoint, dict) else None
        if model is None:
            raise ConversionError(f"{self.path}/checkpoints/latest-checkpoint.pt has no `model` entry")
        groups = dict(model)
        if "projector" in groups:
            groups["projectors"] = {f"0.{key}": value for key, value in groups.pop("projector").items()}
        if "adapter" in groups:
            groups.setdefault("feature_fusion", groups.pop("adapter"))
        for required in ("projectors", "llm_backbone"):
            if required not in groups:
                raise ConversionError(
                    f"{self.path}/checkpoints/latest-checkpoint.pt lacks `{required}` (an align-stage checkpoint "
                    "cannot be used for inference)"
                )
        groups.setdefault("feature_fusion", {})
        return groups


def encoder_names(model_config: dict) -> list[str]:
    names = []
    for backbone_id in model_config["video_backbone_ids"]:
        if backbone_id not in ENCODER_IDS:
            raise ConversionError(f"video backbone {backbone_id!r} is not supported; supported: {sorted(ENCODER_IDS)}")
        names.append(ENCODER_IDS[backbone_id])
    return names


def build_config(
    run: RunDirectory,
    encoders: EncoderSources,
    llm_directory: Path,
    encoder_tensors: dict[str, dict[str, torch.Tensor]],
    trainable: dict[str, dict[str, torch.Tensor]],
    tokenizer: PreTrainedTokenizerBase,
) -> MervConfig:
    """`MervConfig` of the run: encoder configs from their weights, alignment/fusion from the run config, the LLM
    config from `llm_directory` with the checkpoint's vocabulary size."""
    model_config = run.model_config
    names = encoder_names(model_config)
    frames = model_config["num_frames"]
    frames = [frames] * len(names) if isinstance(frames, int) else list(frames)
    num_frames = dict(zip(names, frames, strict=True))
    fusion = model_config.get("feature_fusion")
    if fusion not in FUSION_TYPES:
        raise ConversionError(f"feature_fusion {fusion!r} is not supported; supported: {sorted(FUSION_TYPES)}")
    sub_configs = {}
    for name in names:
        size = encoders.image_size(name)
        directory = encoders.directory(name)
        if name == "languagebind":
            sub_configs["languagebind_config"] = languagebind_config(directory, size)
        elif name == "dinov2":
            sub_configs["dinov2_config"] = dinov2_config(directory, encoder_tensors[name], size)
        elif name == "siglip":
            sub_configs["siglip_config"] = siglip_config(directory, encoder_tensors[name], size)
        else:
            sub_configs["vivit_config"] = vivit_config(directory, size, num_frames[name])
    text_config = AutoConfig.from_pretrained(llm_directory).to_dict()
    text_config.update(
        vocab_size=trainable["llm_backbone"]["llm.model.embed_tokens.weight"].shape[0],
        pad_token_id=tokenizer.pad_token_id,
    )
    fusion_query = trainable["feature_fusion"].get("Q")
    fusion_width = {} if fusion_query is None else {"fusion_hidden_size": fusion_query.shape[-1]}
    config = MervConfig(
        text_config=text_config,
        **sub_configs,
        vision_encoders=names,
        num_frames=num_frames,
        alignment_tokens_per_frame=model_config["projector_token_length"],
        **parse_arch_specifier(model_config["arch_specifier"]),
        fusion_type=FUSION_TYPES[fusion],
        **fusion_width,
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
    )
    expected = model_config.get("visual_feature_length")
    if len(names) > 1 and expected is not None and config.num_video_tokens != expected * (
        len(names) if config.fusion_type == "concat_tokens" else 1
    ):
        raise ConversionError(
            f"run config says visual_feature_length={expected}, but the converted architecture yields "
            f"{config.num_video_tokens} visual tokens"
        )
    return config


def build_tokenizer(llm_directory: Path, vocab_rows: int) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with the authors' `<PAD>` and our `<video>` placeholder, which lands in one of the
    padded (never trained) embedding rows so the vocabulary and every logit stay the authors'."""
    tokenizer = AutoTokenizer.from_pretrained(llm_directory)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    video_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    if video_id >= vocab_rows:
        raise ConversionError(
            f"the tokenizer in {llm_directory} has {len(tokenizer)} tokens with {VIDEO_TOKEN}; the checkpoint's "
            f"embedding has only {vocab_rows} rows, so {VIDEO_TOKEN} (id {video_id}) has no free padded row"
        )
    return tokenizer


def mapped_state_dict(
    config: MervConfig,
    encoder_tensors: dict[str, dict[str, torch.Tensor]],
    trainable: dict[str, dict[str, torch.Tensor]],
    run_path: Path,
) -> dict[str, torch.Tensor]:
    """Every target tensor of `MervForConditionalGeneration`, keyed by its state-dict name."""
    key_maps = {
        "languagebind": lambda: LANGUAGEBIND_KEYS,
        "dinov2": lambda: dinov2_keys(
            _grid(config.dinov2_config.image_size, config.dinov2_config.patch_size), config.dinov2_config.hidden_size
        ),
        "siglip": lambda: siglip_keys(_grid(config.siglip_config.image_size, config.siglip_config.patch_size)),
        "vivit": lambda: VIVIT_KEYS,
    }
    pieces = []
    for name in config.vision_encoders:
        pieces.append(map_tensors(encoder_tensors[name], key_maps[name](), f"model.vision_towers.{name}.", f"--{name}"))
    checkpoint = f"{run_path}/checkpoints/latest-checkpoint.pt"
    by_encoder = _split_projectors(trainable["projectors"], config.vision_encoders, checkpoint)
    projector_map = projector_keys(config.alignment_pooling, config.alignment_projector)
    for name, tensors in by_encoder.items():
        pieces.append(map_tensors(tensors, projector_map, f"model.projectors.{name}.", f"{checkpoint} projectors"))
    pieces.append(map_tensors(trainable["llm_backbone"], LLM_KEYS, "", f"{checkpoint} llm_backbone"))
    pieces.append(map_tensors(trainable["feature_fusion"], FUSION_KEYS[config.fusion_type], "", f"{checkpoint} fusion"))
    state_dict = {}
    for piece in pieces:
        for key, tensor in piece:
            if key in state_dict:
                raise ConversionError(f"two source tensors map to {key}")
            state_dict[key] = tensor
    return state_dict


def _split_projectors(
    projectors: dict[str, torch.Tensor], names: list[str], origin: str
) -> dict[str, dict[str, torch.Tensor]]:
    by_encoder = {name: {} for name in names}
    for key, tensor in projectors.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) >= len(names):
            raise ConversionError(f"{origin}: projector key {key!r} does not belong to one of {len(names)} encoders")
        by_encoder[names[int(index)]][rest] = tensor
    return by_encoder


def load_encoder_tensors(names: list[str], encoders: EncoderSources) -> dict[str, dict[str, torch.Tensor]]:
    return {name: _safetensors(encoders.directory(name)) for name in names}


def convert(
    run_dir: Path, llm_dir: Path, encoders: EncoderSources, output_dir: Path, max_shard_size: str = "5GB"
) -> MervForConditionalGeneration:
    """Convert a run directory to `output_dir`; returns the converted model (weights as in the sources)."""
    run = RunDirectory(Path(run_dir))
    llm_dir = Path(llm_dir)
    if not llm_dir.is_dir():
        raise FileNotFoundError(f"--llm: {llm_dir} is not a directory")
    names = encoder_names(run.model_config)
    encoder_tensors = load_encoder_tensors(names, encoders)
    trainable = run.trainable_weights()
    vocab_rows = trainable["llm_backbone"]["llm.model.embed_tokens.weight"].shape[0]
    tokenizer = build_tokenizer(llm_dir, vocab_rows)
    config = build_config(run, encoders, llm_dir, encoder_tensors, trainable, tokenizer)
    state_dict = mapped_state_dict(config, encoder_tensors, trainable, run.path)
    model = load_into_model(config, state_dict)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, max_shard_size=max_shard_size)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return model


def load_into_model(config: MervConfig, state_dict: dict[str, torch.Tensor]) -> MervForConditionalGeneration:
    """Build the model on the meta device and take the tensors without copying; fail listing missing, unexpected
    or mis-shaped keys."""
    with torch.device("meta"):
        model = MervForConditionalGeneration(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: source {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise ConversionError(
            f"weights do not fit the model: missing {missing}, unexpected {unexpected}, mismatched {sorted(mismatched)}"
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model
