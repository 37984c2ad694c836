"""Cell states from run directories plus ONE scheduler query per poll.

A cell is finished | running | pending | failed | cancelled | missing (| unknown when no scheduler answers):
- result.json in the run directory = finished (the job writes it last, atomically);
- otherwise the scheduler's state of the cell's NEWEST job id decides: PENDING/REQUEUED/RUNNING... win over an
  error.txt left behind, because a requeued job may have recorded an error (submitit's requeue race) and is
  nevertheless alive; a requeue is therefore never reported as a failure;
- an ended job without result.json is failed (cancelled when Slurm says CANCELLED); an attempt that ended while
  Slurm requeued the job (NODE_FAIL, PREEMPTED, BOOT_FAIL, ...: orchestrator.monitor.scheduler) is not an end;
- a failed cell says why in one line (CellStatus.error, printed under the table by `status` and `submit --wait`):
  the first line of its error.txt (workloads.entry writes the one-line summary there) and the file's path.
- a finished train run whose checkpoint-best.pt / checkpoint-last.pt is missing, torn or foreign stays finished
  (its results are complete) but says so in one line (CellStatus.checkpoint): evaluate cells reading it would fail.
  The check is structural and cheap (workloads.checkpoint_record: size as written, zip end record), never a load.
The scheduler is asked first and the run directories read after, so a job that ends in between is seen finished.
Each run directory is listed once and its small files read with plain os calls: a poll of 10^4 cells takes about
a second (benchmarks/status_speed.py).
Slurm: one batched `sacct` call for every job of the poll; `squeue` only when accounting is off
(orchestrator.monitor.scheduler). Local executor: the job id is the controller's pid (alive = running).
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.monitor import judged, manifest
from orchestrator.monitor.manifest import Entry
from orchestrator.monitor.scheduler import (
    PENDING_STATES,
    RUNNING_STATES,
    JobRecord,
    SchedulerUnavailable,
    query_local,
    query_slurm,
)
from workloads import checkpoint_record, layout

_SPEC_KIND = re.compile(rb'\n  "kind": "([a-z_]+)",?\n')
_SPEC_EPOCHS = re.compile(rb'\n  "epochs": (\d+),?\n')
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
    checkpoint: str = ""  # finished train cells whose checkpoint evaluate could not read: checkpoint_line
    stage: str = ""  # cells without epochs (evaluate): what runs now, e.g. "batch 2/4 autoattack apgd-t"
    judged: str = ""  # train cells followed by a judge: its last judged snapshot and robust accuracy (judged.py)


def classify(
    run_dir: Path,
    entry: Entry | None,
    record: JobRecord | None,
    now: float,
    asked: bool = True,
    names: Collection[str] | None = None,
) -> str:
    """State of one cell. `record` is the scheduler's view of its newest job; `asked` is False when no
    scheduler could be asked; `names` is the run directory's listing when the caller has it (no stat then)."""
    if layout.RESULT in names if names is not None else (run_dir / layout.RESULT).exists():
        return "finished"
    has_error = layout.ERROR in names if names is not None else (run_dir / layout.ERROR).exists()
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
    ranked = sorted(run_dir.glob("error-rank*.txt"), key=lambda p: (len(p.name), p.name))  # rank 2 before rank 10
    candidates = [run_dir / layout.ERROR, *ranked]
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


def _json(data: bytes | None) -> dict[str, Any]:
    """A small JSON file of the run directory ({} when it is missing or torn: status never fails on one cell)."""
    try:
        obj = json.loads(data) if data else {}
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _spec_fields(data: bytes | None) -> tuple[str, Any]:
    """(kind, epochs) of a spec.json. layout.write_json_atomic writes it with sorted keys and a 2-space indent, so
    the two top-level keys are found by pattern without decoding 3 kB of JSON per cell; any other layout is
    decoded."""
    kind = _SPEC_KIND.search(data or b"")
    if kind is None:
        spec = _json(data)
        return str(spec.get("kind", "")), spec.get("epochs")
    epochs = _SPEC_EPOCHS.search(data or b"")
    return kind.group(1).decode(), int(epochs.group(1)) if epochs else None


def _epoch_progress(data: bytes | None) -> tuple[int | None, float | None]:
    """(last completed epoch, its cumulative elapsed_s) from epochs.csv: only the header and the last row are
    parsed (its values are numbers: no quoted line breaks)."""
    lines = [line for line in (data or b"").decode(errors="replace").splitlines() if line.strip()]
    if len(lines) < 2:
        return None, None
    header, last = csv.reader([lines[0], lines[-1]])
    row = dict(zip(header, last, strict=False))
    try:
        return int(row["epoch"]), float(row["elapsed_s"])
    except (KeyError, ValueError):
        return None, None


@dataclass(frozen=True)
class RunFiles:
    """What one listing and a few small reads of a run directory say (read after the scheduler was asked)."""

    names: frozenset[str]
    kind: str = ""
    epochs: int | None = None  # train cells: the epochs the spec asks for
    epoch: int | None = None
    elapsed_s: float | None = None
    attempts: int = 0
    job_ids: tuple[str, ...] = ()
    stage: str = ""  # evaluate cells: the batch and attack running now (workloads.stage)


def _stage(stage: dict[str, Any], result: dict[str, Any]) -> tuple[str, float | None]:
    """(what a cell without epochs is doing, its elapsed seconds): a running evaluation's stage.json, else the
    evaluation time its result.json recorded."""
    if stage:
        step = f"batch {stage.get('batch', '?')}/{stage.get('batches', '?')} {stage.get('step', '')}".strip()
        return step, _float(stage.get("elapsed_s"))
    return ("done" if result else ""), _float(result.get("eval_s"))


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_run(run_dir: Path) -> RunFiles:
    """One listing of the run directory (classify and the checkpoint check test names in it, no stat each), then
    spec.json, env.json and epochs.csv when listed."""
    base = str(run_dir)
    try:
        names = frozenset(os.listdir(base))
    except OSError:
        return RunFiles(frozenset())

    def read(name: str) -> bytes | None:
        return checkpoint_record.read_small(os.path.join(base, name)) if name in names else None

    kind, epochs = _spec_fields(read(layout.SPEC))
    env = _json(read(layout.ENV))
    epoch, elapsed = _epoch_progress(read(layout.EPOCHS))
    step = ""
    if kind == "evaluate":
        step, elapsed = _stage(_json(read(layout.STAGE)), _json(read(layout.RESULT)))
    return RunFiles(
        names=names,
        kind=kind,
        epochs=epochs if kind == "train" and isinstance(epochs, int) else None,
        epoch=epoch,
        elapsed_s=elapsed,
        attempts=len(env.get("attempts", [])),
        job_ids=tuple(str(j) for j in env.get("job_ids", [])),
        stage=step,
    )


def checkpoint_problem(run_dir: Path, files: RunFiles) -> str:
    """'' or, for a finished train run, the checkpoints evaluate could not read as one line (checkpoint_line)."""
    if files.kind != "train":
        return ""
    problems = checkpoint_record.unreadable(run_dir, (layout.CKPT_LAST,), files.names)
    return checkpoint_line(run_dir, "; ".join(problems)) if problems else ""


def checkpoint_line(run_dir: Path, problem: str) -> str:
    """What `status` says of a finished run with an unreadable checkpoint, and what to do, in one line."""
    return (
        f"finished, checkpoint unreadable: {problem}; evaluate cells reading it would fail: remove {run_dir} and "
        "resubmit with --retry-failed to train it again"
    )


def experiment_run_ids(exp_dir: Path, entries: dict[str, Entry] | None = None) -> list[str]:
    """Every cell of an experiment: run directories with a spec.json, plus manifest entries (`entries`: the
    manifest, when the caller has loaded it)."""
    known = set(manifest.load(exp_dir) if entries is None else entries)
    runs = str(layout.runs_dir(exp_dir.parent, exp_dir.name))
    try:
        dirs = [e.name for e in os.scandir(runs) if e.is_dir()]
    except OSError:
        dirs = []
    with_spec = {d for d in dirs if d in known or os.path.exists(os.path.join(runs, d, layout.SPEC))}
    return sorted(with_spec | known)


def poll(exp_dir: Path, run_ids: Iterable[str] | None = None) -> list[CellStatus]:
    """Status of every cell (or of `run_ids`), sorted by run_id: ONE scheduler query for all of them."""
    entries = manifest.load(exp_dir)
    ids = sorted(run_ids) if run_ids is not None else experiment_run_ids(exp_dir, entries)
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
    runs = layout.runs_dir(exp_dir.parent, exp_dir.name)  # runs / run_id is layout.run_dir, one join per cell
    cells = [_cell(exp_dir, runs / run_id, run_id, entries.get(run_id), records, asked, now) for run_id in ids]
    verdicts = judged.last_judged(runs, (c.run_id for c in cells if c.kind == "judge"))
    for c in cells:
        c.judged = verdicts.get(c.run_id, "")
    return cells


def _cell(
    exp_dir: Path, rd: Path, run_id: str, entry: Entry | None, records: dict[str, JobRecord], asked: bool, now: float
) -> CellStatus:
    files = read_run(rd)
    job_id = entry.job_id if entry else None
    record = records.get(job_id) if job_id else None
    slurm_entry = entry is not None and entry.executor == "slurm"
    state = classify(rd, entry, record, now, asked=asked or not slurm_entry, names=files.names)
    job_ids = list(entry.job_ids) if entry else []
    job_ids += [j for j in files.job_ids if j not in job_ids]
    return CellStatus(
        run_id=run_id,
        state=state,
        kind=files.kind or (entry.kind if entry else ""),
        job_id=job_id,
        job_ids=job_ids,
        attempts=files.attempts,
        epoch=files.epoch,
        epochs=files.epochs,
        elapsed_s=files.elapsed_s,
        stage=files.stage,
        scheduler_state=record.state if record else "",
        scheduler_elapsed=record.elapsed if record else "",
        error=failure_line(rd, exp_dir, record) if state == "failed" else "",
        checkpoint=checkpoint_problem(rd, files) if state == "finished" else "",
    )


def counts(cells: Iterable[CellStatus]) -> dict[str, int]:
    result = dict.fromkeys(STATES, 0)
    for c in cells:
        result[c.state] += 1
    return {k: v for k, v in result.items() if v}


def format_table(cells: list[CellStatus]) -> str:
    """One line per cell: run_id, state, job id, attempts, epoch, elapsed."""
    header = ("run_id", "state", "job_id", "attempts", "epoch", "elapsed")
    body = []
    for c in cells:
        epoch = f"{c.epoch or 0}/{c.epochs}" if c.epochs is not None else c.stage or str(c.epoch or "-")
        elapsed = f"{c.elapsed_s:.1f}s" if c.elapsed_s is not None else c.scheduler_elapsed or "-"
        body.append((c.run_id, c.state, c.job_id or "-", str(c.attempts), epoch, elapsed))
    rows = judged.with_column(header, body, [c.judged for c in cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    summary = ", ".join(f"{n} {s}" for s, n in counts(cells).items())
    torn = [c for c in cells if c.state == "finished" and c.checkpoint]
    summary += f" ({len(torn)} with an unreadable checkpoint)" if torn else ""
    failures = [f"{c.run_id} failed: {c.error}" for c in cells if c.state == "failed" and c.error]
    failures += [f"{c.run_id} {c.checkpoint}" for c in torn]
    return "\n".join([*lines, f"{len(cells)} cells: {summary}" if cells else "no cells", *failures])
