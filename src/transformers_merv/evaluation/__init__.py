"""Evaluation in the authors' formats (`scripts/eval_openended.py`, `scripts/eval_mcq.py`, `scripts/eval_gpt*.py`):
`merv eval` as a library.

- `files`: the authors' question and answer files read into `EvalItem`s (checked whole first by `file_checks`), and
  each question's video (`find_video`).
- `answering`: asking the questions with a model (`evaluate`), each video encoded once for all its questions.
- `scoring`: answer normalisation, option letters, the entries, summaries and the summary table; `judges`: judges of
  open-ended answers and the authors' GPT judge protocol.
- `runs`: `run_evaluation`, data-parallel over launched processes and resumable; `output_files`: the lock and the
  results log a run keeps beside its output.
"""

from .answering import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_NEW_TOKENS,
    NAIVE_CHECK_MAX_NEW_TOKENS,
    default_max_new_tokens,
    evaluate,
    evaluate_video,
    group_by_video,
    question_answerer,
    work_groups,
)
from .file_checks import OPTION_LETTERS
from .files import (
    MCQ,
    MCQ_PROMPT,
    MODES,
    OPEN_ENDED,
    EvalItem,
    EvaluationInputError,
    find_video,
    load_items,
    mcq_prompt,
)
from .judges import (
    UNPARSABLE_JUDGE_REPLY,
    Judge,
    chat_judge,
    gpt_judge_messages,
    judge_verdict,
    load_judge,
    parse_judge_reply,
)
from .output_files import EvaluationRunError, ResultsLog, output_lock
from .runs import EvaluationRun, run_evaluation, shard_by_video
from .scoring import (
    letter_token_ids,
    naive_mcq_correct,
    normalize_answer,
    pick_letter,
    summarize,
    summary_table,
    write_results,
)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_NEW_TOKENS",
    "MCQ",
    "MCQ_PROMPT",
    "MODES",
    "NAIVE_CHECK_MAX_NEW_TOKENS",
    "OPEN_ENDED",
    "OPTION_LETTERS",
    "UNPARSABLE_JUDGE_REPLY",
    "EvalItem",
    "EvaluationInputError",
    "EvaluationRun",
    "EvaluationRunError",
    "Judge",
    "ResultsLog",
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
    "output_lock",
    "parse_judge_reply",
    "pick_letter",
    "question_answerer",
    "run_evaluation",
    "shard_by_video",
    "summarize",
    "summary_table",
    "work_groups",
    "write_results",
]
