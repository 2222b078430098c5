"""`merv serve MODEL`: vLLM's OpenAI-compatible server on a MERV model; flags `merv` does not know go to vLLM."""

import argparse
import os

from ..inference.loading import load_processor
from ..integrations.vllm.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    server_command,
    server_environment,
    serving_chat_template,
    vllm_is_installed,
)
from .arguments import positive_int
from .errors import CliError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a model over HTTP with vLLM (OpenAI-compatible API)",
        description="Start vLLM's OpenAI-compatible server on MODEL; flags merv does not know go to vLLM.",
    )
    parser.add_argument("model", metavar="MODEL", help="model folder or Hub id")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help="port (default %(default)s)")
    parser.set_defaults(run=run, takes_vllm_args=True)


def run(args: argparse.Namespace) -> int:
    """Replace this process by vLLM's OpenAI-compatible server on the model (MERV's settings, then the user's)."""
    if not vllm_is_installed():
        raise CliError(
            "merv serve needs vLLM: pip install 'transformers-merv[serve]' (GPU), or the CPU build as "
            "docs/serving.md shows"
        )
    chat_template = serving_chat_template(load_processor(args.model))
    command = server_command(args.model, args.host, args.port, chat_template, args.vllm_args)
    os.execve(command[0], command, server_environment())
