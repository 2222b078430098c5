"""`merv ask VIDEO QUESTION [QUESTION ...]`: every answer from one encoding of the video, one per line, in order.

Questions are answered in batches of `DEFAULT_BATCH_SIZE`; streamed (`--stream`, or stdout a terminal), one at a
time instead, so that each answer is written word by word in order."""

import argparse

from ..evaluation import DEFAULT_BATCH_SIZE
from ..inference.prefix_cache import answer_questions
from .arguments import add_fast_generation_arguments, add_question_arguments, generation_kwargs
from .streaming import stream_kwargs
from .video_questions import encode_from_args, one_line


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ask",
        help="answer questions about a video",
        description="Answer one or more questions about a video (encoded once): one answer per line, in order.",
    )
    add_question_arguments(parser, "+")
    add_fast_generation_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model, processor, prefix = encode_from_args(args)
    streaming = stream_kwargs(args, processor)
    batch_size = 1 if streaming else DEFAULT_BATCH_SIZE
    answers = answer_questions(
        model,
        processor,
        prefix,
        args.questions,
        batch_size=batch_size,
        compile=args.compile,
        **generation_kwargs(args, model),
        **streaming,
    )
    if not streaming:  # the streamer has written them
        for answer in answers:
            print(one_line(answer))
    return 0
