"""Where the demo's answers come from: the Python model (`LocalBackend`: answers, clip windows, fusion weights and
timelines) or a running `merv serve` through its OpenAI API (`ServerBackend`: answers only, the API returns no
fusion weights and samples the whole video). Each turns a `VideoRequest` into a prepared video and starts chats about it, whose
answers stream in as growing text."""

import base64
import mimetypes
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from transformers import TextIteratorStreamer

from .. import default_model_path
from ..configuration_merv import MERV_FULL_NUM_FRAMES
from ..evaluation import default_max_new_tokens
from ..inference.devices import resolve_device
from ..inference.fusion_weights import encoder_weights
from ..inference.loading import AUTO, load_model, load_processor
from ..inference.prefix_cache import VideoChat, VideoPrefix, VideoPrefixCache
from ..inference.windows import WindowAnswer, iter_answer_windows
from ..video_io import open_video, sample_frame_indices
from .openai_client import OpenAIServer
from .sources import DemoError, VideoRequest, reading


DEFAULT_VIDEO_MIME = "video/mp4"
PROBED_FRAMES = max(MERV_FULL_NUM_FRAMES.values())
"""Frames decoded to check an upload before it is sent to a server: the most any merv-full encoder samples."""
SERVER_WEIGHTS_NOTE = (
    "Fusion weights are not available with --server: the OpenAI API of merv serve returns the answer's text only. "
    "Run merv demo without --server (the Python model) to see them."
)

SERVER_WINDOWS_MESSAGE = (
    "clip windows and timelines need the Python model: merv serve's API samples the whole video; run merv demo "
    "without --server"
)


class WeightsUnavailable(DemoError):
    """The model or backend has no per-encoder fusion weights to show (the page says why; not an error)."""


class Chat(Protocol):
    """A conversation about one prepared video."""

    def stream(self, question: str) -> Iterator[str]:
        """The answer to `question` as it grows (each item the whole text so far), added to the conversation."""


class Backend(Protocol):
    description: str
    """What answers, for the page (e.g. "the Python model at PATH")."""
    supports_windows: bool
    """Whether clip windows and timelines (a video answered window by window) are available."""

    def prepare(self, video: VideoRequest) -> Any:
        """The video read and ready for questions; a `DemoError` if it cannot be read."""

    def fusion_weights(self, prepared: Any) -> dict[str, float]:
        """Each encoder's fusion weight for the video, or `WeightsUnavailable` saying why there are none."""

    def new_chat(self, prepared: Any) -> Chat:
        """An empty conversation about the video."""

    def windows(self, video: VideoRequest, question: str, window_seconds: float) -> Iterator[WindowAnswer]:
        """The answer to `question` for each consecutive `window_seconds` window of the whole video, in order, as
        each is answered."""


class LocalBackend:
    """The Python model, loaded once; encoded videos are cached (`VideoPrefixCache`), so every question about a
    video reuses its encoding."""

    supports_windows = True

    def __init__(self, model_id: str, device: str | None = None, dtype: str = AUTO):
        self.processor = load_processor(model_id)
        self.model = load_model(model_id, resolve_device(device), dtype)
        self.generation = {"max_new_tokens": default_max_new_tokens(self.model)}
        shipped = Path(model_id).resolve() == default_model_path().resolve()
        self.description = "the shipped default model (toy size)" if shipped else f"the Python model {model_id}"
        self._prefixes = VideoPrefixCache()

    def prepare(self, video: VideoRequest) -> VideoPrefix:
        with reading(video):
            return self._prefixes.get(self.model, self.processor, video.source, video.sampling())

    def fusion_weights(self, prepared: VideoPrefix) -> dict[str, float]:
        try:
            return encoder_weights(self.model.config, prepared.video_features)
        except ValueError as err:
            raise WeightsUnavailable(str(err)) from None

    def new_chat(self, prepared: VideoPrefix) -> "LocalChat":
        return LocalChat(VideoChat(self.model, self.processor, prepared), self.processor.tokenizer, self.generation)

    def windows(self, video: VideoRequest, question: str, window_seconds: float) -> Iterator[WindowAnswer]:
        with reading(video):
            yield from iter_answer_windows(
                self.model, self.processor, video.source, question, window_seconds, **self.generation
            )


class LocalChat:
    """`VideoChat` with its answers streamed (generation runs in a thread feeding a `TextIteratorStreamer`)."""

    def __init__(self, chat: VideoChat, tokenizer, generation: dict[str, Any]):
        self._chat, self._tokenizer, self._generation = chat, tokenizer, generation

    def stream(self, question: str) -> Iterator[str]:
        yield from streamed(
            lambda streamer: self._chat.ask(question, streamer=streamer, **self._generation), self._tokenizer
        )


def streamed(generate: Callable[[TextIteratorStreamer], str], tokenizer) -> Iterator[str]:
    """Run `generate(streamer)` in a thread and yield the text streamed so far, then `generate`'s own result (the
    exact answer, which the streamed pieces may differ from in spacing); its exception is raised here."""
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["answer"] = generate(streamer)
        except Exception as err:  # noqa: BLE001 - re-raised in the caller's thread below
            outcome["error"] = err
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        if piece:
            text += piece
            yield text
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["answer"]


class ServerBackend:
    """A running `merv serve`: videos go to it as http(s) URLs or, for uploads, as `data:` URLs of their bytes,
    checked here first (the frames merv-full samples decoded, under the media limits), so that an unreadable file is
    named at once."""

    supports_windows = False

    def __init__(self, url: str):
        self.server = OpenAIServer(url)
        self.description = f"the server at {self.server.url} (model {self.server.model})"

    def prepare(self, video: VideoRequest) -> str:
        if video.sampling():
            raise DemoError(SERVER_WINDOWS_MESSAGE)
        if video.is_url:
            return video.source
        with reading(video), open_video(video.source, video.name) as reader:
            metadata = reader.metadata
            reader.get_frames(sample_frame_indices(metadata.total_num_frames, metadata.fps, PROBED_FRAMES))
        data = Path(video.source).read_bytes()
        mime = mimetypes.guess_type(video.source)[0] or DEFAULT_VIDEO_MIME
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def fusion_weights(self, prepared: str) -> dict[str, float]:
        raise WeightsUnavailable(SERVER_WEIGHTS_NOTE)

    def new_chat(self, prepared: str) -> "ServerChat":
        return ServerChat(self.server, prepared)

    def windows(self, video: VideoRequest, question: str, window_seconds: float) -> Iterator[WindowAnswer]:
        raise DemoError(SERVER_WINDOWS_MESSAGE)


class ServerChat:
    """A conversation sent whole with each question (the OpenAI API is stateless); the video in the first turn."""

    def __init__(self, server: OpenAIServer, video_url: str):
        self._server, self._video_url = server, video_url
        self.messages: list[dict[str, Any]] = []

    def stream(self, question: str) -> Iterator[str]:
        content: list[dict[str, Any]] = [{"type": "text", "text": question}]
        if not self.messages:
            content.insert(0, {"type": "video_url", "video_url": {"url": self._video_url}})
        messages = [*self.messages, {"role": "user", "content": content}]
        text = ""
        for piece in self._server.stream_chat(messages):
            text += piece
            yield text
        self.messages = [*messages, {"role": "assistant", "content": text}]
