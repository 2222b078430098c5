"""`merv ask` with several questions, `merv chat` through stdin and a pseudo-terminal, `merv eval --per-question`:
one encoding per video, the same answers as one question at a time; streamed answers (`--stream`) written word by
word while `generate` runs, ending as the answers printed without streaming."""

import argparse
import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor, AutoTokenizer

from transformers_merv import MervForConditionalGeneration, default_model_path
from transformers_merv.cli import main
from transformers_merv.cli.errors import CliError
from transformers_merv.cli.streaming import OneLineStreamer, streams
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


# --- streaming ---------------------------------------------------------------------------------------------------

STREAMED_NEW_TOKENS = "12"
"""Enough for the default model's answers to hold several words."""
RANDOM_ANSWERS = 200
RANDOM_ANSWER_TOKENS = 30


class RecordingStdout(io.StringIO):
    """stdout that records each write, and whether `generate` was running then, in `events`."""

    def __init__(self, events: list[tuple[str, str]], tty: bool = False):
        super().__init__()
        self.events, self.tty = events, tty

    def write(self, text: str) -> int:
        self.events.append(("write", text))
        return super().write(text)

    def isatty(self) -> bool:
        return self.tty


def _streamed(tokenizer, answers: list[list[int]]) -> tuple[str, list[int]]:
    """What a `OneLineStreamer` writes for `answers` (token ids), as `generate` feeds it (the prompt first, then one
    token at a time), and how many writes each answer made before its end."""
    stream, writes_before_end = io.StringIO(), []
    streamer = OneLineStreamer(tokenizer, stream)
    for ids in answers:
        streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt, skipped
        before = len(stream.getvalue())
        chunks = 0
        for token in ids:
            streamer.put(torch.tensor([token]))
            chunks += len(stream.getvalue()) > before
            before = len(stream.getvalue())
        writes_before_end.append(chunks)
        streamer.end()
    return stream.getvalue(), writes_before_end


def test_the_streamer_writes_words_before_the_end_and_ends_with_the_one_line_answer():
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    texts = ["a circle and a square\nthen  two\r\nmore lines ", "\n leading break", "one"]
    answers = [[*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id] for text in texts]
    written, writes_before_end = _streamed(tokenizer, answers)
    decoded = [one_line(tokenizer.decode(ids, skip_special_tokens=True).strip()) for ids in answers]
    assert written == "".join(f"{answer}\n" for answer in decoded)
    assert writes_before_end[0] > 1 and writes_before_end[2] == 0  # a single word is written at the end


def test_streamed_random_answers_equal_their_one_line_decoding():
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    generator = torch.Generator().manual_seed(0)
    answers = torch.randint(len(tokenizer), (RANDOM_ANSWERS, RANDOM_ANSWER_TOKENS), generator=generator).tolist()
    written, _ = _streamed(tokenizer, answers)
    decoded = [one_line(tokenizer.decode(ids, skip_special_tokens=True).strip()) for ids in answers]
    assert written == "".join(f"{answer}\n" for answer in decoded)


@pytest.mark.parametrize(
    ("stream", "num_beams", "tty", "expected"),
    [(None, None, True, True), (None, None, False, False), (True, None, False, True), (False, None, True, False)]
    + [(None, 2, True, False)],
)
def test_answers_stream_when_asked_or_to_a_terminal(monkeypatch, stream, num_beams, tty, expected):
    monkeypatch.setattr(sys, "stdout", RecordingStdout([], tty))
    assert streams(argparse.Namespace(stream=stream, num_beams=num_beams)) is expected


def test_beam_search_cannot_stream():
    with pytest.raises(CliError, match="--stream cannot stream beam search"):
        streams(argparse.Namespace(stream=True, num_beams=2))


def test_ask_streams_each_answer_while_generating_as_printed_without_streaming(monkeypatch, capsys):
    argv = ["ask", str(VIDEO), *QUESTIONS, "--max-new-tokens", STREAMED_NEW_TOKENS]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    events: list[tuple[str, str]] = []
    generate = MervForConditionalGeneration.generate

    def generating(self, *args, **kwargs):
        events.append(("generate", "start"))
        try:
            return generate(self, *args, **kwargs)
        finally:
            events.append(("generate", "end"))

    monkeypatch.setattr(MervForConditionalGeneration, "generate", generating)
    monkeypatch.setattr(sys, "stdout", RecordingStdout(events))
    assert main([*argv, "--stream"]) == 0
    assert sys.stdout.getvalue() == printed and len(printed.splitlines()) == len(QUESTIONS)
    calls = "".join("[" if text == "start" else "]" if text == "end" else "w" for _, text in events)
    # one question at a time, each answer written in several pieces while it is generated, nothing outside
    assert calls.count("[") == len(QUESTIONS) and all(call.count("w") > 2 for call in calls.split("]")[:-1])
    assert calls.endswith("]") and "]w" not in calls


def test_chat_streams_the_answers_of_the_conversation(converted_full, chat_answers, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(QUESTIONS) + "\n"))
    argv = ["chat", str(VIDEO), "--model", str(converted_full), "--max-new-tokens", MAX_NEW_TOKENS, "--stream"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == chat_answers


def test_compile_without_a_cpp_compiler_fails_naming_it(capsys):
    from torch._inductor import config as inductor_config

    with inductor_config.patch({"cpp.cxx": ("no-such-c++",)}):
        assert main(["ask", str(VIDEO), QUESTIONS[0], "--compile", "--device", "cpu"]) == 1
    assert "--compile: torch.compile on the CPU needs a C++ compiler" in capsys.readouterr().err


def test_ask_compiled_prints_the_eager_answers(capsys):
    argv = ["ask", str(VIDEO), *QUESTIONS, "--max-new-tokens", STREAMED_NEW_TOKENS]
    assert main(argv) == 0
    eager = capsys.readouterr().out
    assert main([*argv, "--compile"]) == 0
    assert capsys.readouterr().out == eager and len(eager.splitlines()) == len(QUESTIONS)
