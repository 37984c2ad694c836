"""SIGUSR2 (Slurm's pre-timeout / preemption signal) inside the workload process. Torch-free.

`install(cooperative)` replaces the process's SIGUSR2 handler and remembers the one it found (`previous`):
submitit's checkpoint-and-requeue handler when the workload runs inside submitit's task process, the default
when it runs as a child of workloads.runtime.supervisor (or stand-alone).

- A non-cooperative kind (evaluate, bench, visualize) stops at once: `stop()` from inside the handler. Nothing is
  saved here: evaluate resumes per batch already, the others are short.
- A cooperative kind (train) saves first. While the training loop is inside `steps()` the handler only sets a
  flag; the loop polls it at every step boundary (`requested()`; rank 0 decides, every rank learns the decision
  from one collective), writes a mid-epoch checkpoint and calls `stop()`. Outside `steps()` (evaluation, the
  epoch-end checkpoint, setup) the handler stops at once, as a non-cooperative one: there the loop would not poll
  again before the epoch's checkpoint, which may come later than the time limit.

`stop()` calls `previous` when it is a Python callable (submitit's handler: it requeues the job and exits; on a
rank other than 0 it returns), then raises `Preempted`, a SystemExit with code EXIT_PREEMPTED (75, EX_TEMPFAIL):
the supervisor turns that exit status into submitit's requeue. SystemExit is no Exception, so entry.run writes no
error.txt for it, and its `finally` still releases the run lock and the process group.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later"
SIGNAL = signal.SIGUSR2


class Preempted(SystemExit):
    """The workload stopped on SIGUSR2 (after saving what it saves); exit status EXIT_PREEMPTED."""

    def __init__(self) -> None:
        super().__init__(EXIT_PREEMPTED)


class _State:
    """The process's handler state (one per process: signal handlers are per process)."""

    installed: bool = False
    cooperative: bool = False
    in_steps: bool = False
    requested: bool = False
    stopping: bool = False  # stop() ran: the process is on its way out
    previous: Any = None  # the handler install() replaced: a callable, signal.SIG_DFL, SIG_IGN or None


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    _state.requested = True
    if not ((_state.cooperative and _state.in_steps) or _state.stopping):  # a second signal never stops twice
        stop()


def install(cooperative: bool) -> bool:
    """Install the workload's SIGUSR2 handler; False (nothing installed) outside the main thread, where Python
    cannot set handlers. A second install keeps the first `previous` (never chains to itself)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    found = signal.getsignal(SIGNAL)
    if not _state.installed:
        _state.previous = found
    _state.installed, _state.cooperative, _state.in_steps, _state.requested = True, cooperative, False, False
    _state.stopping = False
    signal.signal(SIGNAL, _handler)
    return True


def uninstall() -> None:
    """Put back the handler install() found (entry.run's finally: a later run in the same process starts clean).
    After a stop a default handler becomes SIG_IGN instead: Slurm signals every process of the step and the
    supervisor forwards its own copy too, and a late one must not turn exit 75 into death by SIGUSR2."""
    if _state.installed and threading.current_thread() is threading.main_thread():
        previous = _state.previous
        if not callable(previous):
            previous = signal.SIG_IGN if _state.stopping else previous if previous is not None else signal.SIG_DFL
        signal.signal(SIGNAL, previous)
    _state.installed, _state.cooperative, _state.in_steps, _state.requested = False, False, False, False
    _state.previous, _state.stopping = None, False


def requested() -> bool:
    """SIGUSR2 arrived since install() (the training loop's poll)."""
    return _state.requested


@contextlib.contextmanager
def steps() -> Iterator[None]:
    """The training loop's cooperative section: a SIGUSR2 inside it only sets the flag. Leaving it with the flag
    still set (a signal after the last poll) stops at once, as a signal outside it would."""
    _state.in_steps = True
    try:
        yield
    finally:
        _state.in_steps = False
    if _state.requested and _state.installed:
        stop()


def stop() -> NoReturn:
    """After the save: submitit's handler when it was the previous one (requeue + exit), then Preempted."""
    _state.stopping = True
    previous = _state.previous
    if callable(previous):
        call: Callable[[int, FrameType | None], Any] = previous
        call(SIGNAL, None)
    raise Preempted
