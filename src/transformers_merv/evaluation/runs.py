"""`merv eval` as a library function (`run_evaluation`): data-parallel over processes, resumable, with a progress bar.

    torchrun --nproc_per_node N -m transformers_merv.cli eval ...        # the same flags as `merv eval`
    accelerate launch --multi_gpu --num_processes N -m transformers_merv.cli eval ...

- **Processes:** accelerate's `PartialState` says which process this is among those the launcher started (a plain
  run is one process) and sets up their process group, with the backend accelerate picks (`gloo` on CPUs, or MPI
  where torch is built with it; `nccl` on CUDA GPUs) and a collective timeout long enough for a slow shard. Each
  process's device comes from the one device policy (`inference.devices.resolve_device`: its own accelerator by
  local rank, unless `device` names one). The questions are sharded by video: each video goes, in order of first
  appearance, to the process with the fewest questions so far, so a video is decoded and encoded by one process
  only.
- **Resumable:** every group of questions a process answers (one video's questions) is appended, one JSON record per
  question, to the results log (`output_files.ResultsLog`) as soon as it is answered. Rerunning the same command
  skips the questions recorded there and answers the rest; a killed run loses at most the groups in flight. The log's
  first line holds the settings that decide the answers (model, files, mode, generation, batching); a rerun with
  other settings is refused. At the end the first process writes `output` from the log, in question order, exactly
  as one uninterrupted single-process run writes it, and deletes the log. `output` must be on a file system every
  process sees.
- **One run per output:** the first process holds the output's lock (`output_files.output_lock`) for the whole run.
- **From a feature store:** with `features`, each process reads the videos' frozen features from the store
  (`inference.video_features.StoredVideoFeatures`, checked against the model's fingerprint before any question is
  answered); a video the store lacks is encoded live and, with `add_to_store`, added by the process's own writer,
  whose last shard is completed when the run ends, also on SIGTERM. A matching store gives the answers the live path
  gives, so its use is not one of the settings: a run may resume with or without it.
"""

import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from ..inference.devices import DTYPES, auto_dtype, resolve_device
from ..inference.feature_store import FeatureStore
from ..inference.loading import AUTO, load_model, load_processor
from ..inference.video_features import open_video_features
from .answering import DEFAULT_BATCH_SIZE, Answerer, check_batch_size, question_answerer, work_groups
from .files import EvalItem, EvaluationInputError, load_items
from .judges import check_judged_mode, load_judge
from .output_files import EvaluationRunError, ResultsLog, output_lock
from .scoring import summarize, write_results


POLL_SECONDS = 1.0
"""How often the first process, done with its own questions, reads the log for the others' progress."""
COLLECTIVE_TIMEOUT = timedelta(hours=24)
"""How long a process waits for the others at a synchronisation point (a slow shard can take hours)."""
EXIT_TERMINATED = 128 + signal.SIGTERM
"""The exit status of a run ended by SIGTERM (as the shell reports a process killed by it)."""


# --- processes -------------------------------------------------------------------------------------------------------


@contextmanager
def launched_processes(device: str | torch.device | None = None) -> Iterator[tuple[PartialState, torch.device]]:
    """This process among those a launcher started (`torchrun`, `accelerate launch`; a plain run is one process),
    with its process group set up for the block, and its device: `resolve_device(device, process_index=its local
    rank)`. A state accelerate was already given (an `Accelerator` of the caller) is used as it is and left alone;
    one set up here is torn down (process group and state) when the block ends."""
    configured = PartialState._shared_state != {}  # as transformers' TrainingArguments tells a configured state
    on_cpu = resolve_device(device).type == "cpu"
    state = PartialState(cpu=on_cpu, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield state, resolve_device(device, process_index=state.local_process_index)
    finally:
        if not configured:
            state.destroy_process_group()
            PartialState._reset_state()


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """For the block, SIGTERM (what launchers and job schedulers send before killing) raises `SystemExit` in the
    main thread, so that `finally` blocks run (the feature store writer completes its shard); the handler before it
    is restored after. Elsewhere than in the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _exit_terminated(signum: int, frame: Any) -> None:
    raise SystemExit(EXIT_TERMINATED)


def from_main_process(value: Any) -> Any:
    """The first process's `value`, in every process."""
    return broadcast_object_list([value], from_process=0)[0]


def shard_by_video(
    groups: Sequence[Sequence[EvalItem]], process_index: int, num_processes: int
) -> list[Sequence[EvalItem]]:
    """The groups of process `process_index` of `num_processes`: every group of a video goes to one process, videos
    in order of first appearance each to the process with the fewest questions so far (the lowest index on a tie)."""
    owner: dict[str, int] = {}
    load = [0] * num_processes
    mine = []
    for group in groups:
        video = group[0].video_name
        if video not in owner:
            owner[video] = min(range(num_processes), key=lambda index: (load[index], index))
        load[owner[video]] += len(group)
        if owner[video] == process_index:
            mine.append(group)
    return mine


# --- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationRun:
    """One evaluation over `items` by every launched process, resuming from and appending to the results log."""

    items: Sequence[EvalItem]
    mode: str
    output: Path
    sources: Mapping[str, str]
    """The model and the files, put first in the output's summary."""
    settings: Mapping[str, Any]
    """What decides the answers (with `sources`); a log written with other settings is not resumed."""
    state: PartialState
    batch_size: int
    per_question: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.log = ResultsLog(self.output)

    def prepare(self) -> None:
        """The first process starts or checks the log; every process gets its error, if any."""
        error = None
        if self.state.is_main_process:
            try:
                self.log.prepare(dict(self.sources) | dict(self.settings))
            except (EvaluationRunError, OSError, ValueError) as err:
                error = str(err)
        error = from_main_process(error)
        if error is not None:
            raise EvaluationRunError(error)

    def run(self, answer: Answerer) -> dict[str, Any] | None:
        """Answer this process's questions not yet recorded (`answer(group)` -> entries by question id), wait for
        the others, and, in the first process, write `output` and return it (`None` in the others)."""
        groups = work_groups(self.items, self.batch_size, self.per_question)
        groups = shard_by_video(groups, self.state.process_index, self.state.num_processes)
        done = set(self.log.records())
        pending = [group for group in groups if any(item.question_id not in done for item in group)]
        self._report(groups, pending)
        main = self.state.is_main_process
        progress = _Progress(self.log, self.items, self.mode) if main and self.progress else None
        for group in pending:
            entries = answer(group)
            self.log.append(entries[item.question_id] for item in group)
            if progress:
                progress.update()
        if progress:
            progress.finish()
        self.state.wait_for_everyone()
        return self._gather() if main else None

    def _report(self, groups: Sequence[Sequence[EvalItem]], pending: Sequence[Sequence[EvalItem]]) -> None:
        """One stderr line per process when there are several, or when a run resumes."""
        questions, left = sum(map(len, groups)), sum(map(len, pending))
        if self.state.num_processes > 1:
            videos = len({group[0].video_name for group in groups})
            print(
                f"process {self.state.process_index} of {self.state.num_processes}: {questions} questions about "
                f"{videos} videos, {questions - left} already done",
                file=sys.stderr,
            )
        elif left < questions:
            print(f"resuming from {self.log.path}: {questions - left} of {questions} questions done", file=sys.stderr)

    def _gather(self) -> dict[str, Any]:
        records = self.log.records()
        results = [records[item.question_id] for item in self.items]
        output = {"summary": dict(self.sources) | summarize(results, self.mode), "results": results}
        write_results(self.output, output)
        self.log.remove()
        return output


class _Progress:
    """The first process's bar over the questions of every process, read from the log: questions/s and the ETA
    of this run (questions recorded before it count as done from the start)."""

    def __init__(self, log: ResultsLog, items: Sequence[EvalItem], mode: str):
        self.log = log
        self.wanted = {item.question_id for item in items}
        self.seen = self._new()
        self.bar = tqdm(total=len(self.wanted), initial=len(self.seen), desc=f"eval ({mode})", unit="question")

    def _new(self) -> set[str]:
        return set(self.log.new_question_ids()) & self.wanted - getattr(self, "seen", set())

    def update(self) -> None:
        new = self._new()
        self.seen |= new
        self.bar.update(len(new))

    def finish(self) -> None:
        """Follow the other processes until every question is recorded."""
        while len(self.seen) < len(self.wanted):
            time.sleep(POLL_SECONDS)
            self.update()
        self.bar.close()


# --- the library entry point -----------------------------------------------------------------------------------------


def run_evaluation(
    questions: str | Path,
    answers: str | Path,
    video_dir: str | Path,
    mode: str,
    output: str | Path,
    model_id: str,
    device: str | torch.device | None = None,
    dtype: str = AUTO,
    batch_size: int = DEFAULT_BATCH_SIZE,
    limit: int | None = None,
    per_question: bool = False,
    max_new_tokens: int | None = None,
    judge: str | None = None,
    progress: bool = True,
    features: str | Path | None = None,
    add_to_store: bool = False,
) -> dict[str, Any] | None:
    """Evaluate `model_id` on the authors' `questions` and `answers` files (videos in `video_dir`, the first `limit`
    questions) and write the results to `output`, in this process or in each of those a launcher started (see the
    module). Decoding is greedy, `max_new_tokens` long (default: `answering.default_max_new_tokens`, or the naive
    check's length for multiple choice); `judge` names a judge of open-ended answers (`"module:callable"`).
    `features` names a feature store to read the videos' frozen features from (videos it lacks are encoded live and,
    with `add_to_store`, added to it).

    Returns `{"summary": ..., "results": ...}` as written, in the first process, and `None` in the others. The inputs
    are checked before any model work. Failures are exceptions with a one-line message naming what is wrong:
    `EvaluationInputError` (the files, `mode`, `judge`, `batch_size`, `limit`, `video_dir`), `ValueError` (`dtype`,
    an unavailable `device`), `EvaluationRunError` (`output` written by another run, or its log by a run with other
    settings), `inference.loading.ModelLoadError` (`model_id`), `inference.feature_store.FeatureStoreError`
    (`features` is not a store; after loading the model, before any question is answered: built with other settings
    or weights, `FeatureStoreMismatchError`).
    """
    if add_to_store and features is None:
        raise EvaluationInputError("add_to_store needs a feature store to add to (features)")
    if judge is not None:
        check_judged_mode(mode)
    check_batch_size(batch_size)
    if dtype not in (AUTO, *DTYPES):
        raise ValueError(f"dtype must be one of {(AUTO, *DTYPES)}, got {dtype!r}")
    items = load_items(questions, answers, mode, limit)
    if not Path(video_dir).is_dir():
        raise EvaluationInputError(f"--video-dir {video_dir} is not a directory")
    judge_function = load_judge(judge) if judge is not None else None
    store = FeatureStore.open(features) if features is not None else None
    sources = {
        "model": model_id,
        "questions_file": str(questions),
        "answers_file": str(answers),
        "video_dir": str(video_dir),
    }
    with launched_processes(device) as (state, process_device):
        settings = {
            "mode": mode,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "per_question": per_question,
            "dtype": str(auto_dtype(process_device)) if dtype == AUTO else dtype,
            "judge": judge,
        }
        run = EvaluationRun(items, mode, Path(output), sources, settings, state, batch_size, per_question, progress)
        with output_lock(run.output) if state.is_main_process else nullcontext():
            run.prepare()
            processor = load_processor(model_id)
            model = load_model(model_id, process_device, dtype)
            generation = {"max_new_tokens": max_new_tokens}
            with (
                open_video_features(model, processor, store, add_to_store) as video_features,
                exit_on_sigterm() if add_to_store else nullcontext(),
            ):
                answer = question_answerer(
                    model,
                    processor,
                    items,
                    video_dir,
                    mode,
                    batch_size,
                    generation,
                    judge_function,
                    per_question,
                    video_features,
                )
                results = run.run(answer)
            if video_features.report() is not None:
                print(video_features.report(), file=sys.stderr)
            return results


__all__ = [
    "COLLECTIVE_TIMEOUT",
    "EXIT_TERMINATED",
    "EvaluationRun",
    "exit_on_sigterm",
    "from_main_process",
    "launched_processes",
    "run_evaluation",
    "shard_by_video",
]
