"""`replicates: N` in a grid document: sugar for `grid: {seed: [s, s+1, ..., s+N-1]}` (s: defaults.seed, else 0),
so a recipe gets N runs that differ only in seed (orchestrator.grid.recipe_key). Refused with a grid seed list (one
way to say it) and outside 1..MAX_REPLICATES."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workloads.schema import show

KEY = "replicates"
MAX_REPLICATES = 1000


def seed_axis(
    value: Any, defaults: dict[str, Any], axes: list[tuple[str, list[Any]]], report: Callable[[str, str], None]
) -> list[tuple[str, list[Any]]]:
    """`axes` with the seed axis `value` stands for appended (value None: unchanged); problems go to report."""
    if value is None:
        return axes
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICATES:
        report(KEY, f"expected a whole number of runs per recipe in 1..{MAX_REPLICATES}; got {show(value)}")
        return axes
    if any(key == "seed" for key, _ in axes):
        report(KEY, "grid.seed lists the seeds already: give one of replicates and grid.seed")
        return axes
    first = defaults.get("seed", 0)
    if isinstance(first, bool) or not isinstance(first, int):
        return axes  # defaults.seed's own check reports it
    return [*axes, ("seed", list(range(first, first + value)))]
