"""What `orchestrate submit` says when Ctrl-C stops it: the truth about each cell of the grid, in one line.

Slurm cells are the scheduler's and keep running. A local cell runs in a session of its own
(orchestrator.submit.submitit_compat.local_jobs_in_own_session), so the Ctrl-C meant for `orchestrate` does not reach
it:
it keeps running to its end. The local cells still waiting for their turn are not submitted (the queue lived in
the stopped command); the manifest lists them, `status EXPERIMENT` shows them as missing, and a plain resubmit
submits them.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.monitor import manifest, status

SHOWN = 3  # run ids named per group; the rest are counted


def _names(exp_dir: Path, ids: list[str]) -> str:
    named = ", ".join(f"{exp_dir.name}/{r}" for r in ids[:SHOWN])
    return named + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


def message(experiments: dict[Path, list[str]]) -> str:
    """One line: which cells keep running (and where) and which were not submitted."""
    parts: list[str] = []
    for exp_dir, ids in experiments.items():
        entries = manifest.load(exp_dir)
        cells = status.poll(exp_dir, ids)
        alive = [c.run_id for c in cells if c.state in ("running", "pending")]
        local = [r for r in alive if r in entries and entries[r].executor == "local"]
        slurm = [r for r in alive if r not in local]
        waiting = [c.run_id for c in cells if c.state == "missing"]
        if local:
            parts.append(
                f"{len(local)} local cell(s) keep running in their own process group: {_names(exp_dir, local)} "
                f"(follow: orchestrate status {exp_dir.name}; stop: orchestrate cancel {exp_dir.name})"
            )
        if slurm:
            parts.append(f"{len(slurm)} Slurm cell(s) keep running or pending: {_names(exp_dir, slurm)}")
        if waiting:
            parts.append(
                f"{len(waiting)} cell(s) not submitted: {_names(exp_dir, waiting)} (submit the grid again to run them)"
            )
    return "interrupted: " + ("; ".join(parts) if parts else "nothing was left running")
