"""Cell states from run directories plus ONE scheduler query per poll.

A cell is finished | running | pending | failed | cancelled | missing (| unknown when no scheduler answers):
- result.json in the run directory = finished (the job writes it last, atomically);
- otherwise the scheduler's state of the cell's NEWEST job id decides: PENDING/REQUEUED/RUNNING... win over an
  error.txt left behind, because a requeued job may have recorded an error (submitit's requeue race) and is
  nevertheless alive; a requeue is therefore never reported as a failure;
- an ended job without result.json is failed (cancelled when Slurm says CANCELLED); an attempt that ended while
  Slurm requeued the job (NODE_FAIL, PREEMPTED, BOOT_FAIL, ...: orchestrator.scheduler) is not an end;
- a failed cell says why in one line (CellStatus.error, printed under the table by `status` and `submit --wait`):
  the first line of its error.txt (workloads.entry writes the one-line summary there) and the file's path.
The scheduler is asked first and the run directories read after, so a job that ends in between is seen finished.
Slurm: one batched `sacct` call for every job of the poll; `squeue` only when accounting is off
(orchestrator.scheduler). Local executor: the job id is the controller's pid (alive = running).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import manifest
from orchestrator.manifest import Entry
from orchestrator.scheduler import (
    PENDING_STATES,
    RUNNING_STATES,
    JobRecord,
    SchedulerUnavailable,
    query_local,
    query_slurm,
)
from workloads import layout

STATES = ("finished", "running", "pending", "failed", "cancelled", "missing", "unknown")
TERMINAL = frozenset({"finished", "failed", "cancelled"})
# accounting learns of a new job a moment after sbatch returns: until then an unknown id counts as pending
GRACE_S = 120.0


@dataclass
class CellStatus:
    run_id: str
    state: str
    kind: str = ""
    job_id: str | None = None
    job_ids: list[str] = field(default_factory=list)
    attempts: int = 0  # started attempts (a Slurm requeue keeps its job id but starts a new attempt)
    epoch: int | None = None  # last completed epoch
    epochs: int | None = None  # epochs the spec asks for
    elapsed_s: float | None = None  # cumulative elapsed_s at the last epoch
    scheduler_state: str = ""
    scheduler_elapsed: str = ""
    error: str = ""  # failed cells: one line, the exception's message and where the traceback is


def classify(run_dir: Path, entry: Entry | None, record: JobRecord | None, now: float, asked: bool = True) -> str:
    """State of one cell. `record` is the scheduler's view of its newest job; `asked` is False when no
    scheduler could be asked."""
    if (run_dir / layout.RESULT).exists():
        return "finished"
    has_error = (run_dir / layout.ERROR).exists()
    if entry is None or entry.job_id is None:
        return "failed" if has_error else "missing"
    if not asked:
        return "failed" if has_error else "unknown"
    if record is None:  # the scheduler does not know the newest job
        if now - entry.submitted_ts < GRACE_S:
            return "pending"
        return "failed" if has_error else "missing"
    if record.state in PENDING_STATES:
        return "pending"
    if record.state in RUNNING_STATES:
        return "running"
    if record.state.startswith("CANCELLED"):
        return "cancelled"
    return "failed"  # ended (COMPLETED, FAILED, TIMEOUT, NODE_FAIL, ...) without result.json


def failure_line(run_dir: Path, exp_dir: Path, record: JobRecord | None) -> str:
    """Why a failed cell failed, in one line: the summary line of error.txt (workloads.entry writes it first;
    another rank's error-rank{r}.txt when rank 0 left none) and its path, which holds the traceback; without
    one, the scheduler's state and the job's log folder."""
    candidates = [run_dir / layout.ERROR, *sorted(run_dir.glob("error-rank*.txt"))]
    for path in candidates:
        try:
            with open(path, errors="replace") as f:
                first = f.readline(1000)
        except OSError:
            continue
        summary = " ".join(first.split()) or "(empty)"
        return f"{summary} (traceback: {path})"
    state = record.state if record is not None else "unknown to the scheduler"
    return f"ended ({state}) without result.json or error.txt; see the job's log under {exp_dir / layout.SUBMITIT}"


def _epoch_progress(run_dir: Path) -> tuple[int | None, float | None]:
    path = run_dir / layout.EPOCHS
    if not path.exists():
        return None, None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None, None
    last = rows[-1]
    try:
        return int(last["epoch"]), float(last["elapsed_s"])
    except (KeyError, ValueError):
        return None, None


def _attempts(run_dir: Path) -> tuple[int, list[str]]:
    path = run_dir / layout.ENV
    if not path.exists():
        return 0, []
    env = layout.read_json(path)
    return len(env.get("attempts", [])), [str(j) for j in env.get("job_ids", [])]


def _spec_epochs(run_dir: Path) -> tuple[str, int | None]:
    path = run_dir / layout.SPEC
    if not path.exists():
        return "", None
    spec = layout.read_json(path)
    kind = spec.get("kind", "")
    return kind, spec.get("epochs") if kind == "train" else None


def experiment_run_ids(exp_dir: Path) -> list[str]:
    """Every cell of an experiment: run directories with a spec.json, plus manifest entries."""
    runs = layout.runs_dir(exp_dir.parent, exp_dir.name)
    ids = {p.parent.name for p in runs.glob(f"*/{layout.SPEC}")} if runs.is_dir() else set()
    return sorted(ids | set(manifest.load(exp_dir)))


def poll(exp_dir: Path, run_ids: Iterable[str] | None = None) -> list[CellStatus]:
    """Status of every cell (or of `run_ids`), sorted by run_id: ONE scheduler query for all of them."""
    entries = manifest.load(exp_dir)
    ids = sorted(run_ids) if run_ids is not None else experiment_run_ids(exp_dir)
    newest = {r: entries[r].job_id for r in ids if r in entries and entries[r].job_id}
    slurm_ids = [j for r, j in newest.items() if entries[r].executor == "slurm" and j]
    local_ids = [j for r, j in newest.items() if entries[r].executor == "local" and j]
    records: dict[str, JobRecord] = {}
    asked = True
    try:
        records.update(query_slurm(slurm_ids))
    except SchedulerUnavailable:
        asked = False
    records.update(query_local(local_ids))
    now = time.time()
    out = []
    for run_id in ids:
        rd = manifest.run_dir(exp_dir, run_id)
        entry = entries.get(run_id)
        job_id = entry.job_id if entry else None
        record = records.get(job_id) if job_id else None
        slurm_entry = entry is not None and entry.executor == "slurm"
        state = classify(rd, entry, record, now, asked=asked or not slurm_entry)
        kind, epochs = _spec_epochs(rd)
        epoch, elapsed = _epoch_progress(rd)
        attempts, env_ids = _attempts(rd)
        job_ids = list(entry.job_ids) if entry else []
        job_ids += [j for j in env_ids if j not in job_ids]
        out.append(
            CellStatus(
                run_id=run_id,
                state=state,
                kind=kind or (entry.kind if entry else ""),
                job_id=job_id,
                job_ids=job_ids,
                attempts=attempts,
                epoch=epoch,
                epochs=epochs,
                elapsed_s=elapsed,
                scheduler_state=record.state if record else "",
                scheduler_elapsed=record.elapsed if record else "",
                error=failure_line(rd, exp_dir, record) if state == "failed" else "",
            )
        )
    return out


def counts(cells: Iterable[CellStatus]) -> dict[str, int]:
    result = dict.fromkeys(STATES, 0)
    for c in cells:
        result[c.state] += 1
    return {k: v for k, v in result.items() if v}


def format_table(cells: list[CellStatus]) -> str:
    """One line per cell: run_id, state, job id, attempts, epoch, elapsed."""
    header = ("run_id", "state", "job_id", "attempts", "epoch", "elapsed")
    rows = [header]
    for c in cells:
        epoch = f"{c.epoch or 0}/{c.epochs}" if c.epochs is not None else str(c.epoch or "-")
        elapsed = f"{c.elapsed_s:.1f}s" if c.elapsed_s is not None else c.scheduler_elapsed or "-"
        rows.append((c.run_id, c.state, c.job_id or "-", str(c.attempts), epoch, elapsed))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    summary = ", ".join(f"{n} {s}" for s, n in counts(cells).items())
    failures = [f"{c.run_id} failed: {c.error}" for c in cells if c.state == "failed" and c.error]
    return "\n".join([*lines, f"{len(cells)} cells: {summary}" if cells else "no cells", *failures])
