"""`merv ask VIDEO QUESTION [QUESTION ...]`: every answer from one encoding of the video, one per line, in order;
with `--windows SECONDS`, the answer to one question for each window of the video, with its time span and fusion
weights (`--json`: one JSON document)."""

import argparse

from ..evaluation import DEFAULT_BATCH_SIZE
from ..inference.prefix_cache import answer_questions
from ..utils.console import one_line
from .arguments import add_question_arguments, generation_kwargs
from .errors import CliError
from .video_questions import encode_from_args
from .windows import add_window_arguments, answers_from_args, check_window_flags, print_window_lines, windows_document


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ask",
        help="answer questions about a video",
        description="Answer one or more questions about a video (encoded once): one answer per line, in order. "
        "With --windows, answer one question for each window of the video: a line per window with its time span "
        "and fusion weights.",
    )
    add_question_arguments(parser, "+")
    add_window_arguments(parser)
    parser.add_argument(
        "--json", action="store_true", help="with --windows: one JSON document on stdout, a record per window"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_window_flags(args)
    if args.windows is not None:
        return _run_windows(args)
    if args.json:
        raise CliError("--json needs --windows")
    model, processor, prefix = encode_from_args(args)
    generation = generation_kwargs(args, model)
    for answer in answer_questions(
        model, processor, prefix, args.questions, batch_size=DEFAULT_BATCH_SIZE, **generation
    ):
        print(one_line(answer))
    return 0


def _run_windows(args: argparse.Namespace) -> int:
    if len(args.questions) != 1:
        raise CliError(f"--windows answers one question, got {len(args.questions)}")
    (question,) = args.questions
    _, windows = answers_from_args(args, question)
    if args.json:
        print(windows_document(args, {"question": question}, windows))
    else:
        print_window_lines(windows)
    return 0
