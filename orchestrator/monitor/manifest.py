"""results/<experiment>/manifest.json: run_id -> every scheduler job id the cell was ever submitted as.

Job ids are never a key on their own (Slurm restarts ids at 1 on a fresh cluster): the manifest maps readable
run_ids to their submissions, newest last. Written atomically; submissions hold an exclusive lock on the
experiment so two `orchestrate submit` calls cannot interleave their updates.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workloads import layout
from workloads.spec import RunSpec

MANIFEST = "manifest.json"
LOCK = ".submit.lock"


@dataclass
class Entry:
    job_ids: list[str] = field(default_factory=list)  # every submission, oldest first
    array: str = ""  # the array (or single job) id of the newest submission
    submitted_at: str = ""  # ISO time of the newest submission
    submitted_ts: float = 0.0  # the same as a Unix time (grace period while accounting catches up)
    executor: str = "slurm"  # slurm | local
    kind: str = "train"
    document: int = 0  # index of the YAML document of the grid file

    @property
    def job_id(self) -> str | None:
        return self.job_ids[-1] if self.job_ids else None


def run_dir(exp_dir: Path, run_id: str) -> Path:
    """A cell's run directory, given its experiment folder (workloads.layout owns the layout)."""
    return layout.run_dir(exp_dir.parent, exp_dir.name, run_id)


def load(exp_dir: Path) -> dict[str, Entry]:
    path = exp_dir / MANIFEST
    if not path.exists():
        return {}
    data: dict[str, dict[str, Any]] = layout.read_json(path)
    known = set(Entry.__dataclass_fields__)
    return {run_id: Entry(**{k: v for k, v in e.items() if k in known}) for run_id, e in data.items()}


def save(exp_dir: Path, entries: dict[str, Entry]) -> None:
    layout.write_json_atomic(exp_dir / MANIFEST, {k: asdict(entries[k]) for k in sorted(entries)})


def record(
    entries: dict[str, Entry], run_id: str, job_id: str, array: str, executor: str, kind: str, document: int
) -> None:
    """Add one submission of `run_id` (in place)."""
    entry = entries.setdefault(run_id, Entry())
    if job_id not in entry.job_ids:
        entry.job_ids.append(job_id)
    entry.array = array
    entry.submitted_ts = time.time()
    entry.submitted_at = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(entry.submitted_ts))
    entry.executor, entry.kind, entry.document = executor, kind, document


def record_planned(exp_dir: Path, cells: Iterable[RunSpec], executor: str, kind: str, document: int) -> None:
    """An entry without job ids for each cell about to be submitted that the manifest lacks: the experiment then
    knows its cells before their jobs exist (a local queue interrupted halfway leaves them `missing`)."""
    with locked(exp_dir):
        entries = load(exp_dir)
        new = [c.run_id for c in cells if c.run_id not in entries]
        if new:
            entries.update({r: Entry(executor=executor, kind=kind, document=document) for r in new})
            save(exp_dir, entries)


@contextlib.contextmanager
def locked(exp_dir: Path) -> Iterator[None]:
    """Exclusive lock on an experiment for the duration of a submission."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    with open(exp_dir / LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
