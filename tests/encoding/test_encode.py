"""`merv encode` and `encoding.encode_features`: sources (files, folders, training data, question files and their clip
windows), each content encoded once, unreadable videos recorded, resuming, the store's size on disk, one-line errors
before any model work, and in subprocesses: two processes under torchrun (gloo) store what one process stores, and a
killed run resumes to the same store."""

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from accelerate import PartialState
from PIL import Image

from transformers_merv import MervConfig, default_model_path
from transformers_merv.cli import main
from transformers_merv.encoding import MediaItem, encode_features, feature_bytes_per_video, list_media
from transformers_merv.inference.feature_store import FeatureStore, compute_frozen_features, file_sha256
from transformers_merv.inference.prefix_cache import process_video
from transformers_merv.synthetic.video_qa import make_scenes, render_video
from transformers_merv.video_io import load_image

from conftest import EXAMPLE_VIDEO, MEDIA, error_line, training_entry, write_eval_files, write_training_json

SUBPROCESS_TIMEOUT_S = 300
POLL_S = 0.02
NUM_SYNTHETIC_VIDEOS = 3
SAFETENSORS_LENGTH_BYTES = 8
"""A safetensors file starts with its JSON header's length, a little-endian u64."""


@pytest.fixture(autouse=True)
def no_process_state():
    """Each test starts without the process state of an earlier test in this process."""
    PartialState._reset_state()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A folder: the example video, a copy of it under another name, synthetic videos (one in a sub-folder, one
    hidden), a corrupt video, an image, and a file that is neither."""
    folder = tmp_path_factory.mktemp("videos")
    shutil.copy(EXAMPLE_VIDEO, folder / "circle.mp4")
    shutil.copy(EXAMPLE_VIDEO, folder / "circle-copy.mp4")
    shutil.copy(MEDIA / "corrupted.mp4", folder / "corrupted.mp4")
    names = ["scene-0.mp4", "nested/scene-1.mp4", ".hidden/scene-2.mp4"]
    for scene, name in zip(make_scenes("train", NUM_SYNTHETIC_VIDEOS), names):
        render_video(scene, folder / name)
    Image.new("RGB", (48, 32), (200, 40, 40)).save(folder / "still.png")
    (folder / "notes.txt").write_text("not a video")
    return folder


@pytest.fixture(scope="module")
def reference_store(videos, tmp_path_factory) -> Path:
    """The folder encoded by one process, uninterrupted, in float32."""
    store = tmp_path_factory.mktemp("reference") / "store"
    PartialState._reset_state()
    encode_features([videos], store, str(default_model_path()), dtype="float32", progress=False)
    return store


def _records(store: Path) -> list[dict]:
    return [
        json.loads(line) for index in sorted(store.glob("index-*.jsonl")) for line in index.read_text().splitlines()
    ]


def _assert_same_features(store: Path, reference: Path) -> None:
    """Both stores hold the same keys, failures and features, bit for bit: on the CPU a video's features do not
    depend on the other videos of its batch."""
    found, expected = FeatureStore.open(store), FeatureStore.open(reference)
    keys = {record["key"] for record in _records(reference)}
    assert {record["key"] for record in _records(store)} == keys
    for key in keys:
        assert found.failure(key) == expected.failure(key)
        if key in expected:
            for name, tensor in expected.get(key).items():
                assert torch.equal(found.get(key)[name], tensor)


# --- sources ---------------------------------------------------------------------------------------------------------


def test_a_folder_is_searched_recursively_for_videos_and_images_without_hidden_files(videos):
    items = list_media([videos])
    assert [item.path.relative_to(videos).as_posix() for item in items] == [
        "circle-copy.mp4",
        "circle.mp4",
        "corrupted.mp4",
        "nested/scene-1.mp4",
        "scene-0.mp4",
        "still.png",
    ]
    assert [item.kind for item in items].count("image") == 1 and items[-1].kind == "image"


def test_json_sources_are_told_apart_by_their_fields(videos, tmp_path):
    training = write_training_json(
        tmp_path, [training_entry(0, "circle.mp4"), training_entry(1, "still.png", kind="image")]
    )
    questions, _ = write_eval_files(tmp_path, ["circle", "scene-0"], extra={"time": [0.5, 2.0]})
    items = list_media([training, questions], video_dir=videos)
    window = {"clip_start_sec": 0.5, "clip_end_sec": 2.0}
    assert items == [
        MediaItem(videos / "circle.mp4", "video"),
        MediaItem(videos / "still.png", "image"),
        MediaItem(videos / "circle.mp4", "video", window),
        MediaItem(videos / "scene-0.mp4", "video", window),
    ]


# --- in this process -------------------------------------------------------------------------------------------------


def test_each_content_is_encoded_once_and_stored_as_the_model_computes_it(videos, reference_store, shipped):
    model, processor = shipped
    store = FeatureStore.open(reference_store)
    records = _records(reference_store)
    # 6 items, the two copies of the circle one content: 4 encoded (3 videos, 1 image), 1 unreadable
    assert len(records) == 5 and len(store) == 4 and len({record["key"] for record in records}) == 5
    (failure,) = [record for record in records if "error" in record]
    assert failure["source"] == str(videos / "corrupted.mp4") and "corrupt" in failure["error"]
    image = load_image(videos / "still.png", "still.png")
    for stored, pixels in (
        (store.get(file_sha256(EXAMPLE_VIDEO)), process_video(processor, EXAMPLE_VIDEO)),
        (store.get(file_sha256(videos / "still.png")), processor.video_processor([image])["pixel_values_videos"]),
    ):
        features, _ = compute_frozen_features(model, pixels)
        for name, tensor in features.items():
            assert torch.equal(stored[name], tensor[0])


def test_a_rerun_skips_what_is_stored_and_does_not_retry_unreadable_videos(videos, reference_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(reference_store, store)
    before = sorted(path.name for path in store.iterdir())
    questions, _ = write_eval_files(tmp_path, ["circle"], extra={"end_frame": 8})
    summary = encode_features(
        [videos, questions], store, str(default_model_path()), video_dir=videos, dtype="float32", progress=False
    )
    assert (summary.encoded, summary.already_stored, summary.unreadable, summary.unreadable_before) == (1, 4, 0, 1)
    assert summary.duplicates == 1 and summary.videos_in_store == 5
    window_key = f"{file_sha256(EXAMPLE_VIDEO)}@end_frame=8"  # the question's clip window: a key of its own
    assert window_key in FeatureStore.open(store)
    assert set(before) < {path.name for path in store.iterdir()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_store_on_disk_is_the_arithmetic_plus_the_safetensors_headers(reference_store, tmp_path, dtype):
    if dtype == torch.float32:
        store, flipped = reference_store, False
    else:
        store, flipped = tmp_path / "store", True
        encode_features(
            [EXAMPLE_VIDEO],
            store,
            str(default_model_path()),
            dtype="bfloat16",
            flipped_languagebind=True,
            progress=False,
        )
    config = MervConfig.from_pretrained(default_model_path())
    videos = len(FeatureStore.open(store))
    headers = sum(
        SAFETENSORS_LENGTH_BYTES + struct.unpack("<Q", shard.read_bytes()[:SAFETENSORS_LENGTH_BYTES])[0]
        for shard in store.glob("shard-*.safetensors")
    )
    assert FeatureStore.open(store).size_bytes() == videos * feature_bytes_per_video(config, dtype, flipped) + headers


def test_merv_full_sizes_follow_its_feature_shapes():
    shapes = MervConfig().frozen_feature_shapes()
    assert shapes == {
        "languagebind": (1024, 1024),
        "dinov2": (1024, 1024),
        "vivit": (1024, 768),
        "siglip": (1024, 768),
    }
    values = sum(math.prod(shape) for shape in shapes.values())
    assert feature_bytes_per_video(MervConfig(), torch.float32) == values * 4 == 14_680_064
    assert feature_bytes_per_video(MervConfig(), torch.bfloat16, flipped_languagebind=True) == (values + 1024**2) * 2


# --- the command line ------------------------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path, videos: Path) -> dict[str, tuple[list[str], str]]:
    """Command-line arguments and the error line each must give."""
    (tmp_path / "file").write_text("")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"path": "circle.mp4"}]))
    training = write_training_json(tmp_path, [training_entry(0, "gone.mp4")])
    return {
        "missing source": (
            [str(tmp_path / "nowhere.mp4")],
            f"error: {tmp_path / 'nowhere.mp4'}: no such file or folder",
        ),
        "unknown json": (
            [str(unknown), "--video-dir", str(videos)],
            (
                f'error: {unknown}: neither training data (a list of entries with "conversations" and a "video" or '
                '"image") nor an evaluation question file (a list of records with "question_id" and "video_name")'
            ),
        ),
        "json video missing": (
            [str(training), "--video-dir", str(videos)],
            f"error: {training}: entry 0 (id 'e0'): no video file at {str(videos / 'gone.mp4')!r}",
        ),
        "json without video dir": (
            [str(training)],
            f"error: {training}: a JSON source needs --video-dir, the folder its videos are in",
        ),
        "output is a file": (
            [str(EXAMPLE_VIDEO), "--output", str(tmp_path / "file")],
            f"error: --output {tmp_path / 'file'} is a file; a feature store is a folder",
        ),
    }


@pytest.mark.parametrize(
    "case", ["missing source", "unknown json", "json video missing", "json without video dir", "output is a file"]
)
def test_bad_inputs_fail_before_the_model_loads_with_one_line(case, videos, tmp_path, capsys):
    argv, expected = _bad_inputs(tmp_path, videos)[case]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "store")]
    with mock.patch("transformers_merv.encoding.run.load_model", side_effect=AssertionError("the model loaded")):
        assert main(["encode", *argv]) == 1
    assert error_line(capsys.readouterr().err) == expected


def test_a_store_built_with_another_dtype_is_refused_naming_it(reference_store, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(reference_store, store)
    assert main(["encode", str(EXAMPLE_VIDEO), "--output", str(store), "--dtype", "bfloat16"]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {store}: its features were computed with other settings or weights (")
    assert 'dtype: store has "float32", this model and processor give "bfloat16"' in line
    assert "encoders.languagebind.weights: store has" in line  # the weights' dtype is in their digest


def test_encode_reports_what_it_did_and_the_store_size(tmp_path, capsys):
    store = tmp_path / "store"
    assert (
        main(
            ["encode", str(EXAMPLE_VIDEO), str(MEDIA / "corrupted.mp4"), "--output", str(store), "--dtype", "float32"]
        )
        == 0
    )
    output = capsys.readouterr()
    size = FeatureStore.open(store).size_bytes()
    assert output.out.splitlines() == [
        mock.ANY,
        f"{store}: 1 videos, {size} bytes, {size / 1e6:.3f} GB per 1,000 videos",
    ]
    assert output.out.startswith("encoded 1 videos in ")
    assert "skipped 0 (already stored); unreadable 1 (0 recorded earlier, not retried); 0 duplicates" in output.out
    assert "video/s" in output.err  # the progress bar's rate


# --- in subprocesses -------------------------------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {key: value for key, value in os.environ.items() if key not in launcher} | {"HF_HUB_OFFLINE": "1"}


def _encode_argv(videos: Path, store: Path) -> list[str]:
    return ["encode", str(videos), "--output", str(store), "--dtype", "float32", "--batch-size", "2"]


def test_two_processes_store_each_video_once_and_what_one_process_stores(videos, reference_store, tmp_path):
    store = tmp_path / "store"
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "transformers_merv.cli")
    completed = subprocess.run(
        [sys.executable, *torchrun, *_encode_argv(videos, store)],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr
    assert "process 0 of 2: 3 of 5 videos to encode" in completed.stderr
    assert "process 1 of 2: 2 of 5 videos to encode" in completed.stderr
    keys = [record["key"] for record in _records(store)]
    assert len(keys) == len(set(keys)) == 5 and len(list(store.glob("index-*.jsonl"))) == 2  # one writer each
    _assert_same_features(store, reference_store)


SHARD_EVERY_VIDEO = (
    "import sys; from transformers_merv.inference import feature_store; feature_store.SHARD_SECONDS = 0; "
    "from transformers_merv.cli import main; sys.exit(main(sys.argv[1:]))"
)
"""`merv` completing a shard after every video, so that a kill leaves some videos stored."""


def test_a_killed_run_resumes_to_the_same_store(videos, reference_store, tmp_path):
    store = tmp_path / "store"
    run = subprocess.Popen(
        [sys.executable, "-c", SHARD_EVERY_VIDEO, *_encode_argv(videos, store)[:-2], "--batch-size", "1"],
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not any(b"\n" in index.read_bytes() for index in store.glob("index-*.jsonl")):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(POLL_S)
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait()
    stored = len(FeatureStore.open(store))
    assert 0 < len(_records(store)) < 5
    completed = subprocess.run(
        [sys.executable, "-m", "transformers_merv.cli", *_encode_argv(videos, store)],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"skipped {stored} (already stored)" in completed.stdout
    keys = [record["key"] for record in _records(store)]
    assert len(keys) == len(set(keys)) == 5
    _assert_same_features(store, reference_store)
