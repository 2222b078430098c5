"""The video a demo request names (an uploaded file or an http(s) URL) and its clip window, checked before use."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..media_limits import MediaLimitError, check_url, is_url
from ..utils.console import first_line
from ..video_io import clip_window


class DemoError(Exception):
    """A problem the page shows as one message (bad input, unreadable video, server down)."""


@dataclass(frozen=True)
class VideoRequest:
    """One video and the part of it to sample (seconds; None: from the start / to the end)."""

    source: str
    """A local file path or an http(s) URL."""
    clip_start_sec: float | None = None
    clip_end_sec: float | None = None

    @property
    def is_url(self) -> bool:
        return is_url(self.source)

    @property
    def name(self) -> str:
        """How messages name the video: its URL, or its file name (uploads live in temporary folders)."""
        return self.source if self.is_url else Path(self.source).name

    def sampling(self) -> dict[str, float]:
        """The video processor's clip-window kwargs."""
        return clip_window(self.clip_start_sec, self.clip_end_sec)


def video_request(
    upload: str | None, url: str | None, clip_start_sec: float | None = None, clip_end_sec: float | None = None
) -> VideoRequest:
    """The request for an uploaded file or a pasted URL (not both), or a `DemoError` saying what is wrong. A clip
    start or end of 0 is unset (a number field's empty value): from the start, to the end."""
    url = (url or "").strip()
    if upload and url:
        raise DemoError("give either an uploaded video or a URL, not both")
    if not upload and not url:
        raise DemoError("upload a video or paste its URL first")
    if url:
        _check_url(url)
    elif not Path(upload).is_file():
        raise DemoError(f"the uploaded video {Path(upload).name} is no longer there; upload it again")
    clip_start_sec, clip_end_sec = _seconds(clip_start_sec), _seconds(clip_end_sec)
    _check_window(clip_start_sec, clip_end_sec)
    return VideoRequest(upload or url, clip_start_sec, clip_end_sec)


def _seconds(value: float | None) -> float | None:
    """A clip time as the video processor takes it (a float), or None for unset (empty or 0)."""
    return float(value) if value else None


def _check_url(url: str) -> None:
    if "://" not in url:
        raise DemoError(f"{url!r} is not a URL: paste an http(s):// address, or upload the file")
    try:
        check_url(url, url)
    except MediaLimitError as err:
        raise DemoError(str(err)) from None


def _check_window(start: float | None, end: float | None) -> None:
    if start is not None and start < 0:
        raise DemoError(f"the clip start must be >= 0 seconds, got {start:g}")
    if end is not None and end <= (start or 0):
        raise DemoError(f"the clip end ({end:g} s) must come after its start ({start or 0:g} s)")


@contextmanager
def reading(video: VideoRequest) -> Iterator[None]:
    """Reads `video` inside the block: a missing, unreadable or over-limit video is one `DemoError` naming it."""
    try:
        yield
    except (OSError, ValueError) as err:  # decoding errors and media limits are ValueErrors, missing files OSErrors
        message = first_line(err)
        raise DemoError(message if video.name in message else f"{video.name}: {message}") from None
