"""transformers' own common tests (the mixins every in-tree model passes), run on MERV.

They come from the source distribution of the installed transformers release, never from this repository: the CI
suite `.ci/suites/15-transformers-common.sh` downloads it and points `MERV_TRANSFORMERS_TESTS` at its `tests/`
folder. At collection time the four common-test modules are copied, with our stand-ins for the modules the sdist
lacks (`stand_ins/`), into a package `transformers_tests` in a temporary folder, which the tester files import.
Without the variable, this folder collects nothing (its tests are also deselected by default: marker
`transformers_common`)."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest


TESTS_VARIABLE = "MERV_TRANSFORMERS_TESTS"
COMMON_MODULES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_processing_common.py",
    "test_video_processing_common.py",
)
STAND_INS = Path(__file__).parent / "stand_ins"
PACKAGE = "transformers_tests"
TRANSFORMERS_MARKERS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "slow",
    "torch_compile_test",
)
"""Markers the common tests carry, which transformers registers in its own repository's conftest."""

collect_ignore = ["stand_ins"]


def assemble_common_tests(sdist_tests: Path) -> Path:
    """A temporary folder holding the package `transformers_tests` (transformers' common-test modules and our
    stand-ins, laid out as in transformers' repository) and the `utils/` folder that `test_processing_common` adds to
    `sys.path`. Returns the folder, removed when the interpreter exits."""
    missing = [name for name in COMMON_MODULES if not (sdist_tests / name).is_file()]
    if missing:
        raise pytest.UsageError(f"{TESTS_VARIABLE}={sdist_tests} lacks {missing}: point it at the sdist's `tests/`")
    root = Path(tempfile.mkdtemp(prefix="transformers-common-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    package = root / PACKAGE
    shutil.copytree(STAND_INS / "package", package)
    for name in COMMON_MODULES:
        shutil.copy(sdist_tests / name, package / name)
    shutil.copytree(STAND_INS / "repository_utils", root / "utils")
    return root


def pytest_configure(config: pytest.Config) -> None:
    for marker in TRANSFORMERS_MARKERS:
        config.addinivalue_line("markers", f"{marker}: transformers' marker, carried by its common tests")


if TESTS_VARIABLE in os.environ:
    sys.path.insert(0, str(assemble_common_tests(Path(os.environ[TESTS_VARIABLE]))))
else:
    collect_ignore_glob = ["test_*.py"]
