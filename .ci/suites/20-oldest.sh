#!/usr/bin/env bash
# The package with the oldest supported releases: transformers 5.18.0, torch 2.13.0 (the README's) and every other
# dependency at the floor pyproject.toml declares (.ci/constraints/oldest.txt: every package pinned), whole suite.
set -euo pipefail
python3 -m venv .venv-old && .venv-old/bin/pip install -c .ci/constraints/oldest.txt torch
.venv-old/bin/pip install -c .ci/constraints/oldest.txt -e ".[test]"
.venv-old/bin/python -m pytest -q
