"""Fetching videos for vLLM (`MervMediaConnector`, selected by `VLLM_MEDIA_CONNECTOR=merv`): a video URL that cannot
be read, is over a size limit or is not a video is a 400 error naming it, checked before the request is queued
without decoding any frame; the video travels on as its bytes, which `MervVideoProcessor` decodes, once."""

import posixpath
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pybase64
import requests
from vllm import envs
from vllm.connections import HTTPResponseSizeExceededError
from vllm.exceptions import VLLMValidationError
from vllm.multimodal.media import MediaConnector, MediaIO, MediaWithBytes

from ...media_limits import MAX_VIDEO_BYTES, check_regular_file, check_video_bytes
from ...video_io import open_video


URL_SHOWN_CHARS = 80
"""Longest URL quoted in an error message (data URLs are cut there)."""
BASE64_CHARS_PER_BYTE = 4 / 3


def _shown_url(url: str) -> str:
    """The URL as an error message names it. vLLM masks server paths in error messages (`/dir/file.ext` becomes
    `<path>`), so a path is shortened to its file name, which the client recognises; data URLs to their start."""
    if url[:5].lower() == "data:":
        return f"{url[:URL_SHOWN_CHARS]}... ({len(url)} characters)"
    parts = urlsplit(url)
    folders, name = posixpath.split(parts.path)
    return f"{parts.scheme}://{parts.netloc}{'/.../' if folders.strip('/') else '/'}{name}"


class EncodedVideo(np.ndarray):
    """A video file's bytes as the 1-D uint8 array vLLM carries as the video (vLLM's processor cache hashes the
    bytes), with `source`: its URL as error messages name it, so that `MervMultiModalProcessor` can name a video
    that fails to decode."""

    source: str

    def __new__(cls, data: bytes, source: str) -> Self:
        array = np.frombuffer(data, dtype=np.uint8).view(cls)
        array.source = source
        return array

    def __array_finalize__(self, obj: object) -> None:
        self.source = getattr(obj, "source", "video_url")


class MervVideoMediaIO(MediaIO[MediaWithBytes]):
    """A video as its encoded bytes (`EncodedVideo`), checked before the request is queued: at most `MAX_VIDEO_BYTES`
    (checked before reading), a container with a video stream whose frames fit the frame-size limits (its packets
    are indexed, no frame is decoded: `MervVideoProcessor` decodes the frames the request samples, once)."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def get_max_bytes(self) -> int:
        return int(MAX_VIDEO_BYTES.value())

    def load_bytes(self, data: bytes) -> MediaWithBytes:
        check_video_bytes(self.source, len(data))
        with open_video(data, "video_url"):
            pass  # opening indexes the packets and checks the stream and frame size
        return MediaWithBytes((EncodedVideo(data, self.source), {}), data)

    def load_base64(self, media_type: str, data: str) -> MediaWithBytes:
        check_video_bytes(self.source, int(len(data) / BASE64_CHARS_PER_BYTE))
        return self.load_bytes(pybase64.b64decode(data, validate=True))

    def load_file(self, filepath: Path) -> MediaWithBytes:
        if not filepath.is_file():
            raise FileNotFoundError("no such file")
        check_regular_file(filepath, self.source)
        check_video_bytes(self.source, filepath.stat().st_size)
        return self.load_bytes(filepath.read_bytes())


class MervMediaConnector(MediaConnector):
    """vLLM's media connector, except for videos: they are fetched as `MervVideoMediaIO`, and one that cannot be
    fetched (missing file, unreachable host, HTTP error), is over a limit or is not a video is a 400 error naming
    its URL."""

    def fetch_video(self, video_url: str, **kwargs: Any) -> MediaWithBytes:
        media_io = MervVideoMediaIO(_shown_url(video_url))
        try:
            return self.load_from_url(video_url, media_io, fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT)
        except Exception as err:
            raise _video_url_error(video_url, err) from err

    async def fetch_video_async(self, video_url: str, **kwargs: Any) -> MediaWithBytes:
        media_io = MervVideoMediaIO(_shown_url(video_url))
        try:
            return await self.load_from_url_async(video_url, media_io, fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT)
        except Exception as err:
            raise _video_url_error(video_url, err) from err


FETCH_ERRORS = (
    OSError,
    ValueError,
    RuntimeError,
    aiohttp.ClientError,
    requests.RequestException,
    TimeoutError,
    HTTPResponseSizeExceededError,
)
"""What reading a video URL raises for the client's input: missing or unreadable files (`OSError`), undecodable
media (`VideoDecodingError` is a `ValueError`), media limits (`MediaLimitError`, a `ValueError`; an HTTP body over
`MAX_VIDEO_BYTES` is vLLM's `HTTPResponseSizeExceededError`), a file outside `--allowed-local-media-path`
(`RuntimeError` / `ValueError`), unreachable hosts and HTTP errors."""


def _video_url_error(url: str, err: Exception) -> Exception:
    if not isinstance(err, FETCH_ERRORS):
        return err
    if isinstance(err, HTTPResponseSizeExceededError):
        reason = f"over the limit of {MAX_VIDEO_BYTES.describe()}"
    elif isinstance(err, VLLMValidationError):
        return err
    else:
        reason = str(err).strip() or type(err).__name__
    return VLLMValidationError(f"cannot read video_url {_shown_url(url)}: {reason}", parameter="video_url")
