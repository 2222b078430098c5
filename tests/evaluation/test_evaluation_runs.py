"""`merv eval` at scale: sharding by video, the results log and the output lock, and end to end in subprocesses:
two processes under torchrun (gloo) write what one process writes, a killed run resumes to the same output, a
second run on a locked output is refused, and runs from a feature store (`--features`) write what live runs write,
add what the store lacks (`--add-to-store`, kept when the run is terminated) and refuse a store of other settings."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from accelerate import PartialState
from filelock import FileLock

import transformers_merv
from transformers_merv.evaluation import (
    OPEN_ENDED,
    EvalItem,
    EvaluationInputError,
    EvaluationRunError,
    ResultsLog,
    evaluate,
    load_items,
    output_lock,
    run_evaluation,
    shard_by_video,
    summary_table,
    work_groups,
)
from transformers_merv.evaluation import runs
from transformers_merv.evaluation.output_files import SETTINGS_KEY
from transformers_merv.evaluation.scoring import open_ended_entry
from transformers_merv.inference.loading import load_model, load_processor
from transformers_merv.evaluation.runs import (
    COLLECTIVE_TIMEOUT,
    EXIT_TERMINATED,
    from_main_process,
    launched_processes,
)
from transformers_merv import MervVideoProcessor
from transformers_merv.inference.feature_store import FeatureStore, FeatureStoreError, feature_fingerprint
from transformers_merv.inference.loading import AUTO

from conftest import EXAMPLE_VIDEO, MEDIA, build_feature_store, error_line

SUBPROCESS_TIMEOUT_S = 600
POLL_S = 0.02
LOCK_WAIT_S = 0.5
"""How long an append is seen waiting for a held lock."""
VIDEOS = {
    "circle": EXAMPLE_VIDEO,
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


@pytest.fixture(autouse=True)
def no_process_state():
    """Each test starts without the process state of an earlier test in this process (transformers' `Trainer`
    leaves accelerate's configured)."""
    PartialState._reset_state()


def _items(videos: list[str]) -> list[EvalItem]:
    return [
        EvalItem(question_id=f"q{index}", video_name=video, question="?", prompt="?", answer="a")
        for index, video in enumerate(videos)
    ]


# --- pieces ----------------------------------------------------------------------------------------------------------


def test_every_video_goes_to_one_process_and_the_load_is_balanced():
    items = _items(["a", "b", "a", "c", "d", "a", "b", "e"])
    groups = work_groups(items, batch_size=2, per_question=False)
    shards = [shard_by_video(groups, rank, 2) for rank in range(2)]
    owners = {group[0].video_name: rank for rank, shard in enumerate(shards) for group in shard}
    assert sorted(item.question_id for shard in shards for group in shard for item in group) == sorted(
        item.question_id for item in items
    )
    assert owners == {"a": 0, "b": 1, "c": 1, "d": 0, "e": 1}  # loads after each: 3|0, 3|2, 3|3, 4|3 (tie), 4|4
    assert [sum(map(len, shard)) for shard in shards] == [4, 4]
    assert shard_by_video(groups, 0, 1) == groups


def test_per_question_batches_stay_within_one_video():
    groups = work_groups(_items(["a", "b", "a", "a", "b"]), batch_size=2, per_question=True)
    assert [[item.question_id for item in group] for group in groups] == [["q0", "q2"], ["q3"], ["q1", "q4"]]


def test_a_plain_run_is_one_process_and_leaves_no_state_behind():
    with launched_processes("cpu") as (state, device):
        assert (state.process_index, state.num_processes, state.is_main_process) == (0, 1, True)
        assert device == torch.device("cpu") and not torch.distributed.is_initialized()
        assert from_main_process("mine") == "mine"
    assert PartialState._shared_state == {}


def test_a_state_the_caller_configured_is_used_and_kept():
    configured = PartialState(cpu=True)
    try:
        with launched_processes("cpu") as (state, _):
            assert state.__dict__ is configured.__dict__
        assert PartialState._shared_state != {}
    finally:
        PartialState._reset_state()


def test_launched_processes_join_a_gloo_group_with_the_long_timeout_and_leave_it(monkeypatch):
    """A launcher's environment (here a world of one process, local rank 1 of its machine): the process group is
    gloo on the CPU, with `COLLECTIVE_TIMEOUT`; the device comes from the device policy for the local rank; the group
    and the state are gone after the block."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    launcher |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    init = mock.patch.object(torch.distributed, "init_process_group", wraps=torch.distributed.init_process_group)
    policy = mock.patch.object(runs, "resolve_device", wraps=runs.resolve_device)
    with init as init_process_group, policy as resolve_device:
        with launched_processes() as (state, device):
            assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
            assert (state.process_index, state.num_processes, state.local_process_index) == (0, 1, 1)
            assert from_main_process("mine") == "mine"
    assert init_process_group.call_args.kwargs["timeout"] == COLLECTIVE_TIMEOUT
    assert resolve_device.call_args == mock.call(None, process_index=1) and device == torch.device("cpu")
    assert not torch.distributed.is_initialized() and PartialState._shared_state == {}


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


def test_a_held_lock_refuses_a_second_run_and_stale_lock_files_do_not(tmp_path):
    output = tmp_path / "results.json"
    lock_file, holder_file = tmp_path / "results.json.lock", tmp_path / "results.json.holder"
    lock_file.write_text("")  # left by a killed run: no process holds it
    holder_file.write_text("pid 1 on a machine that crashed\n")
    with output_lock(output):
        assert holder_file.read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
        with pytest.raises(EvaluationRunError, match=f"another merv eval \\(pid {os.getpid()} on "):
            with output_lock(output):
                pass
        assert holder_file.exists()  # the refused run leaves the holder's record alone
    assert not lock_file.exists() and not holder_file.exists()
    with output_lock(output):
        pass


def test_appends_to_the_log_wait_for_its_lock(tmp_path):
    """Each process appends its lines under the log's lock, so lines of different processes never interleave."""
    log = ResultsLog(tmp_path / "results.json")
    log.prepare({"mode": "mcq"})
    with FileLock(f"{log.path}.lock"):  # another process is appending
        writer = threading.Thread(target=log.append, args=([{"question_id": "1"}],))
        writer.start()
        writer.join(timeout=LOCK_WAIT_S)
        assert writer.is_alive() and log.records() == {}
    writer.join()
    assert log.records() == {"1": {"question_id": "1"}}
    log.remove()
    assert not log.path.exists() and not Path(f"{log.path}.lock").exists()


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


def _stop_once_answering(command: list[str], log: Path, stop: signal.Signals) -> int:
    """Run `merv COMMAND`, send it `stop` once its results log holds an answer, and return its exit status."""
    run = subprocess.Popen(
        [sys.executable, "-m", "transformers_merv.cli", *command],
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not (log.exists() and len(log.read_text().splitlines()) > 1) and time.monotonic() < deadline:
            assert run.poll() is None, "the run ended before it could be stopped"
            time.sleep(POLL_S)
        run.send_signal(stop)
    finally:
        run.wait()
    return run.returncode


def test_a_killed_run_resumes_to_the_same_output(benchmark, single_process_output, tmp_path):
    output, log = tmp_path / "results.json", tmp_path / "results.json.partial.jsonl"
    video_dir = tmp_path / "videos"
    video_dir.mkdir()
    for path in (benchmark / "videos").iterdir():
        (video_dir / path.name).symlink_to(path.resolve())
    command = _eval_command(benchmark, output, video_dir)
    _stop_once_answering(command, log, signal.SIGKILL)
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


# --- from a feature store -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auto_model():
    """The default model and processor as `merv eval` loads them here (`--dtype auto`: bfloat16 on a CPU with native
    bf16, else float32)."""
    model_id = str(transformers_merv.default_model_path())
    return load_model(model_id, torch.device("cpu"), AUTO), load_processor(model_id)


@pytest.fixture(scope="module")
def benchmark_store(benchmark, auto_model, tmp_path_factory) -> Path:
    """A feature store of the benchmark's videos for `auto_model` (the corrupt one recorded as unreadable)."""
    path = tmp_path_factory.mktemp("features") / "store"
    build_feature_store(path, *auto_model, sorted((benchmark / "videos").iterdir()))
    return path


def test_a_run_from_a_feature_store_writes_what_the_live_run_writes(
    benchmark, single_process_output, benchmark_store, tmp_path
):
    output = tmp_path / "results.json"
    completed = _merv(*_eval_command(benchmark, output), "--features", str(benchmark_store))
    assert completed.returncode == 0, completed.stderr
    assert output.read_bytes() == single_process_output
    report = f"feature store {benchmark_store}: 3 videos read from it, 0 encoded live, 1 recorded as unreadable"
    assert report in completed.stderr


def test_per_question_from_a_feature_store_answers_without_decoding(
    benchmark, single_process_output, benchmark_store, tmp_path
):
    arguments = _run_arguments(benchmark, tmp_path / "results.json") | {"dtype": AUTO, "per_question": True}
    with mock.patch.object(
        MervVideoProcessor, "preprocess", autospec=True, side_effect=MervVideoProcessor.preprocess
    ) as decodes:
        results = run_evaluation(**arguments, features=benchmark_store)
    assert decodes.call_count == 0
    assert results == json.loads(single_process_output)


def test_a_terminated_run_keeps_what_it_added_to_the_store_and_resumes_without_it(
    benchmark, single_process_output, auto_model, tmp_path
):
    model, processor = auto_model
    store = FeatureStore.create(tmp_path / "store", feature_fingerprint(model, processor, model.dtype))
    output, log = tmp_path / "results.json", tmp_path / "results.json.partial.jsonl"
    command = [*_eval_command(benchmark, output), "--features", str(store.path), "--add-to-store"]
    assert _stop_once_answering(command, log, signal.SIGTERM) == EXIT_TERMINATED
    videos = {item["question_id"]: item["video_name"] for item in json.loads((benchmark / "test_q.json").read_text())}
    recorded = {videos[question_id] for question_id in ResultsLog(output).records()}
    store.refresh()
    for name in recorded:  # the writer completed its shard (a minute early) on SIGTERM
        key = store.key_for(next((benchmark / "videos").glob(f"{name}.*")))
        assert key in store or "corrupt" in store.failure(key)
    # the store's use is not a setting: the run resumes without it
    completed = _merv(*_eval_command(benchmark, output))
    assert completed.returncode == 0, completed.stderr
    assert "resuming from" in completed.stderr and output.read_bytes() == single_process_output


def test_a_store_of_other_settings_is_refused_before_any_question(benchmark, auto_model, tmp_path):
    model_id = str(transformers_merv.default_model_path())
    float32 = load_model(model_id, torch.device("cpu"), "float32")
    store = FeatureStore.create(tmp_path / "store", feature_fingerprint(float32, auto_model[1], torch.float32))
    output = tmp_path / "results.json"
    completed = _merv(*_eval_command(benchmark, output), "--dtype", "bfloat16", "--features", str(store.path))
    assert completed.returncode == 1
    line = error_line(completed.stderr)
    assert line.startswith(
        f"error: {store.path}: its features were computed with other settings or weights (dtype: store has "
        '"float32", this model and processor give "bfloat16"; encoders.dinov2.compute_dtype: store has "float32"'
    )
    assert line.endswith(
        "use the model, processor and dtype it was built with, or build a new store with `merv encode`"
    )
    assert ResultsLog(output).records() == {} and not output.exists()


# --- the library entry point, in this process ------------------------------------------------------------------------


def _run_arguments(benchmark: Path, output: Path) -> dict:
    return {
        "questions": benchmark / "test_q.json",
        "answers": benchmark / "test_a.json",
        "video_dir": benchmark / "videos",
        "mode": OPEN_ENDED,
        "output": output,
        "model_id": str(transformers_merv.default_model_path()),
        "dtype": "float32",
        "batch_size": 2,
        "max_new_tokens": 3,
        "progress": False,
    }


def _sources(arguments: dict) -> dict[str, str]:
    names = {"model": "model_id", "questions_file": "questions", "answers_file": "answers", "video_dir": "video_dir"}
    return {key: str(arguments[name]) for key, name in names.items()}


def test_a_run_writes_what_evaluate_gives_and_leaves_no_other_file(benchmark, tmp_path):
    arguments = _run_arguments(benchmark, tmp_path / "results.json")
    results = run_evaluation(**arguments)
    assert json.loads(arguments["output"].read_text()) == results
    assert [path.name for path in tmp_path.iterdir()] == ["results.json"]
    model_id = arguments["model_id"]
    model, processor = load_model(model_id, torch.device("cpu"), "float32"), load_processor(model_id)
    items = load_items(arguments["questions"], arguments["answers"], OPEN_ENDED)
    reference = evaluate(
        model,
        processor,
        items,
        arguments["video_dir"],
        OPEN_ENDED,
        batch_size=2,
        generation_kwargs={"max_new_tokens": 3},
        progress=False,
    )
    assert results["results"] == reference["results"]
    assert results["summary"] == _sources(arguments) | reference["summary"]
    assert list(results["summary"])[:4] == ["model", "questions_file", "answers_file", "video_dir"]


def test_a_run_takes_the_recorded_answers_from_its_log(benchmark, tmp_path, capsys):
    arguments = _run_arguments(benchmark, tmp_path / "results.json") | {"limit": 4}
    settings = {"mode": OPEN_ENDED, "max_new_tokens": 3, "batch_size": 2, "per_question": False, "dtype": "float32"}
    log = ResultsLog(arguments["output"])
    log.prepare(_sources(arguments) | settings | {"judge": None})
    first = load_items(arguments["questions"], arguments["answers"], OPEN_ENDED, limit=1)[0]
    recorded = open_ended_entry(first, "recorded before", None)
    log.append([recorded])
    results = run_evaluation(**arguments)
    assert results["results"][0] == recorded and len(results["results"]) == 4
    assert f"resuming from {log.path}: 1 of 4 questions done" in capsys.readouterr().err
    assert not log.path.exists()


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"mode": "mcq", "judge": "judges:always"}, EvaluationInputError, "--judge scores open-ended answers only"),
        ({"batch_size": 0}, EvaluationInputError, "batch size must be >= 1, got 0"),
        ({"limit": 0}, EvaluationInputError, "limit must be >= 1, got 0"),
        ({"dtype": "int3"}, ValueError, r"dtype must be one of \('auto', 'float32', .*\), got 'int3'"),
        ({"questions": Path("no/such.json")}, EvaluationInputError, r"cannot read no/such\.json"),
        ({"video_dir": Path("no/such/folder")}, EvaluationInputError, "--video-dir no/such/folder is not a directory"),
        ({"judge": "no_such_module:judge"}, EvaluationInputError, "cannot load judge 'no_such_module:judge'"),
        ({"device": "xpu"}, ValueError, "device 'xpu' is not available on this machine"),
        ({"features": Path("no/such/store")}, FeatureStoreError, r"no/such/store: not a feature store \(no store"),
        ({"add_to_store": True}, EvaluationInputError, r"add_to_store needs a feature store to add to \(features\)"),
    ],
    ids=[
        "judge-with-mcq",
        "batch-size",
        "limit",
        "dtype",
        "questions",
        "video-dir",
        "judge",
        "device",
        "features",
        "add-to-store",
    ],
)
def test_bad_arguments_are_refused_before_any_model_work(benchmark, tmp_path, changes, error, message):
    with mock.patch.object(runs, "load_model") as loader, pytest.raises(error, match=message):
        run_evaluation(**_run_arguments(benchmark, tmp_path / "results.json") | changes)
    loader.assert_not_called()
    assert not any(tmp_path.iterdir()) and PartialState._shared_state == {}


def test_a_run_refuses_an_output_another_run_holds(benchmark, tmp_path):
    output = tmp_path / "results.json"
    holder = rf"\(pid {os.getpid()} on {re.escape(socket.gethostname())}\)"
    with output_lock(output), mock.patch.object(runs, "load_model") as loader:
        with pytest.raises(EvaluationRunError, match=f"{re.escape(str(output))} is being written by .*{holder}"):
            run_evaluation(**_run_arguments(benchmark, output))
    loader.assert_not_called()
    assert PartialState._shared_state == {}


def test_a_run_refuses_a_log_written_with_other_settings(benchmark, tmp_path):
    arguments = _run_arguments(benchmark, tmp_path / "results.json")
    ResultsLog(arguments["output"]).prepare(_sources(arguments) | {"mode": OPEN_ENDED, "max_new_tokens": 5})
    with mock.patch.object(runs, "load_model") as loader:
        with pytest.raises(EvaluationRunError, match=r"other settings \(.*max_new_tokens.*\); rerun with the same"):
            run_evaluation(**arguments)
    loader.assert_not_called()
    assert not arguments["output"].exists()
