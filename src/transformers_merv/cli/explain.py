"""`merv explain VIDEO QUESTION [--plot PNG]`: the answer, and how much each encoder contributes (fusion weights)."""

import argparse
from pathlib import Path

from ..inference.fusion_weights import draw_fusion_chart, encoder_weights, format_weights
from .arguments import add_question_arguments
from .video_questions import answer_from_args


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "explain",
        help="answer and show how much each encoder contributes",
        description="Answer a question and show the fusion weights: how much each encoder contributes.",
    )
    add_question_arguments(parser)
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw the weights as a bar chart")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model, answer, features = answer_from_args(args)
    print(f"answer: {answer}")
    weights = encoder_weights(model.config, features)
    print("encoder contributions (fusion weights):")
    print(format_weights(weights))
    if args.plot is not None:
        draw_fusion_chart(weights, args.question, args.plot)
        print(f"wrote {args.plot}")
    return 0
