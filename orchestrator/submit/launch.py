"""Grid file -> submitit jobs: one array per resource shape, spec.json written before anything is submitted.

What is (re)submitted is decided first, for every cell of every document (orchestrator.submit.plan). Documents are
submitted in file order. Slurm: an evaluate/visualize document waits for the jobs of the documents before it
(`--dependency=afterany:...`); a judge document (orchestrator.grid.judge_plan) starts beside its train document's jobs
(`--dependency=after:...`). Local executor: cells run one at a time on this machine (concurrent cells would
distort each other's timings), so everything before a document has ended when it starts; LocalProgress
(orchestrator.monitor.progress) shows them while they run.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from orchestrator.estimate import time_guard
from orchestrator.grid import judge_plan, snapshot_source
from orchestrator.grid.files import Grid, load_grids
from orchestrator.grid.profiles import executor_kwargs, slurm_parameters
from orchestrator.monitor import manifest, scheduler, status
from orchestrator.monitor.progress import LocalProgress
from orchestrator.submit import deferred_stop, folder_checks, submitit_compat
from orchestrator.submit import summary as submit_summary
from orchestrator.submit.job import CellJob
from orchestrator.submit.plan import RETRY_FLAG, LaunchError, Plan, decide, replan
from workloads import layout
from workloads.spec import RunSpec

DRY_RUN_IDS = 10  # run_ids named in a --dry-run array header (a 10^4-cell array is a summary, not a 250 kB line)
WAITING_KINDS = ("evaluate", "visualize", "judge")  # kinds that read what earlier documents produced
# Variables a job's environment holds that must not reach a job it submits: Slurm's per-job output variables
# (sbatch/srun would apply the parent's allocation) and the torch.distributed rendezvous of the parent.
SCRUB_PREFIXES = ("SLURM_", "SUBMITIT_")
SCRUB_NAMES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
KEEP_NAMES = ("SLURM_CONF", "SUBMITIT_PREEMPT_SIGNAL")  # user settings, not inherited job state


@dataclass
class SubmitResult:
    plans: list[Plan]
    job_ids: dict[str, str] = field(default_factory=dict)  # "<experiment>/<run_id>" -> job id
    arrays: list[str] = field(default_factory=list)  # one line per submission (a local cell, a Slurm array)
    n_arrays: int = 0  # arrays as the scheduler sees them: a local shape is one, run cell by cell
    seconds: float = 0.0
    local: LocalProgress | None = None  # local cells: the last one may still run when submit returns


def submitit_folder(exp_dir: Path) -> Path:
    return exp_dir / layout.SUBMITIT / "%j"


@contextlib.contextmanager
def clean_submission_env() -> Iterator[None]:
    """Hide the calling job's SLURM_*/SUBMITIT_*/rendezvous variables while submitting (restored after)."""
    saved = {
        k: v
        for k, v in os.environ.items()
        if (k.startswith(SCRUB_PREFIXES) or k in SCRUB_NAMES) and k not in KEEP_NAMES
    }
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


# ---------------------------------------------------------------------------------------------------------------
# Executors and sbatch scripts


def array_parameters(grid: Grid, array_name: str, cells: list[RunSpec]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(update_parameters kwargs, AutoExecutor constructor kwargs) of one array; its cells share resources."""
    params = {"name": f"{grid.name}.{array_name}", **slurm_parameters(grid.profile, cells[0])}
    if cells[0].resources.array_parallelism is not None:  # the %N of --array (submitit's default: min(n, 256))
        params["slurm_array_parallelism"] = cells[0].resources.array_parallelism
    return params, executor_kwargs(cells[0])


def make_executor(cluster: str, folder: Path, params: dict[str, Any], ctor: dict[str, Any]) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **ctor)
    executor.update_parameters(**params)
    return executor


def sbatch_script(folder: Path, params: dict[str, Any], ctor: dict[str, Any], n_cells: int) -> str:
    """The exact sbatch script submitit submits for an array of n_cells (a single job when n_cells is 1),
    built by submitit itself (orchestrator.submit.submitit_compat), on any machine."""
    with submitit_compat.slurm_without_srun():
        return submitit_compat.sbatch_text(make_executor("slurm", folder, params, ctor), n_cells)


# ---------------------------------------------------------------------------------------------------------------
# Submission


def _dependency_ids(plans: list[Plan], upto: int, submitted: dict[str, str]) -> list[str]:
    """Job ids (array ids once each) of the cells of documents before `upto` that may still run."""
    ids: set[str] = set()
    for p in plans[:upto]:
        entries = manifest.load(p.exp_dir)
        for cell in p.grid.cells:
            key = f"{p.grid.name}/{cell.run_id}"
            if key in submitted:
                ids.add(submitted[key].split("_")[0])
            elif p.skipped.get(cell.run_id) in ("running", "pending") and cell.run_id in entries:
                job_id = entries[cell.run_id].job_id
                if job_id:
                    ids.add(job_id.split("_")[0])
    return sorted(ids, key=int)


def dependency_type(kind: str) -> str:
    """A judge starts beside the training it follows (judge_plan.DEPENDENCY); the others once it has ended."""
    return judge_plan.DEPENDENCY if kind == "judge" else "afterany"


class Rejected(Exception):
    """sbatch refused an array; the message is sbatch's own (its stderr, on one line)."""


def split(cells: list[RunSpec], limit: int | None) -> list[list[RunSpec]]:
    """Cells in arrays of at most `limit` (None: one array)."""
    if not limit or len(cells) <= limit:
        return [cells]
    return [cells[i : i + limit] for i in range(0, len(cells), limit)]


def _submit_array(
    p: Plan,
    array_name: str,
    cells: list[RunSpec],
    dependency: list[str],
    entries: dict[str, manifest.Entry],
    job: Callable[[str], Any],
) -> dict[str, str]:
    params, ctor = array_parameters(p.grid, array_name, cells)
    if dependency:
        params["slurm_dependency"] = f"{dependency_type(p.grid.kind)}:" + ":".join(dependency)
    for cell in cells:  # the job reads it: written before the job can possibly start
        layout.write_json_atomic(manifest.run_dir(p.exp_dir, cell.run_id) / layout.SPEC, cell.to_dict())
    said = io.StringIO()  # submitit prints sbatch's stderr itself before raising: keep it for the one-line error
    try:
        with clean_submission_env(), submitit_compat.local_jobs_in_own_session(), contextlib.redirect_stderr(said):
            executor = make_executor(p.grid.executor, submitit_folder(p.exp_dir), params, ctor)
            with executor.batch():
                jobs = [executor.submit(job, str(manifest.run_dir(p.exp_dir, c.run_id) / layout.SPEC)) for c in cells]
    except (FailedJobError, FailedSubmissionError) as exc:
        raise Rejected("; ".join(str(exc).strip().splitlines()) or " ".join(said.getvalue().split())) from None
    ids = {c.run_id: str(j.job_id) for c, j in zip(cells, jobs, strict=True)}
    array = str(jobs[0].job_id).split("_")[0]
    for run_id, job_id in ids.items():
        manifest.record(entries, run_id, job_id, array, p.grid.executor, p.grid.kind, p.grid.document)
    manifest.save(p.exp_dir, entries)
    return ids


def _rejection(p: Plan, label: str, cells: list[RunSpec], message: str, before: int) -> LaunchError:
    kept = (
        f"the {before} cell(s) submitted before it are in the manifest: fix the grid or profile, then rerun with "
        f"{RETRY_FLAG}"
        if before
        else "nothing was submitted"
    )
    return LaunchError(
        f"sbatch rejected {p.grid.name} [{p.grid.kind}] array {label} ({len(cells)} cell(s), "
        f"{cells[0].run_id}...): {message}; {kept}"
    )


def guard(plans: list[Plan], bench: Path | None, strict: bool, log: Callable[[str], None]) -> None:
    """Cells predicted to outlast timeout_min x (max_requeues + 1): a warning each; --strict refuses them all."""
    late = time_guard.over_budget(((p.exp_dir, c) for p in plans for c in p.submit), bench)
    if late and strict:
        raise LaunchError([f"{o.line()} (--strict: nothing submitted)" for o in late])
    for o in late:
        log(f"warning: {o.line()}")


def submit(
    grid_path: str | Path,
    root: Path,
    executor: str | None = None,
    only_missing: bool = False,
    log: Callable[[str], None] = print,
    poll_s: float = 5.0,
    job: Callable[[str], Any] | None = None,
    bar: bool = False,
    bench: Path | None = None,
    strict: bool = False,
) -> SubmitResult:
    """Validate, plan and submit every document of a grid file (raises GridError / LaunchError untouched).

    Slurm: one array per resource shape, split into arrays of at most the cluster's MaxArraySize cells (asked
    once per call), submitted at once; evaluate/visualize documents depend on the earlier documents' jobs
    (afterany). An array sbatch rejects raises LaunchError naming it and quoting sbatch; the arrays submitted
    before it stay in the manifest. Local executor: one cell at a time (cells sharing one machine would distort
    each other's timings), so this call returns when the last cell has started; result.local shows them as they
    run (a tqdm bar on stderr when `bar`, else plain lines through `log`) and waits for the last one.
    Before anything is submitted, train cells predicted (from `bench`, else the experiment's bench.csv) to
    outlast timeout_min x (max_requeues + 1) are warned about, or refused when `strict`
    (orchestrator.estimate.time_guard).
    `job` is what each cell runs, called with the path of its spec.json in every task (default: CellJob(), the
    real workload; tests pass a trivial one). It must be importable by the job's Python (pickled by reference).
    """
    job = job or CellJob()
    t0 = time.perf_counter()
    grids = load_grids(grid_path, executor)
    plans = decide(grids, root, only_missing)
    folder_checks.require_writable((p.exp_dir for p in plans), "experiment folder")
    guard(plans, bench, strict, log)
    for p in plans:  # local cells wait their turn here: `status EXPERIMENT` lists those not submitted yet
        if p.grid.executor == "local":
            manifest.record_planned(p.exp_dir, p.submit, p.grid.executor, p.grid.kind, p.grid.document)
    result = SubmitResult(plans)
    n_local = sum(len(p.submit) for p in plans if p.grid.executor == "local")
    # a local cell still running from an earlier submission (one stopped by Ctrl-C) is waited for like our own
    earlier = [
        (p.exp_dir, r) for p in plans if p.grid.executor == "local" for r, why in p.skipped.items() if why == "running"
    ]
    if n_local:
        result.local = LocalProgress(n_local + len(earlier[:1]), log, bar)
        log = result.local.write
        if earlier:
            result.local.start(*earlier[0])
    limit = scheduler.max_array_size() if any(p.submit and p.grid.executor == "slurm" for p in plans) else None
    for line in submit_summary.plan_lines(plans, limit):  # before the first local cell runs and prints
        log(line)
    result.n_arrays = sum(submit_summary.arrays_of(p, limit) for p in plans if p.submit)
    for i, p in enumerate(plans):
        for run_id, why in sorted(p.skipped.items()):
            log(f"skip {p.grid.name}/{run_id}: {why}")
        if not p.submit:
            continue
        dependency: list[str] = []
        if p.grid.kind in WAITING_KINDS and p.grid.executor == "slurm":  # a judge: its train document's jobs only
            dependency = _dependency_ids(plans[i - 1 : i] if p.grid.kind == "judge" else plans, i, result.job_ids)
        with manifest.locked(p.exp_dir):
            if not replan(p, only_missing).submit:  # under the lock: a concurrent submission may have taken them
                continue
            entries = manifest.load(p.exp_dir)
            for array_name, cells in p.arrays():
                # local: one cell per "array", each started once the previous one has ended
                groups = split(cells, limit) if p.grid.executor == "slurm" else [[c] for c in cells]
                for k, group in enumerate(groups, start=1):
                    label = f"{array_name} (part {k} of {len(groups)})" if len(groups) > 1 else array_name
                    if result.local is not None and p.grid.executor == "local":
                        result.local.wait()  # the previous local cell
                    try:
                        with deferred_stop.submitting():  # a runner's stop waits until the job is recorded
                            ids = _submit_array(p, array_name, group, dependency, entries, job)
                    except Rejected as exc:
                        raise _rejection(p, label, group, str(exc), len(result.job_ids)) from None
                    result.job_ids.update({f"{p.grid.name}/{r}": j for r, j in ids.items()})
                    first = next(iter(ids.values())).split("_")[0]
                    after = f" after {','.join(dependency)}" if dependency else ""
                    what = ", ".join(ids) if p.grid.executor == "local" else f"{len(group)} cell(s)"
                    result.arrays.append(
                        f"{p.grid.name} [{p.grid.kind}] {label}: {what} as {p.grid.executor} job {first}{after}"
                    )
                    log(f"submitted {result.arrays[-1]}")
                    if result.local is not None and p.grid.executor == "local":
                        result.local.start(p.exp_dir, group[0].run_id)
    result.seconds = time.perf_counter() - t0
    return result


def dry_run(grid_path: str | Path, root: Path, executor: str | None = None, only_missing: bool = False) -> str:
    """What `submit` would submit: each array's exact sbatch script (Slurm) or its processes (local)."""
    plans = decide(load_grids(grid_path, executor), root, only_missing)
    folder_checks.require_writable((p.exp_dir for p in plans), "experiment folder")
    limit = scheduler.max_array_size() if any(p.submit and p.grid.executor == "slurm" for p in plans) else None
    out: list[str] = []
    for i, p in enumerate(plans):
        for array_name, cells in p.arrays():
            params, ctor = array_parameters(p.grid, array_name, cells)
            head = (
                f"# === {p.grid.name} document {p.grid.document} ({p.grid.kind}), array {array_name}: "
                f"{len(cells)} cell(s): {', '.join(c.run_id for c in cells[:DRY_RUN_IDS])}"
                + (f", ... and {len(cells) - DRY_RUN_IDS} more" if len(cells) > DRY_RUN_IDS else "")
            )
            head += "".join(f"\n{line}" for line in snapshot_source.describe(cells, root))
            if p.grid.executor == "local":
                tasks = params["tasks_per_node"]
                out += [
                    head,
                    f"# local executor: would run these cells one at a time on this machine, each as {tasks} "
                    f"process(es) of workloads.entry reading its runs/<run_id>/spec.json (no sbatch script, no Slurm)",
                    "",
                ]
                continue
            if p.grid.kind == "judge":
                params["slurm_dependency"] = f"{judge_plan.DEPENDENCY}:<job ids of document {p.grid.document}>"
            elif p.grid.kind in WAITING_KINDS and i > 0:  # file documents (a judge shares its train one's number)
                params["slurm_dependency"] = f"afterany:<job ids of documents 1-{p.grid.document - 1}>"
            parts = split(cells, limit)  # as submit splits them at the cluster's MaxArraySize
            if len(parts) > 1:
                head += f" (submitted as {len(parts)} arrays of at most {limit}: MaxArraySize)"
            out += [head, *(sbatch_script(submitit_folder(p.exp_dir), params, ctor, len(part)) for part in parts)]
    for p in plans:
        out += [f"# skip {p.grid.name}/{r}: {why}" for r, why in sorted(p.skipped.items())]
    return "\n".join(out).rstrip("\n") + "\n" if out else "# nothing to submit\n"


def cancel(exp_dir: Path, log: Callable[[str], None] = print) -> int:
    """Cancel every running/pending cell of an experiment; returns how many were cancelled."""
    entries = manifest.load(exp_dir)
    active = [c for c in status.poll(exp_dir) if c.state in ("running", "pending") and c.job_id]
    scheduler.cancel_slurm([str(c.job_id) for c in active if entries[c.run_id].executor == "slurm"])
    scheduler.cancel_local([str(c.job_id) for c in active if entries[c.run_id].executor == "local" and c.job_id])
    for c in active:
        log(f"cancelled {c.run_id} (job {c.job_id})")
    return len(active)
