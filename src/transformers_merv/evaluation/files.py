"""The authors' evaluation files, read into questions ready to ask.

Inputs are a question list (`question_id`, `video_name`, `question`, optionally `question_type`; multiple choice
adds `options`, `num_option` and optionally `end_frame` or `time: [start, end]`) and an answer list (`question_id`,
`answer`; multiple choice adds `answer_id`), joined by `question_id`. Both are checked whole before any model work
(`file_checks`). The video of a question is `video_dir/<video_name>.<extension>` (`find_video`).
"""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..media_limits import check_regular_file
from ..video_io import clip_window
from .file_checks import (
    OPTION_LETTERS,
    answer_problem,
    id_problems,
    num_options_of,
    question_problems,
    video_name_problem,
)


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
MAX_REPORTED_PROBLEMS = 10
"""Problems of the evaluation files listed in the one-line error (the count gives the rest)."""


class EvaluationInputError(ValueError):
    """The evaluation cannot start from these inputs (files unreadable, fields missing, ids unmatched, a bad mode,
    judge or batch size)."""


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
    """The clip window (`video_io.clip_window`: `clip_start_sec` / `clip_end_sec` from `time`, and `end_frame`), as
    the authors pass it to `load_video`."""

    @property
    def letters(self) -> str:
        return OPTION_LETTERS[: len(self.options)]


def check_mode(mode: str) -> None:
    """Raise `EvaluationInputError` unless `mode` is one of `MODES`."""
    if mode not in MODES:
        raise EvaluationInputError(f"mode must be one of {MODES}, got {mode!r}")


def load_items(
    questions_path: str | Path, answers_path: str | Path, mode: str, limit: int | None = None
) -> list[EvalItem]:
    """The questions of `questions_path` (the first `limit`) joined with their answers, as `EvalItem`s. Both files
    are checked whole first (`file_checks`), and all their problems reported in one error."""
    check_mode(mode)
    if limit is not None and limit < 1:
        raise EvaluationInputError(f"limit must be >= 1, got {limit}")
    questions = _read_records(Path(questions_path))
    answer_records = _read_records(Path(answers_path))
    _check_records(questions, answer_records, mode, f"{questions_path} and {answers_path}")
    answers = {str(record["question_id"]): record for record in answer_records}
    build = _mcq_item if mode == MCQ else _open_ended_item
    return [build(record, answers[str(record["question_id"])]) for record in questions[:limit]]


def _check_records(questions: list[dict], answers: list[dict], mode: str, files: str) -> None:
    """Raise one `EvaluationInputError` listing every problem of the two files (see `file_checks`)."""
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
        sampling=question_window(question),
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
        sampling=question_window(question),
    )


def question_window(question: Mapping) -> dict[str, float | int]:
    """The clip window of a question record: its `time: [start, end]` and `end_frame`, when present."""
    start, end = question.get("time") or (None, None)
    return clip_window(start, end, question.get("end_frame"))


def mcq_prompt(question: str, options: Sequence[str]) -> str:
    """The authors' multiple-choice prompt for `options` (lettered A, B, ...)."""
    choices = "\n".join(f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options))
    return MCQ_PROMPT.format(question=question, letters=", ".join(OPTION_LETTERS[: len(options)]), choices=choices)


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


__all__ = [
    "MCQ",
    "MCQ_PROMPT",
    "MODES",
    "OPEN_ENDED",
    "VIDEO_EXTENSIONS",
    "EvalItem",
    "EvaluationInputError",
    "check_mode",
    "find_video",
    "load_items",
    "mcq_prompt",
    "question_window",
]
