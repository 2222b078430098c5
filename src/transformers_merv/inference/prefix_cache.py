"""Many questions about one video: encode the video once and answer every question from a cached prompt prefix.

MERV's fusion never sees the question, and every prompt format puts the visual tokens before it (`[BOS] <video>x1024
In: {question}\\nOut:` for the "pure" format). Decoding, the four encoders, alignment, fusion and the language model's
KV cache of the prompt up to the question are therefore the same for every question about a video. `prefill_video`
computes them once — it decodes and encodes the video, then runs the language model's prefill over that prefix —
into a `VideoPrefix`; `answer_questions` answers any number of questions from it, a batch of questions sharing one
copy of the cache; `VideoChat` holds a multi-turn conversation whose turns reuse the cache of the turns before. Answers are the ids generation from scratch gives: each prompt is tokenized whole, exactly as from scratch,
and only the tokens it shares with the cached ones are taken from the cache.

    prefix = prefill_video(model, processor, "clip.mp4")
    answers = answer_questions(model, processor, prefix, ["What is shown?", "How many people?"])

A batch of questions of different lengths is padded between the shared prefix and the questions (masked out, with
position ids continuing the prefix), so every row sees the positions and tokens it would see alone.

Memory: a cached prefix holds `layers x 2 x prefix tokens x hidden size` values, ~0.5 GB for merv-full in bfloat16
(32 x 2 x ~1040 x 4096 x 2 bytes); `VideoPrefixCache` keeps at most `max_entries` of them (least recently used
dropped first)."""

import copy
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import Cache

from ..compat import cache_kwargs, output_cache
from ..modeling_merv import MervVideoFeaturesOutput


DEFAULT_MAX_CACHED_VIDEOS = 4
"""Prefixes `VideoPrefixCache` keeps by default (~2 GB for merv-full in bfloat16)."""
PROBE_QUESTIONS = ("", "What is shown?", "1", "?", "\n")
"""Questions whose prompts `shared_prefix_ids` compares: the template text before the question, tokenized, is the
prefix their token ids share (with and without a question, whatever the question starts with)."""


@dataclass
class CachedPrompt:
    """Prompt token ids of one sequence and the language model's KV cache of them (batch of one)."""

    input_ids: torch.LongTensor
    """`(1, length)`, on the model's device."""
    cache: Cache

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    def reusable_length(self, prompts: Sequence[Sequence[int]]) -> int:
        """How many leading cached tokens every prompt shares (each keeping at least one token to feed)."""
        cached = self.input_ids[0].tolist()
        return min(min(_common_prefix_length(cached, ids), len(ids) - 1) for ids in prompts)

    def cache_for(self, length: int, batch_size: int) -> Cache:
        """A copy of the cache of the first `length` tokens, repeated for `batch_size` rows (the stored cache is
        left untouched)."""
        cache = copy.deepcopy(self.cache)
        if length < self.length:
            cache.crop(length - self.length)  # a negative count removes that many tokens, in every transformers 5
        if batch_size > 1:
            cache.batch_repeat_interleave(batch_size)
        return cache


@dataclass
class VideoPrefix:
    """One video encoded once: its fused visual tokens and the cached prompt up to where the question starts."""

    video_features: MervVideoFeaturesOutput
    prompt: CachedPrompt
    chat_template: str | None = None
    """The chat template (name or text) the prefix was built with; questions are asked with the same one."""


def question_conversation(question: str) -> list[dict[str, Any]]:
    """One user turn: the video, then the question (the prompt of `merv ask` and `merv eval`)."""
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]


def prompt_ids(processor, conversation: Sequence[Mapping[str, Any]], chat_template: str | None = None) -> list[int]:
    """Token ids of `conversation` through the chat template, each video marker expanded to the placeholders:
    the ids `processor(text=..., videos=...)` gives, without decoding any video."""
    text = processor.apply_chat_template(list(conversation), chat_template=chat_template, tokenize=False)
    return processor.prompt_ids(text)


def shared_prefix_ids(processor, chat_template: str | None = None) -> list[int]:
    """The ids every one-video question prompt starts with: BOS, the video placeholders and the template text before
    the question, as far as its tokenization is the same with each of `PROBE_QUESTIONS`. (A question that changes
    it anyway is still answered exactly: `generate_from_cache` takes only the tokens a prompt shares from the
    cache.)"""
    probes = [prompt_ids(processor, question_conversation(question), chat_template) for question in PROBE_QUESTIONS]
    length = min(_common_prefix_length(probes[0], ids) for ids in probes[1:])
    return probes[0][:length]


def _common_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def question_inputs(processor, question: str, video: str | Path, sampling: Mapping[str, float | int]):
    """Prompt ids (the model's chat template) and pixels for one video and question; `sampling` is the clip window
    (`video_io.clip_window`). Raises `ValueError` for an unreadable video."""
    text = processor.apply_chat_template(question_conversation(question), tokenize=False)
    return processor(text=[text], videos=[str(video)], return_tensors="pt", **sampling)


def process_video(processor, video: str | Path, sampling: Mapping[str, float | int] | None = None) -> torch.Tensor:
    """Decode and transform one video: its `pixel_values_videos`, `(1, D)`. `sampling` is the clip window
    (`clip_start_sec`, `clip_end_sec`, `end_frame`)."""
    return processor.video_processor([str(video)], **(sampling or {}))["pixel_values_videos"]


def prefill_video(
    model,
    processor,
    video: str | Path,
    sampling: Mapping[str, float | int] | None = None,
    chat_template: str | None = None,
) -> VideoPrefix:
    """Decode and encode `video` once and run the language model over the prompt prefix it shares with every
    question (`shared_prefix_ids`), keeping its KV cache."""
    return prefill_pixels(model, processor, process_video(processor, video, sampling), chat_template)


@torch.inference_mode()
def prefill_pixels(
    model, processor, pixel_values_videos: torch.Tensor, chat_template: str | None = None
) -> VideoPrefix:
    """`prefill_video` for an already decoded video (`process_video`'s output, a batch of one)."""
    video_features = model.get_video_features(pixel_values_videos.to(model.device, model.dtype))
    input_ids = torch.tensor([shared_prefix_ids(processor, chat_template)], device=model.device)
    output = model(input_ids=input_ids, mm_encoder_outputs={"video": video_features}, use_cache=True, logits_to_keep=1)
    return VideoPrefix(video_features, CachedPrompt(input_ids, output.cache), chat_template)


@torch.inference_mode()
def generate_from_cache(model, processor, cached: CachedPrompt, prompts: Sequence[Sequence[int]], **generation):
    """`model.generate` for whole prompts (token ids) that start with (part of) `cached.input_ids`: the shared
    tokens come from one copy of the cache, the rest are padded on the left of each prompt's own part (masked,
    positions continuing the shared part). Returns generate's output (`return_dict_in_generate=True`) and the
    `input_ids` given to it, whose length `processor.batch_decode(..., prompt_ids=...)` cuts off."""
    length = cached.reusable_length(prompts)
    padded = processor.tokenizer.pad(
        {"input_ids": [list(ids[length:]) for ids in prompts]},
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    shared = cached.input_ids[:, :length].expand(len(prompts), -1)
    input_ids = torch.cat([shared, padded["input_ids"].to(shared.device)], dim=1)
    attention_mask = torch.cat([torch.ones_like(shared), padded["attention_mask"].to(shared.device)], dim=1)
    cache = cached.cache_for(length, len(prompts) * _rows_per_prompt(model, generation))
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        **cache_kwargs(cache),
        return_dict_in_generate=True,
        **generation,
    )
    return output, input_ids


def _rows_per_prompt(model, generation: Mapping[str, Any]) -> int:
    """How many rows `generate` runs per prompt (beams or returned sequences): the cache is given expanded."""
    config = copy.deepcopy(model.generation_config)
    config.update(**{key: value for key, value in generation.items() if hasattr(config, key)})
    return max(config.num_beams or 1, config.num_return_sequences or 1)


def answer_questions(
    model,
    processor,
    prefix: VideoPrefix,
    questions: Sequence[str],
    batch_size: int | None = None,
    **generation,
) -> list[str]:
    """The answers to `questions` about the video of `prefix`, in order, `batch_size` questions at a time (all at
    once by default). `generation` goes to `model.generate` (e.g. `max_new_tokens`)."""
    size = batch_size or max(len(questions), 1)
    answers = []
    for start in range(0, len(questions), size):
        prompts = [
            prompt_ids(processor, question_conversation(question), prefix.chat_template)
            for question in questions[start : start + size]
        ]
        output, input_ids = generate_from_cache(model, processor, prefix.prompt, prompts, **generation)
        answers += processor.batch_decode(output.sequences, prompt_ids=input_ids, skip_special_tokens=True)
    return answers


class VideoChat:
    """A multi-turn conversation about one video: each turn's prompt is the whole conversation (as from scratch),
    and the tokens it shares with the previous turn's prompt and answer come from that turn's cache."""

    def __init__(self, model, processor, prefix: VideoPrefix):
        self.model, self.processor, self.chat_template = model, processor, prefix.chat_template
        self.messages: list[dict[str, Any]] = []
        self._cached = prefix.prompt

    def ask(self, question: str, **generation) -> str:
        """Answer `question` in the context of the conversation so far, and add both to it."""
        content = [{"type": "text", "text": question}]
        if not self.messages:
            content.insert(0, {"type": "video"})
        messages = [*self.messages, {"role": "user", "content": content}]
        ids = prompt_ids(self.processor, messages, self.chat_template)
        output, input_ids = generate_from_cache(self.model, self.processor, self._cached, [ids], **generation)
        answer = self.processor.batch_decode(output.sequences, prompt_ids=input_ids, skip_special_tokens=True)[0]
        if _rows_per_prompt(self.model, generation) == 1:  # beams leave a cache of several rows: keep the last one
            cache = output_cache(output)
            self._cached = CachedPrompt(output.sequences[:, : cache.get_seq_length()], cache)
        self.messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        return answer


class VideoPrefixCache:
    """Encoded videos by key (e.g. path, sampling window and chat template), at most `max_entries` of them: the
    least recently used is dropped when a new one is added."""

    def __init__(self, max_entries: int = DEFAULT_MAX_CACHED_VIDEOS):
        if max_entries < 1:
            raise ValueError(f"`max_entries` must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, VideoPrefix] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(
        self,
        model,
        processor,
        video: str | Path,
        sampling: Mapping[str, float | int] | None = None,
        chat_template: str | None = None,
    ) -> VideoPrefix:
        """The prefix of `video` with this sampling window and template, encoded on first use."""
        key = video_key(video, sampling, chat_template)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        prefix = prefill_video(model, processor, video, sampling, chat_template)
        self._entries[key] = prefix
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return prefix


def video_key(
    video: str | Path, sampling: Mapping[str, float | int] | None = None, chat_template: str | None = None
) -> tuple:
    """What identifies an encoded prefix: the resolved video path, the sampling window and the chat template."""
    return str(Path(video).resolve()), tuple(sorted((sampling or {}).items())), chat_template


def encode_video(*args, **kwargs) -> VideoPrefix:
    """Deprecated name of `prefill_video` (which also runs the language model's prefill, not only the encoders)."""
    warnings.warn("`encode_video` is deprecated; use `prefill_video`", FutureWarning, stacklevel=2)
    return prefill_video(*args, **kwargs)


__all__ = [
    "DEFAULT_MAX_CACHED_VIDEOS",
    "CachedPrompt",
    "VideoChat",
    "VideoPrefix",
    "VideoPrefixCache",
    "answer_questions",
    "encode_video",
    "generate_from_cache",
    "prefill_pixels",
    "prefill_video",
    "process_video",
    "prompt_ids",
    "question_conversation",
    "question_inputs",
    "shared_prefix_ids",
    "video_key",
]
