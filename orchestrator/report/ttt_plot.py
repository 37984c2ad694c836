"""The time-to-target figure (DAWNBench-style): validation robust accuracy vs wall-clock, one panel per dataset,
one line per recipe and GPU count (orchestrator.report.replicates): the median over its replicates at each judged
epoch (time: the replicates' median elapsed time there), a band from their lowest to highest accuracy when it has
several, the target as a dashed line and a star where the recipe's median run reached it. A single-seed recipe is
its run's own curve. The legend sits below the axes, so the canvas is the plot's.

Data come from orchestrator.report.time_to_target (its curves) and replicates (the grouping); matplotlib is imported
with orchestrator.report.plots (headless), only when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import pandas as pd

from orchestrator.report import stats
from orchestrator.report.labels import dataset_label, dataset_order, pick_unit
from orchestrator.report.plots import margins, method_colors, save  # selects the headless backend (Agg)
from orchestrator.report.replicates import Recipe
from orchestrator.report.table1 import row_name

STEM = "time_to_target"
_STYLES = ("-", "--", "-.", ":")  # by GPU count
LEGEND_ROW_IN = 0.16  # inches per legend row (fontsize 7)


def recipe_curve(curves: pd.DataFrame, recipe: Recipe) -> pd.DataFrame:
    """Per judged epoch of the recipe's replicates: median time, median / lowest / highest accuracy."""
    rows = curves[curves["run_id"].isin([r.run_id for r in recipe.reaches.values()])]
    return (rows.groupby("epoch", sort=True)
            .agg(t=("elapsed_s", "median"), acc=("adv_acc", "median"), low=("adv_acc", "min"),
                 high=("adv_acc", "max"))
            .reset_index())  # fmt: skip


def recipe_colors(recipes: Sequence[Recipe]) -> dict[tuple[str, str], str]:
    """The method's colour when it has one recipe (as the other figures), else one colour per recipe (tab20)."""
    keys = list(dict.fromkeys((r.method, r.name) for r in recipes))
    if len({m for m, _ in keys}) == len(keys):
        by_method = method_colors([m for m, _ in keys])
        return {k: by_method[k[0]] for k in keys}
    palette = mpl.color_sequences["tab20"]
    return {k: mpl.colors.to_hex(palette[i % len(palette)]) for i, k in enumerate(keys)}


def figure(curves: pd.DataFrame, recipes: Sequence[Recipe], out_dir: Path) -> list[Path]:
    """time_to_target.png/.pdf; nothing when no run was judged."""
    if curves.empty or not recipes:
        return []
    datasets = sorted(curves["dataset"].astype(str).unique(), key=dataset_order)
    unit = pick_unit(curves["elapsed_s"].tolist())
    colors = recipe_colors(recipes)
    gpu_counts = sorted({r.gpus for r in recipes})
    style = {g: _STYLES[i % len(_STYLES)] for i, g in enumerate(gpu_counts)}
    columns = 2
    legend_rows = math.ceil(max(sum(r.dataset == d for r in recipes) for d in datasets) / columns)
    legend_in = 0.75 + LEGEND_ROW_IN * legend_rows  # axis label and ticks, then the rows
    fig, axes = plt.subplots(1, len(datasets), figsize=(9.0 * len(datasets), 4.6 + legend_in), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        of_dataset = [r for r in recipes if r.dataset == dataset]
        for recipe in of_dataset:
            c = recipe_curve(curves, recipe)
            n, k = len(recipe.reaches), recipe.reached
            label = f"{row_name(recipe.method, recipe.name)}, {recipe.gpus} GPU" + (
                f", {k} of {n} seeds reached" if n > 1 else ", 1 seed" + ("" if k else ", not reached")
            )
            color = colors[(recipe.method, recipe.name)]  # fmt: skip
            ax.plot(c["t"] / unit.seconds, c["acc"] * 100, style[recipe.gpus], marker="o", ms=2.5, color=color,
                    label=label, linewidth=1.2)  # fmt: skip
            if n > 1:
                ax.fill_between(c["t"] / unit.seconds, c["low"] * 100, c["high"] * 100, color=color, alpha=0.15,
                                linewidth=0)  # fmt: skip
            median_t = stats.median(list(recipe.wall_s.values()))
            if math.isfinite(median_t):
                ax.scatter([median_t / unit.seconds], [recipe.reaches[min(recipe.reaches)].target * 100], marker="*",
                           s=120, zorder=4, color=color, edgecolors="black", linewidths=0.5)  # fmt: skip
        target = of_dataset[0].reaches[min(of_dataset[0].reaches)].target * 100
        ax.axhline(target, color="black", linestyle="--", linewidth=1.0)
        ax.annotate(f"target {target:.1f} %", (0.01, target), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(2, 3), fontsize=8)  # fmt: skip
        ax.set(title=dataset_label(dataset), xlabel=f"wall-clock ({unit.name})", ylabel="judged robust accuracy (%)")
        times = curves.loc[curves["dataset"] == dataset, "elapsed_s"]
        positive = times[times > 0]
        if len(positive) and positive.max() > 20 * positive.min():
            ax.set_xscale("log")  # fast recipes take seconds where the paper's take minutes: both stay readable
        else:
            ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=columns, frameon=False)
    margins(fig, bottom=legend_in)
    out_dir.mkdir(parents=True, exist_ok=True)
    return save(fig, out_dir, STEM)
