"""Long videos window by window: the window arithmetic, every window's pixels from one demux and one decoding pass
(equal to processing each window as a clip), the Python API's records, SRT/VTT captions and the timeline chart."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_merv.inference.captions import to_srt, to_vtt
from transformers_merv.inference.fusion_weights import CHART_BACKGROUND, chart_color, encoder_weights
from transformers_merv.inference.prefix_cache import answer_questions, prefill_video
from transformers_merv.inference.timeline import TIMELINE_PLOT_HEIGHT, draw_fusion_timeline
from transformers_merv.inference.windows import (
    DEFAULT_CAPTION_PROMPT,
    WindowAnswer,
    answer_windows,
    caption_windows,
    iter_answer_windows,
)
from transformers_merv.video_io import PyAVVideoReader, VideoReader, time_windows

from conftest import MEDIA

VIDEO = MEDIA / "flipping_a_pancake.mkv"
PANCAKE_SECONDS = 310 / 30
QUESTION = "What color is the circle?"
GENERATION = {"max_new_tokens": 3}


@pytest.mark.parametrize(
    ("duration", "window", "overlap", "frame", "expected"),
    [
        (10.0, 4, 0, 0.04, [(0, 4), (4, 8), (8, 10)]),  # the last window is partial, cut at the end
        (10.0, 5, 0, 0.04, [(0, 5), (5, 10)]),  # a whole number of windows: no empty window after them
        (10.0, 4, 1, 0.04, [(0, 4), (3, 7), (6, 10)]),  # stride 3: the third window ends at the end exactly
        (10.0, 4, 2, 0.04, [(0, 4), (2, 6), (4, 8), (6, 10)]),
        (10.0, 4.99, 0, 0.04, [(0, 4.99), (4.99, 10.0)]),  # 0.02 s would remain: less than a frame, taken in
        (10.0, 20, 0, 0.04, [(0, 10.0)]),  # longer than the video: one window, the whole video
        (10.0, 20, 19, 0.04, [(0, 10.0)]),
    ],
)
def test_time_windows(duration, window, overlap, frame, expected):
    windows = time_windows(duration, window, overlap, frame)
    assert windows == expected
    assert all(isinstance(value, float) for span in windows for value in span)


@pytest.mark.parametrize(
    ("window", "overlap", "argument"),
    [(0, 0, "window_seconds"), (-1, 0, "window_seconds"), (float("inf"), 0, "window_seconds"),
     (4, -1, "overlap_seconds"), (4, 4, "overlap_seconds"), (4, 5, "overlap_seconds")],
)  # fmt: skip
def test_bad_window_lengths_are_refused_naming_the_argument(default_processor, window, overlap, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        default_processor.video_processor.preprocess_windows(str(VIDEO), window, overlap)


def test_windows_refuse_a_clip_window_and_frames_without_a_frame_rate(default_processor):
    processor = default_processor.video_processor
    with pytest.raises(ValueError, match="clip_start_sec"):
        processor.preprocess_windows(str(VIDEO), 4, clip_start_sec=1.0)
    with pytest.raises(ValueError, match="frame rate"):
        next(processor.preprocess_windows(np.zeros((8, 16, 16, 3), np.uint8), 4))


@pytest.fixture
def reader_calls(monkeypatch) -> Counter:
    """Counts the video readers' container opens, demux passes (packet indexing) and decoding passes."""
    calls = Counter()

    def counting(name: str, original):
        def wrapper(self, *args, **kwargs):
            calls[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(PyAVVideoReader, "_open_container", counting("open", PyAVVideoReader._open_container))
    monkeypatch.setattr(PyAVVideoReader, "_index_packets", counting("demux", PyAVVideoReader._index_packets))
    monkeypatch.setattr(PyAVVideoReader, "iter_frames", counting("decode", VideoReader.iter_frames))
    return calls


@pytest.mark.parametrize(("window", "overlap", "count"), [(4.0, 1.0, 4), (3.0, 0.0, 4)])
def test_window_pixels_equal_each_window_processed_as_a_clip_from_one_decoding_pass(
    default_processor, reader_calls, window, overlap, count
):
    processor = default_processor.video_processor
    windows = list(processor.preprocess_windows(str(VIDEO), window, overlap))
    assert dict(reader_calls) == {"open": 1, "demux": 1, "decode": 1}
    assert len(windows) == count and windows[-1][1] == PANCAKE_SECONDS
    for start, end, features in windows:
        expected = processor(str(VIDEO), clip_start_sec=start, clip_end_sec=end)["pixel_values_videos"]
        assert torch.equal(features["pixel_values_videos"], expected), (start, end)


def test_a_window_longer_than_the_video_is_the_whole_video(default_processor):
    processor = default_processor.video_processor
    ((start, end, features),) = processor.preprocess_windows(str(VIDEO), 60.0, return_metadata=True)
    whole = processor(str(VIDEO), return_metadata=True)
    assert (start, end) == (0.0, PANCAKE_SECONDS)
    assert torch.equal(features["pixel_values_videos"], whole["pixel_values_videos"])
    assert features["video_metadata"][0].frames_indices == whole["video_metadata"][0].frames_indices


def test_answer_windows_answers_each_window_as_its_clip(shipped):
    model, processor = shipped
    windows = answer_windows(model, processor, VIDEO, QUESTION, 6.0, 1.0, **GENERATION)
    assert [(w.start_sec, w.end_sec) for w in windows] == [(0.0, 6.0), (5.0, PANCAKE_SECONDS)]
    for window in windows:
        sampling = {"clip_start_sec": window.start_sec, "clip_end_sec": window.end_sec}
        prefix = prefill_video(model, processor, VIDEO, sampling)
        assert window.answer == answer_questions(model, processor, prefix, [QUESTION], **GENERATION)[0]
        assert window.fusion_weights == encoder_weights(model.config, prefix.video_features)
    captions = caption_windows(model, processor, VIDEO, 6.0, 1.0, **GENERATION)
    prompted = list(iter_answer_windows(model, processor, VIDEO, DEFAULT_CAPTION_PROMPT, 6.0, 1.0, **GENERATION))
    assert captions == prompted and [c.answer for c in captions] != [w.answer for w in windows]


CUES = [
    WindowAnswer(0.0, 4.0, "A pan on a stove.", None),
    WindowAnswer(3.9995, 61.25, "The pancake\nflips.", None),
    WindowAnswer(3599.5, 3725.0306, "Done.", None),
]


def test_srt_captions():
    assert to_srt(CUES) == (
        "1\n00:00:00,000 --> 00:00:04,000\nA pan on a stove.\n\n"
        "2\n00:00:04,000 --> 00:01:01,250\nThe pancake flips.\n\n"
        "3\n00:59:59,500 --> 01:02:05,031\nDone.\n\n"
    )


def test_vtt_captions():
    assert to_vtt(CUES) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:04.000\nA pan on a stove.\n\n"
        "00:00:04.000 --> 00:01:01.250\nThe pancake flips.\n\n"
        "00:59:59.500 --> 01:02:05.031\nDone.\n\n"
    )


def test_timeline_stacks_each_windows_weights_in_encoder_colours(tmp_path: Path):
    weights = [{"languagebind": 0.5, "dinov2": 0.5}, {"languagebind": 0.1, "dinov2": 0.9}]
    windows = [WindowAnswer(0.0, 5.0, "red", weights[0]), WindowAnswer(5.0, 10.0, "blue", weights[1])]
    draw_fusion_timeline(windows, QUESTION, tmp_path / "timeline.png")
    with Image.open(tmp_path / "timeline.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    columns = [pixels.shape[1] // 4, 3 * pixels.shape[1] // 4]  # the middle of each window's bar
    for column, window_weights in zip(columns, weights):
        colours = [tuple(rgb) for rgb in pixels[:, column]]
        runs = {colour: colours.count(colour) for colour in (chart_color(0), chart_color(1))}
        assert runs[chart_color(0)] == pytest.approx(window_weights["languagebind"] * TIMELINE_PLOT_HEIGHT, abs=2)
        assert runs[chart_color(1)] == pytest.approx(window_weights["dinov2"] * TIMELINE_PLOT_HEIGHT, abs=2)
    assert tuple(pixels[0, 0]) == CHART_BACKGROUND


def test_timeline_refuses_windows_without_weights(tmp_path: Path):
    with pytest.raises(ValueError, match="no fusion weights"):
        draw_fusion_timeline([WindowAnswer(0.0, 1.0, "red", None)], QUESTION, tmp_path / "timeline.png")
