"""What `merv ask`, `chat` and `explain` share: load the processor, read the video (failing fast, before the model
is loaded), load the model, then encode the video or answer."""

import argparse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .. import default_model_path
from ..inference.devices import resolve_device
from ..inference.loading import load_model, load_processor
from ..media_limits import is_url
from ..utils.console import first_line
from ..inference.prefix_cache import VideoPrefix, prefill_pixels, process_video, question_inputs
from .arguments import clip_window_of, generation_kwargs
from .errors import CliError


def model_id(args: argparse.Namespace) -> str:
    """`--model`, else the shipped default model (whose folder must be there)."""
    if args.model:
        return args.model
    if not default_model_path().is_dir():
        raise CliError(
            f"the default model folder {default_model_path()} is missing; reinstall, or pass --model PATH_OR_HUB_ID"
        )
    return str(default_model_path())


@contextmanager
def reading(video: Path | str) -> Iterator[None]:
    """Reads `video` inside the block: a missing file or a decoding error is one line naming the file."""
    if not is_url(str(video)) and not Path(video).exists():
        raise CliError(f"no video file at {video}")
    try:
        yield
    except ValueError as err:  # VideoDecodingError and sampling windows outside the video
        message = first_line(err)
        raise CliError(message if str(video) in message else f"{video}: {message}") from err


def answer_from_args(args: argparse.Namespace) -> tuple[Any, str, Any]:
    """Load the processor, read the video (failing fast), load the model, answer: (model, answer, features)."""
    processor = load_processor(model_id(args))
    with reading(args.video):
        inputs = question_inputs(processor, args.question, args.video, clip_window_of(args))
    model = load_model(model_id(args), resolve_device(args.device), args.dtype)
    return model, *answer_question(model, processor, inputs, generation_kwargs(args, model))


def encode_from_args(args: argparse.Namespace) -> tuple[Any, Any, VideoPrefix]:
    """Load the processor, read the video (failing fast), load the model, encode the video and its prompt prefix:
    (model, processor, `VideoPrefix`)."""
    processor = load_processor(model_id(args))
    with reading(args.video):
        pixels = process_video(processor, args.video, clip_window_of(args))
    model = load_model(model_id(args), resolve_device(args.device), args.dtype)
    return model, processor, prefill_pixels(model, processor, pixels)


def answer_question(model, processor, inputs, generation: Mapping[str, Any]) -> tuple[str, Any]:
    """The answer to one prepared question, and the video features it was generated from (`fusion_weights`...)."""
    inputs = inputs.to(model.device, model.dtype)  # casts the pixels only
    with torch.inference_mode():
        features = model.get_video_features(inputs["pixel_values_videos"])
        output = model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            mm_encoder_outputs={"video": features},
            **generation,
        )
    return processor.batch_decode(output, prompt_ids=inputs["input_ids"], skip_special_tokens=True)[0], features
