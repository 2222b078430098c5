#!/usr/bin/env bash
# The documentation site (mkdocs.yml, docs/): `mkdocs build --strict` in its own venv (.venv-docs), from the pinned
# `docs` extra of pyproject.toml alone (.ci/constraints/docs.txt: it and its dependencies, every package pinned). The
# API reference reads the source statically (mkdocstrings), so neither the package nor torch is installed. Broken links or anchors, pages missing from the navigation and API objects that do
# not resolve fail the build. The site goes to site/ (git-ignored).
set -euo pipefail
venv=.venv-docs
python3 -m venv "${venv}"
"${venv}/bin/pip" install --no-deps -r .ci/constraints/docs.txt  # the `docs` extra and its dependencies, pinned
# docs/default-model.md includes the model card from line 10 on: lines 1-9 must be exactly its YAML front matter.
card=src/transformers_merv/default_model/README.md
if [[ "$(sed -n 1p "${card}")" != "---" || "$(sed -n 9p "${card}")" != "---" ]] || sed -n 2,8p "${card}" | grep -qx -- "---"; then
    echo "error: ${card}: its YAML front matter is no longer lines 1-9; update docs/default-model.md and this check" >&2
    exit 1
fi
# Every name in transformers_merv.__all__ has its `::: transformers_merv.NAME` in docs/api/ (read without importing).
"${venv}/bin/python" - <<'PY'
import ast
import pathlib
import re
import sys

tree = ast.parse(pathlib.Path("src/transformers_merv/__init__.py").read_text())
exported = next(
    ast.literal_eval(node.value)
    for node in tree.body
    if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "__all__" for target in node.targets)
)
pages = "".join(page.read_text() for page in pathlib.Path("docs/api").glob("*.md"))
documented = set(re.findall(r"^::: transformers_merv\.(\w+)$", pages, re.MULTILINE))
missing = [name for name in exported if name not in documented]
if missing:
    sys.exit(f"error: transformers_merv.__all__ names without a page in docs/api/: {', '.join(missing)}")
PY
NO_MKDOCS_2_WARNING=1 "${venv}/bin/mkdocs" build --strict
echo "docs: site/ built with mkdocs build --strict"
