"""Grouping and batching work: items grouped by a key (the questions that share one encoded video, say), groups in
order of first appearance, and a sequence cut into batches of a fixed size."""

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar


Item = TypeVar("Item")


def group_by(items: Iterable[Item], key: Callable[[Item], Hashable]) -> list[list[Item]]:
    """`items` grouped by `key(item)`: groups in order of their first item, items in their order within a group."""
    groups: dict[Hashable, list[Item]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def batches(items: Sequence[Item], size: int) -> list[Sequence[Item]]:
    """`items` cut into consecutive batches of `size` items (the last one may be shorter). A `size` below 1 is a
    `ValueError`."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [items[start : start + size] for start in range(0, len(items), size)]


__all__ = ["batches", "group_by"]
