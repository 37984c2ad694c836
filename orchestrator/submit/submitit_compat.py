"""Every use of a name submitit does not document, in one module (pyproject.toml bounds submitit below 1.6).

submitit has no public way to do three things the orchestrator needs:
- print the exact sbatch script of a submission without submitting it (`orchestrate submit --dry-run`):
  AutoExecutor._executor, SlurmExecutor._submitit_command_str and _make_submission_file_text, and the
  "map_count" parameter that makes it an array script, the way SlurmExecutor._internal_process_submissions does;
- build a SlurmExecutor on a machine without srun (dry runs anywhere): SlurmExecutor.affinity is overridden
  while the script is built;
- requeue a job with an `scontrol` that survives slurmstepd's SIGTERM: SlurmJobEnvironment._requeue is replaced
  in every job process (orchestrator.submit.job installs it);
- start a local job's controller in its own session (submitit.local.local.start_controller's Popen), so the
  Ctrl-C that stops `orchestrate submit --wait` does not reach the cell it started: `local_jobs_in_own_session`.
`missing_private_names` lists what the installed submitit lacks of these; tests/test_launch.py fails naming it,
so a submitit release that drops one is caught by the suite, not by a dry run on a cluster.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import submitit
from submitit.core import logger
from submitit.local import local as submitit_local
from submitit.slurm import slurm as submitit_slurm
from submitit.slurm.slurm import SlurmExecutor, SlurmJobEnvironment

# (owner, attribute) pairs read or replaced here; instance attributes are checked on a constructed executor.
CLASS_NAMES = (
    (SlurmExecutor, "_submitit_command_str"),
    (SlurmExecutor, "_make_submission_file_text"),
    (SlurmExecutor, "affinity"),
    (SlurmJobEnvironment, "_requeue"),
)
INSTANCE_NAMES = (("AutoExecutor", "_executor"), ("SlurmExecutor", "max_num_timeout"), ("SlurmExecutor", "folder"))
ARRAY_PARAMETER = "map_count"  # a keyword of submitit.slurm.slurm._make_sbatch_string
MODULE_NAMES = ((submitit_local, "start_controller"), (submitit_local, "subprocess"))


class _SessionSubprocess:
    """The subprocess module as start_controller sees it while patched: Popen starts a new session."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> Any:  # subprocess's own name
        return subprocess.Popen(*args, start_new_session=True, **kwargs)


@contextlib.contextmanager
def local_jobs_in_own_session() -> Iterator[None]:
    """Local jobs submitted meanwhile get a controller in a session (and process group) of its own: a terminal's
    SIGINT/SIGHUP to the submitting command's group leaves them running; `orchestrate cancel` still stops them."""
    saved = submitit_local.__dict__["subprocess"]
    setattr(submitit_local, "subprocess", _SessionSubprocess())  # noqa: B010 - the patch itself (a module global)
    try:
        yield
    finally:
        setattr(submitit_local, "subprocess", saved)  # noqa: B010


@contextlib.contextmanager
def slurm_without_srun() -> Iterator[None]:
    """SlurmExecutor refuses to exist where srun is missing; a dry run must print the script on any machine."""
    saved = SlurmExecutor.__dict__["affinity"]
    SlurmExecutor.affinity = classmethod(lambda cls: 2)  # type: ignore[assignment,method-assign]  # the patch itself
    try:
        yield
    finally:
        SlurmExecutor.affinity = saved  # type: ignore[method-assign]  # undoing the patch


def slurm_executor(executor: submitit.AutoExecutor) -> SlurmExecutor:
    """The SlurmExecutor inside an AutoExecutor built with cluster="slurm"."""
    inner = executor._executor
    if not isinstance(inner, SlurmExecutor):
        raise TypeError(f"expected an AutoExecutor of cluster slurm; got {type(inner).__name__}")
    return inner


def sbatch_text(executor: submitit.AutoExecutor, n_cells: int) -> str:
    """The sbatch script `executor` submits for n_cells (a single job when n_cells is 1); call it inside
    `slurm_without_srun()` when srun may be missing."""
    slurm_ex = slurm_executor(executor)
    command = slurm_ex._submitit_command_str
    if n_cells == 1:
        return slurm_ex._make_submission_file_text(command, "dry-run")
    array_ex = SlurmExecutor(slurm_ex.folder, slurm_ex.max_num_timeout)
    array_ex.update_parameters(**slurm_ex.parameters)
    array_ex.parameters[ARRAY_PARAMETER] = n_cells
    return array_ex._make_submission_file_text(command, "dry-run")


def _requeue_ignoring_sigterm(self: SlurmJobEnvironment, countdown: int) -> None:
    """submitit's requeue, but `scontrol` ignores SIGTERM.

    `scontrol requeue` makes slurmstepd SIGTERM every process of the step, sometimes before scontrol itself has
    exited; submitit then records an error although the requeue happened (~1 in 10 tries on the test cluster).
    """
    subprocess.check_call(
        ["scontrol", "requeue", self.job_id],
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN),
    )
    logger.get_logger().info(f"Requeued job {self.job_id} ({countdown} remaining timeouts)")


def install_requeue_fix() -> None:
    """Replace SlurmJobEnvironment._requeue in this process (idempotent)."""
    SlurmJobEnvironment._requeue = _requeue_ignoring_sigterm  # type: ignore[method-assign]  # the patch itself


def missing_private_names() -> list[str]:
    """Dotted names this module relies on that the installed submitit lacks (empty when all are there)."""
    missing = [f"{owner.__module__}.{owner.__qualname__}.{name}" for owner, name in CLASS_NAMES
               if not hasattr(owner, name)]  # fmt: skip
    missing += [f"{owner.__name__}.{name}" for owner, name in MODULE_NAMES if not hasattr(owner, name)]
    if ARRAY_PARAMETER not in inspect.signature(submitit_slurm._make_sbatch_string).parameters:
        missing.append(f"submitit.slurm.slurm._make_sbatch_string({ARRAY_PARAMETER}=...)")
    if missing:
        return missing  # constructing an executor below would fail on the same names
    with tempfile.TemporaryDirectory() as folder, slurm_without_srun():
        auto = submitit.AutoExecutor(folder=folder, cluster="slurm")
        objects: dict[str, Any] = {"AutoExecutor": auto, "SlurmExecutor": getattr(auto, "_executor", None)}
        missing += [f"submitit.{owner}.{name} (instance attribute)" for owner, name in INSTANCE_NAMES
                    if not hasattr(objects[owner], name)]  # fmt: skip
    return missing
