#!/usr/bin/env bash
# Newest-release check, run by hand (not by CI): a fresh venv with the newest releases on the package index of our
# direct dependencies (transformers, peft, accelerate, huggingface-hub, tokenizers, PyAV, ...), ignoring the upper
# bounds in pyproject.toml; runs the whole suite, then transformers' own common tests of the newest release on MERV
# (.ci/suites/15-transformers-common.sh), and prints what fails.
#
# Raising the supported range (README "Supported versions"): run this; fix what fails; copy the candidate pins it writes
# into .ci/constraints/newest.txt and move pyproject.toml's upper bounds just past them; let CI test it.
set -uo pipefail
cd "$(dirname "$0")/.."
venv=.venv-check-newest
direct=(transformers peft accelerate huggingface-hub tokenizers av safetensors numpy pillow tqdm filelock)

rm -rf "${venv}"
python3 -m venv "${venv}"
"${venv}/bin/pip" install -q -c .ci/constraints/newest.txt torch  # the newest torch the newest suite tests
"${venv}/bin/pip" install -q --no-deps -e .  # our own bounds are what this check ignores
"${venv}/bin/pip" install -q --upgrade "${direct[@]}" pytest pytest-timeout

echo "=== newest releases against pyproject.toml's bounds"
"${venv}/bin/python" .ci/dependency_bounds.py
"${venv}/bin/pip" freeze --exclude-editable > "${venv}/newest-candidate.txt"
echo "candidate pins for .ci/constraints/newest.txt: ${venv}/newest-candidate.txt"

echo "=== suite"
HF_HUB_OFFLINE=1 "${venv}/bin/python" -m pytest -q -p no:cacheprovider -rfE > "${venv}/pytest.log" 2>&1
status=$?
grep -E "^(FAILED|ERROR) " "${venv}/pytest.log" || true
tail -n 1 "${venv}/pytest.log"
echo "full log: ${venv}/pytest.log"

echo "=== transformers' common tests"
VENV="${venv}" bash .ci/suites/15-transformers-common.sh > "${venv}/common.log" 2>&1
common_status=$?
grep -E "^(FAILED|ERROR) " "${venv}/common.log" || true
tail -n 1 "${venv}/common.log"
echo "full log: ${venv}/common.log"
exit $((status || common_status))
