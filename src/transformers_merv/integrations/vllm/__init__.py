"""MERV as a vLLM model (plugin route): `vllm serve MODEL` and `merv serve MODEL` answer video chat over HTTP.

vLLM loads this package through the `vllm.general_plugins` entry point (`register`), which imports nothing of vLLM or
of the model when the package is imported: it registers the model class by its path (vLLM imports `model.py` when a
MERV model is served) and the media connector (`media.py`). Nothing else of the package imports it, so the default
install stays free of vLLM; `server.py` (the `merv serve` launcher) imports no vLLM either. What runs where:

* **Preprocessing** (vLLM's API server): `MervMultiModalProcessor` hands each video, as its encoded bytes, to the
  model's own `MervVideoProcessor`, so frame sampling and every encoder's resize and normalisation are exactly
  `MervProcessor`'s. vLLM expands each `<video>` token of the rendered chat template to `num_video_tokens`
  placeholders.
* **Encoders** (vLLM's workers): `MervForConditionalGenerationVllm.embed_multimodal` runs the four encoders, the
  alignment and the fusion (`MervVideoModel.get_video_features`) once per video; vLLM keeps the result in its encoder
  cache for the request's prefill chunks. With tensor / pipeline parallelism they are replicated on every rank.
* **LLM**: vLLM's own Llama (paged KV cache, prefix caching, continuous batching, tensor and pipeline parallelism).
* **Fetching** (`MervMediaConnector`, selected by `VLLM_MEDIA_CONNECTOR=merv`, which `merv serve` sets): a video URL
  (`file://`, `http(s)://`, `data:video/...;base64,`) that cannot be read or decoded is a 400 error naming the URL,
  checked before the request is queued (by decoding the frames merv-full samples; `MervVideoProcessor` then decodes
  them again).
"""

ARCHITECTURE = "MervForConditionalGeneration"
"""`config.architectures[0]` of saved MERV models: the name vLLM looks the model class up by."""
MODEL_CLASS = f"{__name__}.model:MervForConditionalGenerationVllm"
MEDIA_CONNECTOR = "merv"
"""`VLLM_MEDIA_CONNECTOR` value selecting `media.MervMediaConnector` (MERV's video fetching)."""


def register() -> None:
    """The `vllm.general_plugins` entry point: MERV's model class, by path (importing the package registers
    `MervConfig` and `MervProcessor` with transformers' Auto classes), and its media connector."""
    from vllm import ModelRegistry
    from vllm.multimodal.media.connector import MEDIA_CONNECTOR_REGISTRY

    from .media import MervMediaConnector

    ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    MEDIA_CONNECTOR_REGISTRY.register(MEDIA_CONNECTOR)(MervMediaConnector)


__all__ = ["ARCHITECTURE", "MEDIA_CONNECTOR", "register"]
