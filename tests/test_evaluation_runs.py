"""`merv eval` at scale: sharding by video, the results log and the output lock, and end to end in subprocesses:
two processes under torchrun (gloo) write what one process writes, a killed run resumes to the same output, and a
second run on a locked output is refused."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import transformers_merv
from transformers_merv.evaluation import OPEN_ENDED, EvalItem
from transformers_merv.evaluation_runs import (
    SETTINGS_KEY,
    EvaluationRunError,
    Processes,
    ResultsLog,
    output_lock,
    shard_by_video,
    summary_table,
    work_groups,
)

from conftest import MEDIA

REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT_S = 600
POLL_S = 0.02
VIDEOS = {
    "circle": REPO / "examples" / "example.mp4",
    "pancake": MEDIA / "flipping_a_pancake.mkv",
    "short": MEDIA / "video_0.mov",
    "broken": MEDIA / "corrupted.mp4",
}
QUESTIONS = {
    "color": "What color is the circle?",
    "direction": "Which way does the red circle move?",
    "speed": "How fast does the red circle move?",
}
ANSWERS = {"color": "red", "direction": "right", "speed": "fast"}


def _items(videos: list[str]) -> list[EvalItem]:
    return [
        EvalItem(question_id=f"q{index}", video_name=video, question="?", prompt="?", answer="a")
        for index, video in enumerate(videos)
    ]


# --- pieces ----------------------------------------------------------------------------------------------------------


def test_every_video_goes_to_one_process_and_the_load_is_balanced():
    items = _items(["a", "b", "a", "c", "d", "a", "b", "e"])
    groups = work_groups(items, batch_size=2, per_question=False)
    shards = [shard_by_video(groups, Processes(rank, 2)) for rank in range(2)]
    owners = {group[0].video_name: rank for rank, shard in enumerate(shards) for group in shard}
    assert sorted(item.question_id for shard in shards for group in shard for item in group) == sorted(
        item.question_id for item in items
    )
    assert owners == {"a": 0, "b": 1, "c": 1, "d": 0, "e": 1}  # loads after each: 3|0, 3|2, 3|3, 4|3 (tie), 4|4
    assert [sum(map(len, shard)) for shard in shards] == [4, 4]
    assert shard_by_video(groups, Processes()) == groups


def test_per_question_batches_stay_within_one_video():
    groups = work_groups(_items(["a", "b", "a", "a", "b"]), batch_size=2, per_question=True)
    assert [[item.question_id for item in group] for group in groups] == [["q0", "q2"], ["q3"], ["q1", "q4"]]


def test_processes_come_from_the_launcher_environment(monkeypatch):
    assert Processes.from_environment() == Processes(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Processes.from_environment() == Processes(3, 4, 1)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(EvaluationRunError, match="must be integers"):
        Processes.from_environment()


def test_the_log_resumes_only_with_the_same_settings_and_drops_a_torn_line(tmp_path):
    log = ResultsLog(tmp_path / "results.json")
    log.prepare({"mode": "mcq"})
    log.append([{"question_id": "1", "prediction": "A"}, {"question_id": "2", "prediction": "B"}])
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('{"question_id": "3", "predic')  # a run killed in the middle of a write
    ResultsLog(tmp_path / "results.json").prepare({"mode": "mcq"})
    assert log.records() == {
        "1": {"question_id": "1", "prediction": "A"},
        "2": {"question_id": "2", "prediction": "B"},
    }
    assert json.loads(log.path.read_text().splitlines()[0]) == {SETTINGS_KEY: {"mode": "mcq"}}
    with pytest.raises(EvaluationRunError, match=r"other settings \(mode\)"):
        log.prepare({"mode": "open-ended"})


def test_a_held_lock_refuses_a_second_run_and_a_stale_lock_file_does_not(tmp_path):
    output = tmp_path / "results.json"
    lock_file = tmp_path / "results.json.lock"
    lock_file.write_text("pid 1 on a machine that crashed\n")  # left by a killed run: no process holds it
    with output_lock(output):
        assert lock_file.read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
        with pytest.raises(EvaluationRunError, match=f"another merv eval \\(pid {os.getpid()} "):
            with output_lock(output):
                pass
    assert not lock_file.exists()
    with output_lock(output):
        pass


def test_summary_table_lists_every_question_type():
    rates = {"evaluated": 2, "correct": 1, "accuracy": 0.5, "naive_accuracy": 0.0}
    summary = {"mode": "mcq", "skipped": 1, "total": 3, **rates, "per_question_type": {"color": rates}}
    lines = summary_table(summary).splitlines()
    assert lines[0] == "mcq: accuracy 50.0% (1/2 questions; 1 skipped)"
    assert lines[1].split() == ["question", "type", "questions", "correct", "accuracy", "naive"]
    assert lines[3].split() == ["all", "2", "1", "50.0%", "0.0%"]
    assert lines[4].split() == ["color", "2", "1", "50.0%", "0.0%"]


# --- end to end ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    """Four videos (one corrupt) and twelve open-ended questions about them, interleaved."""
    root = tmp_path_factory.mktemp("eval-runs")
    (root / "videos").mkdir()
    for name, path in VIDEOS.items():
        (root / "videos" / f"{name}{path.suffix}").symlink_to(path)
    questions, answers = [], []
    for index in range(12):
        kind = list(QUESTIONS)[index % len(QUESTIONS)]
        video = list(VIDEOS)[index % len(VIDEOS)]
        questions.append({"question_id": f"q{index}", "video_name": video, "question": QUESTIONS[kind]})
        questions[-1]["question_type"] = kind
        answers.append({"question_id": f"q{index}", "answer": ANSWERS[kind]})
    (root / "test_q.json").write_text(json.dumps(questions))
    (root / "test_a.json").write_text(json.dumps(answers))
    return root


def _eval_command(benchmark: Path, output: Path, video_dir: Path | None = None) -> list[str]:
    return [
        "eval",
        "--questions",
        str(benchmark / "test_q.json"),
        "--answers",
        str(benchmark / "test_a.json"),
        "--video-dir",
        str(video_dir or benchmark / "videos"),
        "--mode",
        OPEN_ENDED,
        "--output",
        str(output),
        "--max-new-tokens",
        "3",
        "--batch-size",
        "2",
        "--model",
        str(transformers_merv.default_model_path()),
    ]


def _environment() -> dict[str, str]:
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {key: value for key, value in os.environ.items() if key not in launcher} | {"HF_HUB_OFFLINE": "1"}


def _merv(*args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *(launcher or ("-m", "transformers_merv.cli")), *args],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=SUBPROCESS_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def single_process_output(benchmark, tmp_path_factory) -> bytes:
    output = tmp_path_factory.mktemp("single") / "results.json"
    completed = _merv(*_eval_command(benchmark, output))
    assert completed.returncode == 0, completed.stderr
    assert "open-ended: accuracy" in completed.stdout and "question type" in completed.stdout
    assert "question/s" in completed.stderr  # the progress bar's rate
    assert not Path(f"{output}.partial.jsonl").exists() and not Path(f"{output}.lock").exists()
    return output.read_bytes()


def test_two_processes_write_what_one_process_writes(benchmark, single_process_output, tmp_path):
    output = tmp_path / "results.json"
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "transformers_merv.cli")
    completed = _merv(*_eval_command(benchmark, output), launcher=torchrun)
    assert completed.returncode == 0, completed.stderr
    # both processes answered: the four videos' 12 questions split 6 / 6 (2 videos each)
    assert "process 0 of 2: 6 questions about 2 videos, 0 already done" in completed.stderr
    assert "process 1 of 2: 6 questions about 2 videos, 0 already done" in completed.stderr
    assert output.read_bytes() == single_process_output
    results = json.loads(single_process_output)
    assert results["summary"]["skipped"] == 3 and len(results["results"]) == 12  # the corrupt video's questions


def test_a_killed_run_resumes_to_the_same_output(benchmark, single_process_output, tmp_path):
    output, log = tmp_path / "results.json", tmp_path / "results.json.partial.jsonl"
    video_dir = tmp_path / "videos"
    video_dir.mkdir()
    for path in (benchmark / "videos").iterdir():
        (video_dir / path.name).symlink_to(path.resolve())
    command = _eval_command(benchmark, output, video_dir)
    run = subprocess.Popen(
        [sys.executable, "-m", "transformers_merv.cli", *command],
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not (log.exists() and len(log.read_text().splitlines()) > 1) and time.monotonic() < deadline:
            assert run.poll() is None, "the run ended before it could be killed"
            time.sleep(POLL_S)
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait()
    recorded = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    assert 0 < len(recorded) < 12 and not output.exists()
    # The rerun must take these answers from the log: their videos are gone now (answering them again would skip them).
    done_questions = {entry["question_id"] for entry in recorded}
    for item in json.loads((benchmark / "test_q.json").read_text()):
        if item["question_id"] in done_questions:
            for path in video_dir.glob(f"{item['video_name']}.*"):
                path.unlink()
    completed = _merv(*command)
    assert completed.returncode == 0, completed.stderr
    assert f"resuming from {log}: {len(recorded)} of 12 questions done" in completed.stderr
    # the same bytes, but for the video folder's name (in the summary and the skip reasons)
    assert output.read_bytes() == single_process_output.replace(bytes(benchmark / "videos"), bytes(video_dir))
    assert not log.exists()


def test_a_second_run_on_the_same_output_is_refused(benchmark, tmp_path):
    output = tmp_path / "results.json"
    with output_lock(output):
        completed = _merv(*_eval_command(benchmark, output))
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        f"error: {output} is being written by another merv eval (pid {os.getpid()} on {socket.gethostname()}); "
        "wait for it to finish, or choose another --output"
    )


def test_resuming_with_other_settings_is_refused(benchmark, tmp_path):
    output = tmp_path / "results.json"
    Path(f"{output}.partial.jsonl").write_text(json.dumps({SETTINGS_KEY: {"mode": "mcq"}}) + "\n")
    completed = _merv(*_eval_command(benchmark, output))
    assert completed.returncode == 1
    assert "holds results of a run with other settings" in completed.stderr
    assert "rerun with the same flags to resume it, or delete it to start over" in completed.stderr
