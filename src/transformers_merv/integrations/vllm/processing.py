"""vLLM's preprocessing of MERV requests (its API server): `MervMultiModalProcessor` hands each video to the model's own
`MervVideoProcessor`, so frame sampling and every encoder's resize and normalisation are exactly `MervProcessor`'s,
and expands each `<video>` token to `num_video_tokens` placeholders.

Frame sampling is chosen per request through `mm_processor_kwargs` (`SAMPLING_OPTIONS`, the names and meaning of
`merv ask --clip-start-sec ...`), over server-wide defaults (`--mm-processor-kwargs`); both are checked
(`check_sampling_options`) before any video is decoded, a bad value being a 400 error naming the option and its valid
range. vLLM's processor and encoder caches key each video on its bytes and the request's `mm_processor_kwargs`, so
requests with different windows on the same video do not share outputs."""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.exceptions import VLLMValidationError
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)

from ...configuration_merv import MervConfig
from ...media_limits import MediaLimitError
from ...processing_merv import MervProcessor
from ...video_io import VideoDecodingError


SAMPLING_OPTIONS = {
    "clip_start_sec": "a finite number of seconds >= 0",
    "clip_end_sec": "a finite number of seconds after clip_start_sec (default 0)",
    "end_frame": "an integer frame index >= 0",
    "fps": "a finite number of frames per second > 0, at most the video's frame rate",
}
"""The `mm_processor_kwargs` MERV takes (per request, or server-wide with `--mm-processor-kwargs`), with their valid
values: `merv ask`'s frame sampling flags (`--clip-start-sec`, `--clip-end-sec`, `--end-frame`) and transformers'
`fps` (sample at that rate instead of the encoders' fixed frame counts)."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_valid(name: str, value: object, clip_start_sec: float) -> bool:
    if name == "end_frame":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if not _is_number(value):
        return False
    return {"clip_start_sec": value >= 0, "clip_end_sec": value > clip_start_sec, "fps": value > 0}[name]


def check_sampling_options(options: Mapping[str, object]) -> dict[str, object]:
    """The frame sampling options that are set (not None) in `options`, raising `VLLMValidationError` (an HTTP 400)
    naming the first unknown or invalid one and what it takes."""
    for name in options:
        if name not in SAMPLING_OPTIONS:
            raise VLLMValidationError(
                f"mm_processor_kwargs.{name} is not an option of MERV, which takes {', '.join(SAMPLING_OPTIONS)}",
                parameter=f"mm_processor_kwargs.{name}",
            )
    chosen = {name: value for name, value in options.items() if value is not None}
    clip_start_sec = chosen.get("clip_start_sec", 0)
    for name, value in chosen.items():
        if not _is_valid(name, value, clip_start_sec if _is_number(clip_start_sec) else 0):
            raise VLLMValidationError(
                f"mm_processor_kwargs.{name} must be {SAMPLING_OPTIONS[name]}, got {value!r}",
                parameter=f"mm_processor_kwargs.{name}",
                value=value,
            )
    return chosen


class MervProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> MervConfig:
        return self.ctx.get_hf_config(MervConfig)

    def get_hf_processor(self, **kwargs: object) -> MervProcessor:
        """The model's processor, without the server's frame sampling defaults: `MervMultiModalProcessor` applies
        them per call, to video files only."""
        return self.ctx.get_hf_processor(MervProcessor, **{**kwargs, **dict.fromkeys(SAMPLING_OPTIONS)})

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


def _is_encoded(video: object) -> bool:
    """Whether `video` is a video file's bytes (`MervVideoMediaIO`'s 1-D uint8 array), not decoded frames."""
    return isinstance(video, np.ndarray) and video.ndim == 1


class MervMultiModalProcessor(BaseMultiModalProcessor[MervProcessingInfo]):
    """Runs `MervVideoProcessor` on each video (its file's bytes when fetched through `MervMediaConnector`, else its
    frames) and expands the prompt's `<video>` tokens to the model's visual-token count.

    Video files are sampled with the request's `mm_processor_kwargs` over the server's defaults; decoded frames
    (`LLM.generate`'s arrays, and the blank videos vLLM profiles with, which have no timeline to sample) with the
    request's options only. A video that fails to decode, or whose frames the options cannot sample, is a 400 error
    naming its URL."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        file_options = check_sampling_options(self.info.ctx.get_merged_mm_kwargs(hf_kwargs))
        frame_options = check_sampling_options(hf_kwargs)
        video_processor = self.info.get_hf_processor().video_processor
        pixels = [
            _process_video(video_processor, video, file_options if _is_encoded(video) else frame_options)
            for video in hf_data["videos"]
        ]
        return BatchFeature({"pixel_values_videos": torch.cat(pixels)})

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


def _process_video(video_processor, video: np.ndarray | torch.Tensor, options: Mapping[str, object]) -> torch.Tensor:
    """`pixel_values_videos` of one video, a file's bytes or frames; a file that fails to decode, or that the
    sampling options do not fit, is a `VLLMValidationError` naming its URL."""
    if not _is_encoded(video):
        return video_processor(video, **options)["pixel_values_videos"]
    source = getattr(video, "source", "video_url")
    try:
        return video_processor(video.tobytes(), **options)["pixel_values_videos"]
    except (VideoDecodingError, MediaLimitError) as err:
        raise VLLMValidationError(f"cannot read video_url {source}: {err}", parameter="video_url") from err
    except ValueError as err:
        raise VLLMValidationError(
            f"mm_processor_kwargs {dict(options)} cannot sample video_url {source}: {err}",
            parameter="mm_processor_kwargs",
        ) from err
