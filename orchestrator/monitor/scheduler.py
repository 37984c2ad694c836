"""What the scheduler says about job ids: ONE batched `sacct` call per poll (`squeue` when accounting is off),
or, for the local executor, whether the controller's pid is alive. orchestrator.monitor.status turns these records and
the run directories into cell states.

States mean what Slurm means. sacct reports the attempt that ended: NODE_FAIL, PREEMPTED, BOOT_FAIL, a FAILED or
TIMEOUT whose job submitit requeued, are not the end of a job Slurm requeues (JobRequeue=1, `--requeue`): the
same job id is then queued again. So a record in one of those states (MAYBE_REQUEUED) is checked against the
queue: a job squeue still lists is pending/running (its record keeps `ended_attempt`); only a job that has left
the queue ended for good. That second call happens only for such a record that ended less than SETTLE_S ago:
accounting replaces the ended attempt of a requeued job by its REQUEUED/PENDING record within about a second
(measured on the test cluster: `scontrol requeue` of a FAILED job), so a later sacct answer is the job's own word
and a poll of 10^4 cells with long-settled failures stays ONE call. sacct prints End as a Unix time
(SLURM_TIME_FORMAT=%s), so no time zone is involved.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"})
RUNNING_STATES = frozenset(
    {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESIZING", "ALIVE"}
)
# Final unless the job is still queued (a requeue keeps the job id): COMPLETED and CANCELLED are never requeued
# by Slurm itself, every other ended state may be.
FINAL_STATES = frozenset({"COMPLETED", "CANCELLED"})
SACCT_FIELDS = ("JobID", "State", "Elapsed", "NodeList", "AllocTRES", "End")
SETTLE_S = 120.0  # an ended attempt older than this is final when sacct still reports it (module docstring)


@dataclass(frozen=True)
class JobRecord:
    """What the scheduler says about one job (array task)."""

    state: str  # Slurm state word (CANCELLED, not "CANCELLED by 0"); ALIVE/ENDED for the local executor
    elapsed: str = ""
    nodes: str = ""
    tres: str = ""
    ended_attempt: str = ""  # sacct's state of an attempt that ended while the job itself is queued again
    end: float | None = None  # Unix time the reported attempt ended (None: not ended, or not known)


def maybe_requeued(state: str) -> bool:
    """An ended state that Slurm (or submitit) may have followed with a requeue of the same job id."""
    return state not in PENDING_STATES and state not in RUNNING_STATES and state not in FINAL_STATES


def _expand_job_ids(text: str) -> list[str]:
    """'12', '12_3' or a pending array range '12_[4-9%2]' / '12_[1,3-5]' -> individual ids."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", text)
    if m is None:
        return [text]
    base, ids = m.group(1), []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def _base(job_id: str) -> str:
    return job_id.split("_", 1)[0]


def _unix_time(text: str) -> float | None:
    """sacct's End under SLURM_TIME_FORMAT=%s; None for Unknown/None (not ended) or any other format."""
    return float(text) if text.strip().isdigit() else None


def parse_sacct(text: str) -> dict[str, JobRecord]:
    """`sacct -X -n -P -o JobID,State,Elapsed,NodeList,AllocTRES[,End]` output -> records by job id."""
    records: dict[str, JobRecord] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or not parts[0]:
            continue
        state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"
        end = _unix_time(parts[5]) if len(parts) > 5 else None
        record = JobRecord(state=state, elapsed=parts[2], nodes=parts[3], tres=parts[4], end=end)
        for job_id in _expand_job_ids(parts[0]):
            records[job_id] = record
    return records


def parse_squeue(text: str) -> dict[str, JobRecord]:
    """`squeue -h -r -o %i|%T|%M|%N` output -> records by job id."""
    records: dict[str, JobRecord] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 4 and parts[0]:
            for job_id in _expand_job_ids(parts[0]):
                records[job_id] = JobRecord(state=parts[1], elapsed=parts[2], nodes=parts[3])
    return records


class SchedulerUnavailable(Exception):
    """Neither sacct nor squeue answered (no Slurm client here, or the controller is down)."""


def query_slurm(job_ids: Iterable[str]) -> dict[str, JobRecord]:
    """States of `job_ids` in ONE sacct call (array ids are asked for once each); squeue when accounting is off.
    Jobs that squeue no longer lists are reported as ENDED."""
    bases = sorted({_base(j) for j in job_ids}, key=int)
    if not bases:
        return {}
    if shutil.which("sacct"):
        cmd = ["sacct", "-X", "-n", "-P", "-j", ",".join(bases), "-o", ",".join(SACCT_FIELDS)]
        env = {**os.environ, "SLURM_TIME_FORMAT": "%s"}  # End as a Unix time
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        if out.returncode == 0:
            return requeued_view(parse_sacct(out.stdout), _squeue)
    known = _squeue()  # accounting off: only queued/running jobs are known
    if known is None:
        raise SchedulerUnavailable("neither sacct nor squeue answered")
    return {j: known.get(j, JobRecord("ENDED")) for j in job_ids}


def _squeue() -> dict[str, JobRecord] | None:
    """Every queued or running job (array tasks one by one); None when squeue does not answer."""
    if not shutil.which("squeue"):
        return None
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%M|%N"], capture_output=True, text=True, timeout=60)
    return parse_squeue(out.stdout) if out.returncode == 0 else None


def requeued_view(
    records: dict[str, JobRecord], queue: Callable[[], dict[str, JobRecord] | None], now: float | None = None
) -> dict[str, JobRecord]:
    """sacct's records, with each MAYBE_REQUEUED one that `queue()` (squeue) still lists replaced by the queue's
    state: the job will run again. `queue` is called only when such a record exists that ended less than
    SETTLE_S before `now` (or at an unknown time)."""
    now = time.time() if now is None else now
    doubtful = [j for j, r in records.items() if maybe_requeued(r.state) and (r.end is None or now - r.end < SETTLE_S)]
    if not doubtful:
        return records
    queued = queue()
    if queued is None:  # no answer: sacct's word stands
        return records
    out = dict(records)
    for job_id in doubtful:
        q = queued.get(job_id)
        if q is not None and (q.state in PENDING_STATES or q.state in RUNNING_STATES):
            out[job_id] = JobRecord(q.state, q.elapsed, q.nodes, records[job_id].tres, records[job_id].state, None)
    return out


def _local_alive(pid: str) -> bool:
    """The local executor's controller process still runs (and is not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return b"submitit" in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def query_local(job_ids: Iterable[str]) -> dict[str, JobRecord]:
    return {j: JobRecord("ALIVE" if _local_alive(j) else "ENDED") for j in job_ids}


def max_array_size() -> int | None:
    """The cluster's MaxArraySize (`scontrol show config`); None when scontrol is missing or does not answer.
    Array indices run 0..MaxArraySize-1, so an array holds at most MaxArraySize cells."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.M)
    return int(match.group(1)) if out.returncode == 0 and match else None


def cancel_slurm(job_ids: list[str]) -> None:
    """scancel the jobs (none: no call)."""
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=True, timeout=60)


def cancel_local(pids: list[str]) -> None:
    """Stop local-executor jobs as submitit's LocalJob.cancel does: SIGINT to the controller, which stops its tasks."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGINT)
