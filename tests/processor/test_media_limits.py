"""The limits on what reading one video or image may cost (`transformers_merv.media_limits`): decoding time, and
media that would decompress to enormous sizes, refused before decoding. A limit holds wherever media are read: in
`read_video`, the processor, `merv ask` and `merv explain` (one error line naming the input and the limit), the
training dataset, and `merv eval` (which skips and counts the video, as the authors' scripts do). Paths that are not
regular files are refused by each entry point: see their units' tests."""

import json
import re
import shutil
import struct
import zlib
from types import SimpleNamespace

import pytest
from PIL import Image

from transformers_merv import open_video, read_video
from transformers_merv.cli import main
from transformers_merv import media_limits
from transformers_merv.media_limits import MediaLimitError
from transformers_merv.training import BadExampleError, VideoLlavaDataset

from conftest import (
    MEDIA,
    ask_argv,
    error_line,
    explain_argv,
    training_entry,
    write_eval_files,
    write_training_json,
)

PANCAKE = MEDIA / "flipping_a_pancake.mkv"


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --- decoding time ---------------------------------------------------------------------------------------------------

TIME_LIMIT_MESSAGE = r"took longer to read than the limit of 1e-06 seconds; set MERV_DECODE_TIMEOUT_S"


@pytest.mark.parametrize("video", [PANCAKE, MEDIA / "video_0.mov"], ids=lambda path: path.name)
def test_decoding_stops_at_the_time_limit(video, no_time_to_decode, default_processor):
    with pytest.raises(MediaLimitError, match=TIME_LIMIT_MESSAGE):
        read_video(video)
    with pytest.raises(MediaLimitError, match=TIME_LIMIT_MESSAGE):
        default_processor(text="<video>Q", videos=[str(video)])


def test_decoding_time_limit_through_the_cli_and_the_dataset(no_time_to_decode, tmp_path, default_processor, capsys):
    for command in (ask_argv, explain_argv):
        assert main(command(PANCAKE)) == 1
        assert "took longer to read than the limit" in error_line(capsys.readouterr().err)
    shutil.copy(PANCAKE, tmp_path / "pancake.mkv")
    data = write_training_json(tmp_path, [training_entry(0, "pancake.mkv")])
    with pytest.raises(BadExampleError, match=f"entry 0 .*{TIME_LIMIT_MESSAGE}"):
        VideoLlavaDataset(data, tmp_path, default_processor, on_bad_example="error")[0]


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
def test_image_bombs_are_refused_before_decoding(width, height, message, tmp_path, default_processor, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(width, height))
    with pytest.raises(MediaLimitError, match=message):
        read_video(bomb)
    with pytest.raises(MediaLimitError, match=message):
        default_processor(text="<video>Q", videos=[str(bomb)])
    with pytest.raises(MediaLimitError, match=message):
        default_processor(text="<video>Q", videos=[bomb.read_bytes()])
    for command in (ask_argv, explain_argv):
        assert main(command(bomb)) == 1
        assert re.search(message, error_line(capsys.readouterr().err))
    entry = training_entry(0, "bomb.png", kind="image")
    with pytest.raises(BadExampleError, match=message):
        data = write_training_json(tmp_path, [entry])
        VideoLlavaDataset(data, tmp_path, default_processor, on_bad_example="error")[0]
    questions, answers = write_eval_files(tmp_path, ["bomb"])
    assert main(["eval", "--questions", str(questions), "--answers", str(answers), "--video-dir", str(tmp_path),
                 "--mode", "open-ended", "--output", str(tmp_path / "r.json")]) == 0  # fmt: skip
    skipped = json.loads((tmp_path / "r.json").read_text())["summary"]["skipped_questions"]
    assert len(skipped) == 1 and re.search(message, skipped[0]["reason"])


def test_video_frames_over_the_pixel_limit_are_refused_before_decoding(
    monkeypatch, tmp_path, default_processor, capsys
):
    monkeypatch.setenv("MERV_MAX_FRAME_PIXELS", "100000")
    message = r"426x240 frames \(102,240 pixels\), over the limit of 100,000 pixels per frame; set MERV_MAX_FRAME"
    with pytest.raises(MediaLimitError, match=message):
        default_processor(text="<video>Q", videos=[str(PANCAKE)])
    assert main(ask_argv(PANCAKE)) == 1
    assert "over the limit of 100,000 pixels per frame" in error_line(capsys.readouterr().err)
    shutil.copy(PANCAKE, tmp_path / "pancake.mkv")
    questions, answers = write_eval_files(tmp_path, ["pancake"])
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
