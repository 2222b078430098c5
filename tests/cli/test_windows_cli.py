"""`merv ask --windows`, `merv explain --windows --plot` and `merv caption`: per-window answers equal to `merv ask`
on each window's clip, JSON, SRT and VTT output, the timeline PNG, and bad window flags refused before the model
loads."""

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from transformers_merv.cli import main
from transformers_merv.inference.captions import to_srt, to_vtt
from transformers_merv.inference.fusion_weights import CHART_WIDTH
from transformers_merv.inference.windows import DEFAULT_CAPTION_PROMPT, WindowAnswer

from conftest import MEDIA, error_line

VIDEO = MEDIA / "flipping_a_pancake.mkv"
QUESTION = "What color is the circle?"
FLAGS = ["--max-new-tokens", "3"]
WINDOW_FLAGS = ["--windows", "6", "--overlap", "1"]
PANCAKE_SECONDS = 310 / 30


def _run(argv: list[object], capsys) -> str:
    assert main([str(arg) for arg in argv]) == 0
    return capsys.readouterr().out


def _records(output: str) -> list[WindowAnswer]:
    return [WindowAnswer(**record) for record in json.loads(output)["windows"]]


def test_ask_windows_answers_each_window_as_ask_on_its_clip(capsys):
    document = json.loads(_run(["ask", VIDEO, QUESTION, *WINDOW_FLAGS, "--json", *FLAGS], capsys))
    assert {key: document[key] for key in ("video", "question", "window_seconds", "overlap_seconds")} == {
        "video": str(VIDEO), "question": QUESTION, "window_seconds": 6.0, "overlap_seconds": 1.0
    }  # fmt: skip
    windows = _records(json.dumps(document))
    assert [(w.start_sec, w.end_sec) for w in windows] == [(0.0, 6.0), (5.0, PANCAKE_SECONDS)]
    for window in windows:
        clip = ["--clip-start-sec", repr(window.start_sec), "--clip-end-sec", repr(window.end_sec)]
        assert _run(["ask", VIDEO, QUESTION, *clip, *FLAGS], capsys) == f"{window.answer}\n"
        assert list(window.fusion_weights) == ["languagebind", "dinov2", "vivit", "siglip"]
    lines = _run(["ask", VIDEO, QUESTION, *WINDOW_FLAGS, *FLAGS], capsys).splitlines()
    assert lines == [
        f"{w.start_sec:.2f}-{w.end_sec:.2f} s: {w.answer}  "
        f"[{', '.join(f'{name} {weight:.3f}' for name, weight in w.fusion_weights.items())}]"
        for w in windows
    ]


def test_windows_longer_than_the_video_give_one_window(capsys):
    windows = _records(_run(["ask", VIDEO, QUESTION, "--windows", "600", "--json", *FLAGS], capsys))
    whole = _run(["ask", VIDEO, QUESTION, *FLAGS], capsys)
    assert [(w.start_sec, w.end_sec) for w in windows] == [(0.0, PANCAKE_SECONDS)]
    assert f"{windows[0].answer}\n" == whole


def test_caption_writes_srt_vtt_and_json(tmp_path: Path, capsys):
    base = ["caption", VIDEO, "--windows", "6", *FLAGS]
    document = json.loads(_run([*base, "--format", "json"], capsys))
    windows = _records(json.dumps(document))
    assert document["prompt"] == DEFAULT_CAPTION_PROMPT
    assert [(w.start_sec, w.end_sec) for w in windows] == [(0.0, 6.0), (6.0, PANCAKE_SECONDS)]
    assert _run([*base, "--format", "vtt"], capsys) == to_vtt(windows)
    output = tmp_path / "captions.srt"
    assert _run([*base, "--output", output], capsys) == f"wrote {output}\n"
    assert output.read_text() == to_srt(windows)
    prompted = _records(_run([*base, "--format", "json", "--prompt", QUESTION], capsys))
    assert prompted == _records(_run(["ask", VIDEO, QUESTION, "--windows", "6", "--json", *FLAGS], capsys))


def test_explain_windows_plots_a_timeline(tmp_path: Path, capsys):
    plot = tmp_path / "timeline.png"
    lines = _run(["explain", VIDEO, QUESTION, "--windows", "5", "--plot", plot, *FLAGS], capsys).splitlines()
    assert len(lines) == 4 and lines[-1] == f"wrote {plot}"
    assert re.fullmatch(
        r"0\.00-5\.00 s: .+  \[languagebind [\d.]+, dinov2 [\d.]+, vivit [\d.]+, siglip [\d.]+\]", lines[0]
    )
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width == CHART_WIDTH


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", VIDEO, QUESTION, "--windows", "4", "--overlap", "4"],
         "error: --overlap (4) must be shorter than --windows (4)"),
        (["ask", VIDEO, QUESTION, "--windows", "4", "--overlap", "6"],
         "error: --overlap (6) must be shorter than --windows (4)"),
        (["ask", VIDEO, QUESTION, "--overlap", "1"], "error: --overlap needs --windows"),
        (["ask", VIDEO, QUESTION, "--json"], "error: --json needs --windows"),
        (["ask", VIDEO, QUESTION, "why?", "--windows", "4"], "error: --windows answers one question, got 2"),
        (["ask", VIDEO, QUESTION, "--windows", "4", "--clip-end-sec", "3"],
         "error: --windows cannot be combined with --clip-end-sec: each window is its own clip"),
        (["caption", VIDEO, "--overlap", "10"], "error: --overlap (10) must be shorter than --windows (10)"),
        (["caption", VIDEO, "--output", "/no/such/folder/c.srt"],
         "error: --output: no folder /no/such/folder to write c.srt into"),
        (["explain", VIDEO, QUESTION, "--windows", "4", "--plot", "/no/such/folder/t.png"],
         "error: --plot: no folder /no/such/folder to write t.png into"),
    ],
)  # fmt: skip
def test_bad_window_input_is_one_line_before_the_model_loads(argv, message, capsys):
    argv = [*argv, "--model", "/no/such/model"]  # loading it would be a different error
    assert main([str(arg) for arg in argv]) == 1
    assert error_line(capsys.readouterr().err) == message


@pytest.mark.parametrize(
    ("flags", "flag"),
    [(["--windows", "0"], "--windows"), (["--windows", "-3"], "--windows"), (["--windows", "nan"], "--windows"),
     (["--windows", "4", "--overlap", "-1"], "--overlap")],
)  # fmt: skip
def test_bad_window_lengths_exit_with_status_2_naming_the_flag(flags, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", str(VIDEO), QUESTION, *flags])
    assert exit_info.value.code == 2 and f"argument {flag}: must be a number of seconds" in capsys.readouterr().err
