"""Bad input, by class, through every entry point (the Python processor, `merv ask`, `merv explain`, `merv eval`
and the training dataset): paths that are not regular files, decoding time, media that would decompress to enormous
sizes, out-of-range arguments, out-of-range config values and malformed evaluation files. Each is refused with an
error naming the input and what was expected (or, where the authors' scripts skip, skipped and counted)."""

import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor

from transformers_merv import MervConfig, default_model_path, open_video, read_video
from transformers_merv.cli import main
from transformers_merv.evaluation import (
    MCQ,
    OPEN_ENDED,
    EvalItem,
    EvaluationInputError,
    evaluate,
    find_video,
    load_items,
)
from transformers_merv import media_limits
from transformers_merv.media_limits import MediaLimitError
from transformers_merv.training import BadExampleError, VideoLlavaDataset

from conftest import EXAMPLE_VIDEO, MEDIA, tiny_config

PANCAKE = MEDIA / "flipping_a_pancake.mkv"
QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def processor():
    return AutoProcessor.from_pretrained(default_model_path())


def _error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in stderr, stderr
    return lines[-1]


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _ask(video: object, *flags: str) -> list[str]:
    return ["ask", str(video), QUESTION, *flags]


def _explain(video: object, *flags: str) -> list[str]:
    return ["explain", str(video), QUESTION, *flags]


# --- paths that are not regular files --------------------------------------------------------------------------------


def _fifo(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "clip.mp4"
    os.mkfifo(path)
    return path, "a FIFO (named pipe)"


def _directory(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "folder.mp4"
    path.mkdir()
    return path, "a directory"


def _device(tmp_path: Path) -> tuple[Path, str]:
    return Path("/dev/zero"), "a character device"


def _null(tmp_path: Path) -> tuple[Path, str]:
    return Path("/dev/null"), "a character device"


NOT_REGULAR = pytest.mark.parametrize("make", [_fifo, _directory, _device, _null], ids=["fifo", "dir", "zero", "null"])


@NOT_REGULAR
def test_processor_refuses_paths_that_are_not_regular_files(make, processor, tmp_path):
    path, kind = make(tmp_path)
    with pytest.raises(MediaLimitError, match=re.escape(f"'{path}' is {kind}, not a regular file")):
        processor(text="<video>Q", videos=[str(path)])


@NOT_REGULAR
@pytest.mark.parametrize("command", [_ask, _explain], ids=["ask", "explain"])
def test_ask_and_explain_refuse_paths_that_are_not_regular_files(make, command, tmp_path, capsys):
    path, kind = make(tmp_path)
    assert main(command(path)) == 1
    assert f"'{path}' is {kind}, not a regular file" in _error_line(capsys.readouterr().err)


@NOT_REGULAR
def test_eval_refuses_question_files_that_are_not_regular_files(make, tmp_path, capsys):
    path, kind = make(tmp_path)
    argv = ["eval", "--questions", str(path), "--answers", str(path), "--video-dir", str(tmp_path),
            "--mode", "open-ended", "--output", str(tmp_path / "r.json")]  # fmt: skip
    with mock.patch("transformers_merv.evaluation.runs.load_model") as load_model:
        assert main(argv) == 1
    assert f"error: cannot read {path}: {path} is {kind}, not a regular file" in _error_line(capsys.readouterr().err)
    load_model.assert_not_called()


def _eval_files(root: Path, names: list[str], extra: dict | None = None) -> tuple[Path, Path]:
    questions = [{"question_id": f"q{i}", "video_name": name, "question": QUESTION, **(extra or {})}
                 for i, name in enumerate(names)]  # fmt: skip
    answers = [{"question_id": f"q{i}", "answer": "red"} for i in range(len(names))]
    (root / "q.json").write_text(json.dumps(questions))
    (root / "a.json").write_text(json.dumps(answers))
    return root / "q.json", root / "a.json"


def test_eval_skips_and_counts_videos_that_are_not_regular_files(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(EXAMPLE_VIDEO, videos / "good.mp4")
    os.mkfifo(videos / "pipe.mp4")
    (videos / "folder.mp4").mkdir()
    questions, answers = _eval_files(tmp_path, ["good", "pipe", "folder"])
    assert main(["eval", "--questions", str(questions), "--answers", str(answers), "--video-dir", str(videos),
                 "--mode", "open-ended", "--output", str(tmp_path / "r.json")]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["evaluated"] == 1 and summary["skipped"] == 2 and summary["accuracy"] == 1.0
    reasons = {entry["question_id"]: entry["reason"] for entry in summary["skipped_questions"]}
    assert "is a FIFO (named pipe), not a regular file" in reasons["q1"]
    assert "is a directory, not a regular file" in reasons["q2"]


def _training_json(root: Path, entries: list[dict]) -> Path:
    (root / "train.json").write_text(json.dumps(entries))
    return root / "train.json"


def _video_entry(index: int, media: str, kind: str = "video") -> dict:
    turns = [{"from": "human", "value": "<video>\nWhat color?"}, {"from": "gpt", "value": "red"}]
    return {"id": f"e{index}", kind: media, "conversations": turns}


@NOT_REGULAR
def test_training_dataset_refuses_media_that_are_not_regular_files(make, tmp_path, processor):
    path, kind = make(tmp_path)
    shutil.copy(EXAMPLE_VIDEO, tmp_path / "good.mp4")
    data = _training_json(tmp_path, [_video_entry(0, "good.mp4"), _video_entry(1, str(path))])
    dataset = VideoLlavaDataset(data, tmp_path, processor)
    assert len(dataset) == 1 and f"is {kind}, not a regular file" in dataset.skipped[0].reason
    with pytest.raises(BadExampleError, match="entry 1 .*" + re.escape(f"is {kind}, not a regular file")):
        VideoLlavaDataset(data, tmp_path, processor, on_bad_example="error")


@NOT_REGULAR
def test_training_dataset_refuses_a_data_file_that_is_not_regular(make, tmp_path, processor):
    path, kind = make(tmp_path)
    with pytest.raises(MediaLimitError, match=re.escape(f"is {kind}, not a regular file")):
        VideoLlavaDataset(path, tmp_path, processor)


# --- decoding time ---------------------------------------------------------------------------------------------------

TIME_LIMIT_MESSAGE = r"took longer to read than the limit of 1e-06 seconds; set MERV_DECODE_TIMEOUT_S"


@pytest.fixture
def no_time_to_decode(monkeypatch):
    monkeypatch.setenv("MERV_DECODE_TIMEOUT_S", "0.000001")


@pytest.mark.parametrize("video", [PANCAKE, MEDIA / "video_0.mov"], ids=lambda path: path.name)
def test_decoding_stops_at_the_time_limit(video, no_time_to_decode, processor):
    with pytest.raises(MediaLimitError, match=TIME_LIMIT_MESSAGE):
        read_video(video)
    with pytest.raises(MediaLimitError, match=TIME_LIMIT_MESSAGE):
        processor(text="<video>Q", videos=[str(video)])


def test_decoding_time_limit_through_the_cli_and_the_dataset(no_time_to_decode, tmp_path, processor, capsys):
    for command in (_ask, _explain):
        assert main(command(PANCAKE)) == 1
        assert "took longer to read than the limit" in _error_line(capsys.readouterr().err)
    shutil.copy(PANCAKE, tmp_path / "pancake.mkv")
    data = _training_json(tmp_path, [_video_entry(0, "pancake.mkv")])
    with pytest.raises(BadExampleError, match=f"entry 0 .*{TIME_LIMIT_MESSAGE}"):
        VideoLlavaDataset(data, tmp_path, processor, on_bad_example="error")[0]


def test_eval_skips_videos_over_the_time_limit(no_time_to_decode, tmp_path):
    shutil.copy(PANCAKE, tmp_path / "pancake.mkv")
    questions, answers = _eval_files(tmp_path, ["pancake"])
    assert main(["eval", "--questions", str(questions), "--answers", str(answers), "--video-dir", str(tmp_path),
                 "--mode", "open-ended", "--output", str(tmp_path / "r.json")]) == 0  # fmt: skip
    skipped = json.loads((tmp_path / "r.json").read_text())["summary"]["skipped_questions"]
    assert len(skipped) == 1 and "took longer to read than the limit" in skipped[0]["reason"]


class _TickingClock:
    """A clock that advances one second per reading: a deterministic stand-in for slow decoding."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("video", [PANCAKE, MEDIA / "video_0.mov"], ids=lambda path: path.name)
def test_the_time_limit_also_stops_decoding_after_indexing(video, monkeypatch):
    """Indexing the packets takes one reading per packet; a limit just above that is reached while decoding."""
    clock = _TickingClock()
    monkeypatch.setattr(media_limits, "time", SimpleNamespace(monotonic=clock))
    with open_video(video) as reader:
        readings_to_index = clock.now
        total = reader.metadata.total_num_frames
    monkeypatch.setenv("MERV_DECODE_TIMEOUT_S", str(readings_to_index + 1))
    clock.now = 0.0
    with pytest.raises(MediaLimitError, match="took longer to read than the limit") as raised:
        read_video(video, total)
    assert any("_decode" in entry.name or "_indexed_frames" in entry.name for entry in raised.traceback)


@pytest.mark.parametrize("value", ["0", "-3", "soon", "inf"])
def test_limits_must_be_positive_numbers(value, monkeypatch):
    monkeypatch.setenv("MERV_DECODE_TIMEOUT_S", value)
    with pytest.raises(ValueError, match=f"MERV_DECODE_TIMEOUT_S must be a positive number of seconds, got '{value}'"):
        read_video(PANCAKE)


# --- media that would decompress to enormous sizes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (8000, 8000, r"8000x8000 frames \(64,000,000 pixels\), over the limit of 33,177,600 pixels per frame; "
                     "set MERV_MAX_FRAME_PIXELS"),
        (60000, 60000, r"could be decompression bomb.*\(the limit is 33,177,600 pixels per frame; "
                       "set MERV_MAX_FRAME_PIXELS"),
    ],
    ids=["over-merv-limit", "over-pil-limit"],
)  # fmt: skip
def test_image_bombs_are_refused_before_decoding(width, height, message, tmp_path, processor, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(width, height))
    with pytest.raises(MediaLimitError, match=message):
        read_video(bomb)
    with pytest.raises(MediaLimitError, match=message):
        processor(text="<video>Q", videos=[str(bomb)])
    with pytest.raises(MediaLimitError, match=message):
        processor(text="<video>Q", videos=[bomb.read_bytes()])
    for command in (_ask, _explain):
        assert main(command(bomb)) == 1
        assert re.search(message, _error_line(capsys.readouterr().err))
    entry = _video_entry(0, "bomb.png", kind="image")
    with pytest.raises(BadExampleError, match=message):
        VideoLlavaDataset(_training_json(tmp_path, [entry]), tmp_path, processor, on_bad_example="error")[0]
    questions, answers = _eval_files(tmp_path, ["bomb"])
    assert main(["eval", "--questions", str(questions), "--answers", str(answers), "--video-dir", str(tmp_path),
                 "--mode", "open-ended", "--output", str(tmp_path / "r.json")]) == 0  # fmt: skip
    skipped = json.loads((tmp_path / "r.json").read_text())["summary"]["skipped_questions"]
    assert len(skipped) == 1 and re.search(message, skipped[0]["reason"])


def test_video_frames_over_the_pixel_limit_are_refused_before_decoding(monkeypatch, tmp_path, processor, capsys):
    monkeypatch.setenv("MERV_MAX_FRAME_PIXELS", "100000")
    message = r"426x240 frames \(102,240 pixels\), over the limit of 100,000 pixels per frame; set MERV_MAX_FRAME"
    with pytest.raises(MediaLimitError, match=message):
        processor(text="<video>Q", videos=[str(PANCAKE)])
    assert main(_ask(PANCAKE)) == 1
    assert "over the limit of 100,000 pixels per frame" in _error_line(capsys.readouterr().err)
    shutil.copy(PANCAKE, tmp_path / "pancake.mkv")
    questions, answers = _eval_files(tmp_path, ["pancake"])
    assert main(["eval", "--questions", str(questions), "--answers", str(answers), "--video-dir", str(tmp_path),
                 "--mode", "open-ended", "--output", str(tmp_path / "r.json")]) == 0  # fmt: skip
    skipped = json.loads((tmp_path / "r.json").read_text())["summary"]["skipped_questions"]
    assert "over the limit of 100,000 pixels per frame" in skipped[0]["reason"]


def test_decoded_bytes_limit_covers_sampled_frames_and_animated_images(monkeypatch, tmp_path):
    monkeypatch.setenv("MERV_MAX_DECODED_BYTES", "1000000")
    with pytest.raises(MediaLimitError, match=r"32 frames of 426x240 would decode to 9,815,040 bytes, over the limit"):
        read_video(PANCAKE, 32)
    assert read_video(PANCAKE, 3)[0].shape == (3, 240, 426, 3)  # 920,160 bytes: within the limit
    frames = [Image.new("RGB", (100, 100), (index, 0, 0)) for index in range(50)]
    frames[0].save(tmp_path / "long.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(MediaLimitError, match=r"50 frames of 100x100 would decode to 1,500,000 bytes"):
        read_video(tmp_path / "long.gif")


# --- out-of-range arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_start_sec": 5.0, "clip_end_sec": 2.0}, r"`clip_end_sec` = 2.0 must be finite and after `clip_start_sec`"),
        ({"clip_start_sec": 3.0, "clip_end_sec": 3.0}, "the clip window ends before it starts"),
        ({"clip_end_sec": -1.0}, "`clip_end_sec` = -1.0 must be finite and after"),
        ({"clip_start_sec": float("inf")}, "`clip_start_sec` must be a finite number >= 0"),
        ({"fps": 1e6}, r"`fps` must be positive and at most the video's 30 fps"),
        ({"fps": 0}, "`fps` must be positive"),
        ({"fps": float("nan")}, "`fps` must be positive"),
    ],
)  # fmt: skip
def test_out_of_range_sampling_arguments(kwargs, message, processor):
    with pytest.raises(ValueError, match=message):
        processor(text="<video>Q", videos=[str(PANCAKE)], **kwargs)


@pytest.mark.parametrize(
    "video",
    [np.zeros((16, 64, 3), np.uint8), torch.zeros(16, 64, 3, dtype=torch.uint8), np.zeros((64, 64, 3), np.uint8)],
    ids=["grey-frames-numpy", "grey-frames-torch", "square"],
)
def test_three_dimensional_arrays_are_ambiguous(video, processor):
    with pytest.raises(ValueError, match=r"is a 3-D array \[\d+, 64, 3\]: one RGB image .* or grey frames"):
        processor(text="<video>Q", videos=video)
    processor(text="<video>Q", videos=video[None])  # [1, H, W, 3]: one image, said explicitly


def test_cli_clip_window_ending_before_it_starts(capsys):
    for command in (_ask, _explain):
        assert main(command(PANCAKE, "--clip-start-sec", "5", "--clip-end-sec", "2")) == 1
        assert "the clip window ends before it starts" in _error_line(capsys.readouterr().err)


# --- config values out of range --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vision_feature_layer": {"dinov2": 4}}, r"`vision_feature_layer\['dinov2'\]` = 4 is out of range: valid "
                                                  r"values are -4 to 3 \(dinov2 has 3 layers"),
        ({"vision_feature_layer": {"siglip": -5}}, r"`vision_feature_layer\['siglip'\]` = -5 is out of range"),
        ({"video_token_id": 1024}, r"`video_token_id` = 1024 is out of range: valid values are 0 to 1023 "
                                   r"\(the vocabulary has 1024 tokens\)"),
        ({"video_token_id": -1}, "`video_token_id` = -1 is out of range"),
        ({"text_config": {"model_type": "llama", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                          "num_hidden_layers": 2, "num_attention_heads": 4, "eos_token_id": [2, 5000]}},
         r"`text_config.eos_token_id\[1\]` = 5000 is out of range"),
        ({"vivit_config": {"num_frames": 32, "tubelet_size": [3, 2, 2], "image_size": 28, "hidden_size": 48,
                           "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 96}},
         r"`num_frames\['vivit'\]` = 32 must be a multiple of ViViT's tubelet length"),
    ],
    ids=["layer-too-deep", "layer-too-negative", "video-token-past-vocab", "negative-token", "eos-past-vocab",
         "vivit-tubelets"],
)  # fmt: skip
def test_config_values_out_of_range_are_rejected_when_built(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_values_out_of_range_are_rejected_when_loaded(tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_feature_layer"]["vivit"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"`vision_feature_layer\['vivit'\]` = 7 is out of range: valid values are"):
        AutoConfig.from_pretrained(folder)
    assert main(_ask(EXAMPLE_VIDEO, "--model", str(folder))) == 1
    assert "`vision_feature_layer['vivit']` = 7 is out of range" in _error_line(capsys.readouterr().err)
    assert MervConfig(**tiny_config().to_diff_dict()).video_token_id == 1001  # in-range values pass


def test_a_config_choice_outside_its_values_is_one_line_naming_the_field_and_the_values(tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"fusion_type": "mean"}))
    assert main(_ask(EXAMPLE_VIDEO, "--model", str(folder))) == 1
    error = _error_line(capsys.readouterr().err)
    assert "field 'fusion_type'" in error and "expected one of ('cross_attention'" in error and "got mean" in error


# --- evaluation files ------------------------------------------------------------------------------------------------

GOOD_QUESTION = {"question_id": 1, "video_name": "v", "question": "Q?", "options": ["a", "b", "c"]}
GOOD_ANSWER = {"question_id": 1, "answer": "a", "answer_id": 0}


@pytest.mark.parametrize(
    ("questions", "answers", "mode", "message"),
    [
        ([], [], OPEN_ENDED, "the question file holds no questions"),
        ([GOOD_QUESTION], [{**GOOD_ANSWER, "question_id": 2}], OPEN_ENDED,
         r"1 question\(s\) have no answer \(question_id \['1'\]\); 1 answer\(s\) have no question"),
        ([GOOD_QUESTION], [GOOD_ANSWER, {**GOOD_ANSWER, "answer": "b"}], OPEN_ENDED,
         r"gives different answers for question_id \['1'\]"),
        ([GOOD_QUESTION, {**GOOD_QUESTION, "question_id": [1]}], [GOOD_ANSWER], OPEN_ENDED,
         r"question ids must be strings or integers, got \[\[1\]\]"),
        ([{**GOOD_QUESTION, "question": 7}], [GOOD_ANSWER], OPEN_ENDED, "'question' must be a non-empty string, got 7"),
        ([{**GOOD_QUESTION, "question": " "}], [GOOD_ANSWER], OPEN_ENDED, "'question' must be a non-empty string"),
        ([{"question_id": 1, "video_name": "v"}], [GOOD_ANSWER], OPEN_ENDED, "question_id 1: has no 'question'"),
        ([GOOD_QUESTION], [{"question_id": 1, "answer": ["a"]}], OPEN_ENDED, "'answer' must be a non-empty string"),
        ([{**GOOD_QUESTION, "time": "0-5"}], [GOOD_ANSWER], OPEN_ENDED, r"'time' must be \[start, end\] in seconds"),
        ([{**GOOD_QUESTION, "time": [5, 2]}], [GOOD_ANSWER], OPEN_ENDED, r"'time' \[5, 2\] must satisfy 0 <= start"),
        ([{**GOOD_QUESTION, "time": [1]}], [GOOD_ANSWER], OPEN_ENDED, r"'time' must be \[start, end\]"),
        ([{**GOOD_QUESTION, "end_frame": "595"}], [GOOD_ANSWER], OPEN_ENDED, "'end_frame' must be an integer"),
        ([{**GOOD_QUESTION, "end_frame": 5.5}], [GOOD_ANSWER], OPEN_ENDED, "'end_frame' must be an integer"),
        ([{**GOOD_QUESTION, "options": []}], [GOOD_ANSWER], MCQ, "'options' must be a non-empty list of strings"),
        ([{**GOOD_QUESTION, "options": "abc"}], [GOOD_ANSWER], MCQ, "'options' must be a non-empty list"),
        ([{**GOOD_QUESTION, "options": ["a", 2]}], [GOOD_ANSWER], MCQ, "'options' must hold strings"),
        ([{k: v for k, v in GOOD_QUESTION.items() if k != "options"}], [GOOD_ANSWER], MCQ, "has no 'options'"),
        ([{**GOOD_QUESTION, "num_option": 4}], [GOOD_ANSWER], MCQ, "'num_option' must be an integer from 1 to 3"),
        ([{**GOOD_QUESTION, "num_option": "2"}], [GOOD_ANSWER], MCQ, "'num_option' must be an integer"),
        ([{**GOOD_QUESTION, "options": list("abcdef")}], [GOOD_ANSWER], MCQ, "6 options; 1 to 5 are allowed"),
        ([GOOD_QUESTION], [{**GOOD_ANSWER, "answer_id": 3}], MCQ, "'answer_id' must be an integer from 0 to 2"),
        ([GOOD_QUESTION], [{**GOOD_ANSWER, "answer_id": True}], MCQ, "'answer_id' must be an integer"),
        ([{**GOOD_QUESTION, "video_name": "../outside"}], [GOOD_ANSWER], OPEN_ENDED, "climbs out of --video-dir"),
        ([{**GOOD_QUESTION, "video_name": "a/../../outside"}], [GOOD_ANSWER], OPEN_ENDED, "climbs out of"),
        ([{**GOOD_QUESTION, "video_name": "/etc/passwd"}], [GOOD_ANSWER], OPEN_ENDED, "is an absolute path"),
        ([{**GOOD_QUESTION, "video_name": "C:\\videos\\v"}], [GOOD_ANSWER], OPEN_ENDED, "is an absolute path"),
        ([{**GOOD_QUESTION, "video_name": 12}], [GOOD_ANSWER], OPEN_ENDED, "'video_name' must be a non-empty string"),
    ],
)  # fmt: skip
def test_malformed_evaluation_files_are_reported_before_model_work(tmp_path, questions, answers, mode, message):
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(answers))
    with pytest.raises(EvaluationInputError, match=message):
        load_items(tmp_path / "q.json", tmp_path / "a.json", mode)
    argv = ["eval", "--questions", str(tmp_path / "q.json"), "--answers", str(tmp_path / "a.json"), "--video-dir",
            str(tmp_path), "--mode", mode, "--output", str(tmp_path / "r.json")]  # fmt: skip
    runs = "transformers_merv.evaluation.runs"
    with mock.patch(f"{runs}.load_model") as load_model, mock.patch(f"{runs}.load_processor") as processor:
        assert main(argv) == 1
    load_model.assert_not_called()
    processor.assert_not_called()


def test_every_problem_is_listed_in_one_error(tmp_path):
    questions = [{**GOOD_QUESTION, "question_id": i, "question": None} for i in range(12)]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps([{**GOOD_ANSWER, "question_id": i} for i in range(12)]))
    with pytest.raises(EvaluationInputError, match=r"12 problem\(s\): question_id 0: .*; and 2 more$"):
        load_items(tmp_path / "q.json", tmp_path / "a.json", OPEN_ENDED)


def test_identical_repeated_answers_and_nan_times_are_accepted(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([{**GOOD_QUESTION, "time": [float("nan"), float("nan")]}]))
    (tmp_path / "a.json").write_text(json.dumps([GOOD_ANSWER, GOOD_ANSWER]))
    (item,) = load_items(tmp_path / "q.json", tmp_path / "a.json", OPEN_ENDED)
    assert item.answer == "a"


def test_nothing_outside_the_video_dir_is_read(tmp_path, processor):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(EXAMPLE_VIDEO, tmp_path / "outside.mp4")
    for name in ("../outside", str(tmp_path / "outside")):
        with pytest.raises(ValueError, match="--video-dir"):
            find_video(videos, name)
    items = [EvalItem("q0", "../outside", "Q?", "Q?", "red"), EvalItem("q1", str(tmp_path / "outside"), "Q", "Q", "r")]
    with mock.patch("transformers_merv.video_processing_merv.open_video") as open_video:
        results = evaluate(mock.Mock(), processor, items, videos, OPEN_ENDED, progress=False)
    open_video.assert_not_called()
    assert [entry["skipped"] for entry in results["results"]] == [
        "'video_name' '../outside' climbs out of --video-dir with '..'",
        f"'video_name' '{tmp_path / 'outside'}' is an absolute path; it must name a file inside --video-dir",
    ]


def _grey_ramp(dtype: type) -> np.ndarray:
    """A 16-bit ramp from black (0) to white (65535), 64 x 64."""
    return np.linspace(0, 2**16 - 1, 64 * 64).reshape(64, 64).astype(dtype)


def _as_eight_bit_rgb(ramp: np.ndarray) -> np.ndarray:
    return np.repeat(np.round(ramp.astype(np.float64) / 257).astype(np.uint8)[..., None], 3, axis=-1)


def test_a_sixteen_bit_greyscale_png_is_scaled_to_eight_bits(tmp_path):
    """`convert("RGB")` would clip 16-bit grey to 255 almost everywhere: the ramp must stay a ramp. (Pillow >= 10.3
    opens the file as mode "I;16", older Pillow as "I": the oldest-dependencies suite reads it the other way.)"""
    ramp = _grey_ramp(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert np.array_equal(read_video(tmp_path / "ramp.png", 1)[0][0], _as_eight_bit_rgb(ramp))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32], ids=["I;16", "I"])
def test_sixteen_bit_greyscale_pil_images_are_scaled_to_eight_bits(dtype):
    ramp = _grey_ramp(dtype)
    assert np.array_equal(read_video(Image.fromarray(ramp), 1)[0][0], _as_eight_bit_rgb(ramp))
    assert np.array_equal(read_video([Image.fromarray(ramp)], 1)[0][0], _as_eight_bit_rgb(ramp))


@pytest.mark.parametrize(
    "image, message",
    [
        (Image.fromarray(np.full((8, 8), 2**20, np.int32)), "is a 32-bit integer image with values outside 0..65535"),
        (Image.fromarray(np.full((8, 8), 0.5, np.float32)), r"is a floating-point image \(PIL mode 'F'\)"),
    ],
)
def test_images_of_unknown_value_range_are_refused_naming_the_input(image, message, processor):
    with pytest.raises(ValueError, match=rf"^`videos\[0\]` {message}"):
        processor(text="<video>In: what?\nOut:", videos=image)


def test_a_text_mode_file_object_is_refused_naming_the_input(processor):
    for read in (lambda video: processor(text="<video>In: what?\nOut:", videos=video), read_video):
        with open(EXAMPLE_VIDEO, encoding="latin-1") as text_file:
            with pytest.raises(TypeError, match=r"\(.*example\.mp4\) is a file object opened in text mode.*'rb'"):
                read(text_file)
