"""The judge jobs of a grid: a train document whose cells write snapshots (snapshot_every > 0) gets one judge cell
per array (resource shape), following that array's snapshotting cells, in a judge document right after it.

A judge cell (kind judge) takes its settings from the `judge` section of the first cell it follows (a grid's
defaults.judge; source_runs are set here, source_dirs at submit time by orchestrator.submit.plan), its data root,
threads
and collective timeout from that cell too, `judge.ranks` processes on one node and the array's resources (time
limit, requeues: it lives as long as the training). Its run_id is judge-<array> (judge-d<document>-<array> when
several documents of one experiment have judges). On Slurm the judge document depends on the training with
`after:` (orchestrator.submit.launch): it starts once its training has started and follows it; on the local executor it
runs after the training cells, which have ended by then.
"""

from __future__ import annotations

import dataclasses

from workloads.spec import RunSpec, Shape

DEPENDENCY = "after"  # start once the training has started (afterany, the evaluate kind's: once it has ended)


def followed(cells: list[RunSpec]) -> list[RunSpec]:
    return [c for c in cells if c.kind == "train" and c.snapshot_every > 0]


def judge_cell(experiment: str, run_id: str, cells: list[RunSpec]) -> RunSpec:
    """The judge cell that follows `cells` (all with snapshots)."""
    first = cells[0]
    judge = dataclasses.replace(first.judge, source_experiment=None, source_runs=[c.run_id for c in cells],
                                source_dirs=[])  # fmt: skip
    return RunSpec(
        experiment=experiment, run_id=run_id, kind="judge", data_root=first.data_root, threads=first.threads,
        collective_timeout_s=first.collective_timeout_s, shape=Shape(1, judge.ranks),
        resources=dataclasses.replace(first.resources, array_parallelism=None), judge=judge,
    )  # fmt: skip


def judge_cells(experiment: str, arrays: list[tuple[str, list[RunSpec]]], tag: str = "") -> list[RunSpec]:
    """One judge cell per array with snapshotting cells; `tag` (e.g. "d2-") goes into the run_ids."""
    return [judge_cell(experiment, f"judge-{tag}{name}", followed(cells)) for name, cells in arrays if followed(cells)]
