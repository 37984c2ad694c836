"""The callable every submitted job runs: one grid cell, given the path of its spec.json.

Every task (rank) of the job calls it. The run directory holds all progress (checkpoint-last.pt each epoch), so
the object itself carries no state: after a timeout or preemption submitit pickles it again, requeues the job,
and the new attempt resumes from the run directory. An admin `scontrol requeue` restarts the job from the
original pickle without calling checkpoint(); it resumes from the same checkpoint all the same.

The workload runs as a child process of each task (workloads.runtime.supervisor): the task process stays torch-free,
sees
the child die or hang, writes that rank's error file when the child cannot (a signal), and turns the child's
"requeue me" exit into submitit's requeue.
"""

from __future__ import annotations

from typing import Any

import submitit

from orchestrator.submit import submitit_compat

# Applied wherever this module is imported, i.e. in every job process (it unpickles CellJob from here).
submitit_compat.install_requeue_fix()


class CellJob(submitit.helpers.Checkpointable):
    """Run one cell: `CellJob()(spec_path)` -> the workload's result (rank 0 also writes result.json)."""

    def __call__(self, spec_path: str) -> dict[str, Any]:
        from workloads.runtime import supervisor  # torch-free; the child it starts imports torch

        return supervisor.run_supervised(spec_path)

    def checkpoint(self, spec_path: str) -> submitit.helpers.DelayedSubmission:
        # submitit's SIGUSR2 handler (rank 0): the child gets SIGUSR2 and saves what it saves (train: a mid-epoch
        # checkpoint, workloads.runtime.preempt) before it exits, within a bound; the requeued call resumes from it.
        from workloads.runtime import supervisor

        supervisor.on_preemption()
        return submitit.helpers.DelayedSubmission(CellJob(), spec_path)
