#!/usr/bin/env bash
# lmms-eval 0.7 in its own venv (.venv-lmms): the `merv` model plugin and the package's task files, run through
# lmms-eval's own command (tests marked lmms_eval; the default run deselects them).
set -euo pipefail
venv=.venv-lmms
python3 -m venv "${venv}"
"${venv}/bin/pip" install torch==2.13.0
echo "torch==2.13.0" > "${venv}/constraints.txt"
# lmms-eval's requirements without torchvision and timm: the index's torchvision is built for CUDA torch and fails to
# import next to the CPU torch ("operator torchvision::nms does not exist"); neither is needed by the merv plugin.
"${venv}/bin/pip" install --no-deps "lmms-eval>=0.7,<0.8"
"${venv}/bin/python" - > "${venv}/lmms-eval-requirements.txt" <<'PY'
import re
from importlib.metadata import requires

for requirement in requires("lmms_eval"):
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group().lower()
    if ";" not in requirement and name not in ("torchvision", "timm"):  # extras carry a marker
        print(requirement)
PY
# filelock < 4: lmms-eval 0.7.3's evaluator imports filelock._api, which filelock 4 removed.
"${venv}/bin/pip" install -c "${venv}/constraints.txt" -r "${venv}/lmms-eval-requirements.txt" "filelock<4" -e ".[test]"
"${venv}/bin/python" -m pytest -q -m lmms_eval tests/test_lmms_eval.py
