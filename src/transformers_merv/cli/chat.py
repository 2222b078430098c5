"""`merv chat VIDEO`: questions from stdin, one per line, each answered in the context of the conversation so far."""

import argparse
import sys

from ..inference.prefix_cache import VideoChat
from .arguments import add_question_arguments, generation_kwargs
from ..utils.console import one_line
from .video_questions import encode_from_args


PROMPT = "> "
EXIT_WORDS = ("exit", "quit")
"""A line that is one of these (any case) ends the chat."""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "chat",
        help="chat about a video",
        description="Chat about a video: questions from stdin, one per line; each answer (one line) takes the "
        "conversation so far into account, and reuses its cached prompt. An empty line is skipped; "
        f"{' or '.join(EXIT_WORDS)} or end of input ends.",
    )
    add_question_arguments(parser, None)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Answer questions read from stdin until `exit`, `quit` or the end of input; empty lines are skipped."""
    model, processor, prefix = encode_from_args(args)
    chat, generation = VideoChat(model, processor, prefix), generation_kwargs(args, model)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chat about {args.video}; {' or '.join(EXIT_WORDS)} or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            question = input(PROMPT if interactive else "").strip()
        except (EOFError, KeyboardInterrupt):
            if interactive:
                print(file=sys.stderr)
            return 0
        if question.lower() in EXIT_WORDS:
            return 0
        if question:
            print(one_line(chat.ask(question, **generation)), flush=True)
