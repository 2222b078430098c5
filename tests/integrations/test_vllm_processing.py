"""MERV's vLLM preprocessing (`integrations/vllm/processing.py`, `media.py`) checked in-process, as vLLM checks its
in-tree multimodal processors (`tests/models/multimodal/processing/test_common.py` of vLLM, not shipped in its wheel):
cached and uncached outputs are equal, a text prompt and its token ids give equal inputs, and the profiling inputs
are valid at their maximum. Also the frame sampling options and the errors they give.

Needs vLLM: run by `.ci/suites/40-vllm.sh` (marker `vllm`), like `test_vllm_serving.py`."""

import numpy as np
import pytest
import torch
from conftest import EXAMPLE_VIDEO, MEDIA
from transformers import AutoModel

from transformers_merv import default_model_path
from transformers_merv.inference.prefix_cache import process_video
from transformers_merv.video_io import clip_window, open_video


pytestmark = pytest.mark.vllm

PROMPT = "USER: <video>\nWhat color is the circle? ASSISTANT:"
WINDOWS = [clip_window(0.5, 2.0), clip_window(end_frame=5), {"fps": 4.0}, {}]
"""Frame sampling options of a request (`mm_processor_kwargs`), all different on the example video."""
SERVER_DEFAULTS = clip_window(end_frame=9)
"""`--mm-processor-kwargs` of the processor under test: applied to video files, under each request's options."""


@pytest.fixture(scope="module")
def vllm_processor():
    """vLLM's processor of the default model, the way its API server builds it (plugin registered by `register`)."""
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from transformers_merv.integrations.vllm import register

    register()
    config = ModelConfig(model=str(default_model_path()), dtype="float32", mm_processor_kwargs=SERVER_DEFAULTS)
    return MULTIMODAL_REGISTRY.create_processor(config)


def fetched(path, source: str = "file:///.../video.mp4"):
    """The video as `MervMediaConnector` hands it to vLLM."""
    from transformers_merv.integrations.vllm.media import MervVideoMediaIO

    return MervVideoMediaIO(source).load_bytes(path.read_bytes())


def process(processor, video, options: dict, prompt: str | list[int] = PROMPT, cache=None):
    return processor(
        prompt, processor.info.parse_mm_data({"video": [video]}), hf_processor_mm_kwargs=options, cache=cache
    )


def pixels_of(inputs) -> torch.Tensor:
    return inputs["mm_kwargs"]["video"][0]["pixel_values_videos"].data


def assert_same_inputs(actual, expected) -> None:
    assert actual["prompt_token_ids"] == expected["prompt_token_ids"]
    assert actual["mm_hashes"] == expected["mm_hashes"]
    assert actual["mm_placeholders"] == expected["mm_placeholders"]
    torch.testing.assert_close(pixels_of(actual), pixels_of(expected), rtol=0, atol=0)


# --- vLLM's processor checks --------------------------------------------------------------------------------------


def test_cached_and_uncached_outputs_are_equal_and_windows_do_not_share_entries(vllm_processor):
    """A cache hit returns what processing gives, and the same video with other sampling options misses the cache
    (vLLM keys its processor and encoder caches on the bytes and the request's `mm_processor_kwargs`)."""
    from vllm.multimodal.cache import MultiModalProcessorOnlyCache

    cache = MultiModalProcessorOnlyCache(vllm_processor.info.ctx.model_config)
    video = fetched(EXAMPLE_VIDEO)
    uncached = [process(vllm_processor, video, window) for window in WINDOWS]
    for window, expected in zip(WINDOWS, uncached):
        assert_same_inputs(process(vllm_processor, video, window, cache=cache), expected)  # processed, then stored
    for window, expected in zip(WINDOWS, uncached):
        assert cache.is_cached_item(expected["mm_hashes"]["video"][0])
        assert_same_inputs(process(vllm_processor, video, window, cache=cache), expected)  # served from the cache
    assert len({inputs["mm_hashes"]["video"][0] for inputs in uncached}) == len(WINDOWS)
    for first, second in zip(uncached, uncached[1:]):
        assert not torch.equal(pixels_of(first), pixels_of(second))


def test_text_prompt_and_its_token_ids_give_equal_inputs(vllm_processor):
    token_ids = vllm_processor.info.get_tokenizer().encode(PROMPT)
    video = fetched(EXAMPLE_VIDEO)
    assert_same_inputs(process(vllm_processor, video, {}, prompt=token_ids), process(vllm_processor, video, {}))


def test_dummy_inputs_are_valid_at_the_profiled_maximum(vllm_processor):
    """The profiling inputs at the most videos one prompt of `max_model_len` holds: as many placeholders as the
    model has visual tokens per video, the prompt padded to `max_model_len`, and pixels the video model encodes
    (with the server's sampling defaults set: they do not apply to the blank, timeline-less dummy videos)."""
    info = vllm_processor.info
    config = info.get_hf_config()
    max_model_len = info.ctx.model_config.max_model_len
    num_videos = max_model_len // config.num_video_tokens - 1  # room for the text around the markers
    inputs = vllm_processor.get_dummy_mm_inputs({"video": num_videos})
    assert len(inputs["prompt_token_ids"]) == max_model_len
    placeholders = inputs["mm_placeholders"]["video"]
    assert [placeholder.length for placeholder in placeholders] == [config.num_video_tokens] * num_videos
    assert [info.get_mm_max_tokens_per_item(max_model_len, {"video": 1})["video"]] == [config.num_video_tokens]
    pixels = torch.stack([item["pixel_values_videos"].data for item in inputs["mm_kwargs"]["video"]])
    model = AutoModel.from_pretrained(default_model_path(), dtype=torch.float32).eval()
    with torch.inference_mode():
        features = model.get_video_features(pixels).pooler_output
    assert features.shape == (num_videos, config.num_video_tokens, config.text_config.hidden_size)
    assert torch.isfinite(features).all()


# --- frame sampling -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", WINDOWS)
def test_request_options_sample_as_merv_processor_does(vllm_processor, default_processor, window):
    """Each request's options over the server's defaults (`SERVER_DEFAULTS`) are `MervProcessor`'s sampling kwargs."""
    expected = process_video(default_processor, EXAMPLE_VIDEO, {**SERVER_DEFAULTS, **window})
    assert torch.equal(pixels_of(process(vllm_processor, fetched(EXAMPLE_VIDEO), window)), expected[0])


def test_decoded_frames_take_the_request_options_only(vllm_processor, default_processor):
    with open_video(EXAMPLE_VIDEO) as reader:
        frames = reader.get_frames(np.arange(reader.metadata.total_num_frames))
    expected = default_processor.video_processor([frames], end_frame=3)["pixel_values_videos"]
    assert torch.equal(pixels_of(process(vllm_processor, frames, clip_window(end_frame=3))), expected[0])


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"clip_start_sec": -1}, "mm_processor_kwargs.clip_start_sec must be a finite number of seconds >= 0"),
        ({"clip_start_sec": "1"}, "mm_processor_kwargs.clip_start_sec must be a finite number of seconds >= 0"),
        ({"clip_start_sec": 2, "clip_end_sec": 1}, "mm_processor_kwargs.clip_end_sec must be a finite number of"),
        ({"end_frame": 2.5}, "mm_processor_kwargs.end_frame must be an integer frame index >= 0"),
        ({"end_frame": True}, "mm_processor_kwargs.end_frame must be an integer frame index >= 0"),
        ({"fps": 0}, "mm_processor_kwargs.fps must be a finite number of frames per second > 0"),
        ({"num_frames": 4}, "mm_processor_kwargs.num_frames is not an option of MERV, which takes clip_start_sec"),
        ({"fps": 1000.0}, "at most the video's 8 fps"),
        ({"clip_start_sec": 100.0, "end_frame": None}, "outside this video's"),  # null unsets a server default
    ],
)
def test_bad_options_are_a_validation_error_naming_them(vllm_processor, options, named):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="mm_processor_kwargs") as raised:
        process(vllm_processor, fetched(EXAMPLE_VIDEO), options)
    assert named in str(raised.value)


# --- errors of one video ------------------------------------------------------------------------------------------


def test_a_video_that_fails_to_decode_is_named_by_its_url(vllm_processor):
    """`corrupted.mp4` opens (its packets index) and fails while decoding: in the processor, decoding once."""
    from vllm.exceptions import VLLMValidationError

    video = fetched(MEDIA / "corrupted.mp4", source="file:///.../corrupted.mp4")
    with pytest.raises(VLLMValidationError, match=r"cannot read video_url file:///\.\.\./corrupted\.mp4: .*corrupt"):
        process(vllm_processor, video, {"end_frame": None})  # its first frames decode: sample the whole video


def test_the_decoding_time_limit_is_a_validation_error_naming_it(vllm_processor, monkeypatch):
    from vllm.exceptions import VLLMValidationError

    video = fetched(MEDIA / "flipping_a_pancake.mkv", source="file:///.../flipping_a_pancake.mkv")
    monkeypatch.setenv("MERV_DECODE_TIMEOUT_S", "1e-9")
    with pytest.raises(VLLMValidationError, match="flipping_a_pancake.mkv: .*MERV_DECODE_TIMEOUT_S"):
        process(vllm_processor, video, {})
