"""The dependency ranges pyproject.toml declares are exactly the ranges CI tests (.ci/constraints/)."""

import pytest
from packaging.version import Version

from conftest import REPO, load_script


CI = REPO / ".ci"
bounds = load_script(CI / "dependency_bounds.py", "dependency_bounds")
DECLARED = bounds.declared_requirements()
OLDEST = bounds.pinned_versions(bounds.CONSTRAINTS / "oldest.txt")
NEWEST = bounds.pinned_versions(bounds.CONSTRAINTS / "newest.txt")


def next_series(release: Version) -> set[Version]:
    """The upper bounds that admit `release` and nothing of a newer series: its next minor or next major release."""
    return {Version(f"{release.major}.{release.minor + 1}"), Version(f"{release.major + 1}")}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_the_floor_is_what_the_oldest_suite_installs(name):
    assert bounds.bound(DECLARED[name], ">=") == OLDEST[name]


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_the_upper_bound_admits_the_newest_tested_release_and_no_newer_series(name):
    newest = Version(NEWEST[name].base_version)  # torch's local label (+cpu, +cu130) does not matter here
    assert DECLARED[name].specifier.contains(newest)
    assert bounds.bound(DECLARED[name], "<") in next_series(newest)


def test_every_pin_is_an_exact_release():
    """Each constraints file pins every package it names to one release (a range would let pip pick by the day)."""
    for constraints in bounds.CONSTRAINTS.glob("*.txt"):
        lines = [line for line in constraints.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
        assert all(line.count("==") == 1 for line in lines if line.strip()), constraints


def test_the_docs_extra_pins_what_the_docs_suite_installs():
    docs = bounds.pinned_versions(bounds.CONSTRAINTS / "docs.txt")
    for name, requirement in bounds.declared_requirements("docs").items():
        assert str(requirement.specifier) == f"=={docs[name]}", name


def test_the_demo_suite_installs_releases_the_package_and_its_demo_extra_admit():
    demo = bounds.pinned_versions(bounds.CONSTRAINTS / "demo.txt")
    for name, requirement in {**bounds.declared_requirements(), **bounds.declared_requirements("demo")}.items():
        assert requirement.specifier.contains(demo[name]), name
