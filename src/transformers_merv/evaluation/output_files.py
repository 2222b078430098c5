"""The files a run keeps beside its `--output` while it runs: the lock that allows one run per output, and the
results log a killed run resumes from.

- `<output>.lock`: held (a `filelock.FileLock`, the operating system's lock: `flock` on Unix, `msvcrt.locking` on
  Windows) for the whole run; a second run on the same output stops at once with an error naming the holder, which
  `<output>.holder` records (pid and host). The lock dies with its process, so the files left by a killed run do not
  block the next one.
- `<output>.partial.jsonl`: the settings that decide the answers on its first line, then one record per answered
  question, appended by every process (under `<output>.partial.jsonl.lock`, so appends never interleave).
"""

import json
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout


LOG_SUFFIX = ".partial.jsonl"
LOCK_SUFFIX = ".lock"
HOLDER_SUFFIX = ".holder"
SETTINGS_KEY = "merv_eval_settings"
"""The key of the log's first line."""
UNKNOWN_HOLDER = "another process"
"""The holder named while it has not written `<output>.holder` yet."""


class EvaluationRunError(RuntimeError):
    """The run cannot start or resume (output locked by another run, log written with other settings)."""


def _with_suffix(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold `<output>.lock` for the block, or raise `EvaluationRunError` naming the live run that holds it. Both
    files are removed when the block ends."""
    lock_path, holder = _with_suffix(output, LOCK_SUFFIX), _with_suffix(output, HOLDER_SUFFIX)
    lock = FileLock(lock_path, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise EvaluationRunError(
            f"{output} is being written by another merv eval ({_read_holder(holder)}); wait for it to finish, or "
            "choose another --output"
        ) from None
    try:
        holder.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n", encoding="utf-8")
        yield
    finally:
        holder.unlink(missing_ok=True)
        # Removed while held: a run that opened the file before, and gets the lock after, finds it unlinked and
        # does not take it (filelock checks); Windows refuses to remove an open file, and filelock removes it there.
        if os.name != "nt":
            lock_path.unlink(missing_ok=True)
        lock.release()


def _read_holder(holder: Path) -> str:
    try:
        return holder.read_text(encoding="utf-8").strip() or UNKNOWN_HOLDER
    except FileNotFoundError:
        return UNKNOWN_HOLDER


class ResultsLog:
    """`<output>.partial.jsonl`: the settings line, then one record per answered question, appended by every
    process (one write per group, under an exclusive lock, so lines of different processes never interleave)."""

    def __init__(self, output: Path):
        self.path = _with_suffix(output, LOG_SUFFIX)
        self._append_lock = FileLock(_with_suffix(self.path, LOCK_SUFFIX))
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
        with self._append_lock, open(self.path, "ab") as handle:
            handle.write(data)

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
        """Delete the log and its lock file, once every process is done with them."""
        self.path.unlink(missing_ok=True)
        Path(self._append_lock.lock_file).unlink(missing_ok=True)


__all__ = ["EvaluationRunError", "ResultsLog", "output_lock"]
