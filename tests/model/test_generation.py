"""generate(): one visual encoding per call (greedy, sampling, beams), left-padded batches, text-only prompts,
generation outputs and streaming."""

import io
from contextlib import redirect_stdout

import pytest
import torch
from transformers import AutoModel, AutoProcessor, AutoTokenizer, TextStreamer, pipeline
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from transformers_merv import MervForConditionalGeneration

from conftest import MEDIA, fixture_pixels, random_pixels, tiny_config, with_placeholders

PAD = 1000


@pytest.fixture(scope="module")
def model() -> MervForConditionalGeneration:
    torch.manual_seed(0)
    return MervForConditionalGeneration(tiny_config()).eval()


@pytest.fixture
def tower_calls(model):
    """Counts how often every vision tower encodes (calls of its patch embeddings)."""
    calls = dict.fromkeys(model.config.vision_encoders, 0)
    hooks = [
        tower.embeddings.register_forward_hook(
            lambda module, args, output, name=name: calls.__setitem__(name, calls[name] + 1)
        )
        for name, tower in model.model.vision_towers.items()
    ]
    yield calls
    for hook in hooks:
        hook.remove()


def _batch(model, rows: list[list[int]], padding_side: str = "left"):
    """Prompts with placeholders after BOS, padded to one length, and their attention mask."""
    prompts = [
        with_placeholders(torch.tensor([row]), model.config.num_video_tokens, model.config.video_token_id)[0]
        for row in rows
    ]
    length = max(len(prompt) for prompt in prompts)
    padded = []
    for prompt in prompts:
        padding = torch.full((length - len(prompt),), PAD)
        padded.append(torch.cat([padding, prompt] if padding_side == "left" else [prompt, padding]))
    input_ids = torch.stack(padded)
    return input_ids, (input_ids != PAD).long()


@pytest.mark.parametrize(
    "settings",
    [{"do_sample": False}, {"do_sample": True, "top_k": 5}, {"num_beams": 3, "do_sample": False}],
    ids=["greedy", "sampling", "beam-search"],
)
def test_encoders_run_once_per_generate_call(model, tower_calls, settings):
    input_ids, attention_mask = _batch(model, [[1, 5, 6, 7], [1, 8, 9]])
    pixels = random_pixels(model.config, batch_size=2)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values_videos=pixels,
            max_new_tokens=5,
            **settings,
        )
    assert output.shape == (2, input_ids.shape[1] + 5)
    assert tower_calls == dict.fromkeys(model.config.vision_encoders, 1)


def test_left_padded_batch_generates_what_each_row_generates_alone(model):
    rows = [[1, 5, 6, 7, 8, 9], [1, 11, 12], [1, 40]]
    pixels = random_pixels(model.config, batch_size=3, seed=7)
    input_ids, attention_mask = _batch(model, rows)
    with torch.no_grad():
        batched = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values_videos=pixels,
            max_new_tokens=6,
            do_sample=False,
        )[:, input_ids.shape[1] :]
        for index, row in enumerate(rows):
            alone_ids, _ = _batch(model, [row])
            alone = model.generate(
                input_ids=alone_ids,
                pixel_values_videos=pixels[index : index + 1],
                max_new_tokens=6,
                do_sample=False,
            )[:, alone_ids.shape[1] :]
            assert torch.equal(batched[index : index + 1], alone)


def test_right_padded_batch_is_warned_about(model):
    input_ids, attention_mask = _batch(model, [[1, 5, 6, 7], [1, 8]], padding_side="right")
    with CaptureLogger(logging.get_logger("transformers.generation.utils")) as captured, torch.no_grad():
        model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values_videos=random_pixels(model.config, 2),
            max_new_tokens=2,
            do_sample=False,
        )
    assert "right-padding was detected" in captured.out


def test_text_only_prompt_generates(model, tower_calls):
    with torch.no_grad():
        output = model.generate(input_ids=torch.tensor([[1, 5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert output.shape == (1, 8)
    assert set(tower_calls.values()) == {0}


def test_logits_to_keep_keeps_the_last_positions(model):
    input_ids, _ = _batch(model, [[1, 5, 6, 7]])
    pixels = random_pixels(model.config)
    with torch.no_grad():
        full = model(input_ids=input_ids, pixel_values_videos=pixels).logits
        last = model(input_ids=input_ids, pixel_values_videos=pixels, logits_to_keep=1).logits
    assert last.shape == (1, 1, full.shape[-1])
    torch.testing.assert_close(last, full[:, -1:])


def test_generation_outputs_with_scores(model):
    input_ids, _ = _batch(model, [[1, 5, 6, 7]])
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            pixel_values_videos=random_pixels(model.config),
            max_new_tokens=3,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
        )
    assert len(output.scores) == 3 and output.scores[0].shape == (1, model.config.text_config.vocab_size)
    assert torch.equal(output.sequences[:, -3:], torch.stack([score.argmax(-1) for score in output.scores], dim=1))


def test_streaming_prints_the_generated_text(converted_full):
    model = AutoModel.from_pretrained(converted_full).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted_full)
    prompt = tokenizer("In: What is happening in this video?\nOut:", return_tensors="pt").input_ids
    input_ids = with_placeholders(prompt, model.config.num_video_tokens, model.config.video_token_id)
    streamed = io.StringIO()
    with redirect_stdout(streamed), torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            pixel_values_videos=fixture_pixels(model.config),
            max_new_tokens=8,
            do_sample=False,
            streamer=TextStreamer(tokenizer, skip_prompt=True),
        )
    new_tokens = output[0, input_ids.shape[1] :]
    assert streamed.getvalue().strip() == tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    assert tokenizer.decode(new_tokens).strip()


def test_image_text_to_text_pipeline_answers_a_video_chat(converted_full):
    """transformers' `image-text-to-text` pipeline takes video chat messages and returns what `generate` does."""
    conversation = [
        {
            "role": "user",
            "content": [{"type": "video", "path": str(MEDIA / "video_0.mov")}, {"type": "text", "text": "What?"}],
        }
    ]
    answerer = pipeline("image-text-to-text", model=str(converted_full))
    assert isinstance(answerer.model, MervForConditionalGeneration)
    answer = answerer(text=conversation, max_new_tokens=5, do_sample=False, return_full_text=False)[0]
    processor = AutoProcessor.from_pretrained(converted_full)
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = answerer.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    expected = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer["generated_text"] == expected and expected.strip()
