"""Fetching videos for vLLM (`MervMediaConnector`, selected by `VLLM_MEDIA_CONNECTOR=merv`): a video URL that cannot
be read or decoded is a 400 error naming it, checked before the request is queued; the video travels on as its bytes,
which `MervVideoProcessor` decodes."""

import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pybase64
import requests
from vllm import envs
from vllm.exceptions import VLLMValidationError
from vllm.multimodal.media import MediaConnector, MediaIO, MediaWithBytes

from ...video_io import open_video, sample_frame_indices
from ...video_processing_merv import MERV_FULL_ENCODER_SETTINGS


PROBED_FRAMES = max(settings["num_frames"] for settings in MERV_FULL_ENCODER_SETTINGS.values())
"""Frames decoded to check a fetched video: the most any merv-full encoder reads (the processor decodes the same)."""
URL_SHOWN_CHARS = 80
"""Longest URL quoted in an error message (data URLs are cut there)."""


def _shown_url(url: str) -> str:
    """The URL as an error message names it. vLLM masks server paths in error messages (`/dir/file.ext` becomes
    `<path>`), so a path is shortened to its file name, which the client recognises; data URLs to their start."""
    if url[:5].lower() == "data:":
        return f"{url[:URL_SHOWN_CHARS]}... ({len(url)} characters)"
    parts = urlsplit(url)
    folders, name = posixpath.split(parts.path)
    return f"{parts.scheme}://{parts.netloc}{'/.../' if folders.strip('/') else '/'}{name}"


class MervVideoMediaIO(MediaIO[MediaWithBytes]):
    """A video as its encoded bytes, checked to decode before the request is queued: the frames merv-full's
    processor samples (`PROBED_FRAMES`) are decoded once here, so a video that fails is reported by its URL.

    The media vLLM carries is the byte string itself (a uint8 array over it), so vLLM's processor cache keys on the
    exact bytes and `MervMultiModalProcessor` hands them to `MervVideoProcessor`.
    """

    def load_bytes(self, data: bytes) -> MediaWithBytes:
        with open_video(data, "video_url") as reader:
            metadata = reader.metadata
            reader.get_frames(sample_frame_indices(metadata.total_num_frames, metadata.fps, PROBED_FRAMES))
        return MediaWithBytes((np.frombuffer(data, dtype=np.uint8), {}), data)

    def load_base64(self, media_type: str, data: str) -> MediaWithBytes:
        return self.load_bytes(pybase64.b64decode(data, validate=True))

    def load_file(self, filepath: Path) -> MediaWithBytes:
        if not filepath.is_file():
            raise FileNotFoundError("no such file")
        return self.load_bytes(filepath.read_bytes())


class MervMediaConnector(MediaConnector):
    """vLLM's media connector, except for videos: they are fetched as `MervVideoMediaIO`, and one that cannot be
    fetched (missing file, unreachable host, HTTP error) or decoded is a 400 error naming its URL."""

    def fetch_video(self, video_url: str, **kwargs: Any) -> MediaWithBytes:
        try:
            return self.load_from_url(video_url, MervVideoMediaIO(), fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT)
        except Exception as err:
            raise _video_url_error(video_url, err) from err

    async def fetch_video_async(self, video_url: str, **kwargs: Any) -> MediaWithBytes:
        try:
            return await self.load_from_url_async(
                video_url, MervVideoMediaIO(), fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT
            )
        except Exception as err:
            raise _video_url_error(video_url, err) from err


FETCH_ERRORS = (OSError, ValueError, RuntimeError, aiohttp.ClientError, requests.RequestException, TimeoutError)
"""What reading a video URL raises for the client's input: missing or unreadable files (`OSError`), undecodable
media (`VideoDecodingError` is a `ValueError`), a file outside `--allowed-local-media-path` (`RuntimeError` /
`ValueError`), unreachable hosts and HTTP errors."""


def _video_url_error(url: str, err: Exception) -> Exception:
    if not isinstance(err, FETCH_ERRORS) or isinstance(err, VLLMValidationError):
        return err
    reason = str(err).strip() or type(err).__name__
    return VLLMValidationError(f"cannot read video_url {_shown_url(url)}: {reason}", parameter="video_url")
