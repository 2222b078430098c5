"""How long answers are: the shipped default model stops after its trained one-word answers even on real videos, the
CLI and `evaluate` take the model's generation config, and multiple choice generates only what the naive check
reads."""

from unittest import mock

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from transformers_merv import default_model_path
from transformers_merv.cli import main
from transformers_merv.synthetic import ANSWER_VOCABULARY, generate_dataset, longest_answer_tokens
from transformers_merv.evaluation import (
    DEFAULT_MAX_NEW_TOKENS,
    MCQ,
    NAIVE_CHECK_MAX_NEW_TOKENS,
    OPEN_ENDED,
    default_max_new_tokens,
    evaluate,
    load_items,
)

from conftest import MEDIA

REAL_VIDEOS = [MEDIA / "flipping_a_pancake.mkv", MEDIA / "video_0.mov"]


@pytest.fixture(scope="module")
def shipped():
    return AutoModel.from_pretrained(default_model_path()).eval(), AutoProcessor.from_pretrained(default_model_path())


def test_shipped_generation_config_stops_after_the_longest_trained_answer(shipped):
    model, processor = shipped
    trained = [{"conversations": [{"from": "gpt", "value": answer}]} for answer in ANSWER_VOCABULARY]
    longest = longest_answer_tokens(processor.tokenizer, trained)
    assert longest == 2  # one word and </s>
    assert model.generation_config.max_new_tokens == longest == default_max_new_tokens(model)
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id


@pytest.mark.parametrize("video", REAL_VIDEOS, ids=lambda path: path.name)
@pytest.mark.parametrize("question", ["What color is the circle?", "What is happening in this video?"])
def test_default_model_answers_real_videos_in_a_few_words(video, question, shipped, capsys):
    model, _ = shipped
    assert main(["ask", str(video), question, "--device", "cpu"]) == 0
    words = capsys.readouterr().out.split()
    assert 1 <= len(words) <= model.generation_config.max_new_tokens
    assert set(words) <= set(ANSWER_VOCABULARY)


def test_max_new_tokens_flag_still_overrides_the_generation_config(capsys):
    assert main(["ask", str(MEDIA / "flipping_a_pancake.mkv"), "What is happening?", "--max-new-tokens", "6"]) == 0
    assert len(capsys.readouterr().out.split()) > 2  # this clip is unlike the training data: no </s> within 6


def test_models_without_a_generation_limit_get_the_authors_512(converted_full):
    model = AutoModel.from_pretrained(converted_full)
    assert model.generation_config.max_new_tokens is None
    assert default_max_new_tokens(model) == DEFAULT_MAX_NEW_TOKENS == 512


@pytest.mark.parametrize(
    ("mode", "prefix", "expected"), [(MCQ, "test_mcq", NAIVE_CHECK_MAX_NEW_TOKENS), (OPEN_ENDED, "test", 2)]
)
def test_evaluate_generates_only_what_the_mode_needs(shipped, tmp_path, mode, prefix, expected):
    model, processor = shipped
    generate_dataset(tmp_path, {"test": 1})
    items = load_items(tmp_path / f"{prefix}_q.json", tmp_path / f"{prefix}_a.json", mode)
    with mock.patch.object(model, "generate", wraps=model.generate) as generate, torch.no_grad():
        results = evaluate(model, processor, items, tmp_path / "videos", mode, progress=False)["results"]
    assert {call.kwargs["max_new_tokens"] for call in generate.call_args_list} == {expected}
    assert all(entry["prediction"] is not None for entry in results)
