"""Flags and argument types shared by `merv`'s commands."""

import argparse
from pathlib import Path
from typing import Any

import torch

from ..evaluation import default_max_new_tokens
from ..inference.devices import DTYPES
from ..inference.loading import AUTO
from ..media_limits import is_url
from ..video_io import clip_window
from ..utils.console import add_debug_argument, first_line


DTYPE_CHOICES = (AUTO, *DTYPES)
MAX_NEW_TOKENS_DEFAULT_HELP = "the model's generation config, else 512 as the authors evaluate"
GENERATION_FLAGS = ("do_sample", "temperature", "top_p", "top_k", "num_beams")


def video_argument(text: str) -> Path | str:
    """A video path, or an http(s) URL kept as it is (a `Path` would merge its `//`)."""
    return text if is_url(text) else Path(text)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def device_argument(text: str) -> str:
    try:
        torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(first_line(err)) from None
    return text


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--model`, `--device`, `--dtype` (and `--debug`)."""
    add_debug_argument(parser)
    parser.add_argument(
        "--model", metavar="PATH_OR_HUB_ID", help="model folder or Hub id (default: the shipped model)"
    )
    parser.add_argument(
        "--device",
        type=device_argument,
        help="torch device, e.g. cpu, cuda, cuda:1, mps (default: the accelerator if there is one, else the CPU)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=AUTO,
        help="weights dtype (default auto: on a CPU bfloat16 where it has native bf16, else float32; on an accelerator "
        "as saved)",
    )


def add_question_arguments(
    parser: argparse.ArgumentParser, questions: str | None = "?", clip_window: bool = True
) -> None:
    """The video, `questions` (None: no question, "?": one, "+": several) and the model, generation and (with
    `clip_window`) frame sampling window flags."""
    parser.add_argument("video", type=video_argument, help="video file or http(s) URL")
    if questions == "?":
        parser.add_argument("question", help="question about the video")
    elif questions == "+":
        parser.add_argument("questions", nargs="+", metavar="QUESTION", help="questions about the video")
    add_model_arguments(parser)
    generation = parser.add_argument_group("generation")
    generation.add_argument(
        "--max-new-tokens", type=positive_int, help=f"longest answer (default: {MAX_NEW_TOKENS_DEFAULT_HELP})"
    )
    generation.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    generation.add_argument("--temperature", type=float)
    generation.add_argument("--top-p", type=float)
    generation.add_argument("--top-k", type=int)
    generation.add_argument("--num-beams", type=positive_int)
    if not clip_window:
        return
    window = parser.add_argument_group("frame sampling window (the authors' load_video)")
    window.add_argument("--clip-start-sec", type=float, help="sample from this time (seconds)")
    window.add_argument("--clip-end-sec", type=float, help="sample up to this time (seconds)")
    window.add_argument("--end-frame", type=int, help="sample frames 0..END_FRAME instead")


def generation_kwargs(args: argparse.Namespace, model) -> dict[str, Any]:
    """The generation flags the user gave (`max_new_tokens` always: the flag, else the model's default)."""
    kwargs = {name: getattr(args, name) for name in GENERATION_FLAGS if getattr(args, name) not in (None, False)}
    return {"max_new_tokens": args.max_new_tokens or default_max_new_tokens(model), **kwargs}


def clip_window_of(args: argparse.Namespace) -> dict[str, float | int]:
    """The frame sampling window the flags give."""
    return clip_window(args.clip_start_sec, args.clip_end_sec, args.end_frame)
