"""Checks of the authors' evaluation files, run on the whole question and answer lists before any model work: ids
that do not match, repeated ids, missing or wrongly typed fields, empty lists, and video names that would resolve
outside the video folder. Each check returns the problems it finds as lines naming the question id and field."""

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any


OPTION_LETTERS = "ABCDE"
"""The authors' option mapping (`["A. ", "B. ", "C. ", "D. ", "E. "]`): at most five options."""
MAX_LISTED_IDS = 5


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or _is_int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _listed(ids: Sequence[str]) -> str:
    return f"{sorted(ids)[:MAX_LISTED_IDS]}{' ...' if len(ids) > MAX_LISTED_IDS else ''}"


def video_name_problem(name: Any) -> str | None:
    """Why `name` cannot name a file inside the video folder (`<video_dir>/<name>.<extension>`), or None."""
    if not isinstance(name, str) or not name.strip():
        return f"'video_name' must be a non-empty string, got {name!r}"
    if "\0" in name:
        return "'video_name' contains a NUL character"
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        return f"'video_name' {name!r} is an absolute path; it must name a file inside --video-dir"
    if ".." in posix.parts or ".." in windows.parts:
        return f"'video_name' {name!r} climbs out of --video-dir with '..'"
    return None


def id_problems(questions: Sequence[Mapping], answers: Sequence[Mapping]) -> list[str]:
    """Empty lists, ids of the wrong type, repeated question ids, repeated answer ids with different answers, and
    ids present in only one of the files."""
    problems = []
    if not questions:
        problems.append("the question file holds no questions")
    for kind, records in (("question", questions), ("answer", answers)):
        bad = [record["question_id"] for record in records if not _is_id(record["question_id"])]
        if bad:
            problems.append(f"{kind} ids must be strings or integers, got {bad[:MAX_LISTED_IDS]}")
    question_ids = [str(record["question_id"]) for record in questions]
    repeated = [question_id for question_id, count in Counter(question_ids).items() if count > 1]
    if repeated:
        problems.append(f"the question file repeats question_id {_listed(repeated)}")
    answers_by_id = defaultdict(list)
    for record in answers:
        answers_by_id[str(record["question_id"])].append(record)
    conflicting = [
        question_id for question_id, records in answers_by_id.items() if any(r != records[0] for r in records)
    ]
    if conflicting:
        problems.append(f"the answer file gives different answers for question_id {_listed(conflicting)}")
    unanswered = [question_id for question_id in question_ids if question_id not in answers_by_id]
    if unanswered:
        problems.append(f"{len(unanswered)} question(s) have no answer (question_id {_listed(unanswered)})")
    unasked = sorted(set(answers_by_id) - set(question_ids))
    if unasked:
        problems.append(f"{len(unasked)} answer(s) have no question (question_id {_listed(unasked)})")
    return problems


def question_problems(question: Mapping, multiple_choice: bool) -> list[str]:
    """Missing or wrongly typed fields of one question record, each line naming its id."""
    required = ("video_name", "question", "options") if multiple_choice else ("video_name", "question")
    problems = [f"has no {key!r}" for key in required if key not in question]
    if "video_name" in question:
        problems.append(video_name_problem(question["video_name"]))
    if "question" in question and (not isinstance(question["question"], str) or not question["question"].strip()):
        problems.append(f"'question' must be a non-empty string, got {question['question']!r}")
    if question.get("question_type") is not None and not isinstance(question["question_type"], str):
        problems.append(f"'question_type' must be a string, got {question['question_type']!r}")
    problems += [_time_problem(question.get("time")), _end_frame_problem(question.get("end_frame"))]
    if multiple_choice and "options" in question:
        problems.append(_options_problem(question["options"], question.get("num_option")))
    return [f"question_id {question['question_id']!r}: {problem}" for problem in problems if problem]


def answer_problem(answer: Mapping, num_options: int | None) -> str | None:
    """A missing or wrongly typed answer (`answer_id` within the options for multiple choice), naming its id."""
    key = "answer" if num_options is None else "answer_id"
    if key not in answer:
        return f"question_id {answer['question_id']!r}: has no {key!r}"
    if num_options is None:
        value = answer.get("answer")
        valid = _is_number(value) or (isinstance(value, str) and bool(value.strip()))
        expected = "'answer' must be a non-empty string"
    else:
        value = answer.get("answer_id")
        valid = _is_int(value) and 0 <= value < num_options
        expected = f"'answer_id' must be an integer from 0 to {num_options - 1} (one of the options)"
    return None if valid else f"question_id {answer['question_id']!r}: {expected}, got {value!r}"


def num_options_of(question: Mapping) -> int:
    """How many options a valid multiple-choice question offers (`num_option` cuts the list)."""
    return min(len(question["options"]), question.get("num_option") or len(question["options"]))


def _time_problem(time: Any) -> str | None:
    if time is None:
        return None
    if not isinstance(time, (list, tuple)) or len(time) != 2 or not all(map(_is_number, time)):
        return f"'time' must be [start, end] in seconds, got {time!r}"
    start, end = time
    if math.isnan(start) or math.isnan(end):  # the authors read NaN as "from the start" / "to the end"
        return None
    if not 0 <= start < end < math.inf:
        return f"'time' {list(time)} must satisfy 0 <= start < end"
    return None


def _end_frame_problem(end_frame: Any) -> str | None:
    if end_frame is None or _is_int(end_frame):  # a negative one means the whole video, as for the authors
        return None
    return f"'end_frame' must be an integer frame index, got {end_frame!r}"


def _options_problem(options: Any, num_option: Any) -> str | None:
    if not isinstance(options, (list, tuple)) or not options:
        return f"'options' must be a non-empty list of strings, got {options!r}"
    if not all(isinstance(option, str) for option in options):
        return f"'options' must hold strings, got {options!r}"
    if num_option is not None and not (_is_int(num_option) and 1 <= num_option <= len(options)):
        return f"'num_option' must be an integer from 1 to {len(options)} (the options given), got {num_option!r}"
    count = min(len(options), num_option or len(options))
    if count > len(OPTION_LETTERS):
        return f"{count} options; 1 to {len(OPTION_LETTERS)} are allowed (letters {', '.join(OPTION_LETTERS)})"
    return None
