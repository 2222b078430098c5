#!/usr/bin/env bash
# The package with the newest supported transformers (what `pip install -e ".[test]"` resolves), whole suite.
set -euo pipefail
python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e ".[test]"
.venv/bin/python -m pytest -q
