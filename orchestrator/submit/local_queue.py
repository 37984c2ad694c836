"""`orchestrate submit` without --wait on the local executor: the queue of local cells runs in the background.

Local cells run one at a time (cells sharing a machine distort each other's timings), so someone has to start
each cell when the previous one ends. Without --wait that is a detached queue runner: `orchestrate submit GRID
--wait` started in a session of its own (it survives the command's exit, the terminal's Ctrl-C and hang-up),
its output appended to EXPERIMENT/.submitit/queue.log. Every experiment it serves records it in
EXPERIMENT/queue.json beside the manifest (pid, start, grid, log), so that `status EXPERIMENT` says whether it
still runs and `cancel EXPERIMENT` stops it before cancelling the cells.

Stopping the runner (SIGTERM) never leaves a cell started but unrecorded (orchestrator.submit.deferred_stop).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workloads import layout

QUEUE = "queue.json"  # EXPERIMENT/queue.json: the detached runner serving the experiment
LOG = "queue.log"  # under EXPERIMENT/.submitit/
STOP_WAIT_S = 30.0  # a runner stops at the next instant it is not submitting; submitting a cell takes < 1 s


def start(exp_dirs: Sequence[Path], argv: Sequence[str]) -> tuple[int, Path]:
    """Start `orchestrate <argv>` detached (its own session, no terminal), record it in every experiment it
    serves; returns (pid, log path)."""
    log = exp_dirs[0] / layout.SUBMITIT / LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out, open(os.devnull) as devnull:
        out.write(f"== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} orchestrate {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *argv], stdin=devnull, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    record = {"pid": proc.pid, "started": time.time(), "argv": list(argv), "log": str(log)}
    for exp_dir in dict.fromkeys(exp_dirs):
        layout.write_json_atomic(exp_dir / QUEUE, record)
    return proc.pid, log


def queue_submission(args: argparse.Namespace, root: Path, bench: Path | None) -> str | None:
    """`submit GRID` without --wait (the CLI's `args`; `bench` resolved): when it has local cells to submit, check
    the submission here (a refusal is one line, the time guard's warnings are shown, the report settings are
    recorded, as a submission does), start the runner (`submit GRID --wait` with the same options) and return
    what to tell the user; None when it has none (Slurm cells only: submitted by this command)."""
    from orchestrator.grid import report_settings as grid_report
    from orchestrator.grid.files import load_grids
    from orchestrator.monitor import manifest
    from orchestrator.submit import folder_checks, launch
    from orchestrator.submit.plan import decide

    plans = decide(load_grids(args.grid, args.executor), root, args.only_missing)
    folder_checks.require_writable((p.exp_dir for p in plans), "experiment folder")
    local = [p for p in plans if p.submit and p.grid.executor == "local"]
    if not local:
        return None
    launch.guard(plans, bench, args.strict, print)
    grid_report.record((p.exp_dir, p.grid.report) for p in plans)
    for p in local:  # `status` lists them from now on, as missing until the runner submits each
        manifest.record_planned(p.exp_dir, p.submit, p.grid.executor, p.grid.kind, p.grid.document)
    argv = ["submit", str(Path(args.grid).absolute()), "--wait", "--queue-runner", "--results", str(root),
            "--poll", f"{args.poll:g}"]  # fmt: skip
    argv += ["--executor", args.executor] if args.executor else []
    argv += ["--retry-failed"] if args.only_missing else []
    bench = Path(args.bench).expanduser() if args.bench else None  # a file or folder, else an experiment name
    argv += ["--bench", str(bench.absolute()) if bench.exists() else args.bench] if bench else []
    argv += ["--strict"] if args.strict else []
    pid, log = start([p.exp_dir for p in plans], argv)
    n = sum(len(p.submit) for p in local)
    names = ", ".join(dict.fromkeys(p.grid.name for p in local))
    return (
        f"{n} local cell(s) queued: a background runner (pid {pid}) starts them one at a time and keeps going "
        f"after this command returns; log: {log}; follow: orchestrate status {names}; stop: orchestrate cancel "
        f"{names}"
    )


def _alive(pid: int) -> bool:
    """A runner: the pid runs orchestrator.cli (never a recycled pid) and is not a zombie."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return b"orchestrator.cli" in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def running(exp_dir: Path) -> dict[str, Any] | None:
    """The record of the experiment's runner while it runs, else None."""
    path = exp_dir / QUEUE
    try:
        record = layout.read_json(path)
    except (OSError, ValueError):
        return None
    pid = record.get("pid") if isinstance(record, dict) else None
    return record if isinstance(pid, int) and _alive(pid) else None


def describe(exp_dir: Path) -> str | None:
    """One line for `status`: the runner that still starts this experiment's local cells, or None."""
    record = running(exp_dir)
    if record is None:
        return None
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started", 0))))
    return (
        f"local queue: running as pid {record['pid']} since {since}, starting each waiting cell when the previous "
        f"one ends (log: {record.get('log')})"
    )


def stop(exp_dir: Path) -> int | None:
    """Stop the experiment's runner (SIGTERM, then wait up to STOP_WAIT_S); its pid, or None when none ran."""
    record = running(exp_dir)
    if record is None:
        return None
    pid = int(record["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pid
