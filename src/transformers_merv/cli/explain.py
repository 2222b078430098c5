"""`merv explain VIDEO QUESTION [--plot PNG]`: the answer, and how much each encoder contributes (fusion weights);
with `--windows SECONDS`, for each window of the video, `--plot` drawing them as a timeline."""

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..inference.fusion_weights import draw_fusion_chart, encoder_weights, format_weights, no_weights_error
from ..inference.timeline import draw_fusion_timeline
from ..inference.windows import WindowAnswer
from .arguments import add_question_arguments
from .video_questions import answer_from_args
from .windows import (
    add_window_arguments,
    answers_from_args,
    check_output_folder,
    check_window_flags,
    print_window_lines,
)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "explain",
        help="answer and show how much each encoder contributes",
        description="Answer a question and show the fusion weights: how much each encoder contributes. With "
        "--windows, for each window of the video (a line each), and --plot draws them as a timeline.",
    )
    add_question_arguments(parser)
    add_window_arguments(parser)
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="also draw the weights as a bar chart (--windows: a timeline)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_window_flags(args)
    check_output_folder(args.plot, "--plot")
    if args.windows is not None:
        return _run_windows(args)
    model, answer, features = answer_from_args(args)
    print(f"answer: {answer}")
    weights = encoder_weights(model.config, features)
    print("encoder contributions (fusion weights):")
    print(format_weights(weights))
    if args.plot is not None:
        draw_fusion_chart(weights, args.question, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _run_windows(args: argparse.Namespace) -> int:
    model, windows = answers_from_args(args, args.question)
    answered = print_window_lines(_weighed(model, windows))
    if args.plot is not None:
        draw_fusion_timeline(answered, args.question, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _weighed(model, windows: Iterable[WindowAnswer]) -> Iterator[WindowAnswer]:
    """`windows`, stopping with the fusion's one-line error at the first without fusion weights."""
    for window in windows:
        if window.fusion_weights is None:
            raise no_weights_error(model.config)
        yield window
