"""`merv eval` at scale: data-parallel over processes, resumable, with a progress bar and a summary table.

    torchrun --nproc_per_node N -m transformers_merv.cli eval ...        # the same flags as `merv eval`
    accelerate launch --multi_gpu --num_processes N -m transformers_merv.cli eval ...

- **Processes:** the launcher's `RANK` / `WORLD_SIZE` / `LOCAL_RANK` say which process this is (a plain run is one
  process). The questions are sharded by video: each video goes, in order of first appearance, to the process with
  the fewest questions so far, so a video is decoded and encoded by one process only. Each process uses GPU
  `LOCAL_RANK` when it has GPUs (unless `--device` names one), and the processes synchronise over `gloo` on CPUs,
  `nccl` on GPUs.
- **Resumable:** every group of questions a process answers (one video's questions) is appended, one JSON record per
  question, to `<output>.partial.jsonl` as soon as it is answered. Rerunning the same command skips the questions
  recorded there and answers the rest; a killed run loses at most the groups in flight. The log's first line holds
  the settings that decide the answers (model, files, mode, generation, batching); a rerun with other settings is
  refused. At the end the first process writes `--output` from the log, in question order, exactly as one
  uninterrupted single-process run writes it, and deletes the log. `--output` must be on a file system every process
  sees.
- **One run per output:** `<output>.lock` is held (`flock`) for the whole run; a second run on the same output stops
  at once with an error naming the process that holds it. The kernel releases the lock when its process dies, so a
  lock file left by a killed run does not block the next one.
"""

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .evaluation import EvalItem, group_by_video, summarize, write_results


LOG_SUFFIX = ".partial.jsonl"
LOCK_SUFFIX = ".lock"
SETTINGS_KEY = "merv_eval_settings"
"""The key of the log's first line."""
POLL_SECONDS = 1.0
"""How often the first process, done with its own questions, reads the log for the others' progress."""
COLLECTIVE_TIMEOUT = timedelta(hours=24)
"""How long a process waits for the others at a synchronisation point (a slow shard can take hours)."""


class EvaluationRunError(RuntimeError):
    """The run cannot start or resume (output locked by another run, log written with other settings)."""


# --- processes -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    """This process's place among the launched ones (`torchrun` / `accelerate launch` environment variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Processes":
        values = {name: os.environ.get(name.upper()) for name in ("rank", "world_size", "local_rank")}
        try:
            return cls(**{name: int(value) for name, value in values.items() if value is not None})
        except ValueError:
            raise EvaluationRunError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers, got {values}") from None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: str | None) -> str | None:
        """`requested`, each process on its own GPU when several share CUDA (`None` or "cuda": `cuda:LOCAL_RANK`)."""
        if self.distributed and requested in (None, "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def start(self, device: torch.device) -> None:
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(
                backend, timeout=COLLECTIVE_TIMEOUT, device_id=device if backend == "nccl" else None
            )

    def stop(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def from_main(self, value: Any) -> Any:
        """The first process's `value`, in every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wait_for_all(self) -> None:
        if self.distributed:
            dist.barrier()


def shard_by_video(groups: Sequence[Sequence[EvalItem]], processes: Processes) -> list[Sequence[EvalItem]]:
    """The groups of this process: every group of a video goes to one process, videos in order of first
    appearance each to the process with the fewest questions so far (the lowest rank on a tie)."""
    owner: dict[str, int] = {}
    load = [0] * processes.world_size
    mine = []
    for group in groups:
        video = group[0].video_name
        if video not in owner:
            owner[video] = min(range(processes.world_size), key=lambda rank: (load[rank], rank))
        load[owner[video]] += len(group)
        if owner[video] == processes.rank:
            mine.append(group)
    return mine


def work_groups(items: Sequence[EvalItem], batch_size: int, per_question: bool) -> list[Sequence[EvalItem]]:
    """What one step answers and records: a video's questions (`group_by_video`), or with `per_question`, batches of
    `batch_size` questions about one video. Groups never depend on the number of processes or on what is done."""
    groups = group_by_video(items)
    if not per_question:
        return groups
    return [group[start : start + batch_size] for group in groups for start in range(0, len(group), batch_size)]


# --- the output lock and the results log -----------------------------------------------------------------------------


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold `<output>.lock` for the block, or raise `EvaluationRunError` when another live run holds it."""
    path = _with_suffix(output, LOCK_SUFFIX)
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise EvaluationRunError(
                f"{output} is being written by another merv eval ({holder}); wait for it to finish, or choose "
                f"another --output"
            ) from None
        if _same_file(handle, path):
            break
        handle.close()  # the file was removed by the run that released it: lock the new one
    try:
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def _same_file(handle, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _with_suffix(output: Path, suffix: str) -> Path:
    return output.with_name(output.name + suffix)


class ResultsLog:
    """`<output>.partial.jsonl`: the settings line, then one record per answered question, appended by every
    process (one `write` per group, under an exclusive `flock`, so lines of different processes never interleave)."""

    def __init__(self, output: Path):
        self.path = _with_suffix(output, LOG_SUFFIX)
        self._followed = 0

    def prepare(self, settings: Mapping[str, Any]) -> None:
        """Start the log, or check that the one there was written with `settings` and drop a line cut short by a
        killed run. Only the first process calls it, before any process appends."""
        if not self.path.exists():
            self.path.write_text(json.dumps({SETTINGS_KEY: settings}) + "\n", encoding="utf-8")
            return
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        first = json.loads(complete.split(b"\n", 1)[0] or b"{}")
        if first.get(SETTINGS_KEY) != settings:
            changed = sorted(key for key in settings if (first.get(SETTINGS_KEY) or {}).get(key) != settings[key])
            raise EvaluationRunError(
                f"{self.path} holds results of a run with other settings ({', '.join(changed) or 'unreadable'}); "
                f"rerun with the same flags to resume it, or delete it to start over"
            )

    def records(self) -> dict[str, dict[str, Any]]:
        """The recorded entries by question id (a question recorded twice keeps its last entry)."""
        with open(self.path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()[1:]
        return {entry["question_id"]: entry for entry in map(json.loads, lines)}

    def append(self, entries: Iterable[Mapping[str, Any]]) -> None:
        data = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, data)
        finally:
            os.close(fd)

    def new_question_ids(self) -> list[str]:
        """Question ids recorded (by any process) since the last call; the first call reads the whole log."""
        with open(self.path, "rb") as handle:
            handle.seek(self._followed)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._followed += len(complete)
        records = [json.loads(line) for line in complete.splitlines()]
        return [record["question_id"] for record in records if "question_id" in record]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# --- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationRun:
    """One `merv eval` over `items` by every launched process, resuming from and appending to the results log."""

    items: Sequence[EvalItem]
    mode: str
    output: Path
    sources: Mapping[str, str]
    """The model and the files, put first in the output's summary."""
    settings: Mapping[str, Any]
    """What decides the answers (with `sources`); a log written with other settings is not resumed."""
    processes: Processes
    batch_size: int
    per_question: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.log = ResultsLog(self.output)

    def prepare(self) -> None:
        """The first process starts or checks the log; every process gets its error, if any."""
        error = None
        if self.processes.is_main:
            try:
                self.log.prepare(dict(self.sources) | dict(self.settings))
            except (EvaluationRunError, OSError, ValueError) as err:
                error = str(err)
        error = self.processes.from_main(error)
        if error is not None:
            raise EvaluationRunError(error)

    def run(self, answer: Callable[[Sequence[EvalItem]], dict[str, dict[str, Any]]]) -> dict[str, Any] | None:
        """Answer this process's questions not yet recorded (`answer(group)` -> entries by question id), wait for
        the others, and, in the first process, write `--output` and return it (`None` in the others)."""
        groups = shard_by_video(work_groups(self.items, self.batch_size, self.per_question), self.processes)
        done = set(self.log.records())
        pending = [group for group in groups if any(item.question_id not in done for item in group)]
        self._report(groups, pending)
        progress = _Progress(self.log, self.items, self.mode) if self.processes.is_main and self.progress else None
        for group in pending:
            entries = answer(group)
            self.log.append(entries[item.question_id] for item in group)
            if progress:
                progress.update()
        if progress:
            progress.finish()
        self.processes.wait_for_all()
        return self._gather() if self.processes.is_main else None

    def _report(self, groups: Sequence[Sequence[EvalItem]], pending: Sequence[Sequence[EvalItem]]) -> None:
        """One stderr line per process when there are several, or when a run resumes."""
        questions, left = sum(map(len, groups)), sum(map(len, pending))
        if self.processes.distributed:
            videos = len({group[0].video_name for group in groups})
            print(
                f"process {self.processes.rank} of {self.processes.world_size}: {questions} questions about {videos} "
                f"videos, {questions - left} already done",
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


# --- the summary table -----------------------------------------------------------------------------------------------


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


__all__ = [
    "EvaluationRun",
    "EvaluationRunError",
    "Processes",
    "ResultsLog",
    "output_lock",
    "shard_by_video",
    "summary_table",
    "work_groups",
]
