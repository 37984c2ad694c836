"""What a grid cell may name: experiment and run names become directory names under the results root, so they
match NAME_RE (one path component: no separator, no leading dot or dash, so no "..", no option), and the run
directories a job reads are never the grid's to set (orchestrator.submit.plan.resolve_sources fills them at submit
time from these names and the results root, and checks they resolve inside it)."""

from __future__ import annotations

import re
from typing import Any

from workloads.schema import show
from workloads.spec import RunSpec

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
NAME_HELP = "letters, digits, '_', '.' or '-' only, not starting with '.' or '-', at most 128 ([A-Za-z0-9_.-]+)"
SOURCE_NAMES = ("evaluate.source_experiment", "evaluate.source_run", "visualize.source_experiment",
                "judge.source_experiment")  # fmt: skip
SET_AT_SUBMIT = ("evaluate.source_dir", "evaluate.source_judged", "visualize.source_dirs", "judge.source_dirs")


def is_name(value: Any) -> bool:
    """An experiment or run name that is safe as one path component (NAME_RE)."""
    return isinstance(value, str) and NAME_RE.match(value) is not None


def _get(spec: RunSpec, dotted: str) -> Any:
    value: Any = spec
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def name_problems(spec: RunSpec, written: set[str] | dict[str, str]) -> list[tuple[str, str]]:
    """(RunSpec key path, message) for every source name that is not a name, and every run directory the grid
    set itself (`written`: the key paths the grid file wrote)."""
    problems = []
    for key in SOURCE_NAMES:
        value = _get(spec, key)
        if value is not None and not is_name(value):
            problems.append((key, f"expected a run or experiment name: {NAME_HELP}; got {show(value)}"))
    for section in ("visualize", "judge"):
        for i, run in enumerate(getattr(spec, section).source_runs):
            if not is_name(run):
                problems.append((f"{section}.source_runs[{i}]", f"expected a run name: {NAME_HELP}; got {show(run)}"))
    for key in SET_AT_SUBMIT:
        if key in written:
            problems.append(
                (key, "set at submit time from source_experiment and source_run(s) under the results root; remove it")
            )
    return problems
