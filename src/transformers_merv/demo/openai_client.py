"""A running `merv serve` (vLLM's OpenAI-compatible API) as the demo uses it: the served model's name and streamed
chat completions, through the standard library's HTTP client. Every failure is a `DemoError` saying what happened."""

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .sources import DemoError


REQUEST_TIMEOUT_S = 300.0
"""Seconds the server may stay silent (connecting, decoding the video, between streamed tokens)."""
API_PREFIX = "/v1"
STREAM_DATA = "data:"
STREAM_END = "[DONE]"
ERROR_BODY_CHARS = 500
"""Longest part of a non-JSON error body quoted in a message."""


def api_base(url: str) -> str:
    """The server's address without a trailing `/` or `/v1`, checked to be http(s)."""
    base = url.strip().rstrip("/").removesuffix(API_PREFIX)
    if not base.lower().startswith(("http://", "https://")):
        raise DemoError(f"the server address must be an http(s):// URL, got {url!r}")
    return base


class OpenAIServer:
    """One OpenAI-compatible server; answers with the first model it serves."""

    def __init__(self, url: str, timeout: float = REQUEST_TIMEOUT_S):
        self.url, self.timeout = api_base(url), timeout
        self.model = self._served_model()

    def _served_model(self) -> str:
        with self._open(urllib.request.Request(f"{self.url}{API_PREFIX}/models")) as response:
            models = json.load(response).get("data") or []
        if not models:
            raise DemoError(f"the server at {self.url} serves no model")
        return models[0]["id"]

    def stream_chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> Iterator[str]:
        """The answer's text as it streams in, piece by piece (greedy unless `params` say otherwise)."""
        body = {"model": self.model, "messages": list(messages), "stream": True, "temperature": 0, **params}
        request = urllib.request.Request(
            f"{self.url}{API_PREFIX}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with self._open(request) as response:
            for line in response:
                piece = _stream_piece(line.decode("utf-8").strip())
                if piece is None:
                    return
                yield piece

    @contextmanager
    def _open(self, request: urllib.request.Request) -> Iterator[Any]:
        """The response to `request`, its failures as one `DemoError` each."""
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                yield response
        except urllib.error.HTTPError as err:
            raise DemoError(f"the server refused the request (HTTP {err.code}): {_error_message(err)}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DemoError(f"cannot reach the server at {self.url} ({reason}); is `merv serve` running?") from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DemoError(f"{self.url} did not answer as an OpenAI-compatible server ({err})") from None


def _stream_piece(line: str) -> str | None:
    """The text one server-sent line adds ("" for keep-alives and empty deltas); None at the end of the stream."""
    if not line.startswith(STREAM_DATA):
        return ""
    data = line.removeprefix(STREAM_DATA).strip()
    if data == STREAM_END:
        return None
    event = json.loads(data)
    if "error" in event:
        raise DemoError(f"the server failed while answering: {_message_of(event)}")
    choices = event.get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or ""


def _error_message(err: urllib.error.HTTPError) -> str:
    body = err.read().decode("utf-8", errors="replace")
    try:
        return _message_of(json.loads(body))
    except (json.JSONDecodeError, AttributeError):
        return body[:ERROR_BODY_CHARS] or err.reason


def _message_of(payload: Mapping[str, Any]) -> str:
    """The message of an OpenAI error body: `{"error": {"message": ...}}`, or vLLM's `{"message": ...}`."""
    error = payload.get("error", payload)
    return str(error.get("message", error) if isinstance(error, Mapping) else error)
