"""lmms-eval tasks on the authors' evaluation files (`merv eval`'s inputs), for benchmarks lmms-eval lacks.

A task YAML names `AuthorsFilesTask` as its `class`, the benchmark folder as `dataset_path` and the mode in
`dataset_kwargs`: the questions are `$MERV_EVAL_DATA/<dataset_path>/test_q.json` joined with `test_a.json`, the
videos `videos/<video_name>.<extension>` beside them (the authors' `./eval_data/<benchmark>/` layout; `MERV_EVAL_DATA`
defaults to `./eval_data`). Prompts and scoring are `merv eval`'s: open-ended answers are correct when they match
after `normalize_answer`; multiple choice (`output_type: multiple_choice`) picks the option letter with the highest
likelihood. A question whose video file is missing is left out, with a warning that counts them.

    TASKS=$(python -m transformers_merv.integrations.lmms_eval.tasks)
    lmms-eval --model merv --model_args pretrained=merv-full-hf --tasks merv_msvd_qa --include_path "$TASKS"
"""

import os
import warnings
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from lmms_eval.api.task import ConfigurableTask

from ....evaluation import MODES, OPTION_LETTERS, EvaluationInputError, find_video, load_items, normalize_answer


TASKS_DIR = Path(__file__).resolve().parent
"""The folder of this package's task YAMLs, for lmms-eval's `--include_path`."""
DATA_ROOT_VARIABLE = "MERV_EVAL_DATA"
DEFAULT_DATA_ROOT = "eval_data"
QUESTIONS_FILE, ANSWERS_FILE, VIDEOS_FOLDER = "test_q.json", "test_a.json", "videos"


def benchmark_folder(name: str) -> Path:
    """`$MERV_EVAL_DATA/<name>` (default `./eval_data/<name>`)."""
    return Path(os.environ.get(DATA_ROOT_VARIABLE, DEFAULT_DATA_ROOT)) / name


class AuthorsFilesTask(ConfigurableTask):
    """A task whose documents are the questions of an authors' benchmark folder (`dataset_path`), one per row:
    `question_id`, `question`, `prompt` (what the model is asked), `answer`, `options`, `question_type`, `video`."""

    def __init__(self, *args, config: dict[str, Any] | None = None, **kwargs) -> None:
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        super().__init__(*args, config=config, **kwargs)

    def download(self, dataset_kwargs: dict[str, Any] | None = None) -> None:
        mode = (dataset_kwargs or {}).get("mode")
        if mode not in MODES:
            raise EvaluationInputError(f"task {self.config.task}: dataset_kwargs.mode must be one of {MODES}")
        folder = benchmark_folder(self.DATASET_PATH)
        items = load_items(folder / QUESTIONS_FILE, folder / ANSWERS_FILE, mode)
        rows, missing = [], 0
        for item in items:
            try:
                video = find_video(folder / VIDEOS_FOLDER, item.video_name)
            except FileNotFoundError:
                missing += 1
                continue
            rows.append(
                {
                    "question_id": item.question_id,
                    "question": item.question,
                    "prompt": item.prompt,
                    "answer": item.answer,
                    "options": list(item.options),
                    "question_type": item.question_type,
                    "video": str(video),
                }
            )
        if missing:
            warnings.warn(f"{folder}: {missing} of {len(items)} questions have no video file; they are left out")
        if not rows:
            raise EvaluationInputError(f"{folder}: no question has a video file in {folder / VIDEOS_FOLDER}")
        self.dataset = DatasetDict({self.config.test_split: Dataset.from_list(rows)})
        self.dataset_no_image = self.dataset


def doc_to_visual(doc: dict[str, Any]) -> list[str]:
    return [doc["video"]]


def doc_to_text(doc: dict[str, Any]) -> str:
    return doc["prompt"]


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """The option letters (the authors' prompt lists the options as `A. ...`)."""
    return list(OPTION_LETTERS[: len(doc["options"])])


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["answer"]


def process_open_ended(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """`merv eval`'s open-ended scores of one prediction."""
    prediction = results[0]
    return {
        "accuracy": normalize_answer(prediction) == normalize_answer(doc["answer"]),
        "exact_match": prediction.strip() == doc["answer"].strip(),
    }


def process_mcq(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, Any]:
    """Correct when the most likely option letter is the answer."""
    letters = doc_to_choice(doc)
    likelihoods = [likelihood for likelihood, _ in results]
    return {"accuracy": letters[likelihoods.index(max(likelihoods))] == doc["answer"]}
