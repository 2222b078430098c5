"""Video decoding and frame sampling for MERV, independent of any model.

Videos are decoded with PyAV. Opening a video demuxes its packets once (no decoding) to count the frames and map each
frame index to its presentation time stamp: containers such as Matroska report no frame count, and the authors'
decoder (decord) counts frames the same way. Only the requested frames are then decoded, one at a time: when a
requested frame lies behind a keyframe that has not been reached yet, the reader seeks to that keyframe instead of
decoding everything before it, and non-reference frames that were not requested are skipped, so the cost of sampling a
long video grows with the number of frames sampled (times the keyframe interval), not with its length. Frames come
out upright (rotation metadata applied) as uint8 RGB. A Matroska file cut short reads as the shorter video it still
holds (complete frames only, as with decord); data that cannot be decoded raises `VideoDecodingError`, a `ValueError`
naming the file, with PyAV's error chained.

Image files are decoded by PIL, as the authors do: a still image is a one-frame video, an animated GIF a video of its
frames (without a frame rate, so sampled over `[0, N - 1]`, as the authors sample GIFs).

Frame indices follow the authors' `load_video` (`merv/preprocessing/datasets/datasets.py`), float64 arithmetic and
truncation included: `np.linspace(start * fps, min(N - 1, end * fps - 1), num_frames, dtype=int)` with
`end = N / fps` by default, or `np.linspace(0, min(N - 1, end_frame), num_frames, dtype=int)`. A video with fewer
frames than requested therefore gets repeated indices (a 3-frame clip sampled at 32 gives `[0] * 16 + [1] * 15 + [2]`),
exactly as the authors' code does; it is not an error.

Besides paths, bytes and binary file objects, already decoded frames are accepted: a uint8 array or tensor
`[frames, height, width, 3]` (or channels first, `[frames, 3, height, width]`, as torch tensors usually are), a list
of PIL images or of `[height, width, 3]` (or `[3, height, width]`) arrays (one video), or a single PIL image (a
one-frame video, which the sampling repeats, as the authors do for images). A bare 3-D array is refused: it could be
one image `[height, width, 3]` or grey frames `[frames, height, width]`.

What reading may cost is bounded by `media_limits` (frame size, decoded bytes, decoding time, URL timeouts); paths
that are not regular files and URLs other than http(s) are refused before anything is opened.
"""

import io
import math
import os
import queue
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import BinaryIO

import av
from av.video.reformatter import VideoReformatter
import numpy as np
import torch
from PIL import Image, ImageSequence
from transformers.image_utils import ChannelDimension
from transformers.video_utils import VideoMetadata

from .media_limits import (
    MAX_FRAME_PIXELS,
    URL_TIMEOUT_S,
    Deadline,
    MediaLimitError,
    check_frame_size,
    check_regular_file,
    check_url,
    is_url,
)


VIDEO_BACKEND = "pyav"
IMAGE_BACKEND = "pil"
RGB_CHANNELS = 3
DEGREES_PER_QUARTER_TURN = 90
QUARTER_TURNS = 4
DECODE_AHEAD_FRAMES = 4
AMBIGUOUS_ARRAY_DIMS = 3
"""A bare 3-D array could be one RGB image [H, W, 3] or grey frames [T, H, W]: refused rather than guessed."""
SIXTEEN_BIT_MAX = 2**16 - 1
WIDE_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
"""PIL's modes for 16-bit greyscale (PNG, TIFF; Pillow < 10.3 opens 16-bit PNGs as 32-bit "I"), which
`convert("RGB")` clips to 8 bits instead of scaling: nearly every pixel would come out white."""

FileSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO
FrameSource = np.ndarray | torch.Tensor | Image.Image | Sequence[Image.Image | np.ndarray | torch.Tensor]
SingleVideoInput = FileSource | FrameSource


class VideoDecodingError(ValueError):
    """A video could not be read: not a video, no video stream, corrupt or truncated data, or no frames."""


def clip_window(
    clip_start_sec: float | None = None, clip_end_sec: float | None = None, end_frame: int | None = None
) -> dict[str, float | int]:
    """The video processor's sampling kwargs for a clip window (as the authors' `load_video` takes it): those of
    `clip_start_sec`, `clip_end_sec` (seconds) and `end_frame` (a frame index) that are set."""
    window = {"clip_start_sec": clip_start_sec, "clip_end_sec": clip_end_sec, "end_frame": end_frame}
    return {name: value for name, value in window.items() if value is not None}


def time_windows(
    duration: float, window_seconds: float, overlap_seconds: float = 0.0, frame_seconds: float = 0.0
) -> list[tuple[float, float]]:
    """Consecutive `(start, end)` windows over `[0, duration]` seconds: `window_seconds` long, starting every
    `window_seconds - overlap_seconds` (window `k` starts at `k * stride`). The last window is the first that reaches
    the end of the video, cut at the end (a partial window); a window that would leave less than `frame_seconds` (one
    frame) after it is stretched to the end instead, so no window holds less than a frame. A window longer than the
    video gives one window, the whole video."""
    check_window_lengths(window_seconds, overlap_seconds)
    stride = float(window_seconds - overlap_seconds)
    windows: list[tuple[float, float]] = []
    while not windows or windows[-1][1] < duration:
        start = len(windows) * stride
        end = min(start + window_seconds, duration)
        windows.append((start, duration if duration - end < frame_seconds else end))
    return windows


def check_window_lengths(window_seconds: float, overlap_seconds: float) -> None:
    """A `ValueError` naming the argument unless `0 <= overlap_seconds < window_seconds < inf`."""
    if not 0 < window_seconds < math.inf:
        raise ValueError(f"`window_seconds` must be a finite number > 0, got {window_seconds}")
    if not 0 <= overlap_seconds < window_seconds:
        raise ValueError(
            f"`overlap_seconds` must be >= 0 and less than `window_seconds` = {window_seconds}, got {overlap_seconds}"
        )


def sample_frame_indices(
    total_num_frames: int,
    video_fps: float | None,
    num_frames: int,
    clip_start_sec: float | None = 0.0,
    clip_end_sec: float | None = None,
    end_frame: int | None = None,
) -> np.ndarray:
    """Frame indices the authors' `load_video` decodes (repeats included when the video is short).

    `video_fps=None` (decoded frames, no frame rate) samples the whole range `[0, N - 1]` and rejects clip times.
    """
    clip_start_sec, clip_end_sec = _clean_clip_window(clip_start_sec, clip_end_sec, video_fps)
    if end_frame is not None and end_frame >= 0:
        start, stop = 0, min(total_num_frames - 1, end_frame)
    elif video_fps is None:
        start, stop = 0, total_num_frames - 1
    else:
        if clip_end_sec is None:
            clip_end_sec = total_num_frames / video_fps
        start, stop = clip_start_sec * video_fps, min(total_num_frames - 1, clip_end_sec * video_fps - 1)
    indices = np.linspace(start, stop, num_frames, dtype=int)
    _check_indices_in_range(indices, total_num_frames, clip_start_sec, clip_end_sec, end_frame)
    return indices


def sample_frame_indices_at_rate(
    total_num_frames: int,
    video_fps: float | None,
    sample_fps: float,
    clip_start_sec: float | None = 0.0,
    clip_end_sec: float | None = None,
    end_frame: int | None = None,
) -> np.ndarray:
    """Indices of `sample_fps` frames per second of the clip window, transformers' way.

    Over the whole video this equals `transformers.video_utils.default_sample_indices_fn(metadata, fps=sample_fps)`:
    `max(1, int(N / video_fps * sample_fps))` frames at `arange(n) * N // n`; a clip window restricts `N` to it.
    """
    if video_fps is None:
        raise ValueError(
            "Sampling at a frame rate (`fps`) needs the video's frame rate; decoded frames have none unless "
            "`video_metadata` gives it"
        )
    if not 0 < sample_fps <= video_fps:
        raise ValueError(
            f"`fps` must be positive and at most the video's {video_fps:g} fps (it samples distinct frames), "
            f"got {sample_fps}"
        )
    clip_start_sec, clip_end_sec = _clean_clip_window(clip_start_sec, clip_end_sec, video_fps)
    first = int(clip_start_sec * video_fps)
    if end_frame is not None and end_frame >= 0:
        first, stop = 0, min(total_num_frames, end_frame + 1)
    elif clip_end_sec is None:
        stop = total_num_frames
    else:
        stop = min(total_num_frames, int(clip_end_sec * video_fps))
    span = stop - first
    if span <= 0:  # also when the window starts at or after the end (`stop` never exceeds the frame count)
        raise ValueError(
            f"The clip window (clip_start_sec={clip_start_sec}, clip_end_sec={clip_end_sec}, end_frame={end_frame}) "
            f"holds no frame of this video ({total_num_frames} frames at {video_fps:g} fps)"
        )
    count = max(1, int(span / video_fps * sample_fps))
    return first + np.arange(count) * span // count


def _clean_clip_window(
    clip_start_sec: float | None, clip_end_sec: float | None, video_fps: float | None
) -> tuple[float, float | None]:
    """The authors map NaN (as in TVQA's annotations) to the default start / end."""
    if clip_start_sec is None or math.isnan(clip_start_sec):
        clip_start_sec = 0.0
    if clip_end_sec is not None and math.isnan(clip_end_sec):
        clip_end_sec = None
    if not 0 <= clip_start_sec < math.inf:
        raise ValueError(f"`clip_start_sec` must be a finite number >= 0, got {clip_start_sec}")
    if clip_end_sec is not None and not clip_start_sec < clip_end_sec < math.inf:
        raise ValueError(
            f"`clip_end_sec` = {clip_end_sec} must be finite and after `clip_start_sec` = {clip_start_sec}: the clip "
            "window ends before it starts"
        )
    if video_fps is None and (clip_start_sec != 0.0 or clip_end_sec is not None):
        raise ValueError("`clip_start_sec` / `clip_end_sec` need the video's frame rate; decoded frames have none")
    return clip_start_sec, clip_end_sec


def _check_indices_in_range(
    indices: np.ndarray,
    total_num_frames: int,
    clip_start_sec: float,
    clip_end_sec: float | None,
    end_frame: int | None,
) -> None:
    if indices.min() < 0 or indices.max() >= total_num_frames:
        raise ValueError(
            f"The clip window (clip_start_sec={clip_start_sec}, clip_end_sec={clip_end_sec}, end_frame={end_frame}) "
            f"asks for frames {indices.min()}..{indices.max()}, outside this video's {total_num_frames} frames"
        )


class VideoReader:
    """A source of frames: `metadata` first, then `get_frames(indices)` or `iter_frames(indices)`; use as a
    context manager."""

    name: str
    metadata: VideoMetadata

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 RGB frames `[len(indices), H, W, 3]`, upright; indices may repeat and come in any order."""
        indices = np.asarray(indices, dtype=np.int64)
        distinct, positions = np.unique(indices, return_inverse=True)
        frames = None
        for slot, frame in enumerate(self.iter_frames(distinct)):
            if frames is None:
                frames = np.empty((len(distinct), *frame.shape), dtype=np.uint8)
            frames[slot] = frame
        return frames if np.array_equal(distinct, indices) else frames[positions]

    def iter_frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """Upright uint8 RGB frames `[H, W, 3]` at sorted, distinct `indices`, decoded one at a time."""
        if len(indices) == 0:
            raise ValueError(f"No frame indices given for {self.name}")
        if np.any(np.diff(indices) <= 0):
            raise ValueError("`iter_frames` needs sorted, distinct indices; `get_frames` takes any")
        if indices[0] < 0 or indices[-1] >= self.metadata.total_num_frames:
            raise ValueError(
                f"Frame indices {indices[0]}..{indices[-1]} are outside {self.name}'s "
                f"{self.metadata.total_num_frames} frames"
            )
        return self._iter_frames(indices)

    def _iter_frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the underlying file, if any."""

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class FrameArrayReader(VideoReader):
    """Frames that are already decoded (array, tensor, PIL images): no frame rate, no decoding."""

    def __init__(self, frames: np.ndarray, name: str, backend: str | None = None):
        self.name = name
        self._frames = frames
        num_frames, height, width = frames.shape[:3]
        self.metadata = VideoMetadata(total_num_frames=num_frames, width=width, height=height, video_backend=backend)

    def _iter_frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        return iter(self._frames[indices])


class PyAVVideoReader(VideoReader):
    """Decodes one video stream with PyAV, seeking to keyframes when that skips frames."""

    def __init__(self, source: str | BinaryIO, name: str):
        self.name = name
        self._source = source
        self._deadline = Deadline(name)
        # one colour converter for all frames: `frame.to_ndarray(format=...)` builds a new one per frame, which costs
        # more than decoding small frames
        self._reformatter = VideoReformatter()
        self._open_container()
        try:
            self._index_packets()
            self.metadata = self._read_metadata()
        except BaseException:
            self.close()
            raise

    def _open_container(self) -> None:
        if isinstance(self._source, str) and is_url(self._source):
            self._open_url()
        else:
            try:
                self._container = av.open(self._source, mode="r")
            except av.error.FFmpegError as err:
                raise VideoDecodingError(f"Cannot open {self.name} as a video: {err}") from err
        if not self._container.streams.video:
            self.close()
            raise VideoDecodingError(f"{self.name} has no video stream")
        self._stream = self._container.streams.video[0]

    def _open_url(self) -> None:
        """Open an http(s) URL, giving up when connecting or each read waits longer than `URL_TIMEOUT_S`."""
        try:
            self._container = av.open(self._source, mode="r", timeout=URL_TIMEOUT_S.value())
        except (av.error.FFmpegError, OSError) as err:
            raise VideoDecodingError(
                f"Cannot read the video at {self.name}: {err} (the wait for a URL is limited to "
                f"{URL_TIMEOUT_S.describe()})"
            ) from err

    def _index_packets(self) -> None:
        """Demux every packet once (cheap, no decoding): frame count, presentation order, keyframes.

        Frame `i` is the packet with the `i`-th smallest time stamp. Streams without usable time stamps (raw
        elementary streams) are decoded from the start and their frames counted in decoding order instead.
        """
        pts, keyframe_flags = [], []
        try:
            for packet in self._container.demux(self._stream):
                self._deadline.check()
                if packet.size:
                    pts.append(packet.pts)
                    keyframe_flags.append(packet.is_keyframe)
        except av.error.FFmpegError as err:
            raise VideoDecodingError(f"{self.name} is corrupt or truncated (while reading packets): {err}") from err
        if not pts:
            raise VideoDecodingError(f"{self.name} has a video stream with no frames")
        self._num_frames = len(pts)
        self._index_of_pts = None
        self._keyframes = [0]
        if None not in pts and len(set(pts)) == len(pts):
            order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
            self._sorted_pts = [pts[i] for i in order]
            self._index_of_pts = {value: rank for rank, value in enumerate(self._sorted_pts)}
            self._keyframes = sorted(rank for rank, i in enumerate(order.tolist()) if keyframe_flags[i]) or [0]

    def _read_metadata(self) -> VideoMetadata:
        rate = self._stream.average_rate or self._stream.base_rate or self._stream.guessed_rate
        if not rate:
            raise VideoDecodingError(f"{self.name} does not state a frame rate")
        fps = float(rate)
        check_frame_size(self.name, self._stream.width, self._stream.height)
        return VideoMetadata(
            total_num_frames=self._num_frames,
            fps=fps,
            width=self._stream.width,
            height=self._stream.height,
            duration=self._num_frames / fps,
            video_backend=VIDEO_BACKEND,
        )

    def _iter_frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        if self._index_of_pts is not None:
            self._wanted_pts = {self._sorted_pts[index] for index in indices.tolist()}
        check_frame_size(self.name, self.metadata.width, self.metadata.height, num_frames=len(indices))
        shape = None
        try:
            for frame in self._decode_in_order(indices.tolist()):
                check_frame_size(self.name, frame.width, frame.height)  # the stream header may understate it
                image = _to_upright_rgb(frame, self._reformatter)
                if shape is None:
                    shape = image.shape
                    self.metadata.height, self.metadata.width = shape[:2]
                if image.shape != shape:
                    raise VideoDecodingError(f"{self.name} changes frame size mid-stream, which is not supported")
                yield image
        except av.error.FFmpegError as err:
            raise VideoDecodingError(f"{self.name} is corrupt or truncated (while decoding): {err}") from err

    def _decode_in_order(self, targets: list[int]) -> Iterator[av.VideoFrame]:
        """Yield the frames at the sorted, distinct `targets`, seeking when a keyframe lies between them."""
        stream_frames, next_index = None, None
        for target in targets:
            keyframe = self._keyframes[bisect_right(self._keyframes, target) - 1]
            if stream_frames is None or keyframe > next_index:
                stream_frames = self._frames_from(keyframe)
            for index, frame in stream_frames:
                next_index = index + 1
                if index == target:
                    yield frame
                    break
                if index > target:
                    raise VideoDecodingError(f"{self.name}: frame {target} could not be decoded (got frame {index})")
            else:
                raise VideoDecodingError(
                    f"{self.name} is truncated: frame {target} of {self._num_frames} could not be decoded"
                )

    def _frames_from(self, keyframe: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """(index, frame) pairs from frame `keyframe` on.

        Demuxers that seek approximately (MPEG-TS) can land past the keyframe asked for, or at the end: the reader
        then seeks to ever earlier keyframes, and as a last resort decodes from the beginning.
        """
        rank, step = self._keyframes.index(keyframe), 1
        seek_to = keyframe if self._index_of_pts is not None else None
        while True:
            frames = self._indexed_frames(seek_to)
            first = next(frames, None)
            if seek_to is None or (first is not None and first[0] <= keyframe):
                break
            seek_to = None if rank == 0 else self._keyframes[max(0, rank - step)]
            rank, step = max(0, rank - step), step * 2
        if first is not None:
            yield from ((index, frame) for index, frame in chain([first], frames) if index >= keyframe)

    def _indexed_frames(self, seek_to: int | None) -> Iterator[tuple[int, av.VideoFrame]]:
        """Decode after seeking to frame `seek_to`'s time stamp, or from the beginning of the file when `None`."""
        if seek_to is None:
            self._reopen()
        else:
            self._container.seek(self._sorted_pts[seek_to], stream=self._stream, backward=True)
        if self._index_of_pts is None:
            for index, frame in enumerate(self._container.decode(self._stream)):
                self._deadline.check()
                yield index, frame
            return
        for frame in self._decode_skipping_unwanted():
            index = self._index_of_pts.get(frame.pts)
            if index is not None:
                yield index, frame

    def _decode_skipping_unwanted(self) -> Iterator[av.VideoFrame]:
        """Decode packet by packet, letting the decoder drop non-reference frames that were not asked for.

        No other frame depends on a non-reference frame, so skipping them leaves every other frame bit-identical;
        it roughly halves the work between a keyframe and a target in streams with B-frames.
        """
        codec_context = self._stream.codec_context
        for packet in self._container.demux(self._stream):
            self._deadline.check()
            wanted = packet.pts is None or packet.pts in self._wanted_pts
            codec_context.skip_frame = "DEFAULT" if wanted else "NONREF"
            yield from packet.decode()

    def _reopen(self) -> None:
        self._container.close()
        if hasattr(self._source, "seek"):
            self._source.seek(0)
        self._open_container()

    def close(self) -> None:
        self._container.close()


def _to_upright_rgb(frame: av.VideoFrame, reformatter: VideoReformatter) -> np.ndarray:
    """RGB24 pixels rotated by the stream's display matrix (portrait phone videos come out upright)."""
    image = reformatter.reformat(frame, format="rgb24").to_ndarray()
    quarter_turns = round(frame.rotation / DEGREES_PER_QUARTER_TURN) % QUARTER_TURNS
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image


def decode_in_background(frames: Iterator[np.ndarray], depth: int = DECODE_AHEAD_FRAMES) -> Iterator[np.ndarray]:
    """Yield from `frames` while a background thread runs it up to `depth` frames ahead.

    PyAV demuxes, decodes and converts with the GIL released, so the next frames decode while the caller works on
    the current one. Errors are re-raised in the caller; closing this iterator early stops the thread.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in frames:
                if stop.is_set():
                    return
                ready.put((frame, None))
            ready.put((None, None))
        except BaseException as err:  # handed to the consumer, which re-raises it
            ready.put((None, err))

    worker = threading.Thread(target=produce, name="merv-video-decode", daemon=True)
    worker.start()
    try:
        while True:
            frame, error = ready.get()
            if error is not None:
                raise error
            if frame is None:
                return
            yield frame
    finally:
        stop.set()
        while worker.is_alive():  # a producer blocked on a full queue needs room to see `stop`
            try:
                ready.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.01)


def open_video(
    video: SingleVideoInput, name: str = "video", input_data_format: str | ChannelDimension | None = None
) -> VideoReader:
    """A reader for one video: a path, bytes, a binary file object, or decoded frames (see the module docstring), whose
    channels come last or first as `input_data_format` says (inferred when None).

    Image files (still or animated) are decoded by PIL, as the authors open images and GIFs; everything else by PyAV.
    Raises `FileNotFoundError` for a missing file, `VideoDecodingError` (a `ValueError`) for unreadable media, and
    `ValueError` / `TypeError` naming `name` for decoded frames of the wrong shape, dtype or type.
    """
    if isinstance(video, (str, os.PathLike)):
        source = os.fspath(video)
        label = repr(source)
        if is_url(source):
            check_url(source, label)
            return PyAVVideoReader(source, name=label)
        if not Path(source).exists():
            raise FileNotFoundError(f"No video file at {source!r} (argument `{name}`)")
        check_regular_file(source, label)
    elif isinstance(video, (bytes, bytearray, memoryview)):
        source, label = io.BytesIO(video), f"`{name}` ({len(video)} bytes)"
    elif isinstance(video, io.TextIOBase):
        raise TypeError(
            f"`{name}` ({getattr(video, 'name', type(video).__name__)}) is a file object opened in text mode; "
            "a video file must be opened in binary mode (`open(path, 'rb')`)"
        )
    elif hasattr(video, "read"):
        source, label = video, f"`{name}` ({getattr(video, 'name', type(video).__name__)})"
    else:
        return FrameArrayReader(to_frame_array(video, name, input_data_format), name=f"`{name}`")
    frames = _read_image_frames(source, label)
    if frames is not None:
        return FrameArrayReader(frames, name=label, backend=IMAGE_BACKEND)
    return PyAVVideoReader(source, name=label)


def _read_image_frames(source: str | BinaryIO, name: str) -> np.ndarray | None:
    """Every frame of an image file as PIL decodes it, or None when PIL cannot (then the file is a video for PyAV).

    The authors open images (and GIFs) with PIL; FFmpeg decodes a JPEG up to ~18 levels differently (chroma
    upsampling), so images must not go through PyAV. Sizes are checked against `media_limits` before decoding.
    """
    start = source.tell() if hasattr(source, "tell") else None
    try:
        with open_image(source, name) as image:
            check_frame_size(name, *image.size, num_frames=getattr(image, "n_frames", 1))
            deadline, frames = Deadline(name), []
            for frame in ImageSequence.Iterator(image):
                deadline.check()
                frames.append(np.asarray(to_rgb(frame, name)))
            return np.stack(frames)
    except OSError:  # includes PIL's UnidentifiedImageError, and images PIL identifies but cannot decode
        if start is not None:
            source.seek(start)
        return None


def open_image(source: str | os.PathLike | BinaryIO, name: str) -> Image.Image:
    """`PIL.Image.open` (lazy: only the header is read) with PIL's own decompression-bomb refusal reported against
    MERV's limit (`media_limits.MAX_FRAME_PIXELS`, which is lower)."""
    try:
        return Image.open(source)
    except Image.DecompressionBombError as err:
        raise MediaLimitError(f"{name}: {err} (the limit is {MAX_FRAME_PIXELS.describe()})") from err


def load_image(path: str | os.PathLike, name: str) -> Image.Image:
    """A regular image file as an RGB PIL image, refused before decoding when over `media_limits`."""
    check_regular_file(path, name)
    with open_image(path, name) as image:
        check_frame_size(name, *image.size)
        return to_rgb(image, name)


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """`image` as 8-bit RGB. 16-bit greyscale is scaled to 8 bits; 32-bit integers beyond the 16-bit range and
    floating-point images, whose value range is unknown, are refused with a `ValueError` naming `name`."""
    if image.mode in WIDE_INTEGER_MODES:
        values = np.asarray(image, dtype=np.int64)
        if values.min() < 0 or values.max() > SIXTEEN_BIT_MAX:
            raise ValueError(
                f"{name} is a 32-bit integer image with values outside 0..{SIXTEEN_BIT_MAX}; convert it to 8-bit RGB"
            )
        grey = (values * 255 + SIXTEEN_BIT_MAX // 2) // SIXTEEN_BIT_MAX  # rounded to the nearest 8-bit level
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise ValueError(
            f"{name} is a floating-point image (PIL mode 'F') of unknown value range; convert it to 8-bit RGB"
        )
    return image.convert("RGB")


def read_video(
    video: SingleVideoInput,
    num_frames: int = 32,
    clip_start_sec: float | None = 0.0,
    clip_end_sec: float | None = None,
    end_frame: int | None = None,
    fps: float | None = None,
    sample_indices_fn: Callable[[VideoMetadata], np.ndarray] | None = None,
) -> tuple[np.ndarray, VideoMetadata]:
    """Decode the sampled frames of one video: uint8 RGB `[T, H, W, 3]` and its `VideoMetadata`.

    Sampling is the authors' (`num_frames` evenly spaced over the clip window), or `fps` frames per second of it
    (transformers' sampler), or any `sample_indices_fn(metadata) -> indices`. `metadata.frames_indices` holds the
    sampled indices; `width`/`height` are those of the upright frames.
    """
    with open_video(video) as reader:
        metadata = reader.metadata
        if sample_indices_fn is not None:
            indices = sample_indices_fn(metadata)
        elif fps is not None:
            indices = sample_frame_indices_at_rate(
                metadata.total_num_frames, metadata.fps, fps, clip_start_sec, clip_end_sec, end_frame
            )
        else:
            indices = sample_frame_indices(
                metadata.total_num_frames, metadata.fps, num_frames, clip_start_sec, clip_end_sec, end_frame
            )
        frames = reader.get_frames(indices)
    metadata.frames_indices = np.asarray(indices).tolist()
    return frames, metadata


def to_frame_array(
    video: FrameSource, name: str = "video", input_data_format: str | ChannelDimension | None = None
) -> np.ndarray:
    """Decoded frames as a uint8 RGB array `[T, H, W, 3]`; a single PIL image becomes a one-frame video. Arrays and
    tensors may hold their channels first (`[T, 3, H, W]`, frames `[3, H, W]`): `input_data_format`, or inferred
    from where the 3 channels are (last when both ends hold 3)."""
    if isinstance(video, Image.Image):
        return np.asarray(to_rgb(video, f"`{name}`"))[None]
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError(f"`{name}` is an empty list of frames")
        frames = [_frame_array(frame, f"{name}[{i}]", input_data_format) for i, frame in enumerate(video)]
        if len({frame.shape for frame in frames}) > 1:
            raise ValueError(
                f"The frames of `{name}` must all have the same size, got {sorted({f.shape for f in frames})}"
            )
        return np.stack(frames)
    array = _as_numpy(video, name)
    if array.ndim == AMBIGUOUS_ARRAY_DIMS:
        raise ValueError(
            f"`{name}` is a 3-D array {list(array.shape)}: one RGB image [height, width, 3] or grey frames "
            "[frames, height, width]? Its layout is ambiguous; pass uint8 RGB frames [frames, height, width, 3] "
            "(one image: [1, height, width, 3]), a list of [height, width, 3] frames, or a PIL image"
        )
    array = _channels_last(array, input_data_format)
    _check_frames(array, name, "[frames, height, width, 3] or [frames, 3, height, width]")
    return array


def _frame_array(
    frame: Image.Image | np.ndarray | torch.Tensor, name: str, input_data_format: str | ChannelDimension | None
) -> np.ndarray:
    if isinstance(frame, Image.Image):
        return np.asarray(to_rgb(frame, f"`{name}`"))
    array = _channels_last(_as_numpy(frame, name), input_data_format)
    _check_frames(array[None], name, "[height, width, 3] or [3, height, width]")
    return array


def _channels_last(array: np.ndarray, input_data_format: str | ChannelDimension | None) -> np.ndarray:
    """`array` with its channel axis last: moved there from before height and width when the frames are channels
    first (as `input_data_format` says or, when None, when only that axis holds 3 values)."""
    if input_data_format is None:
        channels_first = array.ndim >= 3 and array.shape[-3] == RGB_CHANNELS and array.shape[-1] != RGB_CHANNELS
    else:
        channels_first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
    return np.ascontiguousarray(np.moveaxis(array, -3, -1)) if channels_first else array


def _as_numpy(video: object, name: str) -> np.ndarray:
    if isinstance(video, torch.Tensor):
        return video.detach().cpu().numpy()
    if isinstance(video, np.ndarray):
        return video
    raise TypeError(
        f"`{name}` must be a path, bytes, a binary file object, a uint8 array/tensor [frames, height, width, 3], "
        f"a PIL image or a list of frames; got {type(video).__name__}"
    )


def _check_frames(array: np.ndarray, name: str, expected: str) -> None:
    if array.dtype != np.uint8:
        raise ValueError(f"`{name}` must have dtype uint8 (RGB values 0..255), got {array.dtype}")
    if array.ndim != 4 or array.shape[-1] != RGB_CHANNELS or 0 in array.shape:
        raise ValueError(f"`{name}` must have shape {expected} (3 RGB channels), got {list(array.shape)}")


def make_batched_video_inputs(videos: object, name: str = "videos") -> list[SingleVideoInput]:
    """Split `videos` into single videos: one input, a list of inputs (nested lists are flattened), or a 5-D batch.

    A list whose items are all frames (PIL images or `[H, W, 3]` arrays) is one video, as in transformers.
    """
    if _is_single_video(videos):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        return list(videos)
    if isinstance(videos, (list, tuple)):
        if not videos:
            raise ValueError(f"`{name}` is empty")
        return [video for item in videos for video in make_batched_video_inputs(item, name)]
    raise TypeError(
        f"`{name}` must be a video (path, bytes, file object, frames array, PIL image or list of frames) "
        f"or a list of videos; got {type(videos).__name__}"
    )


def _is_single_video(video: object) -> bool:
    if isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)) or hasattr(video, "read"):
        return True
    if isinstance(video, (np.ndarray, torch.Tensor)):
        return video.ndim != 5
    return isinstance(video, (list, tuple)) and bool(video) and all(_is_frame(item) for item in video)


def _is_frame(item: object) -> bool:
    return isinstance(item, Image.Image) or (isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 3)
