#!/usr/bin/env bash
# lmms-eval 0.7.3 in its own venv (.venv-lmms): the `merv` model plugin and the package's task files, run through
# lmms-eval's own command (tests marked lmms_eval; the default run deselects them). Every package is pinned
# (.ci/constraints/lmms-eval.txt) and installed as pinned, without resolving.
set -euo pipefail
venv=.venv-lmms
python3 -m venv "${venv}"
"${venv}/bin/pip" install --no-deps -r .ci/constraints/lmms-eval.txt
"${venv}/bin/pip" install --no-deps -e .
"${venv}/bin/python" -m pytest -q -m lmms_eval tests/integrations/test_lmms_eval.py
