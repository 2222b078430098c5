"""`merv demo`'s logic without Gradio: requests, views, the callbacks on the shipped model, the server client's
failures, and the command without Gradio installed. The page itself is tested in a browser (`test_demo_browser.py`,
marker `browser`, CI suite 60-demo.sh)."""

import re
import shutil
import subprocess
import sys

import pytest
from transformers_merv import default_model_path
from transformers_merv.demo.backends import SERVER_WEIGHTS_NOTE, LocalBackend, ServerBackend
from transformers_merv.demo.callbacks import ANSWERS, CHAT, ERROR, FUSION, TIMELINE, DemoCallbacks, DemoSession
from transformers_merv.demo.openai_client import api_base
from transformers_merv.demo.sources import DemoError, video_request
from transformers_merv.demo.views import fusion_chart_html, timeline_html
from transformers_merv.inference.windows import WindowAnswer, answer_windows

from conftest import EXAMPLE_QUESTION, EXAMPLE_VIDEO, MEDIA, free_port, serving_folder


CORRUPTED = MEDIA / "corrupted.mp4"


@pytest.fixture(scope="module")
def callbacks() -> DemoCallbacks:
    return DemoCallbacks(LocalBackend(str(default_model_path()), device="cpu"))


def final(updates) -> dict:
    """Every update of a callback merged in order: what the page shows at the end."""
    page = {}
    for update in updates:
        page.update(update)
    return page


def texts(html: str, css_class: str) -> list[str]:
    return re.findall(rf'class="{css_class}">([^<]*)<', html)


# --- requests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upload, url, start, end, message",
    [
        (None, "", None, None, "upload a video or paste its URL first"),
        (str(EXAMPLE_VIDEO), "https://example.com/a.mp4", None, None, "either an uploaded video or a URL"),
        (None, "ftp://example.com/a.mp4", None, None, "only http and https URLs are read, not ftp://"),
        (None, "example.mp4", None, None, "is not a URL"),
        ("/no/such/upload.mp4", None, None, None, "upload.mp4 is no longer there"),
        (str(EXAMPLE_VIDEO), None, -1.0, None, "the clip start must be >= 0 seconds, got -1"),
        (str(EXAMPLE_VIDEO), None, 2.0, 1.0, r"the clip end \(1 s\) must come after its start \(2 s\)"),
    ],
)
def test_bad_requests_are_one_message(upload, url, start, end, message):
    with pytest.raises(DemoError, match=message):
        video_request(upload, url, start, end)


def test_a_zero_clip_start_or_end_is_unset_and_others_reach_the_sampling():
    assert video_request(str(EXAMPLE_VIDEO), None, 0, 0).sampling() == {}
    request = video_request(None, " https://example.com/a.mp4 ", 0.5, 1.5)
    assert (request.source, request.sampling()) == (
        "https://example.com/a.mp4",
        {"clip_start_sec": 0.5, "clip_end_sec": 1.5},
    )


# --- views ------------------------------------------------------------------------------------------------------


def test_the_chart_has_a_bar_per_encoder_as_long_as_its_weight_and_escapes_names():
    html = fusion_chart_html({"dinov2": 0.75, "<b>x</b>": 0.25}, "Fusion")
    assert texts(html, "merv-encoder") == ["dinov2", "&lt;b&gt;x&lt;/b&gt;"]
    assert re.findall(r"width: ([\d.]+)%", html) == ["75.0", "25.0"]
    assert texts(html, "merv-weight") == ["0.750", "0.250"]


# --- callbacks on the shipped model -----------------------------------------------------------------------------


def test_ask_answers_every_question_and_shows_the_four_encoders_weights(callbacks):
    page = final(callbacks.ask(str(EXAMPLE_VIDEO), None, 0, 0, f"{EXAMPLE_QUESTION}\n\n  What shape is shown? "))
    assert page[ERROR] == ""
    assert texts(page[ANSWERS], "merv-question") == [EXAMPLE_QUESTION, "What shape is shown?"]
    assert texts(page[ANSWERS], "merv-answer")[0] == "red"
    backend = callbacks.backend
    weights = backend.fusion_weights(backend.prepare(video_request(str(EXAMPLE_VIDEO), None)))
    assert list(weights) == list(backend.model.config.vision_encoders) == texts(page[FUSION], "merv-encoder")
    assert texts(page[FUSION], "merv-weight") == [f"{weight:.3f}" for weight in weights.values()]


def test_answers_stream_in_growing_and_end_with_the_exact_answer(callbacks):
    answers = [
        update[ANSWERS]
        for update in callbacks.ask(str(EXAMPLE_VIDEO), None, 0, 0, EXAMPLE_QUESTION)
        if ANSWERS in update
    ]
    shown = [texts(html, "merv-answer") for html in answers]
    assert shown[0] == [] and shown[-1] == ["red"]
    assert all(later[0].startswith(earlier[0]) for earlier, later in zip(shown[1:], shown[2:]))


def test_a_clip_window_is_sampled_and_one_past_the_video_is_an_error(callbacks):
    inside = final(callbacks.ask(str(EXAMPLE_VIDEO), None, 0, 0.5, EXAMPLE_QUESTION))
    whole = final(callbacks.ask(str(EXAMPLE_VIDEO), None, 0, 0, EXAMPLE_QUESTION))
    assert inside[ERROR] == "" and inside[FUSION] != whole[FUSION]  # other frames, other weights
    outside = final(callbacks.ask(str(EXAMPLE_VIDEO), None, 500, 600, EXAMPLE_QUESTION))
    assert "example.mp4" in outside[ERROR] and ANSWERS not in outside


@pytest.mark.parametrize("name", ["corrupted.mp4", "video.mp4"])
def test_an_unreadable_upload_is_one_message_naming_it(callbacks, tmp_path, name):
    upload = tmp_path / name
    shutil.copy(CORRUPTED, upload) if name == "corrupted.mp4" else upload.write_bytes(b"not a video")
    page = final(callbacks.ask(str(upload), None, 0, 0, EXAMPLE_QUESTION))
    assert texts(page[ERROR], "merv-error alert") == [] and name in page[ERROR]
    assert page[ERROR].count("<div") == 1 and "Traceback" not in page[ERROR] and FUSION not in page


def test_a_video_url_is_fetched(callbacks):
    with serving_folder(EXAMPLE_VIDEO.parent) as base:
        page = final(callbacks.ask(None, f"{base}/{EXAMPLE_VIDEO.name}", 0, 0, EXAMPLE_QUESTION))
        missing = final(callbacks.ask(None, f"{base}/missing.mp4", 0, 0, EXAMPLE_QUESTION))
    assert texts(page[ANSWERS], "merv-answer") == ["red"]
    assert "missing.mp4" in missing[ERROR] and "404" in missing[ERROR]


def test_chat_keeps_the_conversation_and_restarts_it_for_another_video(callbacks, tmp_path):
    session = DemoSession()
    first = final(callbacks.chat(session, str(EXAMPLE_VIDEO), None, 0, 0, EXAMPLE_QUESTION, []))
    assert first[CHAT] == [{"role": "user", "content": EXAMPLE_QUESTION}, {"role": "assistant", "content": "red"}]
    second = final(callbacks.chat(session, str(EXAMPLE_VIDEO), None, 0, 0, "And now?", first[CHAT]))
    assert second[CHAT][:2] == first[CHAT] and len(second[CHAT]) == 4 and session.turns == 2
    assert FUSION not in second  # the same video: not read again
    shutil.copy(EXAMPLE_VIDEO, tmp_path / "copy.mp4")
    other = final(callbacks.chat(session, str(tmp_path / "copy.mp4"), None, 0, 0, EXAMPLE_QUESTION, second[CHAT]))
    assert len(other[CHAT]) == 2 and session.turns == 1 and FUSION in other


def test_an_empty_question_is_one_message(callbacks):
    assert "type a question" in final(callbacks.ask(str(EXAMPLE_VIDEO), None, 0, 0, " \n "))[ERROR]
    assert "type a question" in final(callbacks.chat(DemoSession(), str(EXAMPLE_VIDEO), None, 0, 0, "", []))[ERROR]


def test_the_timeline_shows_each_window_as_answered_with_the_windows_api_s_answers_and_weights(callbacks):
    backend = callbacks.backend
    updates = [u[TIMELINE] for u in callbacks.timeline(str(EXAMPLE_VIDEO), None, EXAMPLE_QUESTION, 1) if TIMELINE in u]
    expected = answer_windows(
        backend.model, backend.processor, EXAMPLE_VIDEO, EXAMPLE_QUESTION, 1.0, **backend.generation
    )
    assert [html.count('class="merv-window"') for html in updates] == list(range(len(expected) + 1))
    assert updates[-1] == timeline_html(expected) and len(expected) == 4  # the 4-second example, 1-second windows
    assert texts(updates[-1], "merv-span") == ["0.0–1.0 s", "1.0–2.0 s", "2.0–3.0 s", "3.0–4.0 s"]
    assert [len(re.findall(r'class="merv-segment"', row)) for row in updates[-1].split("<tr")[2:]] == [4] * 4


@pytest.mark.parametrize("seconds", [0, -1])
def test_a_bad_window_length_is_one_message(callbacks, seconds):
    page = final(callbacks.timeline(str(EXAMPLE_VIDEO), None, EXAMPLE_QUESTION, seconds))
    assert "window" in page[ERROR] and page[TIMELINE].count('class="merv-window"') == 0


def test_windows_without_fusion_weights_show_a_dash():
    html = timeline_html([WindowAnswer(0.0, 2.5, "a <b>", None)])
    assert texts(html, "merv-answer") == ["a &lt;b&gt;"] and "merv-legend" not in html and "<td>–</td>" in html


# --- the server backend -----------------------------------------------------------------------------------------


def test_a_server_that_is_down_is_one_message_naming_it():
    port = free_port()
    with pytest.raises(DemoError, match=rf"cannot reach the server at http://127.0.0.1:{port} .*merv serve"):
        ServerBackend(f"http://127.0.0.1:{port}/v1/")


def test_server_addresses_are_http_urls_without_the_api_prefix():
    assert api_base(" http://host:8000/v1/ ") == "http://host:8000"
    with pytest.raises(DemoError, match="must be an http"):
        api_base("host:8000")


def test_through_a_server_there_are_no_weights_and_no_clip_window():
    backend = ServerBackend.__new__(ServerBackend)  # no server needed for what it refuses before any request
    callbacks = DemoCallbacks(backend)
    assert SERVER_WEIGHTS_NOTE.split(":")[0] in callbacks.fusion_view("data:video/mp4;base64,")
    page = final(callbacks.ask(str(EXAMPLE_VIDEO), None, 1, 2, EXAMPLE_QUESTION))
    assert "clip windows and timelines need the Python model" in page[ERROR]
    page = final(callbacks.timeline(str(EXAMPLE_VIDEO), None, EXAMPLE_QUESTION, 1))
    assert "clip windows and timelines need the Python model" in page[ERROR]
    page = final(callbacks.ask(str(CORRUPTED), None, 0, 0, EXAMPLE_QUESTION))
    assert "corrupted.mp4" in page[ERROR] and "corrupt" in page[ERROR]


# --- the command ------------------------------------------------------------------------------------------------


def _merv(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_merv_demo_without_gradio_is_one_line_naming_the_extra():
    result = _merv(
        "import sys; sys.modules['gradio'] = None\nfrom transformers_merv.cli import main\nsys.exit(main(['demo']))"
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == "error: merv demo needs Gradio: pip install 'transformers-merv[demo]'"


def test_merv_help_and_the_other_commands_do_not_import_gradio():
    result = _merv(
        "import sys, contextlib, io\n"
        "from transformers_merv.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(['--help'])\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(['demo', '--help'])\n"
        "print('gradio' in sys.modules)"
    )
    assert result.stdout.strip() == "False", result.stderr


def test_merv_demo_refuses_model_flags_with_a_server():
    result = _merv(
        "import sys\nfrom transformers_merv.cli import main\n"
        "sys.exit(main(['demo', '--server', 'http://127.0.0.1:9', '--model', 'x']))"
    )
    assert result.returncode == 1
    assert "--server answers with the server's model" in result.stderr and "Traceback" not in result.stderr
