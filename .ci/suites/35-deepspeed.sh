#!/usr/bin/env bash
# Multi-process training under DeepSpeed ZeRO-3 on the CPU (tests marked deepspeed in tests/training/test_distributed.py:
# examples/train.py under `accelerate launch` with examples/accelerate_deepspeed.yaml, 2 processes, gloo, against one
# process), in its own venv (.venv-deepspeed) with deepspeed 0.19.8 beside the package. Every package is pinned
# (.ci/constraints/deepspeed.txt) and installed as pinned, without resolving. DeepSpeed ships a source distribution
# whose build imports torch: torch, setuptools and wheel go in first, then the rest without build isolation.
set -euo pipefail
venv=.venv-deepspeed
constraints=.ci/constraints/deepspeed.txt
python3 -m venv "${venv}"
"${venv}/bin/pip" install --no-deps -c "${constraints}" torch setuptools wheel
"${venv}/bin/pip" install --no-deps --no-build-isolation -r "${constraints}"
"${venv}/bin/pip" install --no-deps -e .
"${venv}/bin/python" -m pytest -q -m deepspeed tests/training/test_distributed.py
