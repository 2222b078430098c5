"""MERV as a vLLM model: `MervVideoModel` (the encoders, alignment and fusion) for the videos, once per video, and
vLLM's own Llama for the text (paged KV cache, prefix caching, continuous batching, tensor and pipeline parallelism;
the video model is replicated on every rank)."""

from collections.abc import Iterable

import torch
from torch import nn
from vllm import envs
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from ...configuration_merv import MervConfig
from ...modeling_merv import MervVideoModel
from . import MEDIA_CONNECTOR
from .processing import MervDummyInputsBuilder, MervMultiModalProcessor, MervProcessingInfo


logger = init_logger(f"vllm.{__name__}")
"""A child of vLLM's `vllm` logger, so vLLM's logging settings apply (`--log-level DEBUG` shows each encoder run)."""

MODEL_PREFIX = "model."
VIDEO_WEIGHT_PREFIXES = tuple(f"{MODEL_PREFIX}{part}." for part in ("vision_towers", "projectors", "fusion"))
"""Checkpoint keys of the video model (everything of `MervModel` but its language model)."""


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
