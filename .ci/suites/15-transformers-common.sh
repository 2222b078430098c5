#!/usr/bin/env bash
# transformers' own common tests on MERV (tests/transformers_common, marker `transformers_common`), taken from the source
# distribution of exactly the transformers release installed in .venv, which 10-newest.sh builds (or in the venv that
# $VENV names: .ci/check-newest.sh runs them on the newest releases).
set -euo pipefail
venv=${VENV:-.venv}
"${venv}/bin/pip" install "parameterized==0.9.0"  # imported by transformers' common-test modules
version=$("${venv}/bin/python" -c "import transformers; print(transformers.__version__)")
sdist=$(mktemp -d)
trap 'rm -rf "${sdist}"' EXIT
"${venv}/bin/pip" download --no-binary :all: --no-deps "transformers==${version}" -d "${sdist}"
tar -xzf "${sdist}/transformers-${version}.tar.gz" -C "${sdist}"
MERV_TRANSFORMERS_TESTS="${sdist}/transformers-${version}/tests" HF_HUB_OFFLINE=1 \
    "${venv}/bin/python" -m pytest -q -m transformers_common tests/transformers_common
