"""The lmms-eval model plugin, through lmms-eval's own command line (no network): its predictions equal `merv eval`'s
on the same questions, for the package's task files (open-ended and multiple choice on the authors' files), for a
plain lmms-eval task (chat messages), and for the simple model (`--force_simple`), batched or not; from a feature
store (`features=`, videos it lacks added with `add_to_store=True`) as without one, and a store of other settings
refused.

Needs lmms-eval (`pip install ".[eval]"`); run by `.ci/suites/30-lmms-eval.sh` in its own venv (marker
`lmms_eval`, deselected by default)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformers_merv import default_model_path
from transformers_merv.evaluation import MCQ, OPEN_ENDED, OPTION_LETTERS, normalize_answer
from transformers_merv.inference.feature_store import FeatureStore, feature_fingerprint
from transformers_merv.inference.loading import AUTO, load_model, load_processor

from conftest import MEDIA, REPO, build_feature_store


pytestmark = pytest.mark.lmms_eval

TASKS = Path(__file__).resolve().parent / "lmms_eval_tasks"
CHAT_DOCS = json.loads((TASKS / "merv_test_chat.json").read_text())
"""The questions of every test task (open-ended as they are, multiple choice with `MCQ_OPTIONS`)."""
MCQ_OPTIONS = {
    "c0": (["blue", "red", "green"], 1),
    "c1": (["red", "white"], 0),
    "c2": (["left", "up", "right", "down"], 2),
    "c3": (["1", "2", "3"], 1),
    "c4": (["fast", "slow", "still"], 0),
}
MAX_NEW_TOKENS = "3"
"""As the test task files set it."""
TIMEOUT_S = 600


def _video_name(doc: dict) -> str:
    return Path(doc["video"]).stem


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    """`$MERV_EVAL_DATA` with the authors' files of the test questions: `merv_test_qa` (open-ended) and
    `merv_test_mcq`, sharing one video folder."""
    root = tmp_path_factory.mktemp("eval_data")
    videos = root / "videos"
    videos.mkdir()
    for doc in CHAT_DOCS:
        target = videos / Path(doc["video"]).name
        if not target.exists():
            target.symlink_to((REPO / doc["video"]).resolve())
    benchmarks = {
        "merv_test_qa": (
            [
                {"question_id": d["question_id"], "video_name": _video_name(d), "question": d["prompt"]}
                for d in CHAT_DOCS
            ],
            [{"question_id": d["question_id"], "answer": d["answer"]} for d in CHAT_DOCS],
        ),
        "merv_test_mcq": (
            [
                {
                    "question_id": d["question_id"],
                    "video_name": _video_name(d),
                    "question": d["prompt"],
                    "options": MCQ_OPTIONS[d["question_id"]][0],
                }
                for d in CHAT_DOCS
            ],
            [{"question_id": d["question_id"], "answer_id": MCQ_OPTIONS[d["question_id"]][1]} for d in CHAT_DOCS],
        ),
    }
    for name, (questions, answers) in benchmarks.items():
        (root / name).mkdir()
        (root / name / "videos").symlink_to(videos)
        (root / name / "test_q.json").write_text(json.dumps(questions))
        (root / name / "test_a.json").write_text(json.dumps(answers))
    return root


def _environment(eval_data: Path) -> dict[str, str]:
    return os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MERV_EVAL_DATA": str(eval_data)}


def run_lmms_eval(task: str, eval_data: Path, output: Path, *flags: str) -> subprocess.CompletedProcess:
    """Run lmms-eval's command, `lmms-eval --model merv` (the shipped default model), on a test task."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "lmms-eval"),
            "--model",
            "merv",
            "--tasks",
            task,
            "--include_path",
            str(TASKS),
            "--output_path",
            str(output),
            "--log_samples",
            *flags,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_environment(eval_data),
        timeout=TIMEOUT_S,
    )


def lmms_eval(task: str, eval_data: Path, output: Path, *flags: str) -> list[dict]:
    """`run_lmms_eval`, which must succeed; its logged samples in doc order."""
    completed = run_lmms_eval(task, eval_data, output, *flags)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return logged_samples(task, output)


def logged_samples(task: str, output: Path) -> list[dict]:
    """The samples lmms-eval logged for `task` under `output`, in doc order."""
    (samples,) = output.rglob(f"*_samples_{task}.jsonl")
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    return sorted(records, key=lambda record: record["doc_id"])


def merv_eval(benchmark: Path, mode: str, output: Path) -> list[dict]:
    """`merv eval` on the same files; its entries in question order."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "transformers_merv.cli",
            "eval",
            "--questions",
            str(benchmark / "test_q.json"),
            "--answers",
            str(benchmark / "test_a.json"),
            "--video-dir",
            str(benchmark / "videos"),
            "--mode",
            mode,
            "--output",
            str(output),
            "--max-new-tokens",
            MAX_NEW_TOKENS,
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        timeout=TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(output.read_text())["results"]


@pytest.fixture(scope="module")
def open_ended_predictions(eval_data, tmp_path_factory) -> list[str]:
    results = merv_eval(eval_data / "merv_test_qa", OPEN_ENDED, tmp_path_factory.mktemp("merv") / "results.json")
    return [entry["prediction"] for entry in results]


def test_package_task_generates_what_merv_eval_answers(eval_data, open_ended_predictions, tmp_path):
    samples = lmms_eval("merv_test_qa", eval_data, tmp_path)
    assert [sample["filtered_resps"] for sample in samples] == open_ended_predictions
    assert len(set(open_ended_predictions)) > 1  # the questions get different answers
    expected = [normalize_answer(entry) == doc["answer"] for entry, doc in zip(open_ended_predictions, CHAT_DOCS)]
    assert [sample["accuracy"] for sample in samples] == expected


def test_chat_messages_of_a_plain_task_in_batches(eval_data, open_ended_predictions, tmp_path):
    samples = lmms_eval("merv_test_chat", eval_data, tmp_path, "--batch_size", "2")
    assert [sample["filtered_resps"] for sample in samples] == open_ended_predictions


def test_simple_model_generates_the_same(eval_data, open_ended_predictions, tmp_path):
    samples = lmms_eval("merv_test_chat", eval_data, tmp_path, "--force_simple")
    assert [sample["filtered_resps"] for sample in samples] == open_ended_predictions


def test_option_likelihood_picks_what_merv_eval_picks(eval_data, tmp_path):
    results = merv_eval(eval_data / "merv_test_mcq", MCQ, tmp_path / "mcq.json")
    samples = lmms_eval("merv_test_mcq", eval_data, tmp_path / "lmms", "--batch_size", "2")
    picked = []
    for sample in samples:
        likelihoods = [float(likelihood) for likelihood, _ in sample["filtered_resps"]]
        picked.append(OPTION_LETTERS[likelihoods.index(max(likelihoods))])
    assert picked == [entry["prediction"] for entry in results]
    assert [sample["accuracy"] for sample in samples] == [entry["correct"] for entry in results]


# --- from a feature store -------------------------------------------------------------------------------------------


def _store_model(dtype: str = AUTO):
    """The shipped model and processor as the plugin loads them (`dtype=auto` by default)."""
    model_id = str(default_model_path())
    return load_model(model_id, torch.device("cpu"), dtype), load_processor(model_id)


def test_answers_from_a_feature_store_equal_live_answers(eval_data, open_ended_predictions, tmp_path):
    videos = sorted({(REPO / doc["video"]).resolve() for doc in CHAT_DOCS})
    store = build_feature_store(tmp_path / "store", *_store_model(), videos[1:])  # the first video is missing
    completed = run_lmms_eval(
        "merv_test_qa", eval_data, tmp_path / "out", "--model_args", f"features={store.path},add_to_store=True"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    samples = logged_samples("merv_test_qa", tmp_path / "out")
    assert [sample["filtered_resps"] for sample in samples] == open_ended_predictions
    # requests are grouped by video: each video is loaded once
    assert f"{len(videos) - 1} videos read from it, 1 encoded live, 1 added to it" in completed.stderr
    assert len(FeatureStore.open(store.path)) == len(videos)


def test_a_feature_store_of_other_settings_is_refused(eval_data, tmp_path):
    store = FeatureStore.create(tmp_path / "store", feature_fingerprint(*_store_model("float32"), torch.float32))
    completed = run_lmms_eval(
        "merv_test_qa", eval_data, tmp_path / "out", "--model_args", f"features={store.path},dtype=bfloat16"
    )
    # lmms-eval 0.7.3 logs the error of a model that cannot start, writes no samples and exits with status 0
    refusal = 'its features were computed with other settings or weights (dtype: store has "float32", this model'
    assert refusal in completed.stdout + completed.stderr
    assert not list((tmp_path / "out").rglob("*_samples_*.jsonl"))


def test_generation_kwargs_are_greedy_unless_sampling_is_asked_for():
    from transformers_merv.integrations.lmms_eval.model import _generation_kwargs

    task = {
        "until": ["\n\n"],
        "max_new_tokens": 64,
        "temperature": 0,
        "top_p": 1.0,
        "num_beams": 1,
        "do_sample": False,
    }
    assert _generation_kwargs(task | {"image_aspect_ratio": "original"}) == {
        "do_sample": False,
        "max_new_tokens": 64,
        "num_beams": 1,
    }
    assert _generation_kwargs(task | {"temperature": 0.2}) == {
        "do_sample": True,
        "max_new_tokens": 64,
        "temperature": 0.2,
        "top_p": 1.0,
        "num_beams": 1,
    }


def test_an_unreadable_video_leaves_its_requests_unanswered_and_the_others_answered():
    from transformers_merv.integrations.lmms_eval.model import Merv, VideoRequest

    model = Merv()
    question = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": CHAT_DOCS[0]["prompt"]}]}]
    videos = [str(MEDIA / "corrupted.mp4"), str(REPO / CHAT_DOCS[0]["video"])]
    generation = (("do_sample", False), ("max_new_tokens", 3))
    with pytest.warns(UserWarning, match=r"1 request\(s\) about .*corrupted.mp4 are not answered"):
        answers = model._generate([VideoRequest(question, video, generation=generation) for video in videos])
    assert answers == ["", CHAT_DOCS[0]["answer"]]
    answer = " " + CHAT_DOCS[0]["answer"]
    with pytest.warns(UserWarning, match="corrupted.mp4"):
        scores = model._score([VideoRequest(question, video, continuation=answer) for video in videos])
    assert scores[0] == (-math.inf, False)
    assert scores[1][0] < 0 and scores[1][1]  # the answer it generates is the greedy continuation
