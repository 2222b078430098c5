"""`merv ask` with several questions, `merv chat` through stdin and a pseudo-terminal, `merv eval --per-question`:
one encoding per video, the same answers as one question at a time."""

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoModel, AutoProcessor

from transformers_merv.cli import main
from transformers_merv.utils.console import one_line
from transformers_merv.inference.prefix_cache import VideoChat, prefill_video

from conftest import MEDIA

VIDEO = MEDIA / "flipping_a_pancake.mkv"
QUESTIONS = ["What color is the circle?", "How many objects are there?", "What happens first?"]
MAX_NEW_TOKENS = "3"
SUBPROCESS_TIMEOUT_S = 300


def _merv_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "transformers_merv.cli", *map(str, args)]


def _environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def chat_answers(converted_full) -> list[str]:
    """The answers of a `VideoChat` over `QUESTIONS`, in Python."""
    model, processor = AutoModel.from_pretrained(converted_full).eval(), AutoProcessor.from_pretrained(converted_full)
    chat = VideoChat(model, processor, prefill_video(model, processor, VIDEO))
    return [one_line(chat.ask(question, max_new_tokens=int(MAX_NEW_TOKENS))) for question in QUESTIONS]


def test_ask_answers_every_question_in_order_as_separate_calls_do(converted_full, capsys):
    flags = ["--model", str(converted_full), "--max-new-tokens", MAX_NEW_TOKENS]
    assert main(["ask", str(VIDEO), *QUESTIONS, *flags]) == 0
    together = capsys.readouterr().out.splitlines()
    alone = []
    for question in QUESTIONS:
        assert main(["ask", str(VIDEO), question, *flags]) == 0
        alone += capsys.readouterr().out.splitlines()
    assert together == alone and len(alone) == len(QUESTIONS)


@pytest.mark.parametrize(
    ("stdin", "answered"),
    [
        ("\n".join([QUESTIONS[0], "", "   ", *QUESTIONS[1:], "exit", "never asked", ""]), len(QUESTIONS)),
        (f"{QUESTIONS[0]}\n  QUIT  \n{QUESTIONS[1]}\n", 1),
        (f"\n{QUESTIONS[0]}\n{QUESTIONS[1]}", 2),  # end of input without a final newline
        ("", 0),
    ],
    ids=["empty-lines-then-exit", "quit", "end-of-input", "no-input"],
)
def test_chat_answers_each_stdin_line_in_the_conversation(converted_full, chat_answers, stdin, answered):
    completed = subprocess.run(
        _merv_command("chat", VIDEO, "--model", converted_full, "--max-new-tokens", MAX_NEW_TOKENS),
        input=stdin,
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == chat_answers[:answered]


def _read_until(fd: int, text: str, deadline: float) -> str:
    """What the terminal shows up to and including `text` (fails at the deadline)."""
    shown = ""
    while text not in shown:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{text!r} never appeared; the terminal showed {shown!r}"
        if select.select([fd], [], [], remaining)[0]:
            shown += os.read(fd, 4096).decode(errors="replace")
    return shown


def test_chat_in_a_terminal_prompts_and_ends_with_ctrl_d(converted_full, chat_answers):
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        _merv_command("chat", VIDEO, "--model", converted_full, "--max-new-tokens", MAX_NEW_TOKENS),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=_environment(),
    )
    os.close(terminal)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    try:
        assert "Ctrl-D ends" in _read_until(controller, "> ", deadline)
        os.write(controller, f"{QUESTIONS[0]}\n".encode())
        shown = _read_until(controller, "> ", deadline)
        assert chat_answers[0] in shown
        os.write(controller, b"\x04")  # Ctrl-D: end of input
        assert process.wait(timeout=SUBPROCESS_TIMEOUT_S) == 0
    finally:
        process.kill()
        process.wait()
        os.close(controller)


def test_eval_per_question_gives_the_grouped_results(converted_full, tmp_path: Path):
    questions = [{"question_id": str(i), "video_name": VIDEO.stem, "question": q} for i, q in enumerate(QUESTIONS)]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps([{"question_id": str(i), "answer": "red"} for i in range(3)]))
    outputs = {}
    for flags in ([], ["--per-question"]):
        output = tmp_path / f"results{len(flags)}.json"
        argv = ["eval", "--questions", tmp_path / "q.json", "--answers", tmp_path / "a.json", "--mode", "open-ended"]
        argv += ["--video-dir", MEDIA, "--output", output, "--model", converted_full, "--batch-size", "2"]
        assert main([str(arg) for arg in [*argv, "--max-new-tokens", MAX_NEW_TOKENS, *flags]]) == 0
        outputs[tuple(flags)] = json.loads(output.read_text())
    grouped, per_question = outputs.values()
    assert grouped == per_question and len(grouped["results"]) == len(QUESTIONS)
