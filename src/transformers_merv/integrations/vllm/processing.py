"""vLLM's preprocessing of MERV requests (its API server): `MervMultiModalProcessor` hands each video to the model's own
`MervVideoProcessor`, so frame sampling and every encoder's resize and normalisation are exactly `MervProcessor`'s,
and expands each `<video>` token to `num_video_tokens` placeholders."""

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
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
from ...processing_merv import MervProcessor


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
