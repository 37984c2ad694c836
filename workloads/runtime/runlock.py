"""One job per run directory, always: a running job holds `RUN_DIR/job.lock`.

Rank 0 takes an exclusive flock on the file when the job starts (workloads.entry, before it touches anything in
the run directory) and keeps it until the process ends; the kernel drops it when the process dies, whatever the
way (kill -9, a node reboot ends the process too), so a requeued attempt of the same job finds it free. The file
records who holds it (job id, host, pid, since), so a second job that finds the lock taken refuses to start and
says which job holds the directory, without writing anything there. A holder may be on its way out (a job just
cancelled or requeued ends within Slurm's KillWait): the lock is retried for WAIT_S seconds
($FASTROBUST_LOCK_WAIT_S) before the refusal. flock is coherent across the nodes of local
and NFSv4/Lustre/GPFS file systems as Linux mounts them by default (NFS emulates it with POSIX locks).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK = "job.lock"
WAIT_S = 60.0  # longer than Slurm's KillWait (default 30 s): a cancelled holder has ended by then
WAIT_ENV = "FASTROBUST_LOCK_WAIT_S"


class RunDirBusy(RuntimeError):
    """Another live job holds the run directory: this one must not start (one line, says which job)."""


@dataclass
class RunLock:
    path: Path
    fd: int


def current_job_id() -> str:
    """This attempt's scheduler job id (array task as ID_TASK), or the local process id."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or f"pid {os.getpid()}"


def _holder(fd: int) -> dict[str, Any]:
    """What the holder wrote; it may not have written yet in the instant after taking the lock: retry briefly."""
    for _ in range(20):
        raw = os.pread(fd, 4096, 0)
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
        time.sleep(0.05)
    return {}


def wait_s() -> float:
    try:
        return float(os.environ.get(WAIT_ENV, WAIT_S))
    except ValueError:
        return WAIT_S


def _try_lock(fd: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def acquire(run_dir: Path, wait: float | None = None) -> RunLock:
    """Hold `run_dir` for this process, waiting up to `wait` seconds (default wait_s()) for a holder to end;
    raises RunDirBusy naming the holder when another process still holds it."""
    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    seconds = wait_s() if wait is None else wait
    if not _try_lock(fd, seconds):
        held = _holder(fd)
        os.close(fd)
        who = f"job {held.get('job_id', '?')} on {held.get('host', '?')} (pid {held.get('pid', '?')})"
        raise RunDirBusy(
            f"{run_dir} is held by {who} since {held.get('since', '?')} (still after {seconds:g} s): job "
            f"{current_job_id()} does not start a second writer there; wait for that job or cancel it "
            "(orchestrate cancel)"
        ) from None
    me = {"job_id": current_job_id(), "host": socket.gethostname(), "pid": os.getpid(),
          "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    data = json.dumps(me).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    return RunLock(path, fd)


def release(lock: RunLock | None) -> None:
    """Let the next attempt in (the file stays: it records the last holder)."""
    if lock is not None:
        os.close(lock.fd)


def held(run_dir: Path) -> bool:
    """Whether a live job holds `run_dir` now (a judge asks this of the runs it follows). A shared lock taken and
    dropped at once: a job starting in that instant finds the lock busy and retries (acquire's wait)."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock when it was taken
    return False
