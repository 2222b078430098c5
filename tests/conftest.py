"""Shared test helpers: paths to the repository and ../shared, tiny configs, converted fixtures, the shipped model,
the training tests' synthetic videos, fast tiny model and feature store, numerical tolerances, and the bad inputs
every entry point must refuse. The test files, one folder per unit, import them with `from conftest import ...`
(pytest puts this folder on `sys.path`); no test module imports another."""

import functools
import http.server
import importlib.util
import json
import math
import os
import shutil
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from unittest import mock

import av
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError
from PIL import Image
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModel, AutoProcessor  # noqa: E402

from transformers_merv import (  # noqa: E402
    MervConfig,
    MervForConditionalGeneration,
    MervProcessor,
    MervVideoProcessor,
    default_model_path,
)
from transformers_merv.testing_utils import tiny_config  # noqa: E402, F401  (re-exported to the tests)
from transformers_merv.conversion import EncoderSources, convert  # noqa: E402
from transformers_merv.inference.feature_store import (  # noqa: E402
    FeatureStore,
    compute_frozen_features,
    feature_fingerprint,
)
from transformers_merv.inference.prefix_cache import (  # noqa: E402
    generate_from_cache,
    prompt_ids,
    question_conversation,
)
from transformers_merv.training import run as training_run  # noqa: E402
from transformers_merv.video_io import load_image  # noqa: E402


REPO = Path(__file__).resolve().parents[1]
"""The repository root (this file is `tests/conftest.py`; the test files, one folder deeper, use this)."""
EXAMPLES = REPO / "examples"
SHARED = next(
    (folder / "shared" for folder in Path(__file__).resolve().parents if (folder / "shared" / "fixtures").is_dir()),
    REPO.parent / "shared",
)
"""`shared/` beside the repository (also found from the mutation run's copy of the tests, one folder deeper)."""
FIXTURES = SHARED / "fixtures" / "reference"
MEDIA = SHARED / "media"
TINY_FULL = FIXTURES / "tiny-merv-full"
VARIANTS = FIXTURES / "tiny-merv-variants"
FIXTURE_IMAGE_SIZES = {"languagebind": 32, "dinov2": 56, "vivit": 28, "siglip": 64}
"""The tiny fixtures were built with the authors' `default_image_size` patched to these values."""

PARITY_ATOL = 1e-4
"""How far float32 outputs may lie from the authors' fixtures (`model/test_parity.py`, and `model/test_gpu.py` on an
accelerator)."""
HALF_PRECISION_ULPS = 4
"""How far half-precision logits may lie from the float32 ones, in units of the dtype's precision at the largest
logit (`eps * max|logit|`). Rounding the weights and every layer's activations to the dtype costs about one such
unit at this depth (measured on the tiny model of `model/test_pretrained_model.py`: 1.1-1.2 units for bfloat16 and
float16, 0.6-0.7 with only the LLM in half precision); a cast or dtype bug costs far more."""


def half_precision_atol(dtype: torch.dtype, reference: torch.Tensor) -> float:
    """`HALF_PRECISION_ULPS` units of `dtype`'s precision at the largest magnitude in `reference`."""
    return HALF_PRECISION_ULPS * torch.finfo(dtype).eps * reference.abs().max().item()


def random_pixels_by_encoder(config: MervConfig, batch_size: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pixels in the per-encoder form, `{encoder: (batch_size, frames, 3, height, width)}`."""
    generator = torch.Generator().manual_seed(seed)
    pixels = {}
    for name in config.vision_encoders:
        size = config.encoder_config(name).image_size
        pixels[name] = torch.randn(batch_size, config.num_frames[name], 3, size, size, generator=generator)
    return pixels


def random_pixels(config: MervConfig, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """`random_pixels_by_encoder`, packed: `pixel_values_videos` of shape `(batch_size, D)`."""
    return pack_pixels(random_pixels_by_encoder(config, batch_size, seed))


def pack_pixels(pixels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-encoder pixels packed the documented way, written out independently of the package: each video's
    `(frames, 3, height, width)` blocks flattened and concatenated in the dict's order."""
    return torch.cat([value.flatten(1) for value in pixels.values()], dim=1)


def unpack_pixels(pixel_values_videos: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The inverse of `pack_pixels` for `shapes` (`{encoder: (frames, 3, height, width)}`), written out
    independently of the package."""
    sizes = [math.prod(shape) for shape in shapes.values()]
    parts = pixel_values_videos.split(sizes, dim=1)
    return {name: part.unflatten(1, shape) for (name, shape), part in zip(shapes.items(), parts, strict=True)}


def with_placeholders(input_ids: torch.Tensor, num_tokens: int, video_token_id: int) -> torch.Tensor:
    """Insert `num_tokens` video placeholders right after BOS (where the authors splice the visual tokens)."""
    placeholders = torch.full((input_ids.shape[0], num_tokens), video_token_id, dtype=input_ids.dtype)
    return torch.cat([input_ids[:, :1], placeholders, input_ids[:, 1:]], dim=1)


def fixture_pixels_by_encoder() -> dict[str, torch.Tensor]:
    """The fixture's encoder inputs in the per-encoder form: every encoder `(batch, frames, channels, height,
    width)`."""
    inputs = load_file(TINY_FULL / "inputs.safetensors")
    pixels = {key.split(".", 1)[1]: value for key, value in inputs.items() if key.startswith("pixel_values.")}
    pixels["languagebind"] = pixels["languagebind"].transpose(1, 2)  # authors feed LanguageBind (B, C, T, H, W)
    return pixels


def fixture_pixels(config: MervConfig) -> torch.Tensor:
    """The fixture's encoder inputs as `config`'s `pixel_values_videos`: its encoders, packed in its order."""
    pixels = fixture_pixels_by_encoder()
    return pack_pixels({name: pixels[name] for name in config.vision_encoders})


def convert_fixture(run_dir: Path, output_dir: Path, llm_dir: Path = FIXTURES / "llm") -> Path:
    encoders = EncoderSources(
        directories={name: FIXTURES / "encoders" / name for name in FIXTURE_IMAGE_SIZES},
        image_sizes=FIXTURE_IMAGE_SIZES,
    )
    convert(run_dir, llm_dir, encoders, output_dir, progress=False)
    return output_dir


@pytest.fixture(scope="session")
def converted_full(tmp_path_factory) -> Path:
    """tiny-merv-full converted once per session."""
    return convert_fixture(TINY_FULL / "run", tmp_path_factory.mktemp("tiny-merv-full"))


@pytest.fixture
def fake_hub(tmp_path) -> Path:
    """Replaces the Hub at the `huggingface_hub` boundary: `push_to_hub` commits land in the returned folder."""
    uploaded = tmp_path / "uploaded"

    def create_commit(self, repo_id, operations, **kwargs):
        for operation in operations:
            target = uploaded / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(operation.path_or_fileobj, target)
        return mock.Mock(commit_url=f"https://hub/{repo_id}")

    with (
        mock.patch.object(HfApi, "create_repo", side_effect=lambda repo_id, **kwargs: mock.Mock(repo_id=repo_id)),
        mock.patch.object(HfApi, "create_commit", create_commit),
        mock.patch.object(ModelCard, "load", side_effect=EntryNotFoundError("no card")),
    ):
        yield uploaded


EXAMPLE_VIDEO = EXAMPLES / "example.mp4"
"""The README's example video: a red circle moving fast to the right."""
EXAMPLE_QUESTION = "What color is the circle?"
"""The README's question about the example video."""


@pytest.fixture(scope="module")
def default_processor():
    """The shipped default model's processor."""
    return AutoProcessor.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def shipped():
    """The shipped default model (in eval mode) and its processor."""
    return AutoModel.from_pretrained(default_model_path()).eval(), AutoProcessor.from_pretrained(default_model_path())


CONVERTER_SCRIPT = REPO / "conversion" / "convert_merv_to_hf.py"


def load_script(path: Path, name: str) -> ModuleType:
    """A script (an example, the converter) imported as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_script():
    """The training run behind examples/train.py."""
    return training_run


PREFIX_QUESTIONS = ["What is shown?", "What color is the object in the middle of the clip?", "How many?"]
"""The questions asked about one cached video prefix (`inference/test_prefix_cache.py`, `model/test_gpu.py`)."""
FULL_LENGTH_GREEDY = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
"""Every answer has its full length (no early end), so every generated id is compared."""


def answer_ids_from_scratch(model, processor, conversation, chat_template, pixels, **generation) -> list[int]:
    """Generated ids for one whole prompt, the video encoded inside `generate`."""
    input_ids = torch.tensor([prompt_ids(processor, conversation, chat_template)], device=model.device)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, pixel_values_videos=pixels, **generation)
    return output[0, input_ids.shape[1] :].tolist()


def answer_ids_from_cache(model, processor, prefix, questions, **generation) -> list[list[int]]:
    """Generated ids for each of `questions` about the video of the cached `prefix`, in one batch."""
    prompts = [prompt_ids(processor, question_conversation(q), prefix.chat_template) for q in questions]
    output, input_ids = generate_from_cache(model, processor, prefix.prompt, prompts, **generation)
    return output.sequences[:, input_ids.shape[1] :].tolist()


def build_feature_store(
    path: Path,
    model,
    processor,
    media: Sequence[Path],
    window: Mapping[str, float | int] | None = None,
    flipped: bool = False,
    batched: bool = True,
) -> FeatureStore:
    """A feature store of `media` (videos, and images by their suffix; with the clip `window`) built through the
    Python API, as `merv encode` builds one: the readable media's frozen features (and, with `flipped`, LanguageBind's
    of the mirrored clips) computed in one batch or, without `batched`, one medium at a time; the others recorded
    with their decoding error."""
    store = FeatureStore.create(path, feature_fingerprint(model, processor, model.dtype), flipped)
    readable, pixels = [], []
    with store.writer() as writer:
        for item in media:
            try:
                video = load_image(item, str(item)) if item.suffix == ".png" else str(item)
                pixels.append(processor.video_processor([video], **(window or {}))["pixel_values_videos"])
            except (OSError, ValueError) as err:
                writer.add_failure(item, window, str(err))
            else:
                readable.append(item)
        rows = []
        for batch in [torch.cat(pixels)] if batched and pixels else pixels:
            features, mirrored = compute_frozen_features(model, batch, flipped)
            rows += [
                ({name: tensor[row] for name, tensor in features.items()}, None if mirrored is None else mirrored[row])
                for row in range(batch.shape[0])
            ]
        for item, (features, mirrored) in zip(readable, rows):
            writer.add(item, window, features, flipped_languagebind=mirrored)
    return store


def with_cpu_bf16(native: bool):
    """This CPU as one with (or without) AVX512-BF16, and without any other half-precision feature."""
    return mock.patch("transformers_merv.inference.devices.cpu_capabilities", return_value={"avx512_bf16": native})


# --- bad input, refused by every entry point (the processor, `merv`, evaluation files, the training dataset) ---------


def error_line(stderr: str) -> str:
    """The last stderr line of a failed `merv` command, which must be its one `error: ...` line (no traceback)."""
    lines = stderr.strip().splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in stderr, stderr
    return lines[-1]


def ask_argv(video: object, *flags: str) -> list[str]:
    """`merv ask VIDEO EXAMPLE_QUESTION FLAGS...` as `main`'s arguments."""
    return ["ask", str(video), EXAMPLE_QUESTION, *flags]


def explain_argv(video: object, *flags: str) -> list[str]:
    """`merv explain VIDEO EXAMPLE_QUESTION FLAGS...` as `main`'s arguments."""
    return ["explain", str(video), EXAMPLE_QUESTION, *flags]


def _fifo(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "clip.mp4"
    os.mkfifo(path)
    return path, "a FIFO (named pipe)"


def _directory(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "folder.mp4"
    path.mkdir()
    return path, "a directory"


def _device(tmp_path: Path) -> tuple[Path, str]:
    return Path("/dev/zero"), "a character device"


def _null(tmp_path: Path) -> tuple[Path, str]:
    return Path("/dev/null"), "a character device"


NOT_REGULAR_FILES = pytest.mark.parametrize(
    "make", [_fifo, _directory, _device, _null], ids=["fifo", "dir", "zero", "null"]
)
"""Parametrizes a test over paths that are not regular files: `make(tmp_path)` gives the path and the kind of file the
error must name."""


@pytest.fixture
def no_time_to_decode(monkeypatch):
    """A decoding time limit (`MERV_DECODE_TIMEOUT_S`) that no video can be read within."""
    monkeypatch.setenv("MERV_DECODE_TIMEOUT_S", "0.000001")


def write_eval_files(root: Path, names: list[str], extra: dict | None = None) -> tuple[Path, Path]:
    """Open-ended evaluation files `root/q.json` and `root/a.json`: question `q{i}` (`EXAMPLE_QUESTION`, with the
    fields of `extra`) about video `names[i]`, answered "red"."""
    questions = [{"question_id": f"q{i}", "video_name": name, "question": EXAMPLE_QUESTION, **(extra or {})}
                 for i, name in enumerate(names)]  # fmt: skip
    answers = [{"question_id": f"q{i}", "answer": "red"} for i in range(len(names))]
    (root / "q.json").write_text(json.dumps(questions))
    (root / "a.json").write_text(json.dumps(answers))
    return root / "q.json", root / "a.json"


def write_training_json(root: Path, entries: list[dict]) -> Path:
    """Training data file `root/train.json` holding `entries`."""
    (root / "train.json").write_text(json.dumps(entries))
    return root / "train.json"


def training_entry(index: int, media: str, kind: str = "video") -> dict:
    """Training entry `e{index}`: one question about `media`, a "video" or an "image"."""
    turns = [{"from": "human", "value": "<video>\nWhat color?"}, {"from": "gpt", "value": "red"}]
    return {"id": f"e{index}", kind: media, "conversations": turns}


class _QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        """No access log in the tests' output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server the test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving_folder(folder: Path) -> Iterator[str]:
    """`http://127.0.0.1:PORT` serving `folder` over HTTP for the block (video URLs without leaving the machine)."""
    handler = functools.partial(_QuietFileHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- training: synthetic videos and conversations, a fast tiny model, examples/train.py's arguments (training/) ---


ENCODER_IMAGE_SIZES = {"languagebind": 16, "dinov2": 28, "vivit": 16, "siglip": 32}
FAST_ENCODERS = dict(
    languagebind_config=dict(num_hidden_layers=2, image_size=16, patch_size=4, temporal_group_size=4),
    dinov2_config=dict(num_hidden_layers=2, image_size=28),
    vivit_config=dict(num_hidden_layers=2, image_size=16, tubelet_size=[2, 8, 8], num_frames=16),
    siglip_config=dict(num_hidden_layers=2, image_size=32),
    num_frames={"languagebind": 8, "dinov2": 8, "vivit": 16, "siglip": 8},
)
"""`tiny_config` with fewer frames and pixels (32 visual tokens): a training step of 4 examples takes ~30 ms on 2
cores instead of ~3 s with the fixture's encoders."""
INIT_STD = 0.1
"""A random LLM initialised at std 0.02 gives near-uniform logits whatever its inputs, so with the LLM frozen (align)
30 steps only move the loss from 6.94 to 6.69; at std 0.1 the visual tokens can steer it."""
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
DIRECTIONS = {"red": "right", "green": "left", "blue": "left", "yellow": "right"}
VIDEO_SIDE, VIDEO_FRAMES, SQUARE = 64, 32, 16


def frame_with_square(colour: tuple[int, int, int], left: int) -> np.ndarray:
    frame = np.full((VIDEO_SIDE, VIDEO_SIDE, 3), 40, np.uint8)
    top = (VIDEO_SIDE - SQUARE) // 2
    frame[top : top + SQUARE, left : left + SQUARE] = colour
    return frame


def write_video(path: Path, colour: tuple[int, int, int], direction: str) -> None:
    """A square of `colour` crossing the frame towards `direction`."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = VIDEO_SIDE
        stream.pix_fmt = "yuv420p"
        for index in range(VIDEO_FRAMES):
            left = (VIDEO_SIDE - SQUARE) * index // (VIDEO_FRAMES - 1)
            left = left if direction == "right" else VIDEO_SIDE - SQUARE - left
            frame = av.VideoFrame.from_ndarray(frame_with_square(colour, left), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def conversation(*turns: str) -> list[dict]:
    return [{"from": "human" if index % 2 == 0 else "gpt", "value": text} for index, text in enumerate(turns)]


def video_chat(name: str) -> dict:
    return {
        "id": name,
        "video": f"{name}.mp4",
        "conversations": conversation(
            "<video>\nWhat colour is the square?",
            f"It is {name}.",
            "Where does it move?",
            f"To the {DIRECTIONS[name]}.",
        ),
    }


def caption(name: str) -> dict:
    return {
        "id": name,
        "video": f"{name}.mp4",
        "conversations": conversation(
            "<video>\nDescribe the video.", f"A {name} square moves to the {DIRECTIONS[name]}."
        ),
    }


TEXT_ONLY = [
    {"id": "sum", "conversations": conversation("What is two plus two?", "Four.")},
    {"id": "sky", "conversations": conversation("What colour is the sky?", "Blue.")},
]
IMAGE_CHAT = {"id": "still", "image": "red.png", "conversations": conversation("<image>\nWhat colour?", "Red.")}


@pytest.fixture(scope="module")
def media_root(tmp_path_factory) -> Path:
    """Four videos whose answers depend on what they show, an image, a corrupted video and the JSON files."""
    root = tmp_path_factory.mktemp("media")
    for name, colour in COLOURS.items():
        write_video(root / f"{name}.mp4", colour, DIRECTIONS[name])
    Image.fromarray(frame_with_square(COLOURS["red"], 8)).save(root / "red.png")
    shutil.copy(MEDIA / "corrupted.mp4", root / "corrupted.mp4")
    write_json(root / "chat.json", [video_chat(name) for name in COLOURS] + TEXT_ONLY + [IMAGE_CHAT])
    write_json(root / "caption.json", [caption(name) for name in COLOURS])
    return root


def write_json(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, converted_full) -> Path:
    """A fast tiny MERV (random weights, `FAST_ENCODERS`) with the converted fixture's tokenizer, saved with its
    processor."""
    text_config = {**tiny_config().text_config.to_dict(), "initializer_range": INIT_STD}
    config = tiny_config(**FAST_ENCODERS, text_config=text_config, initializer_range=INIT_STD)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-merv-fast")
    MervForConditionalGeneration(config).save_pretrained(directory)
    settings = {
        name: {"num_frames": config.num_frames[name], "size": {"height": side, "width": side}}
        for name, side in ENCODER_IMAGE_SIZES.items()
    }
    tokenizer = AutoProcessor.from_pretrained(converted_full).tokenizer
    processor = MervProcessor(
        MervVideoProcessor(encoder_settings=settings), tokenizer, num_video_tokens=config.num_video_tokens
    )
    processor.save_pretrained(directory)
    return directory


def script_args(model_dir: Path, media_root: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(model_dir),
        "--data_path",
        str(media_root / "chat.json"),
        "--media_root",
        str(media_root),
        "--output_dir",
        str(output_dir),
        "--report_to",
        "none",
        *extra,
    ]


def media_files(media_root: Path) -> list[Path]:
    """The readable media of `media_root`: its four videos and its image."""
    return [media_root / f"{name}.mp4" for name in COLOURS] + [media_root / "red.png"]


def build_store(
    model_dir: Path, media_root: Path, path: Path, flipped: bool = False, num_threads: int | None = None
) -> FeatureStore:
    """A float32 store of every medium of `media_root` (the corrupted video recorded as unreadable), encoded one at a
    time on `num_threads` threads (torch's setting by default; restored after)."""
    model = MervForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or threads)
    try:
        media = [*media_files(media_root), media_root / "corrupted.mp4"]
        return build_feature_store(path, model, processor, media, flipped=flipped, batched=False)
    finally:
        torch.set_num_threads(threads)
