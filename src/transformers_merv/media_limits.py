"""What reading one video or image may cost, and which inputs are refused before they are read.

Media files come from users and datasets; a few bytes can claim gigapixel frames (a "decompression bomb"), a stream
can be built to decode for hours, a URL can stall, and a path can name a FIFO or a device that never ends. Every
limit is stated in the error it raises and is set by an environment variable (read at each call, so it applies to
the Python API, every `merv` command and training data loading alike):

| variable | default | limits |
| --- | --- | --- |
| `MERV_MAX_FRAME_PIXELS` | 33,177,600 (8K UHD, 7680x4320) | pixels of one frame or image |
| `MERV_MAX_DECODED_BYTES` | 4 GiB | uint8 RGB bytes of the frames decoded from one video or image file |
| `MERV_DECODE_TIMEOUT_S` | 600 | seconds spent reading and decoding one video |
| `MERV_URL_TIMEOUT_S` | 30 | seconds a video URL may take to connect or to send more data |
| `MERV_MAX_VIDEO_BYTES` | 256 MiB | bytes of one video file `merv serve` reads into memory (`file://`, `http(s)://` and `data:` URLs) |
"""

import math
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path


RGB_BYTES_PER_PIXEL = 3
URL_SCHEMES = ("http", "https")
"""Video URLs that are fetched (as transformers' processors accept them); other `scheme://` sources are refused."""


@dataclass(frozen=True)
class MediaLimit:
    """One limit: its environment variable, default and unit (for messages)."""

    variable: str
    default: float
    unit: str

    def value(self) -> float:
        """The limit now: the environment variable when set (a positive number), else the default."""
        text = os.environ.get(self.variable)
        if text is None or not text.strip():
            return float(self.default)
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not value > 0 or math.isinf(value):
            raise ValueError(f"{self.variable} must be a positive number of {self.unit}, got {text!r}")
        return value

    def describe(self) -> str:
        value = self.value()
        shown = f"{value:,.0f}" if value >= 1 and value.is_integer() else f"{value:g}"
        return f"{shown} {self.unit}; set {self.variable} to change it"


MAX_FRAME_PIXELS = MediaLimit("MERV_MAX_FRAME_PIXELS", 7680 * 4320, "pixels per frame")
MAX_DECODED_BYTES = MediaLimit("MERV_MAX_DECODED_BYTES", 4 * 2**30, "bytes of decoded frames")
DECODE_TIMEOUT_S = MediaLimit("MERV_DECODE_TIMEOUT_S", 600, "seconds")
URL_TIMEOUT_S = MediaLimit("MERV_URL_TIMEOUT_S", 30, "seconds")
MAX_VIDEO_BYTES = MediaLimit("MERV_MAX_VIDEO_BYTES", 256 * 2**20, "bytes per video file")


class MediaLimitError(ValueError):
    """A video or image exceeds a limit of `media_limits`, or is not something that can be read (not a regular
    file, an unsupported URL)."""


def check_frame_size(name: str, width: int, height: int, num_frames: int = 1) -> None:
    """Refuse frames over `MAX_FRAME_PIXELS`, or `num_frames` of them over `MAX_DECODED_BYTES`, before decoding."""
    pixels = width * height
    if pixels > MAX_FRAME_PIXELS.value():
        raise MediaLimitError(
            f"{name} has {width}x{height} frames ({pixels:,} pixels), over the limit of {MAX_FRAME_PIXELS.describe()}"
        )
    decoded = num_frames * pixels * RGB_BYTES_PER_PIXEL
    if decoded > MAX_DECODED_BYTES.value():
        raise MediaLimitError(
            f"{name}: {num_frames} frames of {width}x{height} would decode to {decoded:,} bytes, over the limit of "
            f"{MAX_DECODED_BYTES.describe()}"
        )


def check_video_bytes(name: str, size: int) -> None:
    """Refuse a video file of `size` bytes over `MAX_VIDEO_BYTES` before it is read into memory."""
    if size > MAX_VIDEO_BYTES.value():
        raise MediaLimitError(f"{name} has {size:,} bytes, over the limit of {MAX_VIDEO_BYTES.describe()}")


def check_regular_file(path: str | os.PathLike, name: str) -> None:
    """Refuse paths that are not regular files (directories, FIFOs, devices, sockets) without opening them: reading a
    FIFO blocks until a writer comes, and a device such as /dev/zero never ends."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise MediaLimitError(f"{name} is {_file_kind(mode)}, not a regular file: only files can be read as media")


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")


def check_url(url: str, name: str) -> None:
    """Refuse `scheme://` sources other than http(s) URLs."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in URL_SCHEMES:
        raise MediaLimitError(f"{name}: only {' and '.join(URL_SCHEMES)} URLs are read, not {scheme}://")


def is_url(source: str | os.PathLike) -> bool:
    """Whether `source` is a `scheme://...` string rather than a path."""
    return isinstance(source, str) and "://" in source and not Path(source).exists()


class Deadline:
    """The time limit of reading one video (`DECODE_TIMEOUT_S`), checked between packets and frames."""

    def __init__(self, name: str):
        self._name = name
        self._end = time.monotonic() + DECODE_TIMEOUT_S.value()

    def check(self) -> None:
        if time.monotonic() > self._end:
            raise MediaLimitError(f"{self._name} took longer to read than the limit of {DECODE_TIMEOUT_S.describe()}")
