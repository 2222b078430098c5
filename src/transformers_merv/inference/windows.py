"""Long videos, window by window: a question (or a caption prompt) answered for consecutive time windows of one
video, each window sampled as MERV samples a clip (the authors' `load_video` within `clip_start_sec..clip_end_sec`),
each answer with its time span and the encoders' fusion weights.

    for window in iter_answer_windows(model, processor, "long.mp4", "What is happening?", window_seconds=10):
        print(window.start_sec, window.end_sec, window.answer, window.fusion_weights)

Windows start every `window_seconds - overlap_seconds` seconds from 0; the last is the first that reaches the end of
the video, cut there (`video_io.time_windows`). The video is demuxed and decoded once for all windows
(`MervVideoProcessor.preprocess_windows`); the encoders and the language model run per window, and each window's
answer is the one `merv ask --clip-start-sec START --clip-end-sec END` gives."""

from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..configuration_merv import MervConfig
from ..modeling_merv import MervVideoFeaturesOutput
from .fusion_weights import encoder_weights
from .prefix_cache import answer_questions, prefill_pixels


DEFAULT_CAPTION_PROMPT = "Describe the video."
"""The prompt a caption answers: the alignment prompt of MERV-style training data (the shipped default model was
aligned on it), so a model describes what it sees rather than answering a question."""

WindowPixels = tuple[float, float, torch.Tensor]
"""One window: `(start_sec, end_sec, pixel_values_videos)`, the pixels a batch of one."""


@dataclass(frozen=True)
class WindowAnswer:
    """The answer for one time window of a video, and how much each encoder contributed to its visual tokens (None
    when the model's fusion has no per-encoder weights)."""

    start_sec: float
    end_sec: float
    answer: str
    fusion_weights: dict[str, float] | None


def window_pixels(
    processor, video: str | Path, window_seconds: float, overlap_seconds: float = 0.0
) -> Iterator[WindowPixels]:
    """Each window's `(start_sec, end_sec, pixel_values_videos)`, in order, the video demuxed and decoded once for all
    windows. Bad window lengths raise a `ValueError` at once; the video is read as the iterator is consumed."""
    return _pixels(processor.video_processor.preprocess_windows(str(video), window_seconds, overlap_seconds))


def _pixels(windows: Iterator[tuple[float, float, Any]]) -> Iterator[WindowPixels]:
    """Each window's pixels; closing this closes `windows` (and the video)."""
    with closing(windows):
        for start, end, features in windows:
            yield start, end, features["pixel_values_videos"]


def answer_window_pixels(
    model, processor, windows: Iterable[WindowPixels], question: str, **generation
) -> Iterator[WindowAnswer]:
    """The answer to `question` for each of `windows` (`window_pixels`), in order, as each window is encoded."""
    for start, end, pixels in windows:
        prefix = prefill_pixels(model, processor, pixels)
        (answer,) = answer_questions(model, processor, prefix, [question], **generation)
        yield WindowAnswer(start, end, answer, fusion_weights_or_none(model.config, prefix.video_features))


def iter_answer_windows(
    model,
    processor,
    video: str | Path,
    question: str,
    window_seconds: float,
    overlap_seconds: float = 0.0,
    **generation,
) -> Iterator[WindowAnswer]:
    """`answer_windows`, one window at a time as each is answered (for streaming). Close it to stop early."""
    windows = window_pixels(processor, video, window_seconds, overlap_seconds)
    with closing(windows):
        yield from answer_window_pixels(model, processor, windows, question, **generation)


def answer_windows(
    model,
    processor,
    video: str | Path,
    question: str,
    window_seconds: float,
    overlap_seconds: float = 0.0,
    **generation,
) -> list[WindowAnswer]:
    """The answer to `question` for each consecutive `window_seconds` window of `video` (overlapping by
    `overlap_seconds`), in order. `generation` goes to `model.generate` (e.g. `max_new_tokens`)."""
    return list(iter_answer_windows(model, processor, video, question, window_seconds, overlap_seconds, **generation))


def iter_caption_windows(
    model,
    processor,
    video: str | Path,
    window_seconds: float,
    overlap_seconds: float = 0.0,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    **generation,
) -> Iterator[WindowAnswer]:
    """`caption_windows`, one window at a time as each is captioned (for streaming). Close it to stop early."""
    return iter_answer_windows(model, processor, video, prompt, window_seconds, overlap_seconds, **generation)


def caption_windows(
    model,
    processor,
    video: str | Path,
    window_seconds: float,
    overlap_seconds: float = 0.0,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    **generation,
) -> list[WindowAnswer]:
    """A caption (the answer to `prompt`) for each consecutive `window_seconds` window of `video`, in order."""
    return answer_windows(model, processor, video, prompt, window_seconds, overlap_seconds, **generation)


def fusion_weights_or_none(config: MervConfig, features: MervVideoFeaturesOutput) -> dict[str, float] | None:
    """Each encoder's fusion weight for the first video of `features`, or None when the fusion has none."""
    return None if features.fusion_weights is None else encoder_weights(config, features)


__all__ = [
    "DEFAULT_CAPTION_PROMPT",
    "WindowAnswer",
    "answer_window_pixels",
    "answer_windows",
    "caption_windows",
    "fusion_weights_or_none",
    "iter_answer_windows",
    "iter_caption_windows",
    "window_pixels",
]
