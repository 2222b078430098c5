"""Window answers as subtitles: SRT (`HH:MM:SS,mmm`, numbered cues) or WebVTT (`HH:MM:SS.mmm`, after a `WEBVTT`
header); each cue is a window's span and its answer on one line, cues separated by a blank line. Overlapping windows
give overlapping cues, which players show together."""

from collections.abc import Sequence

from ..utils.console import one_line
from .windows import WindowAnswer


MILLISECONDS_PER_SECOND = 1000
SECONDS_PER_MINUTE = 60
MINUTES_PER_HOUR = 60
SRT_DECIMAL = ","
VTT_DECIMAL = "."
VTT_HEADER = "WEBVTT"
CUE_ARROW = " --> "


def timestamp(seconds: float, decimal: str) -> str:
    """`HH:MM:SS{decimal}mmm` for `seconds`, rounded to the nearest millisecond."""
    milliseconds = round(seconds * MILLISECONDS_PER_SECOND)
    whole_seconds, milliseconds = divmod(milliseconds, MILLISECONDS_PER_SECOND)
    minutes, whole_seconds = divmod(whole_seconds, SECONDS_PER_MINUTE)
    hours, minutes = divmod(minutes, MINUTES_PER_HOUR)
    return f"{hours:02d}:{minutes:02d}:{whole_seconds:02d}{decimal}{milliseconds:03d}"


def _cue(window: WindowAnswer, decimal: str) -> str:
    """A cue's timing line and text, each ending with a line break, and the blank line that ends the cue."""
    timing = timestamp(window.start_sec, decimal) + CUE_ARROW + timestamp(window.end_sec, decimal)
    return f"{timing}\n{one_line(window.answer)}\n\n"


def to_srt(windows: Sequence[WindowAnswer]) -> str:
    """SubRip subtitles: cues numbered from 1."""
    return "".join(f"{number}\n{_cue(window, SRT_DECIMAL)}" for number, window in enumerate(windows, start=1))


def to_vtt(windows: Sequence[WindowAnswer]) -> str:
    """WebVTT subtitles: the header, a blank line, then the cues (without identifiers)."""
    return f"{VTT_HEADER}\n\n" + "".join(_cue(window, VTT_DECIMAL) for window in windows)


__all__ = ["timestamp", "to_srt", "to_vtt"]
