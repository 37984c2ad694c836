"""The time-to-target figure (DAWNBench-style): validation robust accuracy vs wall-clock, one line per train run,
one panel per dataset, the target as a dashed line and each run's first reach as a star.

Data come from orchestrator.report.time_to_target (its curves and Reach rows); matplotlib is imported with
orchestrator.report.plots (headless), only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from orchestrator.report.labels import approach_name, approach_order, dataset_label, dataset_order, pick_unit
from orchestrator.report.plots import margins, method_colors, save  # selects the headless backend (Agg)
from orchestrator.report.time_to_target import Reach

STEM = "time_to_target"
_STYLES = ("-", "--", "-.", ":")  # by GPU count


def figure(curves: pd.DataFrame, reaches: Sequence[Reach], out_dir: Path) -> list[Path]:
    """time_to_target.png/.pdf; nothing when no run evaluated."""
    if curves.empty:
        return []
    datasets = sorted(curves["dataset"].astype(str).unique(), key=dataset_order)
    unit = pick_unit(curves["elapsed_s"].tolist())
    colors = method_colors(curves["method"].astype(str).tolist())
    gpu_counts = sorted({r.gpus for r in reaches})
    style = {g: _STYLES[i % len(_STYLES)] for i, g in enumerate(gpu_counts)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(9.0 * len(datasets), 4.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        of_dataset = sorted((r for r in reaches if r.dataset == dataset),
                            key=lambda r: (approach_order(r.method), r.gpus, r.run_id))  # fmt: skip
        for r in of_dataset:
            c = curves[curves["run_id"] == r.run_id]
            # the run_id names the recipe (recipe-method-nNgG-...); several recipes share a method
            label = f"{r.run_id} ({approach_name(r.method)})" + ("" if r.reached else ", not reached")
            ax.plot(c["elapsed_s"] / unit.seconds, c["adv_acc"] * 100, style[r.gpus], marker="o", ms=3,
                    color=colors[r.method], label=label)  # fmt: skip
            if r.reached and r.elapsed_s is not None and r.acc_at_target is not None:
                ax.scatter([r.elapsed_s / unit.seconds], [r.acc_at_target * 100], marker="*", s=140, zorder=4,
                           color=colors[r.method], edgecolors="black", linewidths=0.5)  # fmt: skip
        if of_dataset:
            target = of_dataset[0].target * 100
            ax.axhline(target, color="black", linestyle="--", linewidth=1.0)
            ax.annotate(f"target {target:.1f} %", (0.01, target), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(2, 3), fontsize=8)  # fmt: skip
        ax.set(title=dataset_label(dataset), xlabel=f"wall-clock ({unit.name}, evaluation included)",
               ylabel="validation PGD accuracy (%)")  # fmt: skip
        times = curves.loc[curves["dataset"] == dataset, "elapsed_s"]
        positive = times[times > 0]
        if len(positive) and positive.max() > 20 * positive.min():
            ax.set_xscale("log")  # fast recipes take seconds where the paper's take minutes: both stay readable
        else:
            ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    margins(fig, right=3.4)  # room for the legend right of the axes
    out_dir.mkdir(parents=True, exist_ok=True)
    return save(fig, out_dir, STEM)
