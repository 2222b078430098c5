"""transformers' image-text-to-text pipeline answers exactly as `generate` + `batch_decode(prompt_ids=...)` do: no
leading space."""

import pytest
import torch
from transformers import pipeline

from transformers_merv import default_model_path

from conftest import EXAMPLE_VIDEO

QUESTIONS = ["What color is the circle?", "How fast does the red circle move?", "What is happening?"]


@pytest.fixture(scope="module")
def answerer():
    return pipeline("image-text-to-text", model=str(default_model_path()))


def _conversation(question: str) -> list[dict]:
    video = {"type": "video", "path": str(EXAMPLE_VIDEO)}
    return [{"role": "user", "content": [video, {"type": "text", "text": question}]}]


def _generate_and_decode(answerer, conversation: list[dict]) -> str:
    processor = answerer.processor
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        output = answerer.model.generate(**inputs, do_sample=False)
    return processor.batch_decode(output, prompt_ids=inputs["input_ids"], skip_special_tokens=True)[0]


@pytest.mark.parametrize("question", QUESTIONS)
def test_pipeline_answer_equals_generate_and_batch_decode(answerer, question):
    conversation = _conversation(question)
    expected = _generate_and_decode(answerer, conversation)
    new_text = answerer(text=conversation, return_full_text=False)[0]["generated_text"]
    chat = answerer(text=conversation)[0]["generated_text"]
    assert new_text == expected == chat[-1]["content"] and expected == expected.strip() != ""
    assert chat[-1]["role"] == "assistant"


def test_post_processing_leaves_prompts_and_answers_alone_but_the_cue_space(answerer):
    processor = answerer.processor
    assert processor.answer_cue() == "\nOut:"
    prompt = processor.tokenizer("In: Q?\nOut:", return_tensors="pt")["input_ids"]
    answered = processor.tokenizer("In: Q?\nOut: red  circle", return_tensors="pt")["input_ids"]
    assert processor.post_process_image_text_to_text(prompt) == ["In: Q?\nOut:"]
    assert processor.post_process_image_text_to_text(answered) == ["In: Q?\nOut:red  circle"]
