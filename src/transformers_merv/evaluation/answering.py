"""Answering the questions of an evaluation with a model, in one process: `evaluate` answers and scores a list of
questions; `question_answerer` is the step it repeats (and `runs` shares out between processes).

By default the questions are grouped by video (`group_by_video`): each video is decoded and encoded once and its
questions are answered from the cached prompt prefix (`evaluate_video`). `per_question=True` follows the authors'
protocol instead, every question encoding its video again (batches of whole prompts, left-padded). Both give the
same predictions. The visual tokens come from `video_features` (`inference.video_features`): encoded live by
default, or from a feature store's frozen features (`StoredVideoFeatures`), which give the same predictions too.

- Open-ended: the prompt is the question alone through the model's chat template (`In: {question}\\nOut:` for the
  authors' "pure" format).
- Multiple choice: the authors' prompt (`files.MCQ_PROMPT`); the option logits are those of the first generated
  position, and the generation feeds the authors' naive check only.
"""

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..inference.batching import batches, group_by
from ..inference.prefix_cache import generate_from_cache, prefill_video_features, prompt_ids, question_conversation
from ..inference.video_features import LiveVideoFeatures
from .files import MCQ, EvalItem, EvaluationInputError, check_mode, find_video
from .judges import Judge, check_judged_mode
from .scoring import letter_token_ids, score_answers, skipped_entry, summarize


DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_NEW_TOKENS = 512
"""The authors' evaluation setting (greedy decoding, `max_new_tokens=512`), for models whose generation config sets no
`max_new_tokens`."""
NAIVE_CHECK_MAX_NEW_TOKENS = 8
"""Multiple choice generates only for the authors' naive check, which reads the first character of the answer."""

Answerer = Callable[[Sequence[EvalItem]], dict[str, dict[str, Any]]]
"""`answer(group)`: the entries by question id of one group of `work_groups`."""


def evaluate(
    model,
    processor,
    items: Sequence[EvalItem],
    video_dir: str | Path,
    mode: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    generation_kwargs: Mapping[str, Any] | None = None,
    judge: Judge | None = None,
    progress: bool = True,
    per_question: bool = False,
    video_features: LiveVideoFeatures | None = None,
) -> dict[str, Any]:
    """Answer every item (batched, greedy unless `generation_kwargs` say otherwise) and score it, one group of
    `work_groups` at a time; the visual tokens come from `video_features` (default: encoded live).

    Without `max_new_tokens` in `generation_kwargs`, open-ended answers are as long as `default_max_new_tokens(model)`
    allows and multiple choice generates `NAIVE_CHECK_MAX_NEW_TOKENS` (its answer is the option likelihood).

    Returns `{"summary": ..., "results": [one entry per item, in order]}` (see `scoring.summarize`).
    """
    answer = question_answerer(
        model, processor, items, video_dir, mode, batch_size, generation_kwargs, judge, per_question, video_features
    )
    entries: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(items), desc=f"eval ({mode})", unit="question", disable=not progress) as bar:
        for group in work_groups(items, batch_size, per_question):
            entries |= answer(group)
            bar.update(len(group))
    results = [entries[item.question_id] for item in items]
    return {"summary": summarize(results, mode), "results": results}


def question_answerer(
    model,
    processor,
    items: Sequence[EvalItem],
    video_dir: str | Path,
    mode: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    generation_kwargs: Mapping[str, Any] | None = None,
    judge: Judge | None = None,
    per_question: bool = False,
    video_features: LiveVideoFeatures | None = None,
) -> Answerer:
    """What `evaluate` runs on each group of `work_groups(items, batch_size, per_question)`: `answer(group)` gives
    the entries by question id of the questions about one video (`evaluate_video`), or with `per_question` of one
    batch of them (`_evaluate_batch`), the visual tokens from `video_features` (default: encoded live)."""
    check_mode(mode)
    if judge is not None:
        check_judged_mode(mode)
    check_batch_size(batch_size)
    generation = {"do_sample": False, **(generation_kwargs or {})}
    if generation.get("max_new_tokens") is None:
        generation["max_new_tokens"] = NAIVE_CHECK_MAX_NEW_TOKENS if mode == MCQ else default_max_new_tokens(model)
    letters = max((item.letters for item in items), key=len, default="")
    vocab_size = model.config.text_config.vocab_size
    letter_ids = letter_token_ids(processor.tokenizer, letters, vocab_size) if mode == MCQ else {}
    settings = {
        "video_dir": video_dir,
        "generation": generation,
        "letter_ids": letter_ids,
        "judge": judge,
        "video_features": video_features or LiveVideoFeatures(model, processor),
    }
    if per_question:
        return partial(_evaluate_batch, model, processor, **settings)
    return partial(evaluate_video, model, processor, **settings, batch_size=batch_size)


def check_batch_size(batch_size: int) -> None:
    """Raise `EvaluationInputError` for a batch size below 1."""
    if batch_size < 1:
        raise EvaluationInputError(f"batch size must be >= 1, got {batch_size}")


def default_max_new_tokens(model) -> int:
    """The longest answer `model` writes unless told otherwise: its generation config's `max_new_tokens` (the
    shipped default model stops after its one-word answers), else the authors' 512."""
    return model.generation_config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS


def group_by_video(items: Sequence[EvalItem]) -> list[list[EvalItem]]:
    """The items grouped by video and sampling window (the questions that share an encoded video), in order of
    first appearance."""
    return group_by(items, key=lambda item: (item.video_name, tuple(sorted(item.sampling.items()))))


def work_groups(items: Sequence[EvalItem], batch_size: int, per_question: bool) -> list[Sequence[EvalItem]]:
    """What one step answers (and a run records): a video's questions (`group_by_video`), or with `per_question`,
    batches of `batch_size` questions about one video. Groups never depend on the number of processes or on what is
    done."""
    groups = group_by_video(items)
    if not per_question:
        return groups
    return [batch for group in groups for batch in batches(group, batch_size)]


def evaluate_video(
    model,
    processor,
    items: Sequence[EvalItem],
    video_dir: str | Path,
    generation: Mapping[str, Any],
    letter_ids: Mapping[str, Sequence[int]],
    judge: Judge | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    video_features: LiveVideoFeatures | None = None,
) -> dict[str, dict[str, Any]]:
    """Entries by question id for questions about one video (one `group_by_video` group): the video is decoded and
    encoded once (or its features read from a store: `video_features`), and its questions are answered `batch_size`
    at a time from the cached prompt prefix (for multiple choice, the option logits come from the one forward of each
    question's own tokens on top of that prefix). All are skipped when the video is missing or unreadable."""
    source = video_features or LiveVideoFeatures(model, processor)
    try:
        loaded = source.load(find_video(video_dir, items[0].video_name), items[0].sampling)
    except (OSError, ValueError) as err:
        return {item.question_id: skipped_entry(item, str(err)) for item in items}
    prefix = prefill_video_features(model, processor, source.features([loaded]))
    entries = {}
    for batch in batches(items, batch_size):
        prompts = [prompt_ids(processor, question_conversation(item.prompt)) for item in batch]
        output, input_ids = generate_from_cache(
            model, processor, prefix.prompt, prompts, output_logits=bool(letter_ids), **generation
        )
        entries |= score_answers(batch, _decode(processor, output, input_ids, bool(letter_ids)), letter_ids, judge)
    return entries


def _evaluate_batch(
    model,
    processor,
    batch: Sequence[EvalItem],
    video_dir: str | Path,
    generation: Mapping[str, Any],
    letter_ids: Mapping[str, Sequence[int]],
    judge: Judge | None,
    video_features: LiveVideoFeatures,
) -> dict[str, dict[str, Any]]:
    """The authors' protocol for one batch, entries by question id: skipped ones for unreadable videos, the rest
    answered together (each encoding its video, or reading its features from a store) and scored as multiple choice
    when `letter_ids` are given, else as open-ended."""
    entries, prepared = {}, []
    for item in batch:
        try:
            prepared.append((item, video_features.load(find_video(video_dir, item.video_name), item.sampling)))
        except (OSError, ValueError) as err:
            entries[item.question_id] = skipped_entry(item, str(err))
    if not prepared:
        return entries
    answers = _answer(model, processor, video_features, prepared, generation, bool(letter_ids))
    return entries | score_answers([item for item, _ in prepared], answers, letter_ids, judge)


def _answer(
    model,
    processor,
    video_features: LiveVideoFeatures,
    prepared: Sequence[tuple[EvalItem, Any]],
    generation: Mapping[str, Any],
    first_logits: bool,
) -> list[tuple[str, torch.Tensor | None]]:
    """Generate for a batch of questions, each with its `load`ed video (whole prompts, left-padded together): each
    answer text, with the logits of the first generated position when `first_logits`."""
    padded = processor.tokenizer.pad(
        {"input_ids": [prompt_ids(processor, question_conversation(item.prompt)) for item, _ in prepared]},
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    visual = video_features.features([loaded for _, loaded in prepared])
    input_ids = padded["input_ids"].to(model.device)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=padded["attention_mask"].to(model.device),
            mm_encoder_outputs={"video": visual},
            return_dict_in_generate=True,
            output_logits=first_logits,
            **generation,
        )
    return _decode(processor, output, input_ids, first_logits)


def _decode(processor, output, input_ids: torch.Tensor, first_logits: bool) -> list[tuple[str, torch.Tensor | None]]:
    """Each answer text of a generate output, with the logits of the first generated position when
    `first_logits`."""
    texts = processor.batch_decode(output.sequences, prompt_ids=input_ids, skip_special_tokens=True)
    logits = output.logits[0].float().cpu() if first_logits else [None] * len(texts)
    return list(zip(texts, logits))


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_NEW_TOKENS",
    "NAIVE_CHECK_MAX_NEW_TOKENS",
    "Answerer",
    "check_batch_size",
    "default_max_new_tokens",
    "evaluate",
    "evaluate_video",
    "group_by_video",
    "question_answerer",
    "work_groups",
]
