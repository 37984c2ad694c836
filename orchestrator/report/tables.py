"""The experiment's CSVs as the report reads them (runs.csv, epochs.csv, bench.csv, robustness.csv,
features.csv, as orchestrator.collect names and writes them), and the tables derived from them that several
report sections share (training runs, robustness per dataset, training eps, estimate vs measured).

Reads CSVs only: it never collects run directories (`orchestrate report` runs collect as its own step first),
so a folder of CSVs copied from a cluster reports the same as the cluster's experiment folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from orchestrator import collect
from orchestrator.errors import UserError
from orchestrator.estimate.compare import COMPARE_COLUMNS, compare_runs

EPS_TOL = 1e-9  # eps values of two CSVs compare equal within this


class ReportError(UserError, ValueError):
    """Nothing to report on, or a bad --baseline; one line naming the folder or the value."""


@dataclass
class Tables:
    """The experiment's CSVs (None where absent); epochs.csv is read lazily (it is the large one)."""

    exp_dir: Path
    runs: pd.DataFrame | None
    bench: pd.DataFrame | None
    robustness: pd.DataFrame | None
    features: pd.DataFrame | None = None
    _epochs_done: dict[str, int] | None = field(default=None, repr=False)

    def epochs_done(self) -> dict[str, int]:
        """Completed epochs per run_id (rows of epochs.csv; collect may give it as a runs.csv column instead)."""
        if self._epochs_done is None:
            path = self.exp_dir / collect.EPOCHS_CSV
            if path.exists():
                df = pd.read_csv(path, usecols=["run_id"], dtype={"run_id": str})
                self._epochs_done = {str(k): int(v) for k, v in df["run_id"].value_counts().items()}
            else:
                self._epochs_done = {}
        return self._epochs_done


def _read(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    df = pd.read_csv(path, dtype={"run_id": str, "job_ids": str})
    return df if len(df.columns) else None


def load_tables(exp_dir: Path) -> Tables:
    """Read the experiment's CSVs as they are (collecting run directories is the caller's step: the CLI's)."""
    exp_dir = Path(exp_dir).expanduser()
    if not exp_dir.is_dir():
        raise ReportError(f"{exp_dir}: no such experiment folder")
    tables = Tables(
        exp_dir,
        _read(exp_dir / collect.RUNS_CSV),
        _read(exp_dir / collect.BENCH_CSV),
        _read(exp_dir / collect.ROBUSTNESS_CSV),
        _read(exp_dir / collect.FEATURES_CSV),
    )
    if tables.runs is None and tables.bench is None and tables.robustness is None:
        raise ReportError(f"{exp_dir}: no runs.csv, bench.csv or robustness.csv (nothing to report)")
    return tables


def train_runs(runs: pd.DataFrame | None) -> pd.DataFrame:
    """The rows of runs.csv that are training runs (kind column absent: all rows)."""
    if runs is None:
        return pd.DataFrame(columns=["run_id", "dataset", "method", "world_size", "state"])
    return runs[runs["kind"] == "train"] if "kind" in runs.columns else runs


def robustness_by_dataset(tables: Tables) -> pd.DataFrame | None:
    """robustness.csv with a dataset column: its own, else the run's in runs.csv, else the only dataset run."""
    rob = tables.robustness
    if rob is None:
        return None
    if "dataset" in rob.columns:
        return rob
    runs = tables.runs
    datasets: dict[str, str] = {}
    if runs is not None and "dataset" in runs.columns:
        datasets = dict(zip(runs["run_id"].astype(str), runs["dataset"].astype(str), strict=True))
    only = sorted(set(datasets.values()))
    fallback = only[0] if len(only) == 1 else ""
    return rob.assign(dataset=rob["run_id"].astype(str).map(datasets).fillna(fallback))


def training_eps(tables: Tables) -> dict[str, float]:
    """Training eps per dataset ("" when runs.csv cannot tell datasets apart), from the adversarial runs."""
    runs = train_runs(tables.runs)
    if runs.empty or "attack_eps" not in runs.columns:
        return {}
    adv = runs[runs["method"] != "standard"].dropna(subset=["attack_eps"])
    if adv.empty:
        return {}
    return {str(d): float(g["attack_eps"].mode().min()) for d, g in adv.groupby("dataset")}


def estimates_vs_measured(tables: Tables) -> pd.DataFrame:
    """Each finished train run's last-epoch time against `orchestrate estimate`'s prediction from this
    experiment's bench (orchestrator.estimate.compare.compare_runs; empty without runs or bench)."""
    if tables.bench is None or tables.runs is None:
        return pd.DataFrame(columns=list(COMPARE_COLUMNS))
    return compare_runs(tables.runs, tables.bench)


def number(value: object) -> float | None:
    """A CSV value as a float; None when empty, NaN or not a number."""
    try:
        out = float(value)  # type: ignore[arg-type]  # any object: float() raising TypeError means "not a number"
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def autoattack_of(
    rob: pd.DataFrame | None, run_id: str, eps: float | None
) -> tuple[float | None, float | None, str, int | None]:
    """(AutoAttack accuracy, PGD accuracy of the same evaluation, version, images) at the run's training eps."""
    if rob is None or "aa_acc" not in rob.columns or eps is None:
        return None, None, "", None
    sel = rob[(rob["run_id"].astype(str) == run_id) & ((rob["eps"].astype(float) - eps).abs() < EPS_TOL)]
    sel = sel[pd.to_numeric(sel["aa_acc"], errors="coerce").notna()]
    if sel.empty:
        return None, None, "", None
    if "checkpoint" in sel.columns and (sel["checkpoint"] == "last").any():
        sel = sel[sel["checkpoint"] == "last"]
    row = sel.iloc[-1]
    version = str(row["aa_version"]) if "aa_version" in sel.columns and pd.notna(row["aa_version"]) else ""
    n = number(row["n"]) if "n" in sel.columns else None
    return number(row["aa_acc"]), number(row["adv_acc"]), version, None if n is None else int(n)
