"""`merv serve MODEL`: vLLM's OpenAI-compatible server on a MERV model; flags `merv` does not know go to vLLM."""

import argparse
import os
import sys
from collections.abc import Sequence

from ..inference.loading import check_model_id, load_processor
from ..integrations.vllm.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    cpu_serving_choice,
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
    vllm_args = [*cpu_serving_flags(args.model, args.vllm_args), *args.vllm_args]
    command = server_command(args.model, args.host, args.port, chat_template, vllm_args)
    os.execve(command[0], command, server_environment())


def cpu_serving_flags(model: str, vllm_args: Sequence[str]) -> list[str]:
    """On vLLM's CPU backend, the `--dtype` and KV cache size chosen where `vllm_args` leave them unset (each choice
    logged on stderr); elsewhere none."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return []
    import psutil
    from transformers import AutoConfig
    from vllm.utils.argparse_utils import human_readable_int

    from ..inference.devices import auto_dtype

    config = AutoConfig.from_pretrained(model, **check_model_id(model))
    dtype = str(auto_dtype("cpu")).removeprefix("torch.")
    try:
        choice = cpu_serving_choice(config, vllm_args, psutil.virtual_memory().available, dtype, human_readable_int)
    except ValueError as err:
        raise CliError(f"merv serve on a CPU: {err}") from err
    for reason in choice.reasons:
        print(f"merv serve: {reason}", file=sys.stderr, flush=True)
    return choice.flags
