"""The training-curves figure of every report with train runs: training loss, learning rate, clean and robust
(PGD) validation accuracy, each against the epoch (top row) and against elapsed time (bottom row: the cost of
getting there, evaluation included, as Table I), one line per train run, its legend naming the run.

Reads epochs.csv (the last row of each epoch: a requeued epoch is recorded once); accuracies only where the epoch
evaluated. matplotlib is imported with orchestrator.report.plots (headless), only when the figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from orchestrator.report.labels import pick_unit
from orchestrator.report.plots import save  # selects the headless backend (Agg)

STEM = "curves"
PANELS = (("train_loss", "training loss"), ("lr", "learning rate"), ("clean_acc", "clean accuracy (val)"),
          ("adv_acc", "PGD accuracy (val)"))  # fmt: skip
MAX_LEGEND = 12  # runs named in the legend; more would hide the curves


def figure(epochs: pd.DataFrame, train_ids: list[str], out_dir: Path) -> list[Path]:
    """curves.png/.pdf for the train runs `train_ids`; nothing when none of them has an epoch."""
    if epochs.empty or "run_id" not in epochs.columns:
        return []
    rows = epochs[epochs["run_id"].astype(str).isin(train_ids)].copy()
    if rows.empty:
        return []
    for column in ("epoch", "elapsed_s", *(c for c, _ in PANELS)):
        rows[column] = pd.to_numeric(rows[column], errors="coerce") if column in rows else float("nan")
    rows = rows.drop_duplicates(["run_id", "epoch"], keep="last").sort_values(["run_id", "epoch"], kind="stable")
    unit = pick_unit(rows["elapsed_s"].dropna().tolist() or [0.0])
    fig, axes = plt.subplots(2, len(PANELS), figsize=(4.2 * len(PANELS), 7.0), squeeze=False)
    for run_id, run in rows.groupby(rows["run_id"].astype(str), sort=True):
        for j, (column, _) in enumerate(PANELS):
            points = run.dropna(subset=[column])
            if points.empty:
                continue
            axes[0][j].plot(points["epoch"], points[column], marker=".", label=run_id)
            timed = points.dropna(subset=["elapsed_s"])
            axes[1][j].plot(timed["elapsed_s"] / unit.seconds, timed[column], marker=".", label=run_id)
    for j, (_, title) in enumerate(PANELS):
        axes[0][j].set_title(title)
        axes[0][j].set_xlabel("epoch")
        axes[1][j].set_xlabel(f"elapsed ({unit.name}, evaluation included)")
        for ax in (axes[0][j], axes[1][j]):
            ax.grid(alpha=0.3)
    if rows["run_id"].nunique() <= MAX_LEGEND:
        axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save(fig, out_dir, STEM)
