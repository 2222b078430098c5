"""Score of the last mutation run, per module, over the targeted mutants only (`targets.py`), and its survivors.
Reads mutmut's result files in `mutants/`: `python tests/mutation/report.py [--diffs]`. With `--remaining`, prints
instead the `mutmut run` globs of the targeted functions that still have mutants not run (to resume a run)."""

import json
import subprocess
import sys
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

from targets import TARGETS, module_of, mutant_globs

STATUS_BY_EXIT_CODE = {0: "survived", 1: "killed", 3: "killed", 5: "no tests", 33: "no tests", None: "not run"}
"""mutmut's exit-code meanings (`mutmut.stats.status_by_exit_code`); any other code is a timeout or crash."""
MUTANTS = Path("mutants")


def mutant_statuses() -> dict[str, str]:
    globs = mutant_globs(exact=True)
    statuses = {}
    for meta in MUTANTS.glob("src/**/*.py.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch(name, pattern) for pattern in globs):
                statuses[name] = STATUS_BY_EXIT_CODE.get(code, "timeout or crash")
    return statuses


def main(show_diffs: bool) -> None:
    statuses = mutant_statuses()
    print("| module | mutants | killed | survived | no tests | timeout or crash | not run | killed / run |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    totals = Counter()
    for module in TARGETS:
        counts = Counter(status for name, status in statuses.items() if module_of(name) == module)
        totals += counts
        print(_row(module, counts))
    print(_row("**all**", totals))
    for name, status in sorted(statuses.items()):
        if status in ("survived", "no tests"):
            print(f"\n{status}: {name}")
            if show_diffs:
                diff = subprocess.run(["mutmut", "show", name], capture_output=True, text=True).stdout
                print("\n".join(line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in "+++---"))


def _row(label: str, counts: Counter) -> str:
    run = counts["killed"] + counts["survived"] + counts["timeout or crash"]
    score = f"{100 * (counts['killed'] + counts['timeout or crash']) / run:.1f} %" if run else "-"
    columns = ("killed", "survived", "no tests", "timeout or crash", "not run")
    return f"| {label} | {sum(counts.values())} | " + " | ".join(str(counts[c]) for c in columns) + f" | {score} |"


def remaining_globs() -> list[str]:
    functions = {name.rsplit("__mutmut_", 1)[0] for name, status in mutant_statuses().items() if status == "not run"}
    return [f"{function}*" for function in sorted(functions)]


if __name__ == "__main__":
    if "--remaining" in sys.argv:
        print("\n".join(remaining_globs()))
    else:
        main(show_diffs="--diffs" in sys.argv)
