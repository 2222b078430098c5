#!/usr/bin/env bash
# Newest-release check, run by hand (not by CI): a fresh venv with the newest releases on the package index of our
# direct dependencies (transformers, peft, accelerate, huggingface-hub, tokenizers, PyAV, ...), ignoring the upper
# bounds in pyproject.toml; runs the whole suite and prints what fails.
#
# Raising the supported range (README "Supported versions"): run this; fix what fails; copy the candidate pins it writes
# into .ci/constraints/newest.txt and move pyproject.toml's upper bounds just past them; let CI test it.
set -uo pipefail
cd "$(dirname "$0")/.."
venv=.venv-check-newest
direct=(transformers peft accelerate huggingface-hub tokenizers av safetensors numpy pillow tqdm)

rm -rf "${venv}"
python3 -m venv "${venv}"
"${venv}/bin/pip" install -q torch==2.13.0
"${venv}/bin/pip" install -q --no-deps -e .  # our own bounds are what this check ignores
"${venv}/bin/pip" install -q --upgrade "${direct[@]}" pytest pytest-timeout

echo "=== newest releases against pyproject.toml's bounds"
"${venv}/bin/python" .ci/dependency_bounds.py
{
    echo "torch==2.13.0"
    "${venv}/bin/pip" freeze --exclude-editable | grep -v "^torch=="
} > "${venv}/newest-candidate.txt"
echo "candidate pins for .ci/constraints/newest.txt: ${venv}/newest-candidate.txt"

echo "=== suite"
HF_HUB_OFFLINE=1 "${venv}/bin/python" -m pytest -q -p no:cacheprovider -rfE > "${venv}/pytest.log" 2>&1
status=$?
grep -E "^(FAILED|ERROR) " "${venv}/pytest.log" || true
tail -n 1 "${venv}/pytest.log"
echo "full log: ${venv}/pytest.log"
exit "${status}"
