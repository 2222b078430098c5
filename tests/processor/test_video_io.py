"""Decoding and frame sampling (`transformers_merv.video_io`) against the authors' decoder and arithmetic."""

import io
import json
import math
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file
from transformers.video_utils import VideoMetadata, default_sample_indices_fn

from transformers_merv import video_io
from transformers_merv.video_io import (
    VideoDecodingError,
    clip_window,
    decode_in_background,
    make_batched_video_inputs,
    open_video,
    read_video,
    sample_frame_indices,
    sample_frame_indices_at_rate,
    to_frame_array,
)

from conftest import FIXTURES, MEDIA


PREPROCESS = FIXTURES / "preprocess"
PANCAKE = MEDIA / "flipping_a_pancake.mkv"
VIDEO_0 = MEDIA / "video_0.mov"
CORRUPTED = MEDIA / "corrupted.mp4"
PANCAKE_FRAME0 = PREPROCESS / "pancake-frame0.png"
MERV_DECODE_COUNT = 32


def _fixture(name: str) -> tuple[dict, dict]:
    return json.loads((PREPROCESS / f"{name}.json").read_text()), load_file(PREPROCESS / f"{name}.safetensors")


def _pattern_frame(index: int, height: int, width: int) -> np.ndarray:
    """A frame whose content identifies its index (and has texture, so encoders use B-frames)."""
    rng = np.random.default_rng(index // 50)
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frame = np.roll(frame, index, axis=1)
    frame[:8, :8] = index % 256
    return frame


def _make_video(
    path: Path,
    num_frames: int,
    fmt: str | None = None,
    height: int = 48,
    width: int = 64,
    gop: int = 12,
    x264_params: str = "bframes=2:b-adapt=0",
    rotation: int | None = None,
) -> Path:
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=25, options={"x264-params": x264_params})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_pattern_frame(index, height, width), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


# --- the authors' frame indices -------------------------------------------------------------------------------------


def test_indices_match_the_fixtures():
    for name in ("pancake-merv-full", "video_0-merv-full"):
        info = json.loads((PREPROCESS / f"{name}.json").read_text())
        view = info["decoder_view"]
        indices = sample_frame_indices(view["len(VideoReader)"], view["get_avg_fps()"], MERV_DECODE_COUNT)
        assert indices.tolist() == info["shared_decode_frame_indices"]


def test_short_video_repeats_indices_like_the_authors():
    assert sample_frame_indices(3, 30.0, MERV_DECODE_COUNT).tolist() == [0] * 16 + [1] * 15 + [2]


@pytest.mark.parametrize(("num_frames", "fps"), [(123, 30.0), (29, 25.0)])
def test_float64_round_trip_ends_one_frame_early(num_frames, fps):
    # (N / fps) * fps - 1 lands just below N - 1 for these, and truncation then ends the range at N - 2.
    assert sample_frame_indices(num_frames, fps, 4)[-1] == num_frames - 2


def test_clip_window_and_end_frame():
    assert sample_frame_indices(310, 30.0, 4, clip_start_sec=2.0, clip_end_sec=4.0).tolist() == [60, 79, 99, 119]
    assert sample_frame_indices(310, 30.0, 5, end_frame=100).tolist() == [0, 25, 50, 75, 100]
    assert sample_frame_indices(310, 30.0, 5, end_frame=-1).tolist() == sample_frame_indices(310, 30.0, 5).tolist()
    nan_window = sample_frame_indices(310, 30.0, 8, clip_start_sec=float("nan"), clip_end_sec=float("nan"))
    assert nan_window.tolist() == sample_frame_indices(310, 30.0, 8).tolist()


def test_the_clip_window_holds_the_values_that_are_set():
    assert clip_window() == {}
    assert clip_window(1.5, 4.0) == {"clip_start_sec": 1.5, "clip_end_sec": 4.0}
    assert clip_window(end_frame=0) == {"end_frame": 0}  # a first frame is a value, not "unset"
    assert clip_window(clip_start_sec=0.0, end_frame=-1) == {"clip_start_sec": 0.0, "end_frame": -1}


@pytest.mark.parametrize("window", [{"clip_start_sec": 20.0}, {"clip_end_sec": 0.0}, {"clip_start_sec": -1.0}])
def test_clip_window_outside_the_video_is_rejected(window):
    with pytest.raises(ValueError, match="clip"):
        sample_frame_indices(310, 30.0, 4, **window)


def test_uniform_sampling_stops_a_window_past_the_video_at_its_last_frame():
    assert sample_frame_indices(10, 1.0, 4, end_frame=1000).tolist() == [0, 3, 6, 9]
    assert sample_frame_indices(10, 1.0, 4, clip_start_sec=3.0, clip_end_sec=100.0).tolist() == [3, 5, 7, 9]


def test_a_window_starting_at_the_last_frames_end_is_rejected():
    """310 frames at 31 fps last exactly 10 s: a window from 10 s asks for frame 310, one past the last."""
    with pytest.raises(ValueError, match="asks for frames 309..310, outside this video's 310 frames"):
        sample_frame_indices(310, 31.0, 4, clip_start_sec=10.0)


def test_an_out_of_range_window_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"\(clip_start_sec=20\.0, clip_end_sec=30\.0, end_frame=-1\)"):
        sample_frame_indices(310, 30.0, 4, clip_start_sec=20.0, clip_end_sec=30.0, end_frame=-1)


@pytest.mark.parametrize(
    ("window", "message"),
    [({"clip_start_sec": math.inf}, "must be a finite number"), ({"clip_end_sec": math.inf}, "must be finite")],
)
@pytest.mark.parametrize("at_rate", [False, True], ids=["uniform", "at-rate"])
def test_infinite_clip_times_are_rejected(at_rate, window, message):
    with pytest.raises(ValueError, match=message):
        if at_rate:
            sample_frame_indices_at_rate(310, 30.0, 2.0, **window)
        else:
            sample_frame_indices(310, 30.0, 4, **window)


def test_rate_sampling_equals_transformers_over_the_whole_video():
    metadata = VideoMetadata(total_num_frames=310, fps=30.0)
    ours = sample_frame_indices_at_rate(310, 30.0, 2.0)
    assert ours.tolist() == default_sample_indices_fn(metadata, fps=2.0).tolist()
    assert sample_frame_indices_at_rate(310, 30.0, 1.0, clip_start_sec=2.0, clip_end_sec=4.0).tolist() == [60, 90]
    with pytest.raises(ValueError, match="frame rate"):
        sample_frame_indices_at_rate(10, None, 1.0)


@pytest.mark.parametrize(
    ("window", "first", "stop"),
    [
        ({"clip_start_sec": 1.0, "clip_end_sec": 4.0}, 30, 120),
        ({"clip_start_sec": 2.5, "clip_end_sec": 7.9}, 75, 237),
        ({"clip_start_sec": 9.0}, 270, 310),
        ({"clip_start_sec": 8.0, "clip_end_sec": 60.0}, 240, 310),  # an end past the video stops at its last frame
        ({"end_frame": 100}, 0, 101),  # `end_frame` is included
    ],
)
def test_rate_sampling_inside_a_clip_window_is_transformers_sampling_of_the_window(window, first, stop):
    """The window's frames `first..stop - 1` sampled as transformers samples a whole video of that length; the last
    sampled frame stays inside the window."""
    window_metadata = VideoMetadata(total_num_frames=stop - first, fps=30.0)
    expected = first + default_sample_indices_fn(window_metadata, fps=2.0)
    indices = sample_frame_indices_at_rate(310, 30.0, 2.0, **window)
    assert indices.tolist() == expected.tolist()
    assert first <= indices[0] and indices[-1] < stop


def test_end_frame_zero_samples_the_first_frame_only():
    """`end_frame=0` is a window of one frame (a negative `end_frame` means none)."""
    assert sample_frame_indices(310, 30.0, 4, end_frame=0).tolist() == [0, 0, 0, 0]
    assert sample_frame_indices_at_rate(310, 30.0, 2.0, end_frame=0).tolist() == [0]


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ({"clip_start_sec": 2.0, "clip_end_sec": 2.0}, "the clip window ends before it starts"),
        ({"clip_start_sec": 20.0}, "holds no frame of this video"),
        ({"clip_end_sec": 0.0}, "the clip window ends before it starts"),
    ],
)
def test_rate_sampling_of_an_empty_window_is_rejected(window, reason):
    with pytest.raises(ValueError, match=reason):
        sample_frame_indices_at_rate(310, 30.0, 2.0, **window)


def test_rate_sampling_at_the_videos_own_rate_takes_every_frame():
    assert sample_frame_indices_at_rate(10, 25.0, 25.0).tolist() == list(range(10))
    assert sample_frame_indices_at_rate(310, 30.0, 30.0, clip_start_sec=1.0, clip_end_sec=2.0).tolist() == list(
        range(30, 60)
    )


def test_rate_sampling_of_a_window_shorter_than_a_frame_is_rejected():
    """1.0-1.01 s at 30 fps: frames 30..int(30.3) - 1, none."""
    with pytest.raises(ValueError, match="holds no frame of this video"):
        sample_frame_indices_at_rate(310, 30.0, 2.0, clip_start_sec=1.0, clip_end_sec=1.01)


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_rate_must_be_positive(rate):
    with pytest.raises(ValueError, match="`fps` must be positive"):
        sample_frame_indices_at_rate(310, 30.0, rate)


def test_rate_sampling_last_frame_of_a_window():
    # 3 s at 30 fps from frame 30: 6 frames at 2 fps, every 15th, the last one 15 frames before the window's end
    assert sample_frame_indices_at_rate(310, 30.0, 2.0, clip_start_sec=1.0, clip_end_sec=4.0).tolist() == [
        30,
        45,
        60,
        75,
        90,
        105,
    ]
    # 90 frames at 1/7 fps: int(90 / 30 / 7) = 0 frames, so one frame, the window's first
    assert sample_frame_indices_at_rate(310, 30.0, 1 / 7, clip_start_sec=1.0, clip_end_sec=4.0).tolist() == [30]


def test_decoded_frames_have_no_frame_rate_for_clip_times():
    assert sample_frame_indices(5, None, 3).tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="frame rate"):
        sample_frame_indices(5, None, 3, clip_start_sec=1.0)


# --- decoding the shared media ---------------------------------------------------------------------------------------


def test_pancake_decodes_exactly_as_decord():
    info, tensors = _fixture("pancake-merv-full")
    with av.open(str(PANCAKE)) as container:
        assert container.streams.video[0].frames == 0  # Matroska reports no frame count
    frames, metadata = read_video(PANCAKE, MERV_DECODE_COUNT)
    assert metadata.frames_indices == info["shared_decode_frame_indices"]
    assert (metadata.total_num_frames, metadata.fps, metadata.width, metadata.height) == (310, 30.0, 426, 240)
    assert metadata.duration == pytest.approx(310 / 30)
    assert frames.dtype == np.uint8 and frames.shape == (32, 240, 426, 3)
    np.testing.assert_array_equal(frames, tensors["decoded_frames_uint8"])


def test_three_frame_video_repeats_frames():
    info, tensors = _fixture("video_0-merv-full")
    frames, metadata = read_video(VIDEO_0, MERV_DECODE_COUNT)
    assert metadata.frames_indices == info["shared_decode_frame_indices"]
    np.testing.assert_array_equal(frames, tensors["decoded_frames_uint8"][metadata.frames_indices])


def test_bytes_and_file_objects_decode_like_paths():
    expected, _ = read_video(VIDEO_0, 8)
    data = VIDEO_0.read_bytes()
    np.testing.assert_array_equal(read_video(data, 8)[0], expected)
    with open(VIDEO_0, "rb") as handle:
        np.testing.assert_array_equal(read_video(handle, 8)[0], expected)
    np.testing.assert_array_equal(read_video(io.BytesIO(data), 8)[0], expected)


def test_image_file_is_a_one_frame_video():
    frames, metadata = read_video(PANCAKE_FRAME0, MERV_DECODE_COUNT)
    image = np.asarray(Image.open(PANCAKE_FRAME0).convert("RGB"))
    assert metadata.total_num_frames == 1 and metadata.frames_indices == [0] * MERV_DECODE_COUNT
    assert (metadata.video_backend, metadata.fps) == ("pil", None)
    np.testing.assert_array_equal(frames, np.broadcast_to(image, frames.shape))


def test_images_are_decoded_by_pil_like_the_authors(tmp_path):
    path = tmp_path / "frame.jpg"
    Image.open(PANCAKE_FRAME0).convert("RGB").save(path, quality=75)  # 4:2:0 chroma, where FFmpeg's decode differs
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(read_video(path, 1)[0][0], expected)
    np.testing.assert_array_equal(read_video(path.read_bytes(), 1)[0][0], expected)
    with av.open(str(path)) as container:
        assert np.abs(next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int) - expected).max() > 1


def test_animated_gif_is_sampled_like_the_authors(tmp_path):
    path = tmp_path / "clip.gif"
    images = [Image.fromarray(np.full((8, 8, 3), 40 * index, dtype=np.uint8)) for index in range(5)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100)
    frames, metadata = read_video(path, 8)
    assert metadata.frames_indices == [0, 0, 1, 1, 2, 2, 3, 4]  # np.linspace(0, n - 1, 8, dtype=int)
    assert frames[:, 0, 0, 0].tolist() == [0, 0, 40, 40, 80, 80, 120, 160]


# --- seeking: exact frames, cost growing with the frames sampled ----------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "fmt", "x264_params"),
    [
        ("mp4", "mp4", "bframes=2:b-adapt=0"),  # B-frames: presentation order differs from decoding order
        ("mkv", "matroska", "bframes=0"),
        ("ts", "mpegts", "bframes=2:b-adapt=0"),  # approximate seeking: the reader must step back
    ],
)
def test_sparse_sampling_returns_exactly_the_sequential_frames(tmp_path, suffix, fmt, x264_params):
    path = _make_video(tmp_path / f"clip.{suffix}", 150, fmt=fmt, x264_params=x264_params)
    reference = _decode_all(path)
    indices = [149, 0, 5, 5, 37, 38, 100, 13, 148]
    with open_video(path) as reader:
        assert reader.metadata.total_num_frames == len(reference)
        np.testing.assert_array_equal(reader.get_frames(indices), reference[indices])


def test_streams_without_time_stamps_are_decoded_in_order(tmp_path):
    path = _make_video(tmp_path / "raw.h264", 30, fmt="h264")
    with av.open(str(path)) as container:
        assert next(container.demux(video=0)).pts is None
    frames, metadata = read_video(path, 4)
    np.testing.assert_array_equal(frames, _decode_all(path)[metadata.frames_indices])


def test_decoding_cost_grows_with_frames_sampled_not_length(tmp_path, monkeypatch):
    path = _make_video(tmp_path / "long.mp4", 600, gop=25)
    decoded = []
    original = video_io.PyAVVideoReader._indexed_frames

    def counting(self, seek_to):
        for item in original(self, seek_to):
            decoded.append(item[0])
            yield item

    monkeypatch.setattr(video_io.PyAVVideoReader, "_indexed_frames", counting)
    frames, metadata = read_video(path, 4)
    assert len(decoded) <= 4 * 25  # at most one group of pictures per sampled frame, not 600 frames
    np.testing.assert_array_equal(frames, _decode_all(path)[metadata.frames_indices])


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_gives_upright_frames(tmp_path, rotation):
    path = _make_video(tmp_path / "phone.mp4", 3, height=32, width=64, rotation=rotation)
    frames, metadata = read_video(path, 3)
    stored = _decode_all(path)
    upright = np.rot90(stored, k=rotation // 90, axes=(1, 2))  # the display matrix turns counter-clockwise
    np.testing.assert_array_equal(frames, upright)
    assert (metadata.height, metadata.width) == upright.shape[1:3]


def test_background_decoding_yields_in_order_reraises_and_stops_when_closed():
    assert list(decode_in_background(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise VideoDecodingError("broken clip")

    frames = decode_in_background(failing())
    assert next(frames) == 1
    with pytest.raises(VideoDecodingError, match="broken clip"):
        next(frames)
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    frames = decode_in_background(endless(), depth=2)
    assert next(frames) == 0
    frames.close()  # joins the thread, which stops producing
    stopped_at = len(produced)
    assert not any(thread.name == "merv-video-decode" for thread in threading.enumerate())
    assert len(produced) == stopped_at


# --- bad media -------------------------------------------------------------------------------------------------------


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no_such_video.mp4"):
        read_video(MEDIA / "no_such_video.mp4")


def test_not_a_video(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a video")
    with pytest.raises(VideoDecodingError, match="notes.txt") as excinfo:
        read_video(path)
    assert isinstance(excinfo.value, ValueError) and isinstance(excinfo.value.__cause__, av.error.FFmpegError)


def test_no_video_stream(tmp_path):
    path = tmp_path / "audio.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoDecodingError, match="audio.wav.*no video stream"):
        read_video(path)


def test_corrupted_file_raises_with_the_pyav_error_chained():
    with pytest.raises(VideoDecodingError, match="corrupted.mp4.*corrupt") as excinfo:
        read_video(CORRUPTED, MERV_DECODE_COUNT)
    assert isinstance(excinfo.value.__cause__, av.error.InvalidDataError)


def test_truncated_files():
    data = VIDEO_0.read_bytes()
    with pytest.raises(VideoDecodingError, match="Cannot open"):
        read_video(data[: len(data) // 2])
    # A Matroska file cut short reads as the shorter video it still holds, complete frames only, as decord does.
    data = PANCAKE.read_bytes()
    frames, metadata = read_video(data[: len(data) // 2], 4, end_frame=100)
    assert metadata.total_num_frames < 310
    np.testing.assert_array_equal(frames, read_video(PANCAKE, 4, end_frame=100)[0])


def test_video_stream_with_zero_frames(tmp_path):
    path = tmp_path / "no_frames.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(audio.encode(frame))
        container.mux(audio.encode())
    with pytest.raises(VideoDecodingError, match="no_frames.mkv.*no frames"):
        read_video(path)


# --- decoded inputs --------------------------------------------------------------------------------------------------


def test_decoded_inputs_become_frame_arrays():
    video = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    np.testing.assert_array_equal(to_frame_array(video), video)
    np.testing.assert_array_equal(to_frame_array(torch.from_numpy(video)), video)
    np.testing.assert_array_equal(to_frame_array([Image.fromarray(frame) for frame in video]), video)
    np.testing.assert_array_equal(to_frame_array(list(video)), video)
    np.testing.assert_array_equal(to_frame_array(video[:1]), video[:1])
    gray = Image.fromarray(video[0]).convert("L")
    np.testing.assert_array_equal(to_frame_array(gray), np.asarray(gray.convert("RGB"))[None])


def test_single_image_is_repeated_like_the_authors_do():
    image = Image.fromarray(np.full((4, 5, 3), 7, dtype=np.uint8))
    frames, metadata = read_video(image, MERV_DECODE_COUNT)
    assert frames.shape == (MERV_DECODE_COUNT, 4, 5, 3) and metadata.frames_indices == [0] * MERV_DECODE_COUNT
    assert metadata.fps is None and (metadata.height, metadata.width) == (4, 5)


@pytest.mark.parametrize(
    ("video", "message"),
    [
        (np.zeros((2, 4, 5, 3), dtype=np.float32), "dtype uint8.*float32"),
        (np.zeros((2, 4, 4, 5), dtype=np.uint8), r"shape \[frames, height, width, 3\].*\[2, 4, 4, 5\]"),
        (np.zeros((4, 5), dtype=np.uint8), r"shape.*\[4, 5\]"),
        (np.zeros((16, 5, 3), dtype=np.uint8), r"3-D array \[16, 5, 3\].*ambiguous"),
        (np.zeros((0, 4, 5, 3), dtype=np.uint8), r"shape.*\[0, 4, 5, 3\]"),
        ([], "empty"),
        ([np.zeros((4, 5, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)], "same size"),
        ([np.zeros((4, 5, 3), np.int64)], r"`clip\[0\]` must have dtype uint8"),
    ],
)
def test_wrong_decoded_frames_name_the_argument(video, message):
    with pytest.raises(ValueError, match=message) as excinfo:
        to_frame_array(video, "clip")
    assert "`clip" in str(excinfo.value)


def test_channels_first_frames_read_as_channels_last():
    video = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    channels_first = video.transpose(0, 3, 1, 2)
    assert np.array_equal(to_frame_array(channels_first), video)
    assert np.array_equal(to_frame_array(torch.from_numpy(channels_first)), video)
    assert np.array_equal(to_frame_array(list(channels_first)), video)
    # three channels at both ends: last, unless `input_data_format` says first
    ambiguous = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    assert np.array_equal(to_frame_array(ambiguous), ambiguous)
    assert np.array_equal(
        to_frame_array(ambiguous, input_data_format="channels_first"), ambiguous.transpose(0, 2, 3, 1)
    )
    assert np.array_equal(to_frame_array(video, input_data_format="channels_last"), video)


def test_unsupported_input_type():
    with pytest.raises(TypeError, match="`video` must be"):
        open_video(42)


def test_batching_rules():
    frame = np.zeros((4, 5, 3), dtype=np.uint8)
    video = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    assert len(make_batched_video_inputs("a.mp4")) == 1
    assert len(make_batched_video_inputs(["a.mp4", Path("b.mkv"), b"bytes"])) == 3
    assert len(make_batched_video_inputs([["a.mp4"], ["b.mp4"]])) == 2  # apply_chat_template nests per conversation
    assert len(make_batched_video_inputs([frame, frame])) == 1  # a list of frames is one video
    assert len(make_batched_video_inputs([[frame], [frame, frame]])) == 2
    assert len(make_batched_video_inputs([video, video])) == 2
    assert len(make_batched_video_inputs(np.zeros((3, 2, 4, 5, 3), dtype=np.uint8))) == 3
    with pytest.raises(ValueError, match="empty"):
        make_batched_video_inputs([])
    with pytest.raises(TypeError, match="`videos` must be"):
        make_batched_video_inputs(3.5)
