"""What a long evaluation is doing right now (which batch, which attack), for the logs and `orchestrate status`.

The attack code says `stage.report("autoattack apgd-t", examples=12)` at each step it starts; the job installs one
hook (`stage.reporting(hook)`) on its main rank, which logs the step as a JSON line on stderr and rewrites the run
directory's stage.json (layout.STAGE). Without a hook (tests, other ranks, library use) a report costs nothing.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_hooks: list[Callable[[str, dict[str, Any]], None]] = []


def report(step: str, **details: Any) -> None:
    """Tell the installed hook (if any) that `step` starts."""
    for hook in _hooks[-1:]:
        hook(step, details)


@contextmanager
def reporting(hook: Callable[[str, dict[str, Any]], None]) -> Iterator[None]:
    """Install `hook` for the duration of the block."""
    _hooks.append(hook)
    try:
        yield
    finally:
        _hooks.remove(hook)
