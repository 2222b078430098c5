"""The Gradio page of `merv demo`, built on `callbacks` (the only module of the package that imports Gradio)."""

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gradio as gr

from .backends import Backend
from .callbacks import ANSWERS, CHAT, ERROR, FUSION, SESSION, TIMELINE, DemoCallbacks, DemoSession, Update


TITLE = "MERV demo"
MAX_UPLOAD_SIZE = "1gb"
"""Largest upload Gradio accepts (decoding is bounded by the media limits, `transformers_merv.media_limits`)."""
QUESTION_LINES = 4
VIDEO_HEIGHT = 320
DEFAULT_WINDOW_SECONDS = 1.0
DEFAULT_TIMELINE_QUESTION = "What color is the circle?"
"""The timeline's question until one is typed (one the shipped model answers)."""
CLIP_END_LABEL = "Clip end (s; 0: the end of the video)"
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]
"""Local fonts only: the default theme's web fonts would be fetched from the internet."""
CSS = """
.merv-error { color: #b3261e; border: 1px solid #b3261e; border-radius: 6px; padding: 8px 12px; }
.merv-note { color: #555; font-style: italic; }
.merv-answers .merv-question { font-weight: 600; }
.merv-answers .merv-question::after { content: " →"; }
.merv-fusion figcaption { font-weight: 600; margin-bottom: 8px; }
.merv-bar-row { display: flex; align-items: center; gap: 8px; margin: 4px 0; }
.merv-encoder { width: 110px; font-family: monospace; }
.merv-bar-track { flex: 1; background: #eee; height: 20px; border-radius: 4px; overflow: hidden; }
.merv-bar { display: block; height: 100%; }
.merv-weight { width: 48px; text-align: right; font-family: monospace; }
.merv-timeline { width: 100%; border-collapse: collapse; }
.merv-timeline td, .merv-timeline th { padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; }
.merv-stacked-bar { display: flex; width: 240px; height: 16px; border-radius: 3px; overflow: hidden; }
.merv-segment { display: block; height: 100%; }
.merv-legend { display: flex; gap: 16px; margin-bottom: 8px; }
.merv-swatch { display: inline-block; width: 12px; height: 12px; margin-right: 4px; border-radius: 2px; }
"""
SERVER_WINDOWS_NOTE = (
    "Clip windows and the timeline need the Python model: through `--server`, the whole video is sampled."
)


def build_app(backend: Backend) -> gr.Blocks:
    """The page: video (upload or URL) and clip window, fusion weights, then questions or a chat."""
    callbacks = DemoCallbacks(backend)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}\nAnswers from {backend.description}.")
        session = gr.State(DemoSession())
        with gr.Row():
            with gr.Column():
                upload = gr.Video(label="Video", sources=["upload"], height=VIDEO_HEIGHT, elem_id="merv-video")
                url = gr.Textbox(label="…or its URL", placeholder="https://…", elem_id="merv-url")
                with gr.Row(visible=backend.supports_windows):
                    clip_start = gr.Number(label="Clip start (s)", value=0, minimum=0, elem_id="merv-clip-start")
                    clip_end = gr.Number(label=CLIP_END_LABEL, value=0, minimum=0, elem_id="merv-clip-end")
                if not backend.supports_windows:
                    gr.Markdown(SERVER_WINDOWS_NOTE)
                fusion = gr.HTML(elem_id="merv-fusion")
            with gr.Column():
                error = gr.HTML(elem_id="merv-error")
                with gr.Tab("Questions"):
                    questions = gr.Textbox(
                        label="Questions, one per line", lines=QUESTION_LINES, elem_id="merv-questions"
                    )
                    ask = gr.Button("Ask", variant="primary", elem_id="merv-ask")
                    answers = gr.HTML(elem_id="merv-answers")
                with gr.Tab("Chat"):
                    chatbot = gr.Chatbot(label="Chat", elem_id="merv-chat")
                    message = gr.Textbox(label="Message", placeholder="Ask, then Enter", elem_id="merv-message")
                with gr.Tab("Timeline", visible=backend.supports_windows):
                    gr.Markdown("The whole video, window by window: each window's answer and fusion weights.")
                    timeline_question = gr.Textbox(
                        label="Question", value=DEFAULT_TIMELINE_QUESTION, elem_id="merv-timeline-question"
                    )
                    window_seconds = gr.Number(
                        label="Window length (s)",
                        value=DEFAULT_WINDOW_SECONDS,
                        minimum=0,
                        elem_id="merv-window-seconds",
                    )
                    run_timeline = gr.Button("Answer each window", elem_id="merv-run-timeline")
                    timeline = gr.HTML(elem_id="merv-timeline")
        outputs = {ANSWERS: answers, FUSION: fusion, CHAT: chatbot, TIMELINE: timeline, ERROR: error, SESSION: session}
        video = [upload, url, clip_start, clip_end]
        ask.click(_handler(callbacks.ask, outputs), [*video, questions], list(outputs.values()))
        message.submit(
            _handler(callbacks.chat, outputs), [session, *video, message, chatbot], list(outputs.values())
        ).then(lambda: "", outputs=message)
        run_timeline.click(
            _handler(callbacks.timeline, outputs),
            [upload, url, timeline_question, window_seconds],
            list(outputs.values()),
        )
    return app


def _handler(callback: Callable[..., Iterator[Update]], outputs: Mapping[str, gr.components.Component]):
    """`callback` as a Gradio event handler: its updates by output name, as updates of those components."""

    def handle(*inputs: Any) -> Iterator[dict[gr.components.Component, Any]]:
        for update in callback(*inputs):
            yield {outputs[name]: value for name, value in update.items()}

    return handle


def launch(backend: Backend, host: str, port: int) -> None:
    """Serve the page on `host:port` until interrupted."""
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    build_app(backend).queue().launch(
        server_name=host, server_port=port, max_file_size=MAX_UPLOAD_SIZE, theme=theme, css=CSS, ssr_mode=False
    )
