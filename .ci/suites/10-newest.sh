#!/usr/bin/env bash
# The package with the newest tested releases (.ci/constraints/newest.txt: every package pinned, torch 2.14.1
# included), whole suite.
set -euo pipefail
python3 -m venv .venv && .venv/bin/pip install -c .ci/constraints/newest.txt torch
.venv/bin/pip install -c .ci/constraints/newest.txt -e ".[test]"
.venv/bin/python -m pytest -q
