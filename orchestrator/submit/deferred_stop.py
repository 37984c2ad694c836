"""A stop request (SIGTERM) to a detached local queue runner (orchestrator.submit.local_queue), acted on only between
cells: the signal is held back while a cell's job is being started and recorded in the manifest (`submitting`),
so a stopped runner never leaves a cell running that the manifest does not know (and `cancel` could not stop).
The stop itself is a KeyboardInterrupt, so the runner says what keeps running as Ctrl-C does
(orchestrator.submit.interrupt).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

_held = {"submitting": False, "stop": False}


def _on_term(signum: int, frame: FrameType | None) -> None:
    if _held["submitting"]:
        _held["stop"] = True
    else:
        raise KeyboardInterrupt


def install() -> None:
    """In a runner: SIGTERM stops it like Ctrl-C, between cells."""
    signal.signal(signal.SIGTERM, _on_term)


@contextlib.contextmanager
def submitting() -> Iterator[None]:
    """A SIGTERM arriving meanwhile waits until the block (a cell's submission and its manifest record) is done."""
    _held["submitting"] = True
    try:
        yield
    finally:
        _held["submitting"] = False
    if _held["stop"]:
        _held["stop"] = False
        raise KeyboardInterrupt
