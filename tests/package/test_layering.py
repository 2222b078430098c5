"""The package's layers (docs/design.md): imports run downwards only. Read statically from every module's imports,
so a violation fails here before anyone notices it at run time."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = "transformers_merv"
SOURCE = REPO / "src" / PACKAGE
MODEL_FILES = {
    "compat",
    "configuration_merv",
    "media_limits",
    "modeling_languagebind",
    "modeling_merv",
    "processing_merv",
    "testing_utils",
    "video_io",
    "video_processing_merv",
}
"""What transformers would hold as `models/merv/`: they import transformers, torch and each other only."""
LAYERS = {
    "utils": set(),
    "synthetic": set(),
    "inference": {"utils"},
    "conversion": {"inference", "utils"},
    "training": {"inference", "utils"},
    "evaluation": {"inference", "utils"},
    "encoding": {"inference", "training", "evaluation", "utils"},
    "integrations": {"inference", "evaluation", "utils"},
    "demo": {"inference", "evaluation", "utils"},
    "cli": {"inference", "evaluation", "encoding", "conversion", "integrations", "demo", "utils"},
}
"""Each sub-package and the sub-packages it may import besides the model files (and itself)."""


def _modules() -> dict[str, Path]:
    """Dotted name (without the package) -> file, for every module of the package."""
    names = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imported(module: str, path: Path) -> set[str]:
    """The package's modules that `module` imports (relative imports resolved), without the package prefix."""
    package_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package_parts[: len(package_parts) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            target = target.removeprefix(f"{PACKAGE}.") if node.level == 0 else target
            if node.level or (node.module or "").startswith(PACKAGE):
                found.add(target)
                found.update(f"{target}.{alias.name}".lstrip(".") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix(f"{PACKAGE}.") for a in node.names if a.name.startswith(f"{PACKAGE}."))
    return {name for name in found if name.split(".")[0] in MODEL_FILES | set(LAYERS) or name == ""}


def _layer(name: str) -> str:
    return name.split(".")[0]


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(name for name in MODULES if _layer(name) in MODEL_FILES))
def test_model_files_import_no_layer(module):
    layers = _layers_of(module, MODULES[module]) & set(LAYERS)
    assert not layers, f"{module} imports {sorted(layers)}"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if _layer(name) in LAYERS))
def test_layers_import_only_downwards(module):
    allowed = LAYERS[_layer(module)] | {_layer(module)} | MODEL_FILES
    imported = _layers_of(module, MODULES[module])
    assert imported <= allowed, f"{module} imports {sorted(imported - allowed)}"


def test_the_top_level_holds_the_model_files_and_the_layers_only():
    top_level = {_layer(name) for name in MODULES if name}
    assert top_level <= MODEL_FILES | set(LAYERS), sorted(top_level - MODEL_FILES - set(LAYERS))


def test_nothing_imports_the_cli():
    importers = [name for name, path in MODULES.items() if _layer(name) != "cli" and "cli" in _layers_of(name, path)]
    assert not importers, importers


def test_the_rules_see_relative_and_absolute_imports(tmp_path):
    """The checks above pass only if this reader finds imports in all their forms."""
    module = tmp_path / "ask.py"
    imports = ("from ..inference.loading import load_model", "from .. import evaluation", "import transformers_merv.training.run")
    module.write_text("\n".join(imports))
    assert _layers_of("cli.ask", module) == {"inference", "evaluation", "training"}


def _layers_of(module: str, path: Path) -> set[str]:
    return {_layer(name) for name in _imported(module, path) if name}


@pytest.mark.parametrize(
    "entry_point, engine",
    [("transformers_merv.integrations.vllm", "vllm"), ("transformers_merv.integrations.lmms_eval", "lmms_eval")],
)
def test_plugin_entry_points_load_without_their_engine_or_model_class(entry_point, engine):
    """Engines load every installed plugin's entry point; ours import neither the engine nor the engine-side model
    classes until the engine asks for them (vLLM's `"module:Class"` registration, lmms-eval's class paths)."""
    script = f"""
import sys
sys.modules[{engine!r}] = None  # the engine is not importable: a top-level import of it would fail here
import {entry_point} as plugin
loaded = sorted(name for name in sys.modules if name.startswith("{entry_point}."))
print(",".join(loaded))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"{entry_point} loaded {result.stdout.strip()}"
