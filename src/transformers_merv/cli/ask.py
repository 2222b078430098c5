"""`merv ask VIDEO QUESTION [QUESTION ...]`: every answer from one encoding of the video, one per line, in order."""

import argparse

from ..evaluation import DEFAULT_BATCH_SIZE
from ..inference.prefix_cache import answer_questions
from .arguments import add_question_arguments, generation_kwargs
from .video_questions import encode_from_args, one_line


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ask",
        help="answer questions about a video",
        description="Answer one or more questions about a video (encoded once): one answer per line, in order.",
    )
    add_question_arguments(parser, "+")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model, processor, prefix = encode_from_args(args)
    generation = generation_kwargs(args, model)
    for answer in answer_questions(
        model, processor, prefix, args.questions, batch_size=DEFAULT_BATCH_SIZE, **generation
    ):
        print(one_line(answer))
    return 0
