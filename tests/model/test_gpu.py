"""The model on a CUDA device (marker `gpu`, deselected by default; run where a GPU is: `pytest -m gpu
tests/model/test_gpu.py`): parity with the authors' outputs when loaded with `device_map="auto"` and with the encoders
offloaded to the CPU (accelerate streams their weights to the GPU), `inputs_embeds` without ids, half precision, the
cached video prefix, batched generation and encoders on CUDA streams. The last run on a GPU: tests/README.md.
`MERV_TEST_ACCELERATOR=cpu` runs the same checks on the CPU."""

import os

import pytest
import torch
from conftest import (
    FULL_LENGTH_GREEDY,
    MEDIA,
    PARITY_ATOL,
    PREFIX_QUESTIONS,
    TINY_FULL,
    answer_ids_from_cache,
    answer_ids_from_scratch,
    fixture_pixels,
    half_precision_atol,
    with_placeholders,
)
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

from transformers_merv import default_model_path
from transformers_merv.inference.prefix_cache import prefill_video, process_video, question_conversation

ACCELERATOR = torch.device(os.environ.get("MERV_TEST_ACCELERATOR", "cuda"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ACCELERATOR.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
VIDEO = MEDIA / "flipping_a_pancake.mkv"


@pytest.fixture(autouse=True)
def full_float32_matmuls():
    """TF32 rounds float32 products to 10 mantissa bits: parity in float32 needs it off (cuDNN's convolutions, the
    patch embeddings, default to it)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _fixture_request(model) -> dict:
    """The fixture prompt with `model`'s video placeholders, its ids on the embeddings' device; the pixels stay on the
    CPU (the model moves them)."""
    ids = load_file(TINY_FULL / "inputs.safetensors")["input_ids"]
    input_ids = with_placeholders(ids, model.config.num_video_tokens, model.config.video_token_id)
    device = model.get_input_embeddings().weight.device
    return {"input_ids": input_ids.to(device), "pixel_values_videos": fixture_pixels(model.config)}


def _logits_and_greedy_ids(model, new_tokens: int) -> tuple[torch.Tensor, list[int]]:
    """The fixture prompt's logits and greedy ids."""
    inputs = _fixture_request(model)
    with torch.inference_mode():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return logits.float().cpu(), generated[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize(
    "device_map",
    [
        "auto",
        {"model.vision_towers": "cpu", "model.projectors": "cpu", "": ACCELERATOR.index or 0},
    ],
    ids=["auto", "encoders-offloaded-to-cpu"],
)
def test_fixture_parity_on_the_accelerator(converted_full, device_map):
    if ACCELERATOR.type == "cpu":
        device_map = "cpu"
    expected = load_file(TINY_FULL / "outputs.safetensors")
    model = AutoModel.from_pretrained(converted_full, device_map=device_map).eval()
    devices = {parameter.device.type for parameter in model.model.language_model.parameters()}
    assert devices == {ACCELERATOR.type}
    new_tokens = expected["generate.0.new_tokens"].shape[1]
    logits, greedy = _logits_and_greedy_ids(model, new_tokens)
    assert (logits - expected["logits"]).abs().max().item() <= PARITY_ATOL
    assert greedy == expected["generate.0.new_tokens"][0].tolist()


def test_inputs_embeds_without_ids_on_the_accelerator(converted_full):
    """The `<video>` embedding the placeholders are found by is looked up on the accelerator."""
    model = AutoModel.from_pretrained(converted_full, device_map=ACCELERATOR).eval()
    request = _fixture_request(model)
    with torch.inference_mode():
        by_ids = model(**request).logits
        inputs_embeds = model.get_input_embeddings()(request["input_ids"])
        by_embeddings = model(inputs_embeds=inputs_embeds, pixel_values_videos=request["pixel_values_videos"]).logits
    torch.testing.assert_close(by_embeddings, by_ids, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_the_accelerator(converted_full, dtype):
    expected = load_file(TINY_FULL / "outputs.safetensors")["logits"]
    model = AutoModel.from_pretrained(converted_full, dtype=dtype, device_map=ACCELERATOR).eval()
    logits, _ = _logits_and_greedy_ids(model, new_tokens=1)
    atol = half_precision_atol(dtype, expected)
    torch.testing.assert_close(logits, expected, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def default_model():
    folder = default_model_path()
    return AutoModel.from_pretrained(folder, device_map=ACCELERATOR).eval(), AutoProcessor.from_pretrained(folder)


def test_cached_prefix_answers_equal_generation_from_scratch(default_model):
    model, processor = default_model
    pixels = process_video(processor, VIDEO)
    expected = [
        answer_ids_from_scratch(model, processor, question_conversation(q), None, pixels, **FULL_LENGTH_GREEDY)
        for q in PREFIX_QUESTIONS
    ]
    prefix = prefill_video(model, processor, VIDEO)
    assert prefix.prompt.cache.layers[0].keys.device.type == ACCELERATOR.type
    assert answer_ids_from_cache(model, processor, prefix, PREFIX_QUESTIONS, **FULL_LENGTH_GREEDY) == expected


def test_left_padded_batch_generates_what_each_prompt_generates_alone(default_model):
    model, processor = default_model
    conversations = [question_conversation(question) for question in PREFIX_QUESTIONS]
    videos = [str(VIDEO), str(MEDIA / "video_0.mov"), str(VIDEO)]

    def generate(indices: list[int]) -> list[list[int]]:
        prompts = [processor.apply_chat_template(conversations[i], add_generation_prompt=True) for i in indices]
        inputs = processor(text=prompts, videos=[videos[i] for i in indices], return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs.to(ACCELERATOR), **FULL_LENGTH_GREEDY)
        return output[:, inputs["input_ids"].shape[1] :].tolist()

    assert generate([0, 1, 2]) == [generate([index])[0] for index in range(len(PREFIX_QUESTIONS))]


def test_concurrent_encoders_equal_sequential_encoders(converted_full):
    model = AutoModel.from_pretrained(converted_full, device_map=ACCELERATOR).eval()
    features = {}
    for concurrent in (False, True):
        model.config.concurrent_encoders = concurrent
        with torch.inference_mode():
            features[concurrent] = model.get_video_features(fixture_pixels(model.config)).pooler_output
    torch.testing.assert_close(features[True], features[False], atol=0, rtol=0)
