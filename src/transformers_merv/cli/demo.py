"""`merv demo`: a local web app (Gradio) to ask about a video, chat, and see the encoders' fusion weights."""

import argparse

from ..demo import INSTALL_HINT
from ..demo.backends import Backend, LocalBackend, ServerBackend
from ..inference.loading import AUTO
from ..integrations.vllm.server import DEFAULT_HOST
from .arguments import add_model_arguments, positive_int
from .errors import CliError
from .video_questions import model_id


DEFAULT_PORT = 7860
"""Gradio's usual port."""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="a local web app: ask about a video, chat, see the fusion weights",
        description="Start a local web page (Gradio) to upload a video or paste its URL, pick a clip window, ask "
        "questions or chat with answers streaming in, and see each encoder's fusion weight for the video. It runs "
        "the Python model (--model), or asks a running `merv serve` (--server URL; no fusion weights, whole videos "
        f"only). Needs Gradio: {INSTALL_HINT}.",
    )
    add_model_arguments(parser)
    parser.add_argument("--server", metavar="URL", help="answer through a running merv serve at URL instead")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help="port (default %(default)s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the model (or reach the server), then serve the page until interrupted."""
    if args.server and (args.model or args.device or args.dtype != AUTO):
        raise CliError(
            "--server answers with the server's model: --model, --device and --dtype are for the Python model"
        )
    try:
        from ..demo.app import launch  # Gradio is imported here only, so that other commands never load it
    except ModuleNotFoundError as err:
        if err.name != "gradio":
            raise
        raise CliError(f"merv demo needs Gradio: {INSTALL_HINT}") from None
    launch(_backend(args), args.host, args.port)
    return 0


def _backend(args: argparse.Namespace) -> Backend:
    if args.server:
        return ServerBackend(args.server)
    return LocalBackend(model_id(args), args.device, args.dtype)
