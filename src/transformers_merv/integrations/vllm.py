"""MERV as a vLLM model (plugin route): `vllm serve MODEL` and `merv serve MODEL` answer video chat over HTTP.

vLLM imports this module through the `vllm.general_plugins` entry point (`register`); nothing else imports it, so
the default install stays free of vLLM. What runs where:

* **Preprocessing** (vLLM's API server): `MervMultiModalProcessor` hands each video, as its encoded bytes, to the
  model's own `MervVideoProcessor`, so frame sampling and every encoder's resize and normalisation are exactly
  `MervProcessor`'s. vLLM expands each `<video>` token of the rendered chat template to `num_video_tokens`
  placeholders.
* **Encoders** (vLLM's workers): `MervForConditionalGenerationVllm.embed_multimodal` runs the four encoders, the
  alignment and the fusion (`MervModel.get_video_features`) once per video; vLLM keeps the result in its encoder
  cache for the request's prefill chunks. With tensor / pipeline parallelism they are replicated on every rank.
* **LLM**: vLLM's own Llama (paged KV cache, prefix caching, continuous batching, tensor and pipeline parallelism).
* **Fetching** (`MervMediaConnector`, selected by `VLLM_MEDIA_CONNECTOR=merv`, which `merv serve` sets): a video URL
  (`file://`, `http(s)://`, `data:video/...;base64,`) that cannot be read or decoded is a 400 error naming the URL,
  checked before the request is queued (by decoding the frames merv-full samples; `MervVideoProcessor` then decodes
  them again).
"""

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pybase64
import requests
import torch
from torch import nn
from transformers import BatchFeature
from vllm import ModelRegistry, envs
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.exceptions import VLLMValidationError
from vllm.inputs import MultiModalDataDict
from vllm.logger import init_logger
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.media import MediaConnector, MediaIO, MediaWithBytes
from vllm.multimodal.media.connector import MEDIA_CONNECTOR_REGISTRY
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.sequence import IntermediateTensors

from ..configuration_merv import MervConfig
from ..modeling_merv import MervModel, MervPreTrainedModel, MervVisualProjector, build_fusion, build_vision_tower
from ..processing_merv import MervProcessor
from ..serving import MEDIA_CONNECTOR
from ..video_io import open_video, sample_frame_indices
from ..video_processing_merv import MERV_FULL_ENCODER_SETTINGS


logger = init_logger(f"vllm.{__name__}")
"""A child of vLLM's `vllm` logger, so vLLM's logging settings apply (`--log-level DEBUG` shows each encoder run)."""

ARCHITECTURE = "MervForConditionalGeneration"
"""`config.architectures[0]` of saved MERV models: the name vLLM looks the model class up by."""
MODEL_PREFIX = "model."
VIDEO_WEIGHT_PREFIXES = tuple(f"{MODEL_PREFIX}{part}." for part in ("vision_towers", "projectors", "fusion"))
"""Checkpoint keys of the video model (everything of `MervModel` but its language model)."""
PROBED_FRAMES = max(settings["num_frames"] for settings in MERV_FULL_ENCODER_SETTINGS.values())
"""Frames decoded to check a fetched video: the most any merv-full encoder reads (the processor decodes the same)."""
URL_SHOWN_CHARS = 80
"""Longest URL quoted in an error message (data URLs are cut there)."""


def register() -> None:
    """The `vllm.general_plugins` entry point: MERV's model class and media connector (importing the package
    registers `MervConfig` and `MervProcessor` with transformers' Auto classes)."""
    ModelRegistry.register_model(ARCHITECTURE, MervForConditionalGenerationVllm)
    MEDIA_CONNECTOR_REGISTRY.register(MEDIA_CONNECTOR)(MervMediaConnector)


# --- fetching --------------------------------------------------------------------------------------------------------


def _shown_url(url: str) -> str:
    """The URL as an error message names it. vLLM masks server paths in error messages (`/dir/file.ext` becomes
    `<path>`), so a path is shortened to its file name, which the client recognises; data URLs to their start."""
    if url[:5].lower() == "data:":
        return f"{url[:URL_SHOWN_CHARS]}... ({len(url)} characters)"
    parts = urlsplit(url)
    folders, name = posixpath.split(parts.path)
    return f"{parts.scheme}://{parts.netloc}{'/.../' if folders.strip('/') else '/'}{name}"


class MervVideoMediaIO(MediaIO[MediaWithBytes]):
    """A video as its encoded bytes, checked to decode before the request is queued: the frames merv-full's
    processor samples (`PROBED_FRAMES`) are decoded once here, so a video that fails is reported by its URL.

    The media vLLM carries is the byte string itself (a uint8 array over it), so vLLM's processor cache keys on the
    exact bytes and `MervMultiModalProcessor` hands them to `MervVideoProcessor`.
    """

    def load_bytes(self, data: bytes) -> MediaWithBytes:
        with open_video(data, "video_url") as reader:
            metadata = reader.metadata
            reader.get_frames(sample_frame_indices(metadata.total_num_frames, metadata.fps, PROBED_FRAMES))
        return MediaWithBytes((np.frombuffer(data, dtype=np.uint8), {}), data)

    def load_base64(self, media_type: str, data: str) -> MediaWithBytes:
        return self.load_bytes(pybase64.b64decode(data, validate=True))

    def load_file(self, filepath: Path) -> MediaWithBytes:
        if not filepath.is_file():
            raise FileNotFoundError("no such file")
        return self.load_bytes(filepath.read_bytes())


class MervMediaConnector(MediaConnector):
    """vLLM's media connector, except for videos: they are fetched as `MervVideoMediaIO`, and one that cannot be
    fetched (missing file, unreachable host, HTTP error) or decoded is a 400 error naming its URL."""

    def fetch_video(self, video_url: str, **kwargs: Any) -> MediaWithBytes:
        try:
            return self.load_from_url(video_url, MervVideoMediaIO(), fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT)
        except Exception as err:
            raise _video_url_error(video_url, err) from err

    async def fetch_video_async(self, video_url: str, **kwargs: Any) -> MediaWithBytes:
        try:
            return await self.load_from_url_async(
                video_url, MervVideoMediaIO(), fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT
            )
        except Exception as err:
            raise _video_url_error(video_url, err) from err


FETCH_ERRORS = (OSError, ValueError, RuntimeError, aiohttp.ClientError, requests.RequestException, TimeoutError)
"""What reading a video URL raises for the client's input: missing or unreadable files (`OSError`), undecodable
media (`VideoDecodingError` is a `ValueError`), a file outside `--allowed-local-media-path` (`RuntimeError` /
`ValueError`), unreachable hosts and HTTP errors."""


def _video_url_error(url: str, err: Exception) -> Exception:
    if not isinstance(err, FETCH_ERRORS) or isinstance(err, VLLMValidationError):
        return err
    reason = str(err).strip() or type(err).__name__
    return VLLMValidationError(f"cannot read video_url {_shown_url(url)}: {reason}", parameter="video_url")


# --- preprocessing ---------------------------------------------------------------------------------------------------


class MervProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> MervConfig:
        return self.ctx.get_hf_config(MervConfig)

    def get_hf_processor(self, **kwargs: object) -> MervProcessor:
        return self.ctx.get_hf_processor(MervProcessor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"video": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"video": self.get_hf_config().num_video_tokens}


class MervDummyInputsBuilder(BaseDummyInputsBuilder[MervProcessingInfo]):
    """Profiling inputs: `<video>` markers and blank videos with the most frames and pixels any encoder reads."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_processor().video_token * mm_counts.get("video", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        config = self.info.get_hf_config()
        side = max(max(np.atleast_1d(config.encoder_config(name).image_size)) for name in config.vision_encoders)
        videos = self._get_dummy_videos(
            width=int(side),
            height=int(side),
            num_frames=max(config.num_frames.values()),
            num_videos=mm_counts.get("video", 0),
            overrides=mm_options.get("video"),
        )
        return {"video": videos}


def _processor_input(video: np.ndarray | torch.Tensor) -> bytes | np.ndarray | torch.Tensor:
    """What `MervVideoProcessor` decodes: the file's bytes for a `MervVideoMediaIO` video (a 1-D uint8 array over
    them), else the frames as given (`[frames, height, width, 3]`, e.g. offline `LLM.generate` inputs)."""
    return video.tobytes() if isinstance(video, np.ndarray) and video.ndim == 1 else video


class MervMultiModalProcessor(BaseMultiModalProcessor[MervProcessingInfo]):
    """Runs `MervVideoProcessor` on each video (its file's bytes when fetched through `MervMediaConnector`, else its
    frames) and expands the prompt's `<video>` tokens to the model's visual-token count."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        video_processor = self.info.get_hf_processor().video_processor
        videos = [_processor_input(video) for video in hf_data["videos"]]
        return BatchFeature({"pixel_values_videos": video_processor(videos, **hf_kwargs)["pixel_values_videos"]})

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values_videos": MultiModalFieldConfig.batched("video")}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        placeholders = [config.video_token_id] * config.num_video_tokens
        return [
            PromptReplacement(
                modality="video",
                target=[config.video_token_id],
                replacement=PromptUpdateDetails.select_token_id(placeholders, config.video_token_id),
            )
        ]


# --- model -----------------------------------------------------------------------------------------------------------


class MervVideoModel(MervModel):
    """`MervModel`'s encoders, alignment and fusion (`get_video_features`), without its language model: vLLM runs
    its own Llama."""

    def __init__(self, config: MervConfig):
        MervPreTrainedModel.__init__(self, config)
        self.vision_towers = nn.ModuleDict({name: build_vision_tower(config, name) for name in config.vision_encoders})
        self.projectors = nn.ModuleDict({name: MervVisualProjector(config, name) for name in config.vision_encoders})
        self.fusion = build_fusion(config)
        self.post_init()


@MULTIMODAL_REGISTRY.register_processor(
    MervMultiModalProcessor, info=MervProcessingInfo, dummy_inputs=MervDummyInputsBuilder
)
class MervForConditionalGenerationVllm(nn.Module, SupportsMultiModal, SupportsPP):
    """MERV in vLLM: `MervVideoModel` for the videos, vLLM's Llama for the text (split by tensor / pipeline
    parallelism; the video model is replicated)."""

    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={"model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head."}
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("video"):
            return "<video>"
        raise ValueError(f"MERV takes videos only, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: MervConfig = vllm_config.model_config.hf_config
        self.config = config
        if envs.VLLM_MEDIA_CONNECTOR != MEDIA_CONNECTOR:
            logger.warning(
                "VLLM_MEDIA_CONNECTOR is not %r: video URLs are decoded by vLLM's own video loader, not frame for "
                "frame as MervProcessor decodes them, and unreadable ones are not reported by URL (merv serve sets it)",
                MEDIA_CONNECTOR,
            )
        self.configure_mm_token_handling(config.text_config.vocab_size, [config.video_token_id])
        with self._mark_tower_model(vllm_config, "video"):
            self.video_model = MervVideoModel(config).eval()
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["LlamaForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """The fused visual tokens of every video in the batch, one `(num_video_tokens, hidden)` tensor each (logged
        at debug level: vLLM calls this once per video, however many prefill chunks the video's tokens span)."""
        pixels = kwargs.get("pixel_values_videos")  # the videos' packed pixels, stacked by vLLM: (videos, D)
        if pixels is None:
            return []
        features = tuple(self.video_model.get_video_features(pixels).pooler_output)
        logger.debug("MERV encoded %d videos", len(features))
        return features

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """vLLM loads the language model; transformers loads the video model from its weights (applying the
        checkpoint-format conversions of transformers' encoders, e.g. DINOv2's `attention.attention.query`)."""
        video_weights = {}

        def language_model_weights() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.startswith(VIDEO_WEIGHT_PREFIXES):
                    video_weights[name.removeprefix(MODEL_PREFIX)] = tensor
                else:
                    yield name, tensor

        loaded = AutoWeightsLoader(self).load_weights(language_model_weights(), mapper=self.hf_to_vllm_mapper)
        self._load_video_model(video_weights)
        return loaded | {f"video_model.{name}" for name, _ in self.video_model.named_parameters()}

    def _load_video_model(self, state_dict: dict[str, torch.Tensor]) -> None:
        reference = next(self.video_model.parameters())
        loaded, info = MervVideoModel.from_pretrained(
            None, config=self.config, state_dict=state_dict, dtype=reference.dtype, output_loading_info=True
        )
        if info["missing_keys"] or info["unexpected_keys"]:
            raise ValueError(
                f"The checkpoint's video weights do not match MERV's encoders, projectors and fusion: missing "
                f"{sorted(info['missing_keys'])}, unexpected {sorted(info['unexpected_keys'])}"
            )
        self.video_model.load_state_dict(loaded.state_dict())
