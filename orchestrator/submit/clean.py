"""`orchestrate clean EXPERIMENT [RUN_ID...] [--failed] [--dry-run]`: remove run directories so that the next
`submit` runs those cells again (a finished cell whose settings changed, a failed one to start from scratch).

Never a directory a job may still write: a cell the scheduler says is running or pending is refused, and so is
one whose job.lock a live process holds (workloads.runtime.runlock; the lock is taken here, non-blocking, and held while
the directory is removed, so a job starting meanwhile waits and then refuses). One line per refusal; the other
cells are removed all the same. The cell's manifest entry goes with it, so the cell is `missing` again and a
plain resubmit submits it. The whole command holds the experiment's submission lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.grid.names import is_name
from orchestrator.monitor import manifest, status
from workloads import layout
from workloads.runtime import runlock

ACTIVE = ("running", "pending", "unknown")  # a job may (still, or soon) write there


@dataclass
class Cleaned:
    removed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # one line each


@contextlib.contextmanager
def _held(run_dir: Path) -> Iterator[str | None]:
    """None while this process holds the run's job.lock, else who holds it (one phrase)."""
    path = run_dir / runlock.LOCK
    if not path.exists():
        yield None
        return
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                held = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                held = {}
            held = held if isinstance(held, dict) else {}
            yield f"job {held.get('job_id', '?')} on {held.get('host', '?')} (pid {held.get('pid', '?')})"
            return
        yield None
    finally:
        os.close(fd)


def choose(exp_dir: Path, run_ids: Sequence[str], failed: bool) -> list[str]:
    """The cells to clean: the named ones, plus every failed/cancelled one with `failed`."""
    if not run_ids and not failed:
        raise UserError(f"clean {exp_dir.name}: name the RUN_IDs to remove, or pass --failed")
    bad = [r for r in run_ids if not is_name(r)]
    if bad:
        raise UserError(f"clean {exp_dir.name}: not a run id: {', '.join(repr(r) for r in bad)}")
    chosen = list(dict.fromkeys(run_ids))
    if failed:
        chosen += [
            c.run_id for c in status.poll(exp_dir) if c.state in ("failed", "cancelled") and c.run_id not in chosen
        ]
    return chosen


def clean(
    exp_dir: Path, run_ids: Sequence[str], failed: bool = False, dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> Cleaned:  # fmt: skip
    """Remove the chosen cells' run directories (see the module docstring); `dry_run` lists what would go."""
    out = Cleaned()
    with manifest.locked(exp_dir):
        chosen = choose(exp_dir, run_ids, failed)
        entries = manifest.load(exp_dir)
        states = {c.run_id: c for c in status.poll(exp_dir, chosen)}
        runs = layout.runs_dir(exp_dir.parent, exp_dir.name)
        for run_id in chosen:
            rd = runs / run_id
            cell = states[run_id]
            if not os.path.lexists(rd) and run_id not in entries:
                out.refused.append(f"{exp_dir.name}/{run_id}: no such cell (see orchestrate status {exp_dir.name})")
                continue
            if cell.state in ACTIVE:
                out.refused.append(f"{exp_dir.name}/{run_id}: {cell.state} as job {cell.job_id or '?'}; not removed "
                                   f"(cancel it first: orchestrate cancel {exp_dir.name})")  # fmt: skip
                continue
            if rd.is_symlink() or (rd.exists() and rd.resolve().parent != runs.resolve()):
                out.refused.append(f"{exp_dir.name}/{run_id}: {rd} is a link out of {runs}; not removed")
                continue
            with _held(rd) if rd.is_dir() else contextlib.nullcontext() as holder:
                if holder is not None:
                    out.refused.append(f"{exp_dir.name}/{run_id}: {rd} is held by {holder}; not removed "
                                       f"(cancel it first: orchestrate cancel {exp_dir.name})")  # fmt: skip
                    continue
                if dry_run:
                    log(f"would remove {rd} ({cell.state})")
                else:
                    if rd.exists():
                        shutil.rmtree(rd)
                    entries.pop(run_id, None)
                    log(f"removed {rd} ({cell.state})")
                out.removed.append(run_id)
        if not dry_run and out.removed:
            manifest.save(exp_dir, entries)
    return out
