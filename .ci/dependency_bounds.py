"""The package's direct dependencies: the ranges pyproject.toml declares, against the installed releases and the
releases CI pins (.ci/constraints/*.txt).

`python .ci/dependency_bounds.py` prints each dependency's range and installed release (what .ci/check-newest.sh
shows); tests/package/test_supported_versions.py checks that the declared ranges are exactly the tested ones.
"""

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


REPOSITORY = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPOSITORY / ".ci" / "constraints"


def declared_requirements(extra: str | None = None) -> dict[str, Requirement]:
    """The package's runtime dependencies, or those of `extra`, by canonical name."""
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return {canonicalize_name(requirement.name): requirement for requirement in map(Requirement, lines)}


def pinned_versions(constraints_file: Path) -> dict[str, Version]:
    """The `name==version` pins of a constraints file, by canonical name."""
    pins = {}
    for line in constraints_file.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, pinned = line.split("==")
            pins[canonicalize_name(name)] = Version(pinned)
    return pins


def bound(requirement: Requirement, operator: str) -> Version | None:
    """The version of `requirement`'s clause with `operator` (">=" for the floor, "<" for the upper bound)."""
    return next((Version(spec.version) for spec in requirement.specifier if spec.operator == operator), None)


def main() -> None:
    for name, requirement in sorted(declared_requirements().items()):
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            print(f"{name:18} {str(requirement.specifier):14} not installed")
            continue
        verdict = "in range" if requirement.specifier.contains(installed) else "NEWER THAN OUR UPPER BOUND"
        print(f"{name:18} {str(requirement.specifier):14} {str(installed):12} {verdict}")


if __name__ == "__main__":
    main()
