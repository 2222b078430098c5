"""Reading the converter's inputs: the authors' run directory and registry values, the encoders' public weights
(lazily), and the LLM's config and tokenizer; deriving `MervConfig` from them."""

import json
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from ..configuration_merv import MERV_FULL_IMAGE_SIZE, MervConfig, MervLanguageBindVideoConfig
from .errors import ConversionError


MERV_IMAGE_SIZE = MERV_FULL_IMAGE_SIZE
"""Input resolution the authors build every encoder at (`default_image_size`)."""

ZIP_MAGIC = b"PK\x03\x04"
PAD_TOKEN = "<PAD>"
VIDEO_TOKEN = "<video>"
LLAMA2_PAD_MULTIPLE = 64
"""The authors resize Llama-2/Vicuna embeddings to a multiple of 64 rows after adding `<PAD>` (32001 -> 32064)."""

AUTHORS_MODEL_IDS = (
    "merv-base",
    "merv-frozen",
    "merv-full",
    "languagebind-single",
    "dinov2-single",
    "vivit-single",
    "siglip-single",
    "reproduction-llava-v15+13b",
)
"""Model ids of the authors' registries (`merv/conf/models.py`, `merv/models/registry.py`)."""

ENCODER_IDS = {
    "languagebind-video-noclass": "languagebind",
    "dinov2-video-all-tokens": "dinov2",
    "vivit-google-b-all-no-cls-16frames": "vivit",
    **{f"siglip-vit-{size}-all-no-cls": "siglip" for size in ("b16-224px", "b16-256px", "b16-384px", "so400m")},
}
"""The authors' `video_backbone_ids` whose patch-token features MERV uses -> our encoder names."""

LLM_BACKBONES = {
    "llama2-7b-pure": ("pure", "meta-llama/Llama-2-7b-hf"),
    "llama2-13b-pure": ("pure", "meta-llama/Llama-2-13b-hf"),
    "llama2-7b-chat": ("llama2-chat", "meta-llama/Llama-2-7b-chat-hf"),
    "llama2-13b-chat": ("llama2-chat", "meta-llama/Llama-2-13b-chat-hf"),
    "vicuna-v15-7b": ("vicuna", "lmsys/vicuna-7b-v1.5"),
    "vicuna-v15-13b": ("vicuna", "lmsys/vicuna-13b-v1.5"),
}
"""The authors' Llama-2-family `llm_backbone_id`s -> (chat template of their prompt builder, Hub base model)."""

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
    "vit_base_patch16_siglip_256": {"num_heads": 12},
    "vit_base_patch16_siglip_384": {"num_heads": 12},
    "vit_so400m_patch14_siglip_224": {"num_heads": 16},
}
"""Hyper-parameters of timm models that cannot be read off tensor shapes (overridden by `model_args`)."""

SAFETENSORS_WEIGHT_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
"""transformers' and timm's single-file weights, and transformers' index of a sharded checkpoint."""
OPEN_CLIP_SAFETENSORS_FILE = "open_clip_model.safetensors"
TORCH_WEIGHT_FILES = ("pytorch_model.bin", "model.pth", "model.pt", "open_clip_pytorch_model.bin")
"""The encoder formats' torch weight files, in order of preference (read only when no safetensors file exists)."""
OPEN_CLIP_TRUNK_PREFIX = "visual.trunk."
"""open_clip checkpoints of timm towers (e.g. timm/ViT-B-16-SigLIP) nest the timm model under this prefix."""


# --- files -----------------------------------------------------------------------------------------------------------


def load_checkpoint(path: Path) -> dict:
    """`torch.load` with `weights_only=True` (memory-mapped when the file allows it): a checkpoint that needs
    arbitrary code to unpickle is refused."""
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


def read_json(path: Path) -> dict:
    """A JSON object from `path`; a missing file, malformed JSON or another JSON value is an error naming `path`."""
    if not path.is_file():
        raise FileNotFoundError(f"expected a JSON file at {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConversionError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(document, dict):
        raise ConversionError(f"{path} must hold a JSON object, got a JSON {type(document).__name__}")
    return document


class LazySafetensors(Mapping):
    """The tensors of one or more safetensors files, read from disk only when accessed."""

    def __init__(self, files: list[Path]):
        self._file_of = {}
        for file in files:
            try:
                with safe_open(file, "pt") as handle:
                    keys = list(handle.keys())
            except SafetensorError as err:
                raise ConversionError(f"{file} is not a readable safetensors file: {err}") from err
            for key in keys:
                if key in self._file_of:
                    raise ConversionError(
                        f"tensor {key!r} is stored in both {self._file_of[key]} and {file}: it is ambiguous "
                        "which one the encoder uses"
                    )
                self._file_of[key] = file

    def __getitem__(self, key: str) -> torch.Tensor:
        with safe_open(self._file_of[key], "pt") as handle:
            return handle.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)

    def shape(self, key: str) -> tuple[int, ...]:
        with safe_open(self._file_of[key], "pt") as handle:
            return tuple(handle.get_slice(key).get_shape())


class WithoutPrefix(Mapping):
    """`weights` with `prefix` removed from the keys that carry it (other keys unchanged)."""

    def __init__(self, weights: Mapping[str, torch.Tensor], prefix: str):
        self.weights, self.prefix = weights, prefix
        self._source_key = {key.removeprefix(prefix): key for key in weights}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.weights[self._source_key[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._source_key)

    def __len__(self) -> int:
        return len(self._source_key)

    def shape(self, key: str) -> tuple[int, ...]:
        return tensor_shape(self.weights, self._source_key[key])


def load_weights(directory: Path, flag: str) -> Mapping[str, torch.Tensor]:
    """An encoder's weights from `directory`, reading only the files its format defines: `model.safetensors` and/or
    the shards listed in `model.safetensors.index.json` (read lazily), else open_clip's safetensors file, else a torch
    state dict (loaded with `weights_only=True`). Other files in the folder are ignored; a tensor stored in two of
    the files read is an error. An open_clip checkpoint's timm tower is exposed under timm's own key names."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{flag}: {directory} is not a directory")
    safetensors_files = _safetensors_weight_files(directory, flag)
    if safetensors_files:
        weights = LazySafetensors(safetensors_files)
    else:
        path = next((directory / name for name in TORCH_WEIGHT_FILES if (directory / name).is_file()), None)
        if path is None:
            expected = (
                SAFETENSORS_WEIGHT_FILE,
                SAFETENSORS_INDEX_FILE,
                OPEN_CLIP_SAFETENSORS_FILE,
                *TORCH_WEIGHT_FILES,
            )
            raise FileNotFoundError(f"{flag}: no weights in {directory} (expected one of {expected})")
        state_dict = load_checkpoint(path)
        weights = state_dict.get("state_dict", state_dict)
    if any(key.startswith(OPEN_CLIP_TRUNK_PREFIX) for key in weights):
        return WithoutPrefix(weights, OPEN_CLIP_TRUNK_PREFIX)
    return weights


def _safetensors_weight_files(directory: Path, flag: str) -> list[Path]:
    """`model.safetensors` and/or the shards `model.safetensors.index.json` lists, or else open_clip's file."""
    files = [directory / SAFETENSORS_WEIGHT_FILE] if (directory / SAFETENSORS_WEIGHT_FILE).is_file() else []
    index = directory / SAFETENSORS_INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConversionError(f"{flag}: {index} has no `weight_map` (expected a safetensors shard index)")
        shards = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [str(shard) for shard in shards if not shard.is_file()]
        if missing:
            raise FileNotFoundError(f"{flag}: {index} lists shards that are missing: {missing}")
        files = list(dict.fromkeys([*files, *shards]))
    if not files and (directory / OPEN_CLIP_SAFETENSORS_FILE).is_file():
        files = [directory / OPEN_CLIP_SAFETENSORS_FILE]
    return files


def tensor_shape(weights: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return weights.shape(key) if hasattr(weights, "shape") else tuple(weights[key].shape)


# --- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class RunDirectory:
    """The authors' run directory: its model config and trainable weights."""

    path: Path

    @property
    def model_config(self) -> dict:
        model = read_json(self.path / "config.json").get("model")
        if model is None:
            raise ConversionError(f"{self.path / 'config.json'} has no `model` section (is this a MERV run dir?)")
        return model

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints" / "latest-checkpoint.pt"

    def trainable_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """`{"projectors", "llm_backbone", "feature_fusion"}` groups, accepting the authors' older names
        (`projector` for a single projector, `adapter` for the fusion)."""
        checkpoint = load_checkpoint(self.checkpoint_path)
        model = checkpoint.get("model") if isinstance(checkpoint, dict) else None
        if model is None:
            raise ConversionError(f"{self.checkpoint_path} has no `model` entry")
        groups = dict(model)
        if "projector" in groups:
            groups["projectors"] = {f"0.{key}": value for key, value in groups.pop("projector").items()}
        if "adapter" in groups:
            groups.setdefault("feature_fusion", groups.pop("adapter"))
        for required in ("projectors", "llm_backbone"):
            if required not in groups:
                raise ConversionError(
                    f"{self.checkpoint_path} lacks `{required}` "
                    "(an align-stage checkpoint cannot be used for inference)"
                )
        groups.setdefault("feature_fusion", {})
        return groups


@dataclass
class EncoderSources:
    """Directories holding each encoder's public weights, and the input resolution MERV runs each encoder at."""

    directories: dict[str, Path | None]
    image_sizes: dict[str, int] = field(default_factory=dict)

    def directory(self, name: str) -> Path:
        if self.directories.get(name) is None:
            raise ConversionError(f"the run uses encoder {name!r}: pass its weights with --{name} DIR")
        return Path(self.directories[name])

    def image_size(self, name: str) -> int:
        return self.image_sizes.get(name, MERV_IMAGE_SIZE)


def authors_model_id(model_config: dict) -> str:
    """The run's `model_id`, checked to be one of the authors' models."""
    model_id = model_config.get("model_id")
    if model_id not in AUTHORS_MODEL_IDS:
        raise ConversionError(f"model_id {model_id!r} is not one of the authors' models: {list(AUTHORS_MODEL_IDS)}")
    return model_id


def encoder_names(model_config: dict) -> list[str]:
    names = []
    for backbone_id in model_config["video_backbone_ids"]:
        if backbone_id not in ENCODER_IDS:
            raise ConversionError(f"video backbone {backbone_id!r} is not supported; supported: {sorted(ENCODER_IDS)}")
        names.append(ENCODER_IDS[backbone_id])
    return names


def llm_backbone(model_config: dict) -> tuple[str, str]:
    """(chat template name, Hub base model) of the run's LLM."""
    llm_id = model_config.get("llm_backbone_id")
    if llm_id not in LLM_BACKBONES:
        raise ConversionError(
            f"llm_backbone_id {llm_id!r} is not supported (no released MERV checkpoint uses it); supported: "
            f"{sorted(LLM_BACKBONES)}"
        )
    return LLM_BACKBONES[llm_id]


def parse_arch_specifier(arch_specifier: str) -> dict:
    """The authors' `arch_specifier` (e.g. `3davg+linear`, `no-align+3davg+frame2+linear`) as `MervConfig` fields."""
    parts = arch_specifier.split("+")
    projector = next((suffix for suffix in PROJECTOR_SUFFIXES if arch_specifier.endswith(suffix)), None)
    if projector is None:
        raise ConversionError(
            f"arch_specifier {arch_specifier!r}: unsupported projector; "
            f"it must end with one of {list(PROJECTOR_SUFFIXES)}"
        )
    pooling = next((part for part in RESAMPLER_PARTS if part in parts), "none")
    frame_factor = re.search(r"frame(\d+)", arch_specifier)
    stride = int(frame_factor.group(1)) if frame_factor and pooling in ("3davg", "3dconv") else 1
    return {"alignment_pooling": pooling, "alignment_projector": projector, "alignment_temporal_stride": stride}


# --- encoder configs -------------------------------------------------------------------------------------------------


def languagebind_config(directory: Path, image_size: int) -> MervLanguageBindVideoConfig:
    vision = read_json(directory / "config.json").get("vision_config")
    if vision is None:
        raise ConversionError(f"{directory / 'config.json'} has no `vision_config` (expected a LanguageBindVideo dir)")
    if vision["image_size"] != image_size:
        raise ConversionError(
            f"LanguageBind in {directory} is built for {vision['image_size']} px but MERV runs it at {image_size} px; "
            f"pass --image-size languagebind={vision['image_size']} to run it at its own size"
        )
    fields = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_channels",
        "image_size",
        "patch_size",
        "hidden_act",
        "layer_norm_eps",
        "attention_dropout",
        "add_time_attn",
    )
    return MervLanguageBindVideoConfig(
        **{name: vision[name] for name in fields if name in vision}, temporal_group_size=vision["num_frames"]
    )


def _timm_config(directory: Path) -> dict:
    """timm's `config.json`, or the timm part of an open_clip `open_clip_config.json`."""
    if (directory / "config.json").is_file() or not (directory / "open_clip_config.json").is_file():
        return read_json(directory / "config.json")
    vision = read_json(directory / "open_clip_config.json").get("model_cfg", {}).get("vision_cfg", {})
    return {"architecture": vision.get("timm_model_name")}


def _timm_vit_config(directory: Path, weights: Mapping[str, torch.Tensor], image_size: int) -> dict:
    """transformers config fields of a timm ViT, from its `config.json` (`architecture`, `model_args`: heads cannot
    be read off shapes) and its tensor shapes. timm ViTs use exact GELU and LayerNorm eps 1e-6."""
    timm_config = _timm_config(directory)
    architecture = timm_config.get("architecture")
    if architecture not in TIMM_ARCHITECTURES:
        raise ConversionError(
            f"{directory / 'config.json'}: timm architecture {architecture!r} is not supported; "
            f"supported: {sorted(TIMM_ARCHITECTURES)}"
        )
    arch = {**TIMM_ARCHITECTURES[architecture], **timm_config.get("model_args", {})}
    patch_embedding = tensor_shape(weights, "patch_embed.proj.weight")
    return {
        "hidden_size": patch_embedding[0],
        "intermediate_size": tensor_shape(weights, "blocks.0.mlp.fc1.weight")[0],
        "num_hidden_layers": 1 + max(int(key.split(".")[1]) for key in weights if key.startswith("blocks.")),
        "num_attention_heads": arch["num_heads"],
        "patch_size": patch_embedding[-1],
        "image_size": image_size,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
    }


def dinov2_config(directory: Path, weights: Mapping[str, torch.Tensor], image_size: int) -> dict:
    vit = _timm_vit_config(directory, weights, image_size)
    mlp_ratio = vit.pop("intermediate_size") // vit["hidden_size"]
    num_registers = tensor_shape(weights, "reg_token")[1]
    return {"model_type": "dinov2_with_registers", **vit, "mlp_ratio": mlp_ratio, "num_register_tokens": num_registers}


def siglip_config(directory: Path, weights: Mapping[str, torch.Tensor], image_size: int) -> dict:
    return {
        "model_type": "siglip_vision_model",
        **_timm_vit_config(directory, weights, image_size),
        "vision_use_head": False,
    }


def vivit_config(directory: Path, image_size: int, num_frames: int) -> dict:
    source = read_json(directory / "config.json")
    if source.get("image_size") != image_size or source.get("num_frames") != num_frames:
        raise ConversionError(
            f"ViViT in {directory} is built for {source.get('num_frames')} frames at {source.get('image_size')} px; "
            f"MERV runs it on {num_frames} frames at {image_size} px (its position table cannot be resampled); "
            f"pass --image-size vivit={source.get('image_size')} to run it at its own size"
        )
    fields = (
        "image_size",
        "num_frames",
        "tubelet_size",
        "num_channels",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "layer_norm_eps",
        "qkv_bias",
    )
    return {"model_type": "vivit", **{name: source[name] for name in fields if name in source}}


# --- tokenizer and MervConfig ----------------------------------------------------------------------------------------


def build_tokenizer(llm_directory: Path, vocab_rows: int) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with the authors' `<PAD>` and our `<video>` placeholder, which lands in one of the
    padded (never trained) embedding rows so the vocabulary and every logit stay the authors'. Llama tokenizers are
    loaded with `legacy=True`: the authors tokenize each prompt on its own, where SentencePiece starts the text with
    "▁"; legacy tokenizers do the same after our `<video>` placeholders, so the ids stay the authors'."""
    tokenizer = AutoTokenizer.from_pretrained(llm_directory, legacy=True)
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


def build_config(
    model_config: dict,
    encoders: EncoderSources,
    encoder_weights: dict[str, Mapping[str, torch.Tensor]],
    llm_directory: Path,
    trainable: dict[str, dict[str, torch.Tensor]],
    tokenizer: PreTrainedTokenizerBase,
) -> MervConfig:
    """`MervConfig` of the run: encoder configs from their weights, alignment/fusion from the run config, the LLM
    config from `llm_directory` with the checkpoint's vocabulary size."""
    names = encoder_names(model_config)
    frames = model_config["num_frames"]
    frames = [frames] * len(names) if isinstance(frames, int) else list(frames)
    num_frames = dict(zip(names, frames, strict=True))
    fusion = model_config.get("feature_fusion")
    if fusion not in FUSION_TYPES:
        raise ConversionError(f"feature_fusion {fusion!r} is not supported; supported: {sorted(FUSION_TYPES)}")
    sub_configs = {}
    for name in names:
        size, directory = encoders.image_size(name), encoders.directory(name)
        if name == "languagebind":
            sub_configs["languagebind_config"] = languagebind_config(directory, size)
        elif name == "dinov2":
            sub_configs["dinov2_config"] = dinov2_config(directory, encoder_weights[name], size)
        elif name == "siglip":
            sub_configs["siglip_config"] = siglip_config(directory, encoder_weights[name], size)
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
    _check_visual_feature_length(model_config, config)
    return config


def _check_visual_feature_length(model_config: dict, config: MervConfig) -> None:
    """The authors check every projector against `visual_feature_length` (per encoder) when there are several."""
    expected = model_config.get("visual_feature_length")
    per_encoder = config.num_video_tokens // (
        len(config.vision_encoders) if config.fusion_type == "concat_tokens" else 1
    )
    if len(config.vision_encoders) > 1 and expected is not None and per_encoder != expected:
        raise ConversionError(
            f"run config says visual_feature_length={expected}, but the converted architecture yields "
            f"{per_encoder} visual tokens per encoder"
        )
