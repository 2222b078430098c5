"""pytest plugin for mutation runs (`-p mutation_test_selection`, set in pyproject's [tool.mutmut]): a mutant runs only
the test files mapped to its source module in `targets.py`, fastest first (durations from mutmut's stats run), so
that a killed mutant stops early. Outside a mutant run (stats collection, clean run) every test runs."""

import json
import os
from pathlib import Path

from targets import TARGETS, module_of

MUTMUT_STATS = Path("mutmut-stats.json")
"""Written by mutmut in its working copy (`mutants/`), where pytest runs."""


def pytest_configure(config) -> None:
    """With `MUTATION_WHOLE_FILES=1`, a mutant runs every test of its mapped files, not only those mutmut recorded as
    executing the mutated function: mutmut records a module-scoped fixture's constructor calls only for the test
    that first built it, so constructor mutants would otherwise miss the tests that use the fixture later."""
    module = module_of(os.environ.get("MUTANT_UNDER_TEST", ""))
    if module is not None and os.environ.get("MUTATION_WHOLE_FILES"):
        config.args[:] = list(TARGETS[module].tests)


def pytest_collection_modifyitems(config, items) -> None:
    module = module_of(os.environ.get("MUTANT_UNDER_TEST", ""))
    if module is None:
        return
    allowed = TARGETS[module].tests
    kept = [item for item in items if item.nodeid.split("::")[0] in allowed]
    deselected = [item for item in items if item.nodeid.split("::")[0] not in allowed]
    if MUTMUT_STATS.is_file():
        duration = json.loads(MUTMUT_STATS.read_text())["duration_by_test"]
        kept.sort(key=lambda item: duration.get(item.nodeid, 0.0))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept
