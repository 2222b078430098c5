"""The shipped default model: loads from its folder, answers the README's question about the shipped example video,
and keeps its accuracy on a fixed held-out set (a regression test)."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from transformers_merv import MervForConditionalGeneration, default_model_path
from transformers_merv.cli import main
from transformers_merv.synthetic import generate_dataset
from transformers_merv.evaluation import OPEN_ENDED, evaluate, load_items

from conftest import EXAMPLE_VIDEO

README_QUESTION, README_ANSWER = "What color is the circle?", "red"
HELD_OUT_VIDEOS = 40
STATED_ACCURACY = 0.70
"""The README's floor for the shipped model on a fixed held-out set: a 40-video test split generated with seed 0
(130 questions; the model card reports the 400-video test split)."""
MAX_WEIGHTS_BYTES = 20 * 2**20


@pytest.fixture(scope="module")
def shipped():
    return AutoModel.from_pretrained(default_model_path()).eval(), AutoProcessor.from_pretrained(default_model_path())


def test_default_model_folder_is_small_and_loads_with_the_auto_classes(shipped):
    model, processor = shipped
    assert isinstance(model, MervForConditionalGeneration)
    assert model.config.vision_encoders == ["languagebind", "dinov2", "vivit", "siglip"]
    assert processor.num_video_tokens == model.config.num_video_tokens
    weights = sum(path.stat().st_size for path in default_model_path().glob("*.safetensors"))
    assert 0 < weights <= MAX_WEIGHTS_BYTES
    assert "synthetic" in (default_model_path() / "README.md").read_text()


def test_readme_command_answers_the_example_video():
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "transformers_merv.cli", "ask", str(EXAMPLE_VIDEO), README_QUESTION],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().lower() == README_ANSWER


def test_accuracy_on_a_fixed_held_out_set(shipped, tmp_path_factory):
    model, processor = shipped
    data = tmp_path_factory.mktemp("held-out")
    generate_dataset(data, {"train": 0, "validation": 0, "test": HELD_OUT_VIDEOS}, seed=0)
    items = load_items(data / "test_q.json", data / "test_a.json", OPEN_ENDED)
    with torch.no_grad():
        summary = evaluate(
            model,
            processor,
            items,
            data / "videos",
            OPEN_ENDED,
            batch_size=32,
            progress=False,
            generation_kwargs={"max_new_tokens": 4},
        )["summary"]
    assert summary["evaluated"] == len(items) > 100
    assert summary["accuracy"] >= STATED_ACCURACY, summary


@pytest.mark.parametrize(
    "question, answer",
    [("Which way does the red circle move?", "right"), ("How fast does the red circle move?", "fast")],
)
def test_readme_questions_about_the_example_video(question, answer, capsys):
    assert main(["ask", str(EXAMPLE_VIDEO), question, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().lower() == answer
