"""Timing shared by the benchmark scripts: compared cases run in alternating rounds, medians reported."""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Medians over the repeats: wall-clock seconds, and CPU seconds of all the process's threads (the work done,
    which competing processes on a shared machine disturb less than the wall clock)."""

    wall: float
    cpu: float

    def __str__(self) -> str:
        return f"{self.wall * 1000:.0f} ms (CPU {self.cpu * 1000:.0f} ms)"

    def ratio(self, other: "Timing") -> str:
        return f"{self.wall / other.wall:.2f}x (CPU {self.cpu / other.cpu:.2f}x)"


def measure(functions: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, Timing]:
    """Time the functions in turn, `repeats` rounds after a warm-up round (unless `warmup=False`, for runs too long
    to repeat), so that a load change on a shared machine affects all of them alike."""
    walls, cpus = {name: [] for name in functions}, {name: [] for name in functions}
    for round_index in range(repeats + warmup):
        for name, function in functions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            if round_index or not warmup:  # round 0 warms up imports, caches and first-call allocations
                walls[name].append(time.perf_counter() - wall)
                cpus[name].append(time.process_time() - cpu)
    return {name: Timing(statistics.median(walls[name]), statistics.median(cpus[name])) for name in functions}
