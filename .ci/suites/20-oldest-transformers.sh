#!/usr/bin/env bash
# The package with the oldest supported transformers and the lowest declared peft, accelerate, huggingface-hub and
# tokenizers (.ci/oldest-constraints.txt), whole suite.
set -euo pipefail
python3 -m venv .venv-old && .venv-old/bin/pip install torch==2.13.0
.venv-old/bin/pip install -c .ci/oldest-constraints.txt -e ".[test]"
.venv-old/bin/python -m pytest -q
