"""Throughput of MERV on vLLM's server (`merv serve`) against our batched `generate`, same requests, on the CPU.

    python benchmarks/bench_serving.py          # in the vLLM environment (.venv-vllm, see docs/serving.md)

Workload: rounds of `--requests` questions about as many different videos (a coloured square crossing a 64x64
frame, 32 frames), each answered with exactly `--tokens` greedy tokens (EOS ignored, so both sides generate the same
count). Every round asks about new videos, so vLLM's processor, encoder and prefix caches cannot reuse an earlier
round's work.
`generate` side: each request preprocessed by `MervProcessor`, then `generate` on batches of 1 or 8 (left-padded).
Server side: the same requests as OpenAI chat completions with `file://` video URLs, 1 or 8 in flight at a time.
Both run the shipped default model in float32 with torch on `VLLM_CPU_TORCH_THREADS` threads; the two are timed one
after the other (the server is not running while `generate` is). Reported: requests/s and output tokens/s (medians of `--repeats` rounds after a warm-up round).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoProcessor

from transformers_merv import default_model_path
from transformers_merv.inference.prefix_cache import question_inputs
from transformers_merv.integrations.vllm.server import ServerProcess
from transformers_merv.testing_utils import write_moving_square


CONCURRENCIES = (1, 8)
QUESTIONS = ("What color is the square?", "Which way does the square move?", "How fast does the square move?")
SERVER_FLAGS = ("--dtype", "float32", "--kv-cache-memory-bytes", str(256 * 2**20), "--allowed-local-media-path", "/")
VLLM_CPU_TORCH_THREADS = 1
"""vLLM's CPU worker runs torch on one thread per core it binds, keeping one core for its API server (on 2 cores:
1 thread); `generate` gets the same, so both sides compute on one core."""
STARTUP_SECONDS = 900
STOP_SECONDS = 60


def write_video(path: Path, seed: tuple[int, ...]) -> Path:
    """A square of a random colour crossing the frame at a random speed (h264 mp4)."""
    generator = np.random.default_rng(seed)
    color, step = generator.integers(0, 256, 3), int(generator.integers(1, 5)) * generator.choice([-1, 1])
    return write_moving_square(path, tuple(color), int(step))


def generate_batches(model, processor, requests: list[tuple[Path, str]], batch_size: int, tokens: int) -> None:
    """Preprocess each request and `generate` exactly `tokens` tokens per batch of `batch_size`."""
    for start in range(0, len(requests), batch_size):
        rows = [
            question_inputs(processor, question, video, {}) for video, question in requests[start : start + batch_size]
        ]
        padded = processor.tokenizer.pad(
            {"input_ids": [row["input_ids"][0].tolist() for row in rows]}, padding_side="left", return_tensors="pt"
        )
        pixels = torch.cat([row["pixel_values_videos"] for row in rows])
        with torch.inference_mode():
            model.generate(
                **padded, pixel_values_videos=pixels, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
            )


def serve_requests(client, model_id: str, requests: list[tuple[Path, str]], concurrency: int, tokens: int) -> None:
    def ask(request: tuple[Path, str]) -> None:
        video, question = request
        response = client.chat.completions.create(
            model=model_id,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": video.as_uri()}},
                        {"type": "text", "text": question},
                    ],
                }
            ],
            max_tokens=tokens,
            temperature=0.0,
            extra_body={"ignore_eos": True},
        )
        assert response.usage.completion_tokens == tokens, response.usage

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(ask, requests))


def median_seconds(function, rounds: list[list[tuple[Path, str]]]) -> float:
    """Median seconds of `function(requests)` over the rounds after the first (a warm-up)."""
    seconds = []
    for round_index, requests in enumerate(rounds):
        start = time.perf_counter()
        function(requests)
        if round_index:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def row(label: str, seconds: float, requests: int, tokens: int) -> str:
    return f"| {label} | {requests / seconds:.2f} | {requests * tokens / seconds:.1f} | {seconds:.2f} s |"


def time_generate(folder: str, rounds: list[list[tuple[Path, str]]], tokens: int) -> list[str]:
    torch.set_num_threads(VLLM_CPU_TORCH_THREADS)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    lines = []
    for batch_size in CONCURRENCIES:
        seconds = median_seconds(
            lambda requests, size=batch_size: generate_batches(model, processor, requests, size, tokens), rounds
        )
        lines.append(row(f"`generate`, batch {batch_size}", seconds, len(rounds[0]), tokens))
    return lines


def make_rounds(folder: Path, tag: int, requests: int, rounds: int) -> list[list[tuple[Path, str]]]:
    """`rounds` lists of `requests` (video, question) pairs; every video new (seeded by `tag`, round and index)."""
    return [
        [
            (
                write_video(folder / f"video_{tag}_{round_index}_{index}.mp4", (tag, round_index, index)),
                QUESTIONS[index % len(QUESTIONS)],
            )
            for index in range(requests)
        ]
        for round_index in range(rounds)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    import openai

    model_folder = str(default_model_path())
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        lines = ["| side | requests/s | output tokens/s | time for one round |", "|---|---|---|---|"]
        lines += time_generate(model_folder, make_rounds(scratch, 0, args.requests, args.repeats + 1), args.tokens)

        argv = [sys.executable, "-m", "transformers_merv.cli", "serve", model_folder, "--port", str(args.port)]
        server = ServerProcess(
            [*argv, *SERVER_FLAGS], dict(os.environ), f"http://127.0.0.1:{args.port}", scratch / "log"
        )
        try:
            server.wait_until_healthy(STARTUP_SECONDS)
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
            model_id = client.models.list().data[0].id
            for tag, concurrency in enumerate(CONCURRENCIES, start=1):  # new videos: nothing cached from before
                rounds = make_rounds(scratch, tag, args.requests, args.repeats + 1)
                seconds = median_seconds(
                    lambda requests, n=concurrency: serve_requests(client, model_id, requests, n, args.tokens), rounds
                )
                lines.append(row(f"`merv serve`, {concurrency} in flight", seconds, args.requests, args.tokens))
        finally:
            server.stop(STOP_SECONDS)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
