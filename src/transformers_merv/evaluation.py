"""Evaluation in the authors' formats (`scripts/eval_openended.py`, `scripts/eval_mcq.py`, `scripts/eval_gpt*.py`).

Inputs are the authors' evaluation files: a question list (`question_id`, `video_name`, `question`, optionally
`question_type`; multiple choice adds `options`, `num_option` and optionally `end_frame` or `time: [start, end]`) and
an answer list (`question_id`, `answer`; multiple choice adds `answer_id`), joined by `question_id`. The video of a
question is `video_dir/<video_name>.<extension>`.

- Open-ended: the prompt is the question alone through the model's chat template (`In: {question}\\nOut:` for the
  authors' "pure" format). A prediction is correct when it equals the answer after `normalize_answer` (lower case,
  no punctuation or articles, number words as digits), or, with a `judge`, when the judge says so.
- Multiple choice: the authors' prompt (`MCQ_PROMPT`). The predicted option is the valid letter with the highest logit
  at the answer position (option likelihood); each entry also records the authors' naive check, the first character
  of the greedy generation compared with the answer letter.

A question whose video is missing or unreadable is skipped, listed with its reason and left out of the accuracies.
"""

import ast
import importlib
import json
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .evaluation_files import (
    OPTION_LETTERS,
    answer_problem,
    id_problems,
    num_options_of,
    question_problems,
    video_name_problem,
)
from .media_limits import check_regular_file
from .video_prefix import encode_pixels, generate_from_cache, process_video, prompt_ids, question_conversation


OPEN_ENDED, MCQ = "open-ended", "mcq"
MODES = (OPEN_ENDED, MCQ)
MCQ_PROMPT = (
    "{question} Select the correct answer from the following options. Write your answer as only one of {letters} and "
    "nothing else.\n\n    {choices}"
)
"""`scripts/eval_mcq.py` (strategy "naive"), blank line and four-space indent included."""
VIDEO_EXTENSIONS = (
    ".mp4",
    ".mkv",
    ".webm",
    ".avi",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ts",
    ".gif",
)
"""Preferred when several files share a video's name; any other extension is still tried after these."""
DEFAULT_BATCH_SIZE = 8
MAX_REPORTED_PROBLEMS = 10
"""Problems of the evaluation files listed in the one-line error (the count gives the rest)."""
DEFAULT_MAX_NEW_TOKENS = 512
"""The authors' evaluation setting (greedy decoding, `max_new_tokens=512`), for models whose generation config sets no
`max_new_tokens`."""
NAIVE_CHECK_MAX_NEW_TOKENS = 8
"""Multiple choice generates only for the authors' naive check, which reads the first character of the answer."""

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
NUMBER_WORDS["none"] = "0"  # as the authors' answer normalisation (MMBench's) maps it
_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3})")
_PUNCTUATION = re.compile(rf"(?!(?<=\d)\.\d)[{re.escape(string.punctuation)}]")
"""Every punctuation mark except a decimal point between digits."""

JUDGE_SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer "
    "pairs. Your task is to compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Here's how you can accomplish the task:"
    "------"
    "##INSTRUCTIONS: "
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
JUDGE_USER_PROMPT = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {prediction}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, with 5 "
    "indicating the highest meaningful match. Please generate the response in the form of a Python dictionary string "
    "with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in "
    "INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary "
    "string. For example, your response should look like this: {{'pred': 'yes', 'score': 4}}."
)
"""The authors' GPT judge messages (Video-ChatGPT protocol, `scripts/eval_gpt_batch.py`)."""
UNPARSABLE_JUDGE_REPLY = {"pred": "no", "score": 0}
"""What the authors' batch judge records for a reply that is not a valid verdict."""

Judge = Callable[[str, str, str], bool | Mapping[str, Any]]
"""`judge(question, answer, prediction)`: True/False, or a dict with `correct` (bool) or the authors' `pred`
("yes"/"no"), optionally with a numeric `score`."""


class EvaluationInputError(ValueError):
    """The question or answer file cannot be evaluated (unreadable, missing fields, unmatched ids)."""


@dataclass(frozen=True)
class EvalItem:
    """One question, ready to ask: `prompt` is the user message, `answer` the text (open-ended) or letter (MCQ)."""

    question_id: str
    video_name: str
    question: str
    prompt: str
    answer: str
    question_type: str | None = None
    options: tuple[str, ...] = ()
    sampling: Mapping[str, float | int] = field(default_factory=dict)
    """`clip_start_sec` / `clip_end_sec` (from `time`) and `end_frame`, as the authors pass them to `load_video`."""

    @property
    def letters(self) -> str:
        return OPTION_LETTERS[: len(self.options)]


# --- reading the authors' files --------------------------------------------------------------------------------------


def load_items(
    questions_path: str | Path, answers_path: str | Path, mode: str, limit: int | None = None
) -> list[EvalItem]:
    """The questions of `questions_path` (the first `limit`) joined with their answers, as `EvalItem`s. Both files
    are checked whole first (`evaluation_files`), and all their problems reported in one error."""
    _check_mode(mode)
    questions = _read_records(Path(questions_path))
    answer_records = _read_records(Path(answers_path))
    _check_records(questions, answer_records, mode, f"{questions_path} and {answers_path}")
    answers = {str(record["question_id"]): record for record in answer_records}
    build = _mcq_item if mode == MCQ else _open_ended_item
    return [build(record, answers[str(record["question_id"])]) for record in questions[:limit]]


def _check_records(questions: list[dict], answers: list[dict], mode: str, files: str) -> None:
    """Raise one `EvaluationInputError` listing every problem of the two files (see `evaluation_files`)."""
    problems = id_problems(questions, answers)
    num_options = {}
    for question in questions:
        found = question_problems(question, multiple_choice=mode == MCQ)
        problems += found
        if not found:
            num_options[str(question["question_id"])] = num_options_of(question) if mode == MCQ else None
    for answer in answers:
        if str(answer["question_id"]) in num_options:
            problems.append(answer_problem(answer, num_options[str(answer["question_id"])]))
    problems = [problem for problem in problems if problem]
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED_PROBLEMS])
        more = f"; and {len(problems) - MAX_REPORTED_PROBLEMS} more" if len(problems) > MAX_REPORTED_PROBLEMS else ""
        raise EvaluationInputError(f"{files}: {len(problems)} problem(s): {shown}{more}")


def _read_records(path: Path) -> list[dict]:
    try:
        check_regular_file(path, str(path))
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # includes JSON errors and non-regular files
        raise EvaluationInputError(f"cannot read {path}: {err}") from err
    if not isinstance(records, list) or not all(isinstance(r, dict) and "question_id" in r for r in records):
        raise EvaluationInputError(f"{path} must be a JSON list of objects with a 'question_id'")
    return records


def _open_ended_item(question: Mapping, answer: Mapping) -> EvalItem:
    return EvalItem(
        question_id=str(question["question_id"]),
        video_name=question["video_name"],
        question=question["question"],
        prompt=question["question"],
        answer=str(answer["answer"]),
        question_type=question.get("question_type"),
        sampling=sampling_window(question),
    )


def _mcq_item(question: Mapping, answer: Mapping) -> EvalItem:
    options = tuple(question["options"])[: num_options_of(question)]
    return EvalItem(
        question_id=str(question["question_id"]),
        video_name=question["video_name"],
        question=question["question"],
        prompt=mcq_prompt(question["question"], options),
        answer=OPTION_LETTERS[answer["answer_id"]],
        question_type=question.get("question_type"),
        options=options,
        sampling=sampling_window(question),
    )


def mcq_prompt(question: str, options: Sequence[str]) -> str:
    """The authors' multiple-choice prompt for `options` (lettered A, B, ...)."""
    choices = "\n".join(f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options))
    return MCQ_PROMPT.format(question=question, letters=", ".join(OPTION_LETTERS[: len(options)]), choices=choices)


def sampling_window(question: Mapping) -> dict[str, float | int]:
    """The video processor's sampling kwargs for a question: `time: [start, end]` and `end_frame`, when present."""
    window: dict[str, float | int] = {}
    if question.get("time") is not None:
        window["clip_start_sec"], window["clip_end_sec"] = question["time"]
    if question.get("end_frame") is not None:
        window["end_frame"] = question["end_frame"]
    return window


def find_video(video_dir: str | Path, video_name: str) -> Path:
    """`video_dir/<video_name>.<extension>`, preferring regular files and the extensions of `VIDEO_EXTENSIONS`.
    Names that would leave `video_dir` (absolute, or with `..`) raise a `ValueError`; a match that is not a regular
    file (a FIFO, a directory) is returned, and reading it raises an error naming what it is."""
    problem = video_name_problem(video_name)
    if problem:
        raise ValueError(problem)
    candidates = list(Path(video_dir).glob(f"{_glob_escape(video_name)}.*"))
    if not candidates:
        raise FileNotFoundError(f"no video file {video_name}.* in {video_dir}")
    return min(
        candidates, key=lambda path: (not path.is_file(), path.suffix.lower() not in VIDEO_EXTENSIONS, path.name)
    )


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


# --- scoring ---------------------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, number words as digits, single spaces."""
    text = _PUNCTUATION.sub(" ", _THOUSANDS_SEPARATOR.sub("", text.lower()))
    words = (NUMBER_WORDS.get(word, word) for word in text.split())
    return " ".join(word for word in words if word not in ARTICLES)


def judge_verdict(result: bool | Mapping[str, Any]) -> bool:
    """A judge's result as correct / not correct (`correct`, else the authors' `pred == "yes"`)."""
    if isinstance(result, Mapping):
        if "correct" in result:
            return bool(result["correct"])
        return str(result.get("pred", "")).strip().lower() == "yes"
    return bool(result)


def gpt_judge_messages(question: str, answer: str, prediction: str) -> list[dict[str, str]]:
    """The chat messages the authors send to their GPT judge for one question."""
    user = JUDGE_USER_PROMPT.format(question=question, answer=answer, prediction=prediction)
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_judge_reply(reply: str) -> dict[str, Any]:
    """The judge's `{'pred': 'yes'|'no', 'score': number}`, or `UNPARSABLE_JUDGE_REPLY` as the authors record it."""
    try:
        verdict = ast.literal_eval(reply.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return dict(UNPARSABLE_JUDGE_REPLY)
    valid = (
        isinstance(verdict, dict)
        and verdict.get("pred") in ("yes", "no")
        and isinstance(verdict.get("score"), (int, float))
    )
    return verdict if valid else dict(UNPARSABLE_JUDGE_REPLY)


def chat_judge(complete: Callable[[list[dict[str, str]]], str]) -> Judge:
    """A judge from any chat model: `complete(messages) -> reply text` gets the authors' GPT judge messages."""

    def judge(question: str, answer: str, prediction: str) -> dict[str, Any]:
        return parse_judge_reply(complete(gpt_judge_messages(question, answer, prediction)))

    return judge


def load_judge(spec: str) -> Judge:
    """The judge callable named `"package.module:function"`."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise EvaluationInputError(f"--judge expects MODULE:CALLABLE, got {spec!r}")
    try:
        judge = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise EvaluationInputError(f"cannot load judge {spec!r}: {err}") from err
    if not callable(judge):
        raise EvaluationInputError(f"judge {spec!r} is not callable")
    return judge


def letter_token_ids(tokenizer, letters: str, vocab_size: int) -> dict[str, list[int]]:
    """Per letter, the ids below `vocab_size` of every token that decodes to exactly that letter (with or without a
    word-start marker, e.g. "▁A", "A" and the byte token "<0x41>")."""
    texts = tokenizer.batch_decode([[index] for index in range(min(len(tokenizer), vocab_size))])
    ids = {letter: [index for index, text in enumerate(texts) if text.strip() == letter] for letter in letters}
    unknown = [letter for letter, letter_ids in ids.items() if not letter_ids]
    if unknown:
        raise EvaluationInputError(f"the tokenizer has no token for the option letters {unknown}")
    return ids


def pick_letter(logits: torch.Tensor, letter_ids: Mapping[str, Sequence[int]]) -> tuple[str, dict[str, float]]:
    """The letter whose best token has the highest logit, and every letter's logit."""
    scores = {letter: logits[list(ids)].max().item() for letter, ids in letter_ids.items()}
    return max(scores, key=scores.get), scores


def naive_mcq_correct(generation: str, letter: str) -> bool:
    """The authors' check: the first character of the stripped generation is the answer letter."""
    return generation.strip().lower()[:1] == letter.lower()


# --- running ---------------------------------------------------------------------------------------------------------


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
) -> dict[str, Any]:
    """Answer every item (batched, greedy unless `generation_kwargs` say otherwise) and score it.

    By default the questions are grouped by video (`group_by_video`): each video is decoded and encoded once and its
    questions are answered from the cached prompt prefix (`evaluate_video`). `per_question=True` follows the
    authors' protocol instead, every question encoding its video again (batches of whole prompts, left-padded).
    Both give the same predictions.

    Without `max_new_tokens` in `generation_kwargs`, open-ended answers are as long as `default_max_new_tokens(model)`
    allows and multiple choice generates `NAIVE_CHECK_MAX_NEW_TOKENS` (its answer is the option likelihood).

    Returns `{"summary": ..., "results": [one entry per item, in order]}` (see `summarize`).
    """
    answer = question_answerer(
        model, processor, items, video_dir, mode, batch_size, generation_kwargs, judge, per_question
    )
    groups = _batches(items, batch_size) if per_question else group_by_video(items)
    entries: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(items), desc=f"eval ({mode})", unit="question", disable=not progress) as bar:
        for group in groups:
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
) -> Callable[[Sequence[EvalItem]], dict[str, dict[str, Any]]]:
    """What `evaluate` runs on each group of `items`: `answer(group)` gives the entries by question id of a group of
    questions about one video (`evaluate_video`), or with `per_question` of any batch (`_evaluate_batch`)."""
    _check_mode(mode)
    if judge is not None and mode != OPEN_ENDED:
        raise EvaluationInputError("a judge scores open-ended answers only")
    if batch_size < 1:
        raise EvaluationInputError(f"batch size must be >= 1, got {batch_size}")
    generation = {"do_sample": False, **(generation_kwargs or {})}
    if generation.get("max_new_tokens") is None:
        generation["max_new_tokens"] = NAIVE_CHECK_MAX_NEW_TOKENS if mode == MCQ else default_max_new_tokens(model)
    letters = max((item.letters for item in items), key=len, default="")
    vocab_size = model.config.text_config.vocab_size
    letter_ids = letter_token_ids(processor.tokenizer, letters, vocab_size) if mode == MCQ else {}
    if per_question:
        return partial(
            _evaluate_batch,
            model,
            processor,
            video_dir=video_dir,
            generation=generation,
            letter_ids=letter_ids,
            judge=judge,
        )
    return partial(
        evaluate_video,
        model,
        processor,
        video_dir=video_dir,
        generation=generation,
        letter_ids=letter_ids,
        judge=judge,
        batch_size=batch_size,
    )


def group_by_video(items: Sequence[EvalItem]) -> list[list[EvalItem]]:
    """The items grouped by video and sampling window (the questions that share an encoded video), in order of
    first appearance."""
    groups: dict[tuple, list[EvalItem]] = {}
    for item in items:
        groups.setdefault((item.video_name, tuple(sorted(item.sampling.items()))), []).append(item)
    return list(groups.values())


def evaluate_video(
    model,
    processor,
    items: Sequence[EvalItem],
    video_dir: str | Path,
    generation: Mapping[str, Any],
    letter_ids: Mapping[str, Sequence[int]],
    judge: Judge | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, dict[str, Any]]:
    """Entries by question id for questions about one video (one `group_by_video` group): the video is decoded and
    encoded once, and its questions are answered `batch_size` at a time from the cached prompt prefix (for multiple
    choice, the option logits come from the one forward of each question's own tokens on top of that prefix). All
    are skipped when the video is missing or unreadable."""
    try:
        pixels = process_video(processor, find_video(video_dir, items[0].video_name), items[0].sampling)
    except (OSError, ValueError) as err:
        return {item.question_id: _skipped_entry(item, str(err)) for item in items}
    prefix = encode_pixels(model, processor, pixels)
    entries = {}
    for batch in _batches(items, batch_size):
        prompts = [prompt_ids(processor, question_conversation(item.prompt)) for item in batch]
        output, input_ids = generate_from_cache(
            model, processor, prefix.prompt, prompts, output_logits=bool(letter_ids), **generation
        )
        entries |= _score(batch, _decode(processor, output, input_ids, bool(letter_ids)), letter_ids, judge)
    return entries


def _evaluate_batch(
    model,
    processor,
    batch: Sequence[EvalItem],
    video_dir: str | Path,
    generation: Mapping[str, Any],
    letter_ids: Mapping[str, Sequence[int]],
    judge: Judge | None,
) -> dict[str, dict[str, Any]]:
    """The authors' protocol for one batch, entries by question id: skipped ones for unreadable videos, the rest
    answered together (each encoding its video) and scored as multiple choice when `letter_ids` are given, else as
    open-ended."""
    entries, prepared = {}, []
    for item in batch:
        try:
            prepared.append((item, _prepare(processor, item, video_dir)))
        except (OSError, ValueError) as err:
            entries[item.question_id] = _skipped_entry(item, str(err))
    if not prepared:
        return entries
    answers = _answer(model, processor, [inputs for _, inputs in prepared], generation, bool(letter_ids))
    return entries | _score([item for item, _ in prepared], answers, letter_ids, judge)


def _score(
    items: Sequence[EvalItem],
    answers: Sequence[tuple[str, torch.Tensor | None]],
    letter_ids: Mapping[str, Sequence[int]],
    judge: Judge | None,
) -> dict[str, dict[str, Any]]:
    """Entries by question id: multiple choice when `letter_ids` are given, else open-ended."""
    return {
        item.question_id: (
            _mcq_entry(item, text, logits, letter_ids) if letter_ids else _open_ended_entry(item, text, judge)
        )
        for item, (text, logits) in zip(items, answers)
    }


def default_max_new_tokens(model) -> int:
    """The longest answer `model` writes unless told otherwise: its generation config's `max_new_tokens` (the
    shipped default model stops after its one-word answers), else the authors' 512."""
    return model.generation_config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise EvaluationInputError(f"mode must be one of {MODES}, got {mode!r}")


def _batches(items: Sequence[EvalItem], size: int) -> Iterator[Sequence[EvalItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def question_inputs(processor, question: str, video: str | Path, sampling: Mapping[str, float | int]):
    """Prompt ids (the model's chat template) and pixels for one video and question; `sampling` is the clip window
    (`clip_start_sec`, `clip_end_sec`, `end_frame`). Raises `ValueError` for an unreadable video."""
    text = processor.apply_chat_template(question_conversation(question), tokenize=False)
    return processor(text=[text], videos=[str(video)], return_tensors="pt", **sampling)


def _prepare(processor, item: EvalItem, video_dir: str | Path):
    """Prompt ids and pixels of one item (raises `OSError` / `ValueError` for a missing or unreadable video)."""
    return question_inputs(processor, item.prompt, find_video(video_dir, item.video_name), item.sampling)


def _answer(
    model, processor, inputs: Sequence[Mapping], generation: Mapping[str, Any], first_logits: bool
) -> list[tuple[str, torch.Tensor | None]]:
    """Generate for a batch of single-question inputs (left-padded together): each answer text, with the logits of
    the first generated position when `first_logits`."""
    padded = processor.tokenizer.pad(
        {"input_ids": [row["input_ids"][0].tolist() for row in inputs]},
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    pixels = torch.cat([row["pixel_values_videos"] for row in inputs]).to(model.device, model.dtype)
    input_ids = padded["input_ids"].to(model.device)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=padded["attention_mask"].to(model.device),
            pixel_values_videos=pixels,
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


def _base_entry(item: EvalItem) -> dict[str, Any]:
    entry: dict[str, Any] = {"question_id": item.question_id, "question": item.question}
    if item.question_type is not None:
        entry["question_type"] = item.question_type
    return entry


def _open_ended_entry(item: EvalItem, prediction: str, judge: Judge | None) -> dict[str, Any]:
    entry = _base_entry(item) | {"prediction": prediction, "answer": item.answer}
    entry["exact_match"] = prediction.strip() == item.answer.strip()
    entry["normalized_match"] = normalize_answer(prediction) == normalize_answer(item.answer)
    entry["correct"] = entry["normalized_match"]
    if judge is not None:
        result = judge(item.question, item.answer, prediction)
        entry["judge"] = dict(result) if isinstance(result, Mapping) else result
        entry["correct"] = judge_verdict(result)
    return entry


def _mcq_entry(
    item: EvalItem, generation: str, logits: torch.Tensor, letter_ids: Mapping[str, Sequence[int]]
) -> dict[str, Any]:
    letter, scores = pick_letter(logits, {letter: letter_ids[letter] for letter in item.letters})
    return _base_entry(item) | {
        "options": list(item.options),
        "prediction": letter,
        "answer": item.answer,
        "answer_text": item.options[item.letters.index(item.answer)],
        "correct": letter == item.answer,
        "letter_logits": scores,
        "generation": generation,
        "naive_correct": naive_mcq_correct(generation, item.answer),
    }


def _skipped_entry(item: EvalItem, reason: str) -> dict[str, Any]:
    entry = _base_entry(item) | {"video_name": item.video_name, "prediction": None, "answer": item.answer}
    return entry | {"correct": None, "skipped": reason}


# --- summary ---------------------------------------------------------------------------------------------------------

METRICS = {
    OPEN_ENDED: {
        "accuracy": "correct",
        "exact_match_accuracy": "exact_match",
        "normalized_match_accuracy": "normalized_match",
    },
    MCQ: {"accuracy": "correct", "naive_accuracy": "naive_correct"},
}
"""Per mode, each reported rate and the boolean entry field it averages."""


def summarize(results: Sequence[Mapping[str, Any]], mode: str) -> dict[str, Any]:
    """Counts and accuracies over the evaluated (not skipped) entries, overall and per `question_type`; the
    skipped questions with their reasons; the mean judge score when the judge gave scores."""
    evaluated = [entry for entry in results if "skipped" not in entry]
    skipped = [entry for entry in results if "skipped" in entry]
    summary: dict[str, Any] = {"mode": mode, "total": len(results), "skipped": len(skipped)}
    summary |= _rates(evaluated, METRICS[mode])
    types = sorted({entry["question_type"] for entry in results if "question_type" in entry})
    if types:
        summary["per_question_type"] = {
            kind: _rates([entry for entry in evaluated if entry.get("question_type") == kind], METRICS[mode])
            for kind in types
        }
    scores = [
        entry["judge"]["score"]
        for entry in evaluated
        if isinstance(entry.get("judge"), Mapping) and isinstance(entry["judge"].get("score"), (int, float))
    ]
    if scores:
        summary["judge_average_score"] = sum(scores) / len(scores)
    summary["skipped_questions"] = [
        {"question_id": entry["question_id"], "video_name": entry["video_name"], "reason": entry["skipped"]}
        for entry in skipped
    ]
    return summary


def _rates(entries: Sequence[Mapping[str, Any]], metrics: Mapping[str, str]) -> dict[str, Any]:
    counts = Counter(name for entry in entries for name, key in metrics.items() if entry[key])
    rates: dict[str, Any] = {"evaluated": len(entries), "correct": counts["accuracy"]}
    for name in metrics:
        rates[name] = counts[name] / len(entries) if entries else None
    return rates


def write_results(path: str | Path, results: Mapping[str, Any]) -> None:
    """Write `evaluate`'s output as indented JSON (summary first)."""
    Path(path).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = [
    "MODES",
    "MCQ",
    "MCQ_PROMPT",
    "OPEN_ENDED",
    "OPTION_LETTERS",
    "EvalItem",
    "EvaluationInputError",
    "Judge",
    "chat_judge",
    "default_max_new_tokens",
    "evaluate",
    "evaluate_video",
    "find_video",
    "gpt_judge_messages",
    "group_by_video",
    "judge_verdict",
    "letter_token_ids",
    "load_items",
    "load_judge",
    "mcq_prompt",
    "naive_mcq_correct",
    "normalize_answer",
    "parse_judge_reply",
    "pick_letter",
    "sampling_window",
    "summarize",
    "write_results",
]
