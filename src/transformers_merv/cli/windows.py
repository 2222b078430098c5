"""What `merv ask --windows`, `merv explain --windows` and `merv caption` share: the window flags, their checks
(before anything is loaded), reading the video's windows (failing fast on the first, before the model is loaded),
and the answers as text lines or one JSON document."""

import argparse
import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

from ..inference.devices import resolve_device
from ..inference.loading import load_model, load_processor
from ..inference.windows import WindowAnswer, WindowPixels, answer_window_pixels, window_pixels
from ..utils.console import one_line
from .arguments import generation_kwargs
from .errors import CliError
from .video_questions import model_id, reading


CLIP_WINDOW_FLAGS = {
    "clip_start_sec": "--clip-start-sec",
    "clip_end_sec": "--clip-end-sec",
    "end_frame": "--end-frame",
}


def positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def non_negative_seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def add_window_arguments(parser: argparse.ArgumentParser, default_seconds: float | None = None) -> None:
    """`--windows SECONDS` (`default_seconds`: None leaves the video whole) and `--overlap SECONDS`."""
    group = parser.add_argument_group("time windows (long videos)")
    default_help = f"default: {default_seconds:g}" if default_seconds else "default: the whole video, one answer"
    group.add_argument(
        "--windows",
        type=positive_seconds,
        default=default_seconds,
        metavar="SECONDS",
        help=f"answer for consecutive windows of this many seconds, each sampled as a clip ({default_help}); the "
        "last window is cut at the end of the video",
    )
    group.add_argument(
        "--overlap",
        type=non_negative_seconds,
        default=0.0,
        metavar="SECONDS",
        help="windows overlap by this many seconds, less than --windows (default: 0)",
    )


def check_window_flags(args: argparse.Namespace) -> None:
    """The window flags' combinations the parser cannot check: a one-line `CliError` naming the flags."""
    if args.windows is None:
        if args.overlap:
            raise CliError("--overlap needs --windows")
        return
    if args.overlap >= args.windows:
        raise CliError(f"--overlap ({args.overlap:g}) must be shorter than --windows ({args.windows:g})")
    clip_flags = [flag for name, flag in CLIP_WINDOW_FLAGS.items() if getattr(args, name, None) is not None]
    if clip_flags:
        raise CliError(f"--windows cannot be combined with {', '.join(clip_flags)}: each window is its own clip")


def answers_from_args(args: argparse.Namespace, question: str) -> tuple[Any, Iterator[WindowAnswer]]:
    """Load the processor, read the first window (failing fast), load the model: (model, each window's answer to
    `question`, computed as it is consumed)."""
    processor = load_processor(model_id(args))
    with reading(args.video):
        windows = window_pixels(processor, args.video, args.windows, args.overlap)
        first = next(windows)
    model = load_model(model_id(args), resolve_device(args.device), args.dtype)
    read = _reading_each(args.video, chain([first], windows))
    return model, answer_window_pixels(model, processor, read, question, **generation_kwargs(args, model))


def _reading_each(video: Path | str, windows: Iterable[WindowPixels]) -> Iterator[WindowPixels]:
    """`windows`, a decoding error while reading one reported as one line naming the video."""
    with reading(video):
        yield from windows


def window_line(window: WindowAnswer) -> str:
    """`START-END s: ANSWER  [encoder weight, ...]` (the weights when there are any)."""
    line = f"{window.start_sec:.2f}-{window.end_sec:.2f} s: {one_line(window.answer)}"
    if window.fusion_weights is None:
        return line
    return f"{line}  [{', '.join(f'{name} {weight:.3f}' for name, weight in window.fusion_weights.items())}]"


def print_window_lines(windows: Iterable[WindowAnswer]) -> list[WindowAnswer]:
    """Print each window's line as it is answered; the windows."""
    answered = []
    for window in windows:
        print(window_line(window), flush=True)
        answered.append(window)
    return answered


def windows_document(args: argparse.Namespace, prompt: dict[str, str], windows: Iterable[WindowAnswer]) -> str:
    """One JSON document: the video, `prompt` (`{"question": ...}` or `{"prompt": ...}`), the window lengths and a
    record per window (`WindowAnswer`'s fields)."""
    document = {
        "video": str(args.video),
        **prompt,
        "window_seconds": args.windows,
        "overlap_seconds": args.overlap,
        "windows": [dataclasses.asdict(window) for window in windows],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def check_output_folder(path: Path | None, flag: str) -> None:
    """A one-line `CliError` naming `flag` when `path`'s folder does not exist (checked before the model loads)."""
    if path is not None and not path.resolve().parent.is_dir():
        raise CliError(f"{flag}: no folder {path.parent} to write {path.name} into")
