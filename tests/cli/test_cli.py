"""The `merv` command: every subcommand end to end in a subprocess, and one-line errors with their exit codes."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from PIL import Image
from transformers import AutoModel

import transformers_merv
from transformers_merv.cli import main
from transformers_merv.inference.fusion_weights import (
    CHART_BACKGROUND,
    CHART_MARGIN,
    CHART_ROW_HEIGHT,
    CHART_TITLE_HEIGHT,
    CHART_WIDTH,
    draw_fusion_chart,
)
from transformers_merv.synthetic import generate_dataset

from conftest import FIXTURE_IMAGE_SIZES, FIXTURES, MEDIA, TINY_FULL, error_line

MAX_NEW_TOKENS = "3"
SUBPROCESS_TIMEOUT_S = 300
QUESTION = "What color is the circle?"


def run_merv(*args: object) -> subprocess.CompletedProcess:
    """`python -m transformers_merv.cli ARGS` (what the `merv` console script runs), offline."""
    return subprocess.run(
        [sys.executable, "-m", "transformers_merv.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=SUBPROCESS_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """One synthetic test video with its open-ended and multiple-choice files."""
    root = tmp_path_factory.mktemp("cli-data")
    generate_dataset(root, {"test": 1})
    return root


@pytest.fixture(scope="module")
def video(dataset) -> Path:
    return dataset / "videos" / "test_00000.mp4"


def _eval_args(dataset: Path, model: Path, mode: str, output: Path) -> list[str]:
    prefix = "test_mcq" if mode == "mcq" else "test"
    return [
        "eval",
        "--questions",
        dataset / f"{prefix}_q.json",
        "--answers",
        dataset / f"{prefix}_a.json",
        "--video-dir",
        dataset / "videos",
        "--mode",
        mode,
        "--model",
        model,
        "--output",
        output,
        "--max-new-tokens",
        MAX_NEW_TOKENS,
        "--batch-size",
        "1",
    ]


# --- end to end ------------------------------------------------------------------------------------------------------


def test_ask_answers_as_eval_does(converted_full, dataset, video, tmp_path):
    eval_args = _eval_args(dataset, converted_full, "open-ended", tmp_path / "r.json") + ["--limit", "1"]
    assert main([str(arg) for arg in eval_args]) == 0
    first = json.loads((tmp_path / "r.json").read_text())["results"][0]
    completed = run_merv(
        "ask", video, first["question"], "--model", converted_full, "--max-new-tokens", MAX_NEW_TOKENS
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == first["prediction"] != ""


def test_eval_writes_one_entry_per_question_and_a_summary(converted_full, dataset, tmp_path):
    output = tmp_path / "results.json"
    completed = run_merv(*_eval_args(dataset, converted_full, "mcq", output))
    assert completed.returncode == 0, completed.stderr
    assert "eval (mcq)" in completed.stderr  # the progress bar
    results = json.loads(output.read_text())
    questions = json.loads((dataset / "test_mcq_q.json").read_text())
    assert [entry["question_id"] for entry in results["results"]] == [q["question_id"] for q in questions]
    assert all(
        {"prediction", "answer", "correct", "question_type", "naive_correct"} <= set(e) for e in results["results"]
    )
    summary = results["summary"]
    assert summary["correct"] == sum(entry["correct"] for entry in results["results"])
    assert set(summary["per_question_type"]) == {q["question_type"] for q in questions}
    assert summary["model"] == str(converted_full)
    assert f"mcq: accuracy {100 * summary['accuracy']:.1f}%" in completed.stdout


def test_explain_prints_and_plots_the_fusion_weights(converted_full, video, tmp_path):
    plot = tmp_path / "fusion.png"
    completed = run_merv(
        "explain", video, QUESTION, "--model", converted_full, "--max-new-tokens", MAX_NEW_TOKENS, "--plot", plot
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("answer: ") and lines[-1] == f"wrote {plot}"
    weights = {line.split()[0]: float(line.split()[1]) for line in lines[2:-1]}
    assert list(weights) == ["languagebind", "dinov2", "vivit", "siglip"]
    assert sum(weights.values()) == pytest.approx(1, abs=2e-3)
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width == CHART_WIDTH
        image.verify()


def test_convert_wraps_the_converter(tmp_path):
    encoders = [arg for name in FIXTURE_IMAGE_SIZES for arg in (f"--{name}", FIXTURES / "encoders" / name)]
    sizes = [f"{name}={size}" for name, size in FIXTURE_IMAGE_SIZES.items()]
    completed = run_merv(
        "convert",
        "--run-dir",
        TINY_FULL / "run",
        "--llm",
        FIXTURES / "llm",
        *encoders,
        "--image-size",
        *sizes,
        "--output-dir",
        tmp_path / "out",
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"converted {TINY_FULL / 'run'} -> {tmp_path / 'out'}")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "merv"


def test_corrupt_video_is_a_one_line_error(converted_full):
    completed = run_merv("ask", MEDIA / "corrupted.mp4", QUESTION, "--model", converted_full)
    assert completed.returncode == 1
    assert error_line(completed.stderr).startswith(f"error: '{MEDIA / 'corrupted.mp4'}' is corrupt or truncated")


# --- errors (in process) ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_args", "message"),  # message: a regular expression
    [
        (
            lambda video, model: ["ask", "missing.mp4", QUESTION, "--model", model],
            r"error: no video file at missing\.mp4$",
        ),
        (
            lambda video, model: ["ask", video, QUESTION, "--model", "nobody/no-such-model"],
            "error: cannot load model 'nobody/no-such-model': ",
        ),
        (
            lambda video, model: ["ask", video, QUESTION, "--model", "./no/such/folder"],
            r"error: no model folder at \./no/such/folder ",
        ),
        (
            lambda video, model: ["ask", video, QUESTION, "--model", model, "--clip-start-sec", "999"],
            r"error: \S+test_00000\.mp4: The clip window",
        ),
        (
            lambda video, model: [
                "eval",
                "--questions",
                "none.json",
                "--answers",
                "none.json",
                "--video-dir",
                ".",
                "--mode",
                "open-ended",
                "--output",
                "r.json",
                "--model",
                model,
            ],
            r"error: cannot read none\.json: ",
        ),
        (
            lambda video, model: [
                "eval",
                "--questions",
                "q.json",
                "--answers",
                "a.json",
                "--video-dir",
                ".",
                "--mode",
                "mcq",
                "--output",
                "r.json",
                "--judge",
                "judges:always",
            ],
            "error: --judge scores open-ended answers only",
        ),
    ],
    ids=[
        "missing-video",
        "unknown-hub-model",
        "unknown-model-folder",
        "window-outside-video",
        "missing-questions",
        "judge-with-mcq",
    ],
)
def test_bad_input_is_a_one_line_error(converted_full, video, capsys, make_args, message):
    assert main([str(arg) for arg in make_args(video, converted_full)]) == 1
    assert re.match(message, error_line(capsys.readouterr().err))


@pytest.mark.parametrize(
    "argv",
    [
        ["ask"],
        ["ask", "v.mp4", "q", "--max-new-tokens", "0"],
        ["ask", "v.mp4", "q", "--device", "toaster"],
        ["eval", "--mode", "open-ended"],
        ["explain", "v.mp4", "q", "--dtype", "int3"],
        ["frobnicate"],
    ],
)
def test_bad_flags_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_missing_default_model_is_a_one_line_error(video, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(transformers_merv, "DEFAULT_MODEL_DIRECTORY", tmp_path / "gone")
    assert main(["ask", str(video), QUESTION]) == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: the default model folder {tmp_path / 'gone'} is missing; reinstall, or pass --model PATH_OR_HUB_ID"
    )


def test_explain_without_fusion_weights_says_so(converted_full, video, tmp_path, capsys):
    model = tmp_path / "concat-fusion"
    shutil.copytree(converted_full, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"fusion_type": "concat_channel"}))
    assert main(["explain", str(video), QUESTION, "--model", str(model), "--max-new-tokens", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("answer: ")
    assert "fusion ('concat_channel') has no per-encoder weights" in error_line(captured.err)


def test_eval_with_a_judge_from_a_module(converted_full, dataset, tmp_path, monkeypatch, capsys):
    (tmp_path / "judges.py").write_text(
        "def always(question, answer, prediction):\n    return {'pred': 'yes', 'score': 4}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    output = tmp_path / "results.json"
    args = _eval_args(dataset, converted_full, "open-ended", output) + ["--judge", "judges:always", "--limit", "2"]
    assert main([str(arg) for arg in args]) == 0
    results = json.loads(output.read_text())
    assert [entry["judge"] for entry in results["results"]] == [{"pred": "yes", "score": 4}] * 2
    assert results["summary"]["accuracy"] == 1.0 and results["summary"]["judge_average_score"] == 4
    assert "open-ended: accuracy 100.0% (2/2 questions; 0 skipped)" in capsys.readouterr().out


def test_convert_reports_a_missing_encoder_directory(tmp_path, capsys):
    argv = [
        "convert",
        "--run-dir",
        str(TINY_FULL / "run"),
        "--llm",
        str(FIXTURES / "llm"),
        "--output-dir",
        str(tmp_path),
    ]
    assert main(argv) == 1
    assert "pass its weights with --languagebind" in error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("capabilities", "auto_dtype"),
    [({"avx512_bf16": True}, "torch.bfloat16"), ({"avx512_bf16": False}, "torch.float32")],
    ids=["native-bf16-cpu", "cpu-without-bf16"],
)
def test_half_precision_note_only_where_the_cpu_lacks_it(video, capsys, capabilities, auto_dtype):
    argv = ["ask", str(video), QUESTION, "--device", "cpu", "--max-new-tokens", "2"]
    with mock.patch("transformers_merv.inference.devices.cpu_capabilities", return_value=capabilities):
        assert main([*argv, "--dtype", "bfloat16"]) == 0
        captured = capsys.readouterr()
        assert captured.out.strip()
        note = "note: torch.bfloat16 on this CPU is slow" in captured.err and "--dtype float32" in captured.err
        assert note == (auto_dtype == "torch.float32")
        with mock.patch("transformers.AutoModel.from_pretrained", wraps=AutoModel.from_pretrained) as load:
            assert main(argv) == 0  # --dtype auto
        assert str(load.call_args.kwargs["dtype"]) == auto_dtype
        assert "note:" not in capsys.readouterr().err


def test_max_new_tokens_flag_still_overrides_the_generation_config(capsys):
    assert main(["ask", str(MEDIA / "flipping_a_pancake.mkv"), "What is happening?", "--max-new-tokens", "6"]) == 0
    assert len(capsys.readouterr().out.split()) > 2  # this clip is unlike the training data: no </s> within 6


def test_fusion_chart_colours_bars_by_encoder(tmp_path):
    weights = {"count: dinov2": 0.6, "order: dinov2": 0.7, "order: siglip": 0.8}
    draw_fusion_chart(weights, "per question type", tmp_path / "chart.png")
    with Image.open(tmp_path / "chart.png") as image:
        inside_bar = CHART_WIDTH // 2 - CHART_MARGIN
        colours = [
            image.getpixel((inside_bar, CHART_TITLE_HEIGHT + row * CHART_ROW_HEIGHT + CHART_ROW_HEIGHT // 2))
            for row in range(len(weights))
        ]
    assert colours[0] == colours[1] != colours[2] and CHART_BACKGROUND not in colours


def test_merv_starts_where_fcntl_does_not_exist():
    """Windows has no `fcntl`: every command's module must import without it (`merv --help` loads them all)."""
    script = 'import sys; sys.modules["fcntl"] = None; from transformers_merv.cli import main; main(["--help"])'
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(command in result.stdout for command in ("ask", "chat", "eval", "explain", "convert", "serve"))
