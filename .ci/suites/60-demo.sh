#!/usr/bin/env bash
# `merv demo` (tests/demo/, marker `browser` and the rest) in its own venv (.venv-demo) with the `demo` extra (Gradio)
# and Selenium, every package pinned (.ci/constraints/demo.txt) and installed as pinned, without resolving. The browser
# is headless Chromium from Debian's `chromium` and `chromium-driver` packages, installed here when missing (no browser
# download: Selenium drives /usr/bin/chromium through /usr/bin/chromedriver).
set -euo pipefail
if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
    sudo_if_needed=$([[ "$(id -u)" == 0 ]] || echo sudo)
    ${sudo_if_needed} apt-get update -qq
    ${sudo_if_needed} apt-get install -y -qq chromium chromium-driver
fi
venv=.venv-demo
python3 -m venv "${venv}"
"${venv}/bin/pip" install --no-deps -r .ci/constraints/demo.txt
"${venv}/bin/pip" install --no-deps -e .
"${venv}/bin/python" -m pytest -q -m "browser or not browser" tests/demo
