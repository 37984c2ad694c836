"""When a run has reached the target: the judged rows a time to target is read from, and the rule (one owner).

Judged rows: results/<exp>/snapshots.csv when it exists (the off-clock judge: one row per judged snapshot, train_s
and elapsed_s cumulative, n images), else epochs.csv's evaluated epochs (on the clock: train_s per epoch, summed
here into the cumulative train clock; n = the run's val_subset from runs.csv). Both become the columns run_id,
epoch, elapsed_s, train_clock, adv_acc, clean_acc, n.

The rule, "sustained": the first judged row at or above the target from which every later row of the run stays at
or above the target minus one binomial standard error (sqrt(t (1 - t) / n), the judge's own noise at the target):
one lucky evaluation between two low ones does not count. "first hit" (the first row at or above the target) is
kept beside it, so the report can show how the ranking changes. A run whose best robust or clean accuracy is
within CHANCE_MARGIN of chance (1 / the dataset's classes) learned nothing: it reaches nothing (at_chance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from orchestrator.report.tables import EPS_TOL
from workloads import catalog

SNAPSHOTS_CSV = "snapshots.csv"  # written by collect beside epochs.csv (the judge's rows)
EPOCHS_CSV = "epochs.csv"
CHANCE_MARGIN = 0.01  # accuracy within 1 point of 1/classes: the run learned nothing
SUSTAINED = "sustained"
FIRST_HIT = "first hit"
RULE_TEXT = (
    "reached = the first judged evaluation at or above the target after which every later one of the run stays at "
    "or above the target minus one binomial standard error (sqrt(t(1-t)/n), n the images judged)"
)
COLUMNS = ["run_id", "epoch", "elapsed_s", "train_clock", "adv_acc", "clean_acc", "n"]


def judged_table(exp_dir: Path, runs: pd.DataFrame | None) -> tuple[pd.DataFrame, str]:
    """(the judged rows in COLUMNS, their source: "snapshots" | "epochs"); epochs.csv rows keep their other columns."""
    snapshots = exp_dir / SNAPSHOTS_CSV
    if snapshots.exists():
        df = pd.read_csv(snapshots, dtype={"run_id": str})
        out = df.assign(train_clock=pd.to_numeric(df["train_s"], errors="coerce"))
        if "n" not in out.columns:
            out = out.assign(n=math.nan)
        if "clean_acc" not in out.columns:
            out = out.assign(clean_acc=math.nan)
        return out, "snapshots"
    path = exp_dir / EPOCHS_CSV
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS), "epochs"
    df = pd.read_csv(path, dtype={"run_id": str})
    df = df.drop_duplicates(["run_id", "epoch"], keep="last").sort_values(["run_id", "epoch"], kind="stable")
    train = pd.to_numeric(df["train_s"], errors="coerce") if "train_s" in df.columns else pd.Series(math.nan, df.index)
    df = df.assign(train_clock=train.fillna(0.0).groupby(df["run_id"]).cumsum() if "train_s" in df.columns else train)
    n: dict[str, float] = {}
    if runs is not None and "val_subset" in runs.columns:
        n = {str(r): float(v) for r, v in zip(runs["run_id"], pd.to_numeric(runs["val_subset"], errors="coerce"),
                                              strict=True)}  # fmt: skip
    df = df.assign(n=df["run_id"].astype(str).map(n).astype(float))
    if "clean_acc" not in df.columns:
        df = df.assign(clean_acc=math.nan)
    return df, "epochs"


def standard_error(target: float, n: float | None) -> float:
    """The judge's binomial standard error at the target on n images (0 when n is unknown)."""
    if n is None or math.isnan(n) or n <= 0:
        return 0.0
    return math.sqrt(target * (1 - target) / n)


def first_hit(adv: Sequence[float], target: float) -> int | None:
    """Index of the first value at or above the target (None: never)."""
    return next((i for i, a in enumerate(adv) if a >= target - EPS_TOL), None)


def sustained(adv: Sequence[float], target: float, se: Sequence[float]) -> int | None:
    """Index of the first value at or above the target after which no later value falls below target - its SE."""
    ok_after = True  # every value after index i stays above target - se
    found = None
    for i in range(len(adv) - 1, -1, -1):
        if adv[i] >= target - EPS_TOL and ok_after:
            found = i
        ok_after = ok_after and adv[i] >= target - se[i] - EPS_TOL
    return found


def chance_level(dataset: str) -> float | None:
    """1 / the dataset's classes (None for a dataset the catalog does not know)."""
    return 1.0 / catalog.DATASETS[dataset].num_classes if dataset in catalog.DATASETS else None


def at_chance(evaluated: pd.DataFrame, dataset: str) -> bool:
    chance = chance_level(dataset)
    if chance is None or evaluated.empty:
        return False
    best = [float(evaluated["adv"].max())]
    if "clean_acc" in evaluated.columns:
        clean = pd.to_numeric(evaluated["clean_acc"], errors="coerce").dropna()
        best += [float(clean.max())] if not clean.empty else []
    return any(b <= chance + CHANCE_MARGIN for b in best)


def eval_costs(exp_dir: Path) -> dict[str, tuple[float, dict[int, float]]]:
    """Per run from epochs.csv: (the median eval_s of its on-clock evaluations, eval_s per epoch); runs that never
    evaluated on the clock are left out (no measured cost)."""
    path = exp_dir / EPOCHS_CSV
    if not path.exists():
        return {}
    df = pd.read_csv(path, dtype={"run_id": str})
    if "eval_s" not in df.columns:
        return {}
    df = df.drop_duplicates(["run_id", "epoch"], keep="last").assign(e=pd.to_numeric(df["eval_s"], errors="coerce"))
    out = {}
    for run_id, rows in df.groupby("run_id"):
        spent = rows[rows["e"] > 0]
        if not spent.empty:
            out[str(run_id)] = (float(spent["e"].median()), dict(zip(rows["epoch"].astype(int), rows["e"].fillna(0.0),
                                                                     strict=True)))  # fmt: skip
    return out


def on_clock_wall(elapsed_s: float, epoch: int, every: int | None, cost: tuple[float, dict[int, float]]) -> float:
    """The wall-clock a run judged off the clock would have had at `epoch` with on-clock evaluation every `every`
    epochs: its elapsed time, less the evaluation epochs.csv already counts by then, plus epoch // every
    evaluations at the run's median measured cost."""
    median_cost, per_epoch = cost
    counted = sum(s for e, s in per_epoch.items() if e <= epoch)
    return elapsed_s - counted + (epoch // (every or 1)) * median_cost
