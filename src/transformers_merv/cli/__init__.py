"""The `merv` command: ask a question about a video, evaluate on the authors' files, explain the encoder fusion,
store the frozen encoders' features, convert the authors' checkpoints, serve a model, try it in a web page.

    merv ask VIDEO "QUESTION" ["QUESTION" ...]
    merv chat VIDEO
    merv eval --questions Q.json --answers A.json --video-dir DIR --mode {open-ended,mcq} --output results.json
    merv ask VIDEO "QUESTION" --windows SECONDS [--overlap SECONDS] [--json]
    merv caption VIDEO [--windows SECONDS] [--format srt|vtt|json] [--output FILE]
    merv explain VIDEO "QUESTION" --plot fusion.png
    merv explain VIDEO "QUESTION" --windows SECONDS --plot timeline.png
    merv encode SOURCE [SOURCE ...] --output STORE [--video-dir DIR]
    merv convert --run-dir RUN --llm LLM_DIR [--languagebind DIR ...] --output-dir OUT
    merv serve MODEL [--host HOST] [--port PORT] [extra vLLM flags...]
    merv demo [--model M | --server URL] [--host HOST] [--port PORT]

Every command but `convert` uses the shipped default model unless `--model PATH_OR_HUB_ID` names another.
Errors are one line on stderr (`error: ...`) with exit status 1 (`--debug` or MERV_DEBUG=1: the traceback); bad
flags exit with status 2.
"""

import argparse
from collections.abc import Sequence

from ..utils.console import add_debug_argument, run_reporting_errors
from . import ask, caption, chat, convert, demo, encode, evaluate, explain, serve
from .errors import REPORTED_ERRORS


PROG = "merv"
COMMANDS = (ask, chat, caption, evaluate, explain, encode, convert, serve, demo)
"""One module per command, each with `register(commands)`; listed in `merv --help` in this order."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_debug_argument(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, vllm_args = parser.parse_known_args(argv)
    if vllm_args and not getattr(args, "takes_vllm_args", False):
        parser.error(f"unrecognized arguments: {' '.join(vllm_args)}")
    args.vllm_args = vllm_args
    return run_reporting_errors(args.run, args, expected=REPORTED_ERRORS)


__all__ = ["build_parser", "main"]
