"""The estimate as a guard at submit time: a train cell whose predicted wall-clock exceeds what Slurm will give
it, timeout_min x (max_requeues + 1) attempts, would be killed before it finishes (each attempt resumes from the
last checkpoint, so the attempts add up). `orchestrate submit` warns with the numbers; `--strict` refuses.

The prediction is orchestrator.estimate's, from a bench.csv: the one `submit --bench` names, else the
experiment's own (results/<experiment>/bench.csv, written by `orchestrate collect` after a `kind: bench` run).
Without bench data nothing is checked (and nothing is said: most grids are submitted before any bench).
The same prediction serves `orchestrate status --watch` as the ETA of a cell that has not finished an epoch yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import UserError
from workloads import layout
from workloads.spec import RunSpec

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class OverBudget:
    """One cell predicted to outlast its time budget."""

    experiment: str
    run_id: str
    predicted_s: float
    timeout_min: int
    attempts: int  # max_requeues + 1
    bench: Path

    @property
    def budget_s(self) -> float:
        return 60.0 * self.timeout_min * self.attempts

    def line(self) -> str:
        return (
            f"{self.experiment}/{self.run_id}: predicted {_minutes(self.predicted_s)} (bench {self.bench}) exceeds "
            f"its time budget of {self.attempts} attempt(s) x timeout_min {self.timeout_min} = "
            f"{_minutes(self.budget_s)}; raise resources.timeout_min or resources.max_requeues"
        )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def bench_file(exp_dir: Path, given: Path | None = None) -> Path | None:
    """The bench.csv to predict from: `given` (a file, or an experiment folder holding one), else the
    experiment's own; None when there is none."""
    if given is not None:
        path = given / layout.BENCH if given.is_dir() else given
        if not path.is_file():
            raise UserError(f"--bench: {given} is neither a bench.csv file nor a folder holding one")
        return path
    own = exp_dir / layout.BENCH
    return own if own.is_file() else None


def read(path: Path) -> pd.DataFrame:
    from orchestrator.estimate.bench_costs import read_bench  # pandas: only when there is a bench to read

    return read_bench(path)


def predicted_s(spec: RunSpec, bench: pd.DataFrame) -> float | None:
    """Predicted wall-clock of a train cell; None for other kinds or when the bench has no matching rows."""
    from orchestrator.estimate.bench_costs import EstimateError
    from orchestrator.estimate.model import estimate_cells

    if spec.kind != "train":
        return None
    try:
        return float(estimate_cells([spec], bench)["predicted_s"].iloc[0])
    except EstimateError:
        return None


def over_budget(cells: Iterable[tuple[Path, RunSpec]], given: Path | None = None) -> list[OverBudget]:
    """Every (experiment folder, cell) predicted to outlast timeout_min x (max_requeues + 1)."""
    benches: dict[Path, pd.DataFrame] = {}  # each bench.csv read once
    out = []
    for exp_dir, spec in cells:
        path = bench_file(exp_dir, given) if spec.kind == "train" else None
        if path is None:
            continue
        if path not in benches:
            benches[path] = read(path)
        seconds = predicted_s(spec, benches[path])
        attempts = spec.resources.max_requeues + 1
        if seconds is not None and seconds > 60.0 * spec.resources.timeout_min * attempts:
            out.append(OverBudget(exp_dir.name, spec.run_id, seconds, spec.resources.timeout_min, attempts, path))
    return out
