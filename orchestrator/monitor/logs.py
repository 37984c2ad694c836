"""`orchestrate logs RUN_ID`: a cell's job output, found from the manifest (the user never looks for it).

submitit writes each task's stdout/stderr to results/<experiment>/.submitit/<job id>/<job id>_<rank>_log.{out,err}
(submitit.core.utils.JobPaths owns that naming; we ask it instead of rebuilding the pattern). An attempt is a
submission recorded in manifest.json (oldest first); a Slurm requeue keeps its job id, so its output is appended
to the same files.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from submitit.core.utils import JobPaths

from orchestrator.errors import UserError
from orchestrator.monitor import manifest
from workloads import layout

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LogsError(UserError, ValueError):
    """The cell is unknown, was never submitted, or has no output yet; one line saying which."""


@dataclass(frozen=True)
class CellLogs:
    experiment: str
    run_id: str
    job_id: str
    attempt: int  # 1-based index into the manifest's submissions
    attempts: int
    rank: int
    stdout: Path
    stderr: Path


def find_cell(root: Path, ref: str) -> tuple[Path, str]:
    """(experiment folder, run_id) of `RUN_ID` or `EXPERIMENT/RUN_ID` under the results root."""
    experiment, _, run_id = ref.rpartition("/")
    if not _NAME.match(run_id) or (experiment and not _NAME.match(experiment)):
        raise LogsError(f"{ref!r}: expected RUN_ID or EXPERIMENT/RUN_ID (letters, digits, '.', '_', '-')")
    if experiment:
        exp_dirs = [layout.experiment_dir(root, experiment)]
    else:
        exp_dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    hits = [d for d in exp_dirs if run_id in manifest.load(d) or layout.run_dir(root, d.name, run_id).is_dir()]
    if not hits:
        raise LogsError(
            f"{ref}: no such cell under {root}: never submitted, so there is no log (see `orchestrate status`)"
        )
    if len(hits) > 1:
        names = ", ".join(f"{d.name}/{run_id}" for d in hits)
        raise LogsError(f"{ref}: run_id is in several experiments; name one of {names}")
    return hits[0], run_id


def cell_logs(exp_dir: Path, run_id: str, rank: int = 0, attempt: int | None = None) -> CellLogs:
    """The log files of one task (rank) of one submission (default: the latest)."""
    entry = manifest.load(exp_dir).get(run_id)
    if entry is None or not entry.job_ids:
        raise LogsError(f"{exp_dir.name}/{run_id}: never submitted, so there is no log (orchestrate submit GRID)")
    n = len(entry.job_ids)
    k = n if attempt is None else attempt
    if not 1 <= k <= n:
        raise LogsError(f"{exp_dir.name}/{run_id}: --attempt {k} out of range; it was submitted {n} time(s)")
    job_id = entry.job_ids[k - 1]
    paths = JobPaths(exp_dir / layout.SUBMITIT / "%j", job_id=job_id, task_id=rank)
    return CellLogs(exp_dir.name, run_id, job_id, k, n, rank, paths.stdout, paths.stderr)


def _existing(logs: CellLogs) -> list[Path]:
    return [p for p in (logs.stdout, logs.stderr) if p.exists()]


def show(logs: CellLogs, out: TextIO | None = None) -> None:
    """Print stdout then stderr, each under a `==> path <==` header (as `tail` does for several files)."""
    out = out or sys.stdout  # looked up at call time (a caller may have redirected it)
    paths = _existing(logs)
    if not paths:
        raise LogsError(
            f"{logs.experiment}/{logs.run_id}: job {logs.job_id} (rank {logs.rank}) has no log yet "
            f"(pending, or this rank does not exist); expected {logs.stdout}"
        )
    for path in paths:
        out.write(f"==> {path} <==\n")
        out.write(path.read_text(errors="replace"))
    out.flush()


def follow(
    logs: CellLogs,
    ended: Callable[[], bool],
    out: TextIO | None = None,
    poll_s: float = 0.5,
    settle_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Print both files as they grow (pending cells: wait for them) until `ended()` is true and nothing new
    arrived for `settle_s` (the last lines of a finished job are flushed after its result is written)."""
    out = out or sys.stdout
    offsets: dict[Path, int] = {}
    current: Path | None = None
    quiet_since = clock()
    while True:
        grew = False
        for path in (logs.stdout, logs.stderr):
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(offsets.get(path, 0))
                chunk = f.read()
            if chunk:
                if path != current:
                    out.write(f"==> {path} <==\n")
                    current = path
                out.write(chunk.decode(errors="replace"))
                out.flush()
                offsets[path] = offsets.get(path, 0) + len(chunk)
                grew = True
        now = clock()
        if grew:
            quiet_since = now
        elif now - quiet_since >= settle_s and ended():
            return
        time.sleep(poll_s)


def describe(logs: CellLogs) -> str:
    return (
        f"{logs.experiment}/{logs.run_id}: job {logs.job_id}, attempt {logs.attempt} of {logs.attempts}, "
        f"rank {logs.rank}"
    )
