"""README.md stays true: its set-up commands are the ones CI and users run, and its Python example answers the
shipped example video (what it prints is checked, as the README's comment states it)."""

import os
import re
import subprocess
import sys

from conftest import REPO

README = (REPO / "README.md").read_text()
SETUP_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e . && "
    '.venv/bin/merv ask examples/example.mp4 "What color is the circle?"',
    "bash .ci/run",
)
README_LIMIT_BYTES = 10 * 1024


def test_readme_keeps_the_two_setup_commands_and_its_size():
    for command in SETUP_COMMANDS:
        assert command in README
    assert len(README.encode()) <= README_LIMIT_BYTES  # the rest lives in docs/


def test_readme_links_reach_files_of_the_repository():
    targets = [link.split("#")[0] for link in re.findall(r"\]\(([^)]+)\)", README) if "://" not in link]
    assert targets and all((REPO / target).is_file() for target in targets)


def test_readme_python_example_answers_the_example_video():
    example = re.search(r"## In Python\n\n```python\n(.*?)```", README, re.S)[1]
    result = subprocess.run(
        [sys.executable, "-c", example],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "red"
