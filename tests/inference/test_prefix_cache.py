"""Encode a video once, answer many questions from the cached prompt prefix: the prefix every template shares, the
same ids as generation from scratch (single, batched, beams, every chat template, the default model and a converted
fixture), multi-turn chat reusing the previous turn, and the LRU bound."""

import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from transformers import AutoModel, AutoProcessor

import transformers_merv
from transformers_merv import PROMPT_FORMATS, default_model_path
from transformers_merv.inference.prefix_cache import (
    VideoChat,
    VideoPrefixCache,
    prefill_video,
    process_video,
    prompt_ids,
    question_conversation,
    shared_prefix_ids,
)

from conftest import (
    FULL_LENGTH_GREEDY,
    MEDIA,
    PREFIX_QUESTIONS,
    answer_ids_from_cache,
    answer_ids_from_scratch,
)

VIDEO = MEDIA / "flipping_a_pancake.mkv"
TEMPLATES = [None, *(name for name in PROMPT_FORMATS if name != "pure")]
"""`None` is the processor's default ("pure" for both models)."""


@pytest.fixture(scope="module", params=["default-model", "converted-fixture"])
def loaded(request):
    folder = default_model_path() if request.param == "default-model" else request.getfixturevalue("converted_full")
    return AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def _next_turn(chat: VideoChat, question: str) -> list[dict]:
    """The conversation of `chat` with `question` asked next (the first turn carries the video)."""
    if not chat.messages:
        return question_conversation(question)
    return [*chat.messages, {"role": "user", "content": [{"type": "text", "text": question}]}]


@pytest.mark.parametrize("chat_template", TEMPLATES, ids=lambda name: name or "default")
def test_the_prefix_ends_where_the_question_starts_in_every_template(loaded, chat_template):
    model, processor = loaded
    prefix = shared_prefix_ids(processor, chat_template)
    placeholders = [index for index, token in enumerate(prefix) if token == model.config.video_token_id]
    assert len(placeholders) == model.config.num_video_tokens
    for question in [*PREFIX_QUESTIONS, "", " leading space", "Ünïcode?"]:
        ids = prompt_ids(processor, question_conversation(question), chat_template)
        assert ids[: len(prefix)] == prefix
        # the prefix holds all the template text before the question: what follows it starts with the question
        assert processor.tokenizer.decode(ids[len(prefix) :]).lstrip(" ").startswith(question.strip())


@pytest.mark.parametrize("chat_template", TEMPLATES, ids=lambda name: name or "default")
def test_cached_answers_are_the_ids_generated_from_scratch(loaded, chat_template):
    model, processor = loaded
    pixels = process_video(processor, VIDEO)
    expected = [
        answer_ids_from_scratch(
            model, processor, question_conversation(q), chat_template, pixels, **FULL_LENGTH_GREEDY
        )
        for q in PREFIX_QUESTIONS
    ]
    prefix = prefill_video(model, processor, VIDEO, chat_template=chat_template)
    assert [
        answer_ids_from_cache(model, processor, prefix, [q], **FULL_LENGTH_GREEDY)[0] for q in PREFIX_QUESTIONS
    ] == expected
    one_batch = answer_ids_from_cache(model, processor, prefix, PREFIX_QUESTIONS, **FULL_LENGTH_GREEDY)
    assert one_batch == expected  # padded


def test_beam_search_from_the_cache(loaded):
    model, processor = loaded
    generation = {"max_new_tokens": 3, "num_beams": 2, "do_sample": False}
    pixels = process_video(processor, VIDEO)
    expected = [
        answer_ids_from_scratch(model, processor, question_conversation(q), None, pixels, **generation)
        for q in PREFIX_QUESTIONS
    ]
    prefix = prefill_video(model, processor, VIDEO)
    assert answer_ids_from_cache(model, processor, prefix, PREFIX_QUESTIONS, **generation) == expected


def test_answers_reuse_the_prefix_and_never_encode_again(loaded):
    model, processor = loaded
    prefix = prefill_video(model, processor, VIDEO)
    fed = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        with mock.patch.object(model, "get_video_features", side_effect=AssertionError("encoded again")):
            answer_ids_from_cache(model, processor, prefix, PREFIX_QUESTIONS, max_new_tokens=1)
    finally:
        hook.remove()
    prompts = [prompt_ids(processor, question_conversation(q), None) for q in PREFIX_QUESTIONS]
    assert fed == [max(len(ids) for ids in prompts) - prefix.prompt.length]
    assert prefix.prompt.cache.get_seq_length() == prefix.prompt.length  # the stored cache is left as it was


def test_chat_turns_equal_the_whole_conversation_from_scratch(loaded):
    model, processor = loaded
    pixels = process_video(processor, VIDEO)
    chat = VideoChat(model, processor, prefill_video(model, processor, VIDEO))
    fed = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        for question in PREFIX_QUESTIONS:
            fed.clear()
            conversation = _next_turn(chat, question)
            expected = answer_ids_from_scratch(model, processor, conversation, None, pixels, **FULL_LENGTH_GREEDY)
            fed.clear()
            answer = chat.ask(question, **FULL_LENGTH_GREEDY)
            assert answer == processor.tokenizer.decode(expected, skip_special_tokens=True).strip()
            whole = len(prompt_ids(processor, conversation, None))
            assert fed[0] < whole - model.config.num_video_tokens  # only the new turn's tokens are fed
    finally:
        hook.remove()
    assert [message["role"] for message in chat.messages] == ["user", "assistant"] * len(PREFIX_QUESTIONS)


def test_chat_with_beam_search(loaded):
    model, processor = loaded
    generation = {"max_new_tokens": 3, "num_beams": 2, "do_sample": False}
    pixels = process_video(processor, VIDEO)
    chat = VideoChat(model, processor, prefill_video(model, processor, VIDEO))
    for question in PREFIX_QUESTIONS[:2]:
        conversation = _next_turn(chat, question)
        expected = answer_ids_from_scratch(model, processor, conversation, None, pixels, **generation)
        assert (
            chat.ask(question, **generation) == processor.tokenizer.decode(expected, skip_special_tokens=True).strip()
        )


def test_the_prefix_cache_keeps_the_most_recently_used_videos(loaded, tmp_path):
    model, processor = loaded
    videos = []
    for index in range(3):
        videos.append(Path(shutil.copy(VIDEO, tmp_path / f"clip{index}.mkv")))
    cache = VideoPrefixCache(max_entries=2)
    with mock.patch.object(model, "get_video_features", wraps=model.get_video_features) as encoder:
        first = cache.get(model, processor, videos[0])
        cache.get(model, processor, videos[1])
        assert cache.get(model, processor, videos[0]) is first and encoder.call_count == 2
        cache.get(model, processor, videos[2])  # drops videos[1], the least recently used
        assert len(cache) == 2 and encoder.call_count == 3
        cache.get(model, processor, videos[1])
        assert encoder.call_count == 4
        cache.get(model, processor, videos[0], sampling={"end_frame": 10})  # another window: another prefix
        assert encoder.call_count == 5
    with pytest.raises(ValueError, match="max_entries"):
        VideoPrefixCache(max_entries=0)


def test_encode_video_is_a_deprecated_alias_of_prefill_video():
    model, processor = AutoModel.from_pretrained(default_model_path()), AutoProcessor.from_pretrained(default_model_path())
    with pytest.warns(FutureWarning, match="`encode_video` is deprecated; use `prefill_video`"):
        prefix = transformers_merv.encode_video(model, processor, VIDEO)
    assert torch.equal(prefix.prompt.input_ids, prefill_video(model, processor, VIDEO).prompt.input_ids)
