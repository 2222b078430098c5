"""Video URLs: http(s) URLs are read like files by the processor (chat messages with `"url"`), `merv ask` and
`merv explain`; a URL that cannot be fetched is a clear error within a bounded time. Servers listen on 127.0.0.1 on
a free port and are always stopped."""

import shutil
import socket
from collections.abc import Iterator

import pytest
import torch
from transformers import AutoProcessor

from transformers_merv import VideoDecodingError, default_model_path, read_video
from transformers_merv.cli import main
from transformers_merv.media_limits import MediaLimitError

from conftest import EXAMPLE_VIDEO, MEDIA, serving_folder

QUESTION = "What color is the circle?"


@pytest.fixture
def served(tmp_path) -> Iterator[str]:
    """Base URL of an HTTP server for a folder holding the example video and the shared media."""
    shutil.copy(EXAMPLE_VIDEO, tmp_path)
    for path in MEDIA.iterdir():
        shutil.copy(path, tmp_path)
    with serving_folder(tmp_path) as url:
        yield url


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A URL whose server accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"http://127.0.0.1:{server.getsockname()[1]}/clip.mp4"


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/clip.mp4"


@pytest.mark.parametrize("name", ["flipping_a_pancake.mkv", "video_0.mov"])
def test_a_url_decodes_like_the_file(served, name):
    frames, metadata = read_video(f"{served}/{name}", 8)
    expected, expected_metadata = read_video(MEDIA / name, 8)
    assert torch.equal(torch.from_numpy(frames), torch.from_numpy(expected))
    assert metadata.frames_indices == expected_metadata.frames_indices


def test_chat_messages_take_video_urls(served):
    processor = AutoProcessor.from_pretrained(default_model_path())

    def inputs(video_block: dict):
        conversation = [{"role": "user", "content": [video_block, {"type": "text", "text": QUESTION}]}]
        return processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")

    from_url = inputs({"type": "video", "url": f"{served}/example.mp4"})
    from_path = inputs({"type": "video", "path": str(EXAMPLE_VIDEO)})
    assert torch.equal(from_url["input_ids"], from_path["input_ids"])
    assert torch.equal(from_url["pixel_values_videos"], from_path["pixel_values_videos"])


def test_merv_ask_and_explain_take_a_url(served, capsys):
    assert main(["ask", f"{served}/example.mp4", QUESTION]) == 0
    assert capsys.readouterr().out.strip() == "red"
    assert main(["explain", f"{served}/example.mp4", QUESTION]) == 0
    assert capsys.readouterr().out.startswith("answer: red\n")


@pytest.mark.parametrize(
    ("make_url", "message"),
    [
        (lambda base: f"{base}/missing.mp4", "404 Not Found"),
        (lambda base: _closed_port_url(), "Connection refused"),
        (lambda base: f"{base}/corrupted.mp4", "is corrupt or truncated"),
    ],
    ids=["missing", "nothing-listening", "corrupt"],
)
def test_unfetchable_urls_are_one_line_errors_naming_the_url(served, capsys, make_url, message):
    url = make_url(served)
    assert main(["ask", url, QUESTION]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and url in error and message in error


def test_a_stalled_server_times_out_at_the_stated_limit(silent_server, monkeypatch):
    monkeypatch.setenv("MERV_URL_TIMEOUT_S", "0.5")
    with pytest.raises(VideoDecodingError, match=r"limited to 0\.5 seconds; set MERV_URL_TIMEOUT_S"):
        read_video(silent_server)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/clip.mp4", "file:///etc/hostname", "rtsp://127.0.0.1/live"])
def test_only_http_urls_are_read(url):
    with pytest.raises(MediaLimitError, match="only http and https URLs are read"):
        read_video(url)
