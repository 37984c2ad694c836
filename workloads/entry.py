"""The job entry point: one RunSpec (a run directory's spec.json) -> the workload of its kind.

Every task (rank) calls `run(spec_path)`: in a submitted job as `python -m workloads.entry SPEC_JSON`, the child
of orchestrator.submit.job.CellJob's supervisor (workloads.runtime.supervisor: it records a rank killed by a signal or
hung, and
requeues on preemption/timeout; the next attempt resumes from checkpoint-last.pt); torchrun/srun can run the same
command directly.
Rank 0 holds the run directory (workloads.runtime.runlock) before anything is written there: a second job that finds it
held by a live job stops on every rank with one line naming the holder, and writes nothing. Rank 0 writes
env.json first and result.json last (its presence means the run finished); a failure writes error.txt (rank 0)
or error-rank{r}.txt (other ranks) and re-raises: its FIRST line is the one-line summary `Type: message` that
`orchestrate status` and `submit --wait` show, the traceback follows.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workloads import layout
from workloads.runtime import allocator, distributed, preempt, ranks, runinfo, runlock
from workloads.spec import KINDS, RunSpec, from_dict

# kind -> module whose main(spec, run_dir, dist) -> dict runs it (imported lazily: each pulls different deps;
# the kinds import entry, never the other way round)
KIND_MODULES = {kind: f"workloads.kinds.{kind}" for kind in KINDS}

Main = Callable[[RunSpec, Path, distributed.Dist], dict[str, Any]]


def error_path(run_dir: Path, rank: int) -> Path:
    return ranks.error_path(run_dir, rank)


def summary_line(exc: BaseException) -> str:
    """What failed, in one line (error.txt's first line; `orchestrate status` shows it)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (
            f"no space left on device writing {exc.filename or '(a file of the run)'}: every file of the run is "
            "its old or its new version; free space, then resubmit with --retry-failed (the run resumes from its "
            "last complete checkpoint)"
        )
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def error_text(exc: BaseException) -> str:
    """error.txt: the one-line summary, a blank line, the traceback."""
    return f"{summary_line(exc)}\n\n{traceback.format_exc()}"


def _record_failure(run_dir: Path, rank: int, exc: BaseException) -> None:
    """error.txt, or (when even that cannot be written, e.g. on a full disk) the summary on stderr. A failed
    collective's first line names the peer that died or hung (workloads.runtime.ranks.peer_summary)."""
    try:
        peer = ranks.peer_summary(run_dir, rank, exc, summary_line(exc))
        text = error_text(exc) if peer is None else f"{peer}\n\n{traceback.format_exc()}"
        layout.write_text_atomic(error_path(run_dir, rank), text)
    except OSError as write_error:
        print(f"error: {summary_line(exc)} (error.txt not written: {write_error})", file=sys.stderr, flush=True)


def _hold(run_dir: Path, dist: distributed.Dist) -> runlock.RunLock | None:
    """Rank 0 takes the run directory's lock; every rank learns the outcome (one collective), so a refused job
    stops on all ranks at once instead of leaving the others waiting in the next collective."""
    lock, refusal = None, None
    if dist.is_main:
        try:
            lock = runlock.acquire(run_dir)
        except runlock.RunDirBusy as exc:
            refusal = str(exc)
    if dist.distributed:
        refusal = distributed.all_gather_object(dist, refusal)[0]
    if refusal is not None:
        runlock.release(lock)
        raise runlock.RunDirBusy(refusal)
    return lock


def run(spec_path: str | Path, dist: distributed.Dist | None = None) -> dict[str, Any]:
    """Run the job described by RUN_DIR/spec.json in RUN_DIR; returns the workload's result dict.
    `dist` None: detect the process layout (torchrun env, submitit/Slurm job, else a single process)."""
    allocator.tune_malloc()  # before the first large allocations (dataset, model)
    spec_path = Path(spec_path).resolve()
    spec = from_dict(layout.read_json(spec_path))
    run_dir = spec_path.parent
    dist = dist or distributed.setup(spec)
    try:
        lock = _hold(run_dir, dist)
    except runlock.RunDirBusy:
        distributed.cleanup()
        raise
    preempt.install(cooperative=spec.kind == "train")  # SIGUSR2: train saves mid-epoch first; Preempted: no error.txt
    try:
        ranks.announce(run_dir, dist.rank)  # ranks/rank-{r}.json; this rank's stale error file goes
        if dist.is_main:  # stale markers of an earlier attempt (a resubmission extends or retries the run)
            for name in (layout.RESULT, layout.ERROR):
                (run_dir / name).unlink(missing_ok=True)
        env = runinfo.collect_env(dist)  # collective
        if dist.is_main:
            runinfo.update_env_json(run_dir, env)
        main: Main = importlib.import_module(KIND_MODULES[spec.kind]).main
        result = main(spec, run_dir, dist)
        if dist.is_main:
            stamp = {"run_id": spec.run_id, "kind": spec.kind, "world_size": dist.world_size}
            record = {**stamp, **result, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            layout.write_json_atomic(run_dir / layout.RESULT, record)
        return result
    except Exception as exc:
        _record_failure(run_dir, dist.rank, exc)
        raise
    finally:
        preempt.uninstall()
        runlock.release(lock)
        distributed.cleanup()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workloads.entry", description=__doc__)
    parser.add_argument("spec", type=Path, help="RUN_DIR/spec.json")
    spec = parser.parse_args(argv).spec
    ranks.report(lambda: run(spec), summary_line)  # the supervisor (if any) reads the result or the failure


if __name__ == "__main__":
    cli()
