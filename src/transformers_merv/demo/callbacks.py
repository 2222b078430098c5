"""What the demo page's buttons do, without Gradio: each callback is a generator of page updates, dicts from an
output's name (`ANSWERS`, `FUSION`, `CHAT`, `ERROR`) to its new value, so that answers stream in as they grow. Every
failure ends the callback with one message in `ERROR`; the traceback of an unexpected one goes to the log only."""

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..utils.console import first_line
from ..inference.windows import WindowAnswer
from .backends import Backend, Chat, WeightsUnavailable
from .sources import DemoError, VideoRequest, video_request
from .views import answers_html, error_html, fusion_chart_html, note_html, timeline_html


logger = logging.getLogger(__name__)

ANSWERS, FUSION, CHAT, TIMELINE, ERROR, SESSION = "answers", "fusion", "chat", "timeline", "error", "session"
FUSION_TITLE = "Fusion weights: how much each encoder contributes to this video's visual tokens"
Update = dict[str, Any]
Message = dict[str, str]
"""A chat message as the page holds it: `{"role": "user" | "assistant", "content": text}`."""


@dataclass
class DemoSession:
    """One browser session's chat: the video it is about and the backend's conversation, `turns` questions long."""

    video: VideoRequest | None = None
    chat: Chat | None = None
    turns: int = 0


def question_lines(text: str | None) -> list[str]:
    """The questions typed one per line (blank lines dropped); a `DemoError` when there is none."""
    questions = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not questions:
        raise DemoError("type a question about the video")
    return questions


def reporting_errors(updates: Iterator[Update]) -> Iterator[Update]:
    """`updates`, with the error message cleared first and a failure turned into one message."""
    yield {ERROR: ""}
    try:
        yield from updates
    except DemoError as err:
        yield {ERROR: error_html(str(err))}
    except Exception as err:  # the page shows one line; the log keeps the traceback
        logger.exception("merv demo: a request failed")
        yield {ERROR: error_html(f"{type(err).__name__}: {first_line(err)}")}


class DemoCallbacks:
    """The page's actions on one backend."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def ask(
        self,
        upload: str | None,
        url: str | None,
        clip_start_sec: float | None,
        clip_end_sec: float | None,
        questions: str | None,
    ) -> Iterator[Update]:
        """Answer each question (one per line) on its own, streaming, after showing the video's fusion weights."""
        return reporting_errors(self._ask(upload, url, clip_start_sec, clip_end_sec, questions))

    def _ask(self, upload, url, clip_start_sec, clip_end_sec, questions) -> Iterator[Update]:
        questions = question_lines(questions)
        prepared = self.backend.prepare(video_request(upload, url, clip_start_sec, clip_end_sec))
        yield {FUSION: self.fusion_view(prepared), ANSWERS: answers_html([])}
        answered: list[tuple[str, str]] = []
        for question in questions:
            answer = ""
            for answer in self.backend.new_chat(prepared).stream(question):
                yield {ANSWERS: answers_html([*answered, (question, answer)])}
            answered.append((question, answer))

    def chat(
        self,
        session: DemoSession,
        upload: str | None,
        url: str | None,
        clip_start_sec: float | None,
        clip_end_sec: float | None,
        message: str | None,
        history: list[Message],
    ) -> Iterator[Update]:
        """Answer `message` in the conversation about the video, streaming; another video (or window), or a
        history that is not the session's (cleared, or cut by a failure), starts a new conversation."""
        return reporting_errors(self._chat(session, upload, url, clip_start_sec, clip_end_sec, message, history))

    def _chat(self, session, upload, url, clip_start_sec, clip_end_sec, message, history) -> Iterator[Update]:
        question = " ".join(question_lines(message))
        video = video_request(upload, url, clip_start_sec, clip_end_sec)
        if session.chat is None or session.video != video or 2 * session.turns != len(history):
            prepared = self.backend.prepare(video)
            session.video, session.chat, session.turns, history = video, self.backend.new_chat(prepared), 0, []
            yield {FUSION: self.fusion_view(prepared), SESSION: session}
        history = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        for answer in session.chat.stream(question):
            history[-1] = {"role": "assistant", "content": answer}
            yield {CHAT: history}
        session.turns += 1
        yield {CHAT: history, SESSION: session}

    def timeline(
        self, upload: str | None, url: str | None, question: str | None, window_seconds: float | None
    ) -> Iterator[Update]:
        """Answer `question` for each consecutive `window_seconds` window of the whole video, a timeline row
        appearing as each window is answered."""
        return reporting_errors(self._timeline(upload, url, question, window_seconds))

    def _timeline(self, upload, url, question, window_seconds) -> Iterator[Update]:
        question = " ".join(question_lines(question))
        windows: list[WindowAnswer] = []
        yield {TIMELINE: timeline_html(windows)}
        for window in self.backend.windows(video_request(upload, url), question, float(window_seconds or 0)):
            windows.append(window)
            yield {TIMELINE: timeline_html(windows)}

    def fusion_view(self, prepared: Any) -> str:
        """The fusion-weight chart of a prepared video, or why there is none."""
        try:
            return fusion_chart_html(self.backend.fusion_weights(prepared), FUSION_TITLE)
        except WeightsUnavailable as err:
            return note_html(str(err))
