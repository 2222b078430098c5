"""`merv demo` in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`) driven by Selenium
against the command's own server on the shipped model. Marker `browser`, run by CI suite 60-demo.sh, which installs
them; the default run deselects it. The screenshot goes to `MERV_DEMO_SCREENSHOT` (the docs' `docs/images/demo.png`
is made so), else to the test's temporary folder."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers_merv.integrations.vllm.server import ServerProcess

from conftest import EXAMPLE_QUESTION, EXAMPLE_VIDEO, MEDIA, free_port


pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("MERV_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MERV_CHROMEDRIVER", "/usr/bin/chromedriver")
WINDOW = (1280, 1080)
START_SECONDS = 180
WAIT_SECONDS = 120
STOP_SECONDS = 30
ENCODERS = ["languagebind", "dinov2", "vivit", "siglip"]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory) -> Iterator[str]:
    """`merv demo` on the shipped model, listening on 127.0.0.1 on a free port; stopped afterwards."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    argv = [sys.executable, "-m", "transformers_merv.cli", "demo", "--host", "127.0.0.1", "--port", str(port)]
    server = ServerProcess(argv, {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}, f"http://127.0.0.1:{port}", log)
    try:
        _wait_for_page(server)
        yield server.url
    finally:
        server.stop(STOP_SECONDS)


def _wait_for_page(server: ServerProcess) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log_tail()
        try:
            with urllib.request.urlopen(server.url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"merv demo did not start within {START_SECONDS} s:\n{server.log_tail()}")


@pytest.fixture
def page(demo_url):
    """A fresh headless Chromium on the demo page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(demo_url)
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(condition)


def _upload(driver, video: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "#merv-video input[type=file]")))
    driver.find_element(By.CSS_SELECTOR, "#merv-video input[type=file]").send_keys(str(video.resolve()))
    _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "#merv-video video")))


def _texts(driver, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, selector)]


def test_an_uploaded_video_is_answered_with_its_fusion_weights_and_a_screenshot(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    _upload(page, EXAMPLE_VIDEO)
    page.find_element(By.CSS_SELECTOR, "#merv-questions textarea").send_keys(EXAMPLE_QUESTION)
    page.find_element(By.CSS_SELECTOR, "#merv-ask").click()
    _wait(page, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#merv-answers .merv-answer"), "red"))
    assert _texts(page, "#merv-answers .merv-answer") == ["red"]
    assert _texts(page, "#merv-fusion .merv-encoder") == ENCODERS
    assert len(_texts(page, "#merv-fusion .merv-bar")) == len(ENCODERS)
    screenshot = Path(os.environ.get("MERV_DEMO_SCREENSHOT", tmp_path / "demo.png"))
    assert page.save_screenshot(str(screenshot)) and screenshot.read_bytes().startswith(b"\x89PNG")


def test_a_chat_answers_in_the_page(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    _upload(page, EXAMPLE_VIDEO)
    page.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Chat']").click()
    page.find_element(By.CSS_SELECTOR, "#merv-message textarea").send_keys(EXAMPLE_QUESTION, Keys.ENTER)
    _wait(page, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#merv-chat"), "red"))
    assert EXAMPLE_QUESTION in page.find_element(By.CSS_SELECTOR, "#merv-chat").text


def test_a_corrupted_video_is_one_message_in_the_page(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    _upload(page, MEDIA / "corrupted.mp4")
    page.find_element(By.CSS_SELECTOR, "#merv-questions textarea").send_keys(EXAMPLE_QUESTION)
    page.find_element(By.CSS_SELECTOR, "#merv-ask").click()
    _wait(page, ec.presence_of_element_located((By.CSS_SELECTOR, "#merv-error .merv-error")))
    (message,) = _texts(page, "#merv-error .merv-error")
    assert "corrupted.mp4" in message and "corrupt or truncated" in message
    assert "Traceback" not in page.find_element(By.TAG_NAME, "body").text
    assert _texts(page, "#merv-answers .merv-answer") == []


def test_the_timeline_lists_each_window_with_its_answer_and_weights(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    _upload(page, EXAMPLE_VIDEO)
    page.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Timeline']").click()
    window = page.find_element(By.CSS_SELECTOR, "#merv-window-seconds input")
    window.clear()
    window.send_keys("2")
    page.find_element(By.CSS_SELECTOR, "#merv-run-timeline").click()
    _wait(page, lambda driver: len(_texts(driver, "#merv-timeline .merv-window")) == 2)
    assert _texts(page, "#merv-timeline .merv-span") == ["0.0–2.0 s", "2.0–4.0 s"]
    assert all(_texts(page, "#merv-timeline .merv-answer"))
    assert len(page.find_elements(By.CSS_SELECTOR, "#merv-timeline .merv-segment")) == 2 * len(ENCODERS)
    assert _texts(page, "#merv-timeline .merv-legend-item") == ENCODERS
