#!/usr/bin/env bash
# Mutation testing of the numerical core with mutmut (on demand, not in CI). Configuration: [tool.mutmut] in
# pyproject.toml; targets and per-file tests: tests/mutation/targets.py. Score: tests/mutation/report.py.
#   bash tests/mutation/run.sh                                  # every target (2414 mutants; measured pace on 2 cores: 1690 in 60 minutes)
#   bash tests/mutation/run.sh transformers_merv.video_io ...   # only these modules' targets
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/tests/mutation${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mapfile -t globs < <(.venv/bin/python tests/mutation/targets.py "$@")
.venv/bin/mutmut run --max-children "${MUTATION_JOBS:-2}" "${globs[@]}"
