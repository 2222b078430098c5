"""Scoring answers as the authors do (`scripts/eval_openended.py`, `scripts/eval_mcq.py`), summarising and writing
the results.

- Open-ended: a prediction is correct when it equals the answer after `normalize_answer` (lower case, no
  punctuation or articles, number words as digits), or, with a judge (`judges`), when the judge says so.
- Multiple choice: the predicted option is the valid letter with the highest logit at the answer position (option
  likelihood, `pick_letter`); each entry also records the authors' naive check, the first character of the greedy
  generation compared with the answer letter.

A question whose video is missing or unreadable is skipped, listed with its reason and left out of the accuracies.
"""

import json
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .files import MCQ, OPEN_ENDED, EvalItem, EvaluationInputError
from .judges import Judge, judge_verdict


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

METRICS = {
    OPEN_ENDED: {
        "accuracy": "correct",
        "exact_match_accuracy": "exact_match",
        "normalized_match_accuracy": "normalized_match",
    },
    MCQ: {"accuracy": "correct", "naive_accuracy": "naive_correct"},
}
"""Per mode, each reported rate and the boolean entry field it averages."""


# --- open-ended answers and option letters ---------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, number words as digits, single spaces."""
    text = _PUNCTUATION.sub(" ", _THOUSANDS_SEPARATOR.sub("", text.lower()))
    words = (NUMBER_WORDS.get(word, word) for word in text.split())
    return " ".join(word for word in words if word not in ARTICLES)


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


# --- entries ---------------------------------------------------------------------------------------------------------


def score_answers(
    items: Sequence[EvalItem],
    answers: Sequence[tuple[str, torch.Tensor | None]],
    letter_ids: Mapping[str, Sequence[int]],
    judge: Judge | None,
) -> dict[str, dict[str, Any]]:
    """Entries by question id of `items` and their `(text, first-position logits)` answers: multiple choice when
    `letter_ids` are given, else open-ended."""
    return {
        item.question_id: (
            mcq_entry(item, text, logits, letter_ids) if letter_ids else open_ended_entry(item, text, judge)
        )
        for item, (text, logits) in zip(items, answers)
    }


def _base_entry(item: EvalItem) -> dict[str, Any]:
    entry: dict[str, Any] = {"question_id": item.question_id, "question": item.question}
    if item.question_type is not None:
        entry["question_type"] = item.question_type
    return entry


def open_ended_entry(item: EvalItem, prediction: str, judge: Judge | None) -> dict[str, Any]:
    """The entry of an open-ended answer: exact and normalised match, and the judge's verdict when there is one."""
    entry = _base_entry(item) | {"prediction": prediction, "answer": item.answer}
    entry["exact_match"] = prediction.strip() == item.answer.strip()
    entry["normalized_match"] = normalize_answer(prediction) == normalize_answer(item.answer)
    entry["correct"] = entry["normalized_match"]
    if judge is not None:
        result = judge(item.question, item.answer, prediction)
        entry["judge"] = dict(result) if isinstance(result, Mapping) else result
        entry["correct"] = judge_verdict(result)
    return entry


def mcq_entry(
    item: EvalItem, generation: str, logits: torch.Tensor, letter_ids: Mapping[str, Sequence[int]]
) -> dict[str, Any]:
    """The entry of a multiple-choice answer: the option-likelihood pick and the authors' naive check."""
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


def skipped_entry(item: EvalItem, reason: str) -> dict[str, Any]:
    """The entry of a question not asked (its video is missing or unreadable), with the reason."""
    entry = _base_entry(item) | {"video_name": item.video_name, "prediction": None, "answer": item.answer}
    return entry | {"correct": None, "skipped": reason}


# --- summary ---------------------------------------------------------------------------------------------------------


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


def summary_table(summary: Mapping[str, Any]) -> str:
    """A headline (accuracy, counts, skipped questions), then a table: every question and each question type, with
    their counts and accuracies (and the authors' naive first-letter accuracy for multiple choice)."""
    headline = (
        f"{summary['mode']}: accuracy {_percent(summary['accuracy'])} ({summary['correct']}/{summary['evaluated']}"
        f" questions; {summary['skipped']} skipped)"
    )
    naive = "naive_accuracy" in summary
    header = ["question type", "questions", "correct", "accuracy"] + (["naive"] if naive else [])
    rows = [("all", summary), *summary.get("per_question_type", {}).items()]
    cells = [
        [name, str(rates["evaluated"]), str(rates["correct"]), _percent(rates["accuracy"])]
        + ([_percent(rates["naive_accuracy"])] if naive else [])
        for name, rates in rows
    ]
    widths = [max(len(row[index]) for row in [header, *cells]) for index in range(len(header))]
    lines = [headline, _table_row(header, widths), _table_row(["-" * width for width in widths], widths)]
    return "\n".join(lines + [_table_row(row, widths) for row in cells])


def _table_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    first, *rest = cells
    return "  ".join([first.ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(rest, widths[1:]))])


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def write_results(path: str | Path, results: Mapping[str, Any]) -> None:
    """Write `evaluate`'s output as indented JSON (summary first)."""
    Path(path).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = [
    "METRICS",
    "letter_token_ids",
    "mcq_entry",
    "naive_mcq_correct",
    "normalize_answer",
    "open_ended_entry",
    "pick_letter",
    "score_answers",
    "skipped_entry",
    "summarize",
    "summary_table",
    "write_results",
]
