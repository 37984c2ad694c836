"""What the ranks of one job know about each other: who each is (RUN_DIR/ranks/rank-{r}.json), which error file
is whose, and, for a rank whose collective failed, which peer died or hung. Torch-free.

The workload child (workloads.entry, run by workloads.runtime.supervisor with FASTROBUST_SUPERVISED=1) `announce`s
itself once the run directory is held, and `report`s its result or its failure's summary line to the supervisor;
the supervisor adds how the rank ended to its record. A survivor's error.txt then starts with the dead or hung
peer's own line (`peer_summary`): `rank 1 on node2 (pid 4242) was killed by signal 9 (SIGKILL); rank 0 stopped:
its collective failed (...)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workloads import layout
from workloads.runtime import runlock

SUPERVISED_ENV = "FASTROBUST_SUPERVISED"  # "1" in the child
REPORT_ENV = "FASTROBUST_CHILD_REPORT"  # the file where the child leaves {"result": ...} or {"error": line}
RANKS = "ranks"  # RUN_DIR/ranks/rank-{r}.json
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0  # RunSpec.collective_timeout_s (the spec is read as JSON here: torch-free)
PEER_WAIT_S = 5.0  # how long a survivor waits for a dead peer's record
STARTED = time.time()  # this process's start (records older than this belong to an earlier attempt)


@dataclass(frozen=True)
class Identity:
    """Who a rank is: global rank, host (the Slurm node name when there is one) and this attempt's job id."""

    rank: int
    host: str
    job_id: str

    @classmethod
    def here(cls) -> Identity:
        return cls(current_rank(), current_host(), runlock.current_job_id())

    def who(self, pid: int) -> str:
        return f"rank {self.rank} on {self.host} (pid {pid})"


def current_rank() -> int:
    """The global rank of this task: submitit's (Slurm or local executor), else torchrun's RANK, else 0."""
    env = os.environ
    executor = env.get("SUBMITIT_EXECUTOR")
    if executor == "slurm" and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    if executor == "local" and "SUBMITIT_LOCAL_GLOBALID" in env:
        return int(env["SUBMITIT_LOCAL_GLOBALID"])
    return int(env.get("RANK") or env.get("SLURM_PROCID") or 0)


def current_host() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def error_path(run_dir: Path, rank: int) -> Path:
    """The error file of a rank: error.txt for rank 0 (what `orchestrate status` reads first), else error-rank{r}."""
    return run_dir / (layout.ERROR if rank == 0 else f"error-rank{rank}.txt")


def rank_record_path(run_dir: Path, rank: int) -> Path:
    return run_dir / RANKS / f"rank-{rank}.json"


def collective_timeout_s(spec_path: Path) -> float:
    """The spec's collective_timeout_s (read as JSON: no torch, no spec parsing on this side)."""
    try:
        value = layout.read_json(spec_path).get("collective_timeout_s", DEFAULT_COLLECTIVE_TIMEOUT_S)
        return float(value)
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_COLLECTIVE_TIMEOUT_S


def read_json_dict(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------------------------
# The child side (the workload process; entry.run and entry.cli call these)


def supervised() -> bool:
    return os.environ.get(SUPERVISED_ENV) == "1"


def announce(run_dir: Path, rank: int) -> None:
    """The run directory is held: forget this rank's error file of an earlier attempt and, when supervised,
    record who this rank is in ranks/rank-{r}.json (operators: which pid to look at; survivors: who died)."""
    if rank != 0:  # rank 0's error.txt is removed by entry.run itself
        error_path(run_dir, rank).unlink(missing_ok=True)
    if not supervised():
        return
    me = Identity(rank, current_host(), runlock.current_job_id())
    record = {**asdict(me), "pid": os.getppid(), "child_pid": os.getpid(), "started_at": time.time()}
    with contextlib.suppress(OSError):
        layout.write_json_atomic(rank_record_path(run_dir, rank), record)


def report(run: Callable[[], dict[str, Any]], summary: Callable[[BaseException], str]) -> dict[str, Any]:
    """Run the workload; leave its result (or its failure's summary line) where the supervisor reads it."""
    path = os.environ.get(REPORT_ENV)
    try:
        result = run()
    except Exception as exc:
        if path:
            with contextlib.suppress(OSError):
                Path(path).write_text(json.dumps({"error": summary(exc)}))
        raise
    if path:
        Path(path).write_text(json.dumps({"result": result}, default=str))
    return result


# ---------------------------------------------------------------------------------------------------------------
# A survivor's first line: which peer died or hung


_COLLECTIVE_TYPES = ("DistBackendError", "DistNetworkError", "DistStoreError", "DistError")
_COLLECTIVE_RE = re.compile(r"gloo|nccl|c10d|ProcessGroup|by peer|Broken pipe", re.I)
_SURVIVOR = "stopped: its collective failed"
_TIMEOUT_RE = re.compile(r"timed out|timeout|watchdog", re.I)


def collective_failure(exc: BaseException) -> bool:
    """A failure of torch.distributed's transport (a peer died, hung or became unreachable)."""
    names = {t.__name__ for t in type(exc).__mro__}
    return bool(names & set(_COLLECTIVE_TYPES)) or (
        isinstance(exc, RuntimeError) and bool(_COLLECTIVE_RE.search(str(exc)))
    )


def _peer_records(run_dir: Path, rank: int) -> list[dict[str, Any]]:
    """Other ranks' records of this attempt that say how the rank ended, other survivors' left out (their line
    names the same culprit)."""
    found = []
    for path in sorted((run_dir / RANKS).glob("rank-*.json")):
        record = read_json_dict(path)
        if not record or record.get("rank") == rank or record.get("ended_at", 0) < STARTED:
            continue
        if record.get("ended") and _SURVIVOR not in str(record["ended"]):
            found.append(record)
    return found


def peer_summary(run_dir: Path, rank: int, exc: BaseException, cause: str, wait_s: float | None = None) -> str | None:
    """error.txt's first line for a rank whose collective failed (None for any other failure): the dead or hung
    peer's own line (its supervisor's record, waited for up to `wait_s`: PEER_WAIT_S when supervised, else 0, as
    no supervisor writes one), then this rank's part. `cause` is this rank's summary line of `exc`."""
    if not collective_failure(exc):
        return None
    if wait_s is None:
        wait_s = PEER_WAIT_S if supervised() else 0.0
    mine = f"rank {rank} {_SURVIVOR}"
    if _TIMEOUT_RE.search(str(exc)):
        timeout = collective_timeout_s(run_dir / layout.SPEC)
        mine += f": a collective timed out after {timeout:g} s (collective_timeout_s): a peer rank is hung or gone"
    deadline = time.monotonic() + wait_s
    while not (peers := _peer_records(run_dir, rank)) and time.monotonic() < deadline:
        time.sleep(0.1)
    cause = _short(cause)
    if peers:
        facts = "; ".join(_fact(str(p["ended"])) for p in peers)
        return f"{facts}; {mine} ({cause})"
    return f"{mine} ({cause}); a peer rank died or hung: see error-rank*.txt, ranks/ and the submitit logs"


def _short(cause: str) -> str:
    """torch's transport message without its source location and boilerplate (the traceback keeps them)."""
    cause = re.sub(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", cause)
    return re.split(r"\. This is typically caused", cause, maxsplit=1)[0]


def _fact(line: str) -> str:
    """A supervisor's line without its hint in parentheses at the end."""
    return re.sub(r"\s+\((out of memory|an abort|a crash|see its|a hung rank)[^)]*\)\s*$", "", line)
