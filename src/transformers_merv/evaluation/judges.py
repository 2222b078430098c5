"""Judges of open-ended answers: any callable `judge(question, answer, prediction)`, loaded by name for `merv eval
--judge`, and the authors' GPT judge protocol (Video-ChatGPT's messages, `scripts/eval_gpt_batch.py`) for any chat
model. No judge is built in and nothing here uses the network."""

import ast
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from .files import OPEN_ENDED, EvaluationInputError


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


def check_judged_mode(mode: str) -> None:
    """Raise `EvaluationInputError` unless `mode` is one a judge scores (open-ended)."""
    if mode != OPEN_ENDED:
        raise EvaluationInputError(f"--judge scores open-ended answers only, not mode {mode!r}")


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


__all__ = [
    "JUDGE_SYSTEM_PROMPT",
    "JUDGE_USER_PROMPT",
    "UNPARSABLE_JUDGE_REPLY",
    "Judge",
    "chat_judge",
    "check_judged_mode",
    "gpt_judge_messages",
    "judge_verdict",
    "load_judge",
    "parse_judge_reply",
]
