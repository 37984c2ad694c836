"""Submit-time rules of evaluate.source_snapshot: the source run must write snapshots (snapshot_every > 0), and the
cell is sent with evaluate.source_judged, the judged.csv of the judge that follows that run, as an absolute path
under the results root (the evaluate job picks the snapshot from it when it runs: workloads.snapshot_choice).

The source run and its judge are looked up in the grid file being submitted first (its judge documents come from
orchestrator.grid.judge_plan), then in the results root (the source run's and the judges' spec.json), so a final
judge submitted after its training in another file works too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from workloads import layout
from workloads.spec import RunSpec, from_dict

KEY = "evaluate.source_snapshot"


def source_of(cell: RunSpec) -> tuple[str, str]:
    """(experiment, run_id) of an evaluate cell's source run."""
    return cell.evaluate.source_experiment or cell.experiment, cell.evaluate.source_run or ""


def asks(cell: RunSpec) -> bool:
    return cell.kind == "evaluate" and cell.evaluate.source_snapshot is not None


def _in_file(cells: Iterable[RunSpec], experiment: str, run_id: str) -> RunSpec | None:
    return next((c for c in cells if (c.experiment, c.run_id) == (experiment, run_id) and c.kind == "train"), None)


def refusal(source: RunSpec) -> str | None:
    """Why an evaluate cell cannot read snapshots of `source` (None: it can)."""
    if source.snapshot_every > 0:
        return None
    return (
        f"run {source.run_id} writes no snapshots (snapshot_every is 0); set snapshot_every on it "
        "or use evaluate.checkpoint best/last"
    )


def file_problems(cells: list[RunSpec]) -> list[tuple[RunSpec, str]]:
    """(cell, why) for each evaluate cell of a grid file asking for snapshots of a run of the same file that
    writes none (sources outside the file are checked at submit time, against the results root)."""
    out = []
    for cell in cells:
        source = _in_file(cells, *source_of(cell)) if asks(cell) else None
        why = refusal(source) if source is not None else None
        if why is not None:
            out.append((cell, why))
    return out


def _recorded(root: Path, experiment: str, run_id: str) -> RunSpec | None:
    path = layout.run_dir(root, experiment, run_id) / layout.SPEC
    return from_dict(layout.read_json(path)) if path.is_file() else None


def _judge_of(cells: Iterable[RunSpec], root: Path, experiment: str, run_id: str) -> str | None:
    """run_id of the judge following (experiment, run_id): a judge cell of this file, else a recorded one."""
    for c in cells:
        if c.kind == "judge" and c.experiment == experiment and run_id in c.judge.source_runs:
            return c.run_id
    runs = layout.runs_dir(root, experiment)
    for spec_path in sorted(runs.glob(f"*/{layout.SPEC}")) if runs.is_dir() else []:
        data = layout.read_json(spec_path)
        if data.get("kind") == "judge" and run_id in data.get("judge", {}).get("source_runs", []):
            return str(data["run_id"])
    return None


def resolve(cell: RunSpec, cells: list[RunSpec], root: Path) -> RunSpec:
    """`cell` with evaluate.source_judged set; ValueError (one line) when its source run has no snapshots or no
    judge follows it."""
    if not asks(cell) or cell.evaluate.source_judged:
        return cell
    experiment, run_id = source_of(cell)
    where = f"{cell.experiment}/{cell.run_id}: {KEY}"
    source = _in_file(cells, experiment, run_id) or _recorded(root, experiment, run_id)
    if source is None:
        raise ValueError(f"{where}: source run {experiment}/{run_id} is neither in this grid file nor recorded "
                         f"under {root} (its snapshot settings are unknown)")  # fmt: skip
    if (why := refusal(source)) is not None:
        raise ValueError(f"{where}: {why}")
    judge = _judge_of(cells, root, experiment, run_id)
    if judge is None:
        raise ValueError(f"{where}: no judge follows {experiment}/{run_id} (submit its training document with it)")
    judged = layout.run_dir(root, experiment, judge) / layout.JUDGED
    return dataclasses.replace(cell, evaluate=dataclasses.replace(cell.evaluate, source_judged=str(judged)))


def describe(cells: list[RunSpec], root: Path) -> list[str]:
    """Dry-run lines: which judge's rows each resolved cell of an array picks its snapshot from."""
    return [
        f"# {c.run_id}: evaluate.source_snapshot {c.evaluate.source_snapshot} of {c.evaluate.source_run}, "
        f"judged in {Path(c.evaluate.source_judged).relative_to(root)}"
        for c in cells
        if asks(c) and c.evaluate.source_judged
    ]
