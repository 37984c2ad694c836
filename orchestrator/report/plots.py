"""Fig. 1 (cost of PGD, estimated training time vs batch size and vs GPU count) and Fig. 2 (accuracy vs eps).

Inputs are DataFrames read from the experiment's CSVs (bench.csv, runs.csv, robustness.csv); outputs are
PNG + PDF written atomically (temp file in the same folder, then os.replace). Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: before pyplot is imported

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, LogFormatter, LogLocator, NullFormatter, NullLocator, ScalarFormatter

from orchestrator.estimate.bench_costs import BenchCosts, EstimateError, with_world_size
from orchestrator.estimate.model import RunSettings, predict_run
from orchestrator.report.labels import Unit, approach_name, approach_order, dataset_label, pick_unit
from workloads import layout

PAPER_DEFAULTS = {"epochs": 150, "global_batch_size": 256, "eval_every": 5, "eval_steps": 20, "eval_restarts": 1}


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """stem.png and stem.pdf, each written whole (layout.savefig_atomic)."""
    paths = []
    for ext, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = out_dir / f"{stem}.{ext}"
        layout.savefig_atomic(fig, path, format=ext, dpi=120, metadata=metadata)  # layout done by the caller
        paths.append(path)
    plt.close(fig)
    return paths


def margins(fig: Figure, *, left: float = 0.75, right: float = 0.15, bottom: float = 0.55, top: float = 0.4) -> None:
    """Fixed margins in inches: tight_layout would cost an extra draw of the figure (report speed)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, wspace=0.28)


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    palette = matplotlib.color_sequences["tab10"]  # the colours of the tab10 colormap
    ordered = sorted(set(methods), key=approach_order)
    return {m: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, m in enumerate(ordered)}


class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (30, 0.1), not 3x10^1 or 1e-01."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def _log2_x(ax: Axes, ticks: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(ticks))))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


# ---------------------------------------------------------------------------------------------
# Fig. 1


def _mode(df: pd.DataFrame, column: str, default: float | None) -> float | None:
    if column not in df.columns or df[column].dropna().empty:
        return default
    return float(df[column].dropna().astype(float).mode().min())


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def settings_for(runs: pd.DataFrame, model: str, dataset: str) -> RunSettings:
    """The settings most runs of this model and dataset used (the paper's when runs.csv has none)."""
    sel = runs[(runs["model"] == model) & (runs["dataset"] == dataset)] if not runs.empty else runs
    d = PAPER_DEFAULTS if sel.empty else {}
    return RunSettings(
        dataset=dataset,
        epochs=int(_mode(sel, "epochs", d.get("epochs", 1)) or 1),
        global_batch=int(_mode(sel, "global_batch_size", d.get("global_batch_size", 256)) or 256),
        eval_every=int(_mode(sel, "eval_every", d.get("eval_every", 5)) or 5),
        eval_steps=int(_mode(sel, "eval_steps", d.get("eval_steps", 20)) or 0),
        eval_restarts=int(_mode(sel, "eval_restarts", 1) or 1),
        eval_batch=_int(_mode(sel, "eval_batch_size", None)),
        train_subset=_int(_mode(sel, "train_subset", None)),
        val_subset=_int(_mode(sel, "val_subset", None)),
    )


def pick_group(bench: pd.DataFrame, runs: pd.DataFrame) -> tuple[str, str, str]:
    """The bench (device, model, dataset) to plot: one the runs used if any, then the most rows, then by name."""
    used = set() if runs.empty else set(zip(runs["model"].astype(str), runs["dataset"].astype(str), strict=True))
    counts = bench.groupby(["device", "model", "dataset"]).size().reset_index(name="n")
    columns = (counts["device"], counts["model"], counts["dataset"], counts["n"])
    keys = [(str(d), str(m), str(s), int(n)) for d, m, s, n in zip(*columns, strict=True)]
    best = min(keys, key=lambda k: ((k[1], k[2]) not in used, -k[3], k[:3]))
    return best[0], best[1], best[2]


def _curves(
    costs: BenchCosts, s: RunSettings, methods: Sequence[str], xs: Sequence[int], per_x: str
) -> dict[tuple[str, str], list[tuple[int, float, bool]]]:
    """{(method, basis): [(x, seconds, extrapolated)]}; x is the batch (single GPU) or the GPU count."""
    out: dict[tuple[str, str], list[tuple[int, float, bool]]] = {}
    for m in methods:
        for basis in ("train_step", "lower_bound"):
            points = []
            for x in xs:
                batch, gpus = (x, 1) if per_x == "batch" else (s.global_batch, x)
                try:
                    pred = predict_run(costs, s, method=m, gpus=gpus, global_batch=batch, basis=basis)
                except EstimateError:
                    break  # this basis lacks data for this method (e.g. no train_step rows)
                points.append((x, pred.seconds, pred.extrapolated))
            if points:
                out[(m, basis)] = points
    return out


def _draw_estimates(
    ax: Axes, curves: dict[tuple[str, str], list[tuple[int, float, bool]]], colors: dict[str, str], unit: Unit
) -> None:
    for (m, basis), pts in sorted(curves.items(), key=lambda kv: (approach_order(kv[0][0]), kv[0][1])):
        xs, ys = [p[0] for p in pts], [p[1] / unit.seconds for p in pts]
        solid = basis == "train_step" or (m, "train_step") not in curves
        label = approach_name(m) if solid else f"_{m} lower bound"
        ax.plot(xs, ys, "-" if solid else ":", color=colors[m], marker="o" if solid else None, ms=3, label=label)
        hollow = [(p[0], p[1] / unit.seconds) for p in pts if p[2]]
        if hollow and solid:
            hx, hy = zip(*hollow, strict=True)
            ax.scatter(hx, hy, s=40, facecolors="white", edgecolors=colors[m], zorder=3)


def fig1(bench: pd.DataFrame, runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """fig1.png/.pdf: left PGD/forward time vs batch; middle estimated time vs batch (1 GPU); right vs GPUs."""
    device, model, dataset = pick_group(bench, runs)
    rows = bench[(bench["device"] == device) & (bench["model"] == model) & (bench["dataset"] == dataset)]
    if "what" not in rows.columns:
        rows = rows.assign(what=["forward" if k == 0 else "pgd" for k in rows["attack_steps"]])
    costs = BenchCosts(rows.reset_index(drop=True), device)  # every world size: the right panel uses them
    rows = with_world_size(rows)
    rows = rows[rows["world_size"] == rows["world_size"].min()]  # the single-device panels
    s = settings_for(runs, model, dataset)
    attack_methods = sorted(set(rows.loc[rows["what"] == "pgd", "method"].astype(str)), key=approach_order)
    step_methods = set(rows.loc[rows["what"] == "train_step", "method"].astype(str))
    methods = sorted(set(attack_methods) | step_methods | {"standard"}, key=approach_order)
    colors = method_colors([*methods, *runs.get("method", pd.Series(dtype=str)).astype(str)])
    batch_sizes = sorted(int(b) for b in rows["batch_size"].unique())

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.4))
    # Left: one PGD execution / one forward pass per batch size (median, 10-90 % band over repeats).
    lines = [(m, rows[(rows["what"] == "pgd") & (rows["method"] == m)]) for m in attack_methods]
    lines.append(("standard", rows[rows["what"] == "forward"]))
    left_times = rows.loc[rows["what"].isin(["pgd", "forward"]), "median_s"].tolist()
    left_unit = pick_unit(left_times) if max(left_times, default=0.0) >= 1.0 else Unit("ms", 1e-3)
    for m, sel in lines:
        sel = sel.groupby("batch_size")[["median_s", "p10_s", "p90_s"]].median().sort_index()
        if sel.empty:
            continue
        label = approach_name(m) + (" (forward pass)" if m == "standard" else "")
        ax_x = sel.index.to_list()
        left.plot(ax_x, sel["median_s"] / left_unit.seconds, "-o", ms=3, color=colors[m], label=label)
        left.fill_between(ax_x, sel["p10_s"] / left_unit.seconds, sel["p90_s"] / left_unit.seconds,
                          color=colors[m], alpha=0.2, linewidth=0)  # fmt: skip
    left.set(title="One PGD execution (1 device)", xlabel="batch size", ylabel=f"time ({left_unit.name})")

    # Middle: the whole run on one device vs batch size.
    mid = _curves(costs, s, methods, batch_sizes, per_x="batch")
    mid_unit = pick_unit([p[1] for pts in mid.values() for p in pts])
    _draw_estimates(middle, mid, colors, mid_unit)
    middle.set(
        title=f"Estimated training time, 1 device ({s.epochs} epochs)",
        xlabel="batch size",
        ylabel=f"total time ({mid_unit.name})",
    )

    # Right: fixed global batch, split over G devices; stars are measured runs at that global batch.
    gpus = [g for g in (1, 2, 4, 8, 16) if s.global_batch % g == 0]
    if not runs.empty and "world_size" in runs.columns:
        gpus = sorted(set(gpus) | {int(w) for w in runs["world_size"].dropna()})
    rt = _curves(costs, s, methods, gpus, per_x="gpus")
    measured = _measured(runs, model, dataset, s.global_batch)
    right_unit = pick_unit([p[1] for pts in rt.values() for p in pts] + measured["elapsed_s_last"].tolist())
    _draw_estimates(right, rt, colors, right_unit)
    for m, sel in measured.groupby("method", sort=True):
        right.scatter(sel["world_size"], sel["elapsed_s_last"] / right_unit.seconds, marker="*", s=160,
                      color=colors.get(str(m), "black"), edgecolors="black", linewidths=0.5, zorder=4,
                      label=f"_{m!s} measured")  # fmt: skip
    right.set(
        title=f"Estimated training time, global batch {s.global_batch}",
        xlabel="GPUs (processes)",
        ylabel=f"total time ({right_unit.name})",
    )
    for ax, ticks in ((left, batch_sizes), (middle, batch_sizes), (right, gpus)):
        _log2_x(ax, ticks)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # labelled 1-2-5 ticks, no minor labels
        ax.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(math.inf, math.inf)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=8)
    handles = middle.get_legend_handles_labels()[0]
    extra = [
        Line2D([], [], color="gray", linestyle=":", label="lower bound (PGD/forward only)"),
        Line2D([], [], color="gray", marker="o", markerfacecolor="white", linestyle="", label="extrapolated"),
    ]
    middle.legend(handles=[*handles, *extra], fontsize=8)
    star = Line2D([], [], marker="*", color="gray", markersize=10, linestyle="", label="measured runs")
    right.legend(handles=[*right.get_legend_handles_labels()[0], star], fontsize=8)
    fig.suptitle(f"{model}, {dataset_label(dataset)}, on {device}", fontsize=10)
    margins(fig, top=0.65)
    out_dir.mkdir(parents=True, exist_ok=True)
    return save(fig, out_dir, "fig1")


def _measured(runs: pd.DataFrame, model: str, dataset: str, global_batch: int) -> pd.DataFrame:
    cols = ["method", "world_size", "elapsed_s_last"]
    need = {"model", "dataset", "state", "global_batch_size", *cols}
    if runs.empty or not need <= set(runs.columns):
        return pd.DataFrame(columns=cols)
    sel = runs[
        (runs["model"] == model)
        & (runs["dataset"] == dataset)
        & (runs["state"] == "finished")
        & (runs["global_batch_size"].astype(float) == global_batch)
    ]
    return sel[cols].dropna().astype({"world_size": int, "elapsed_s_last": float})


# ---------------------------------------------------------------------------------------------
# Fig. 2


def _strongest(rows: pd.DataFrame) -> pd.DataFrame:
    """Per run, the rows of its strongest evaluation (most steps, then most restarts)."""
    keep = []
    for _, g in rows.groupby("run_id", sort=True):
        if {"steps", "restarts"} <= set(g.columns):
            top = g.sort_values(["steps", "restarts"], kind="stable").iloc[-1]
            g = g[(g["steps"] == top["steps"]) & (g["restarts"] == top["restarts"])]
        keep.append(g.sort_values("eps", kind="stable"))
    return pd.concat(keep) if keep else rows


def fig2(robustness: pd.DataFrame, out_dir: Path, train_eps: dict[str, float]) -> list[Path]:
    """fig2.png/.pdf: adversarial accuracy vs eps, one line per run (coloured and labelled by method),
    one panel per dataset, a black dotted line at the training eps. Where robustness.csv has AutoAttack numbers
    (aa_acc), each such run also gets a dashed line with squares: PGD and AutoAttack side by side."""
    rob = robustness.assign(dataset=robustness.get("dataset", pd.Series("", index=robustness.index)).fillna(""))
    datasets = sorted(rob["dataset"].astype(str).unique(), key=lambda d: (d == "", d))
    colors = method_colors(rob["method"].astype(str).tolist())
    scale = 100.0 if float(rob["adv_acc"].max()) <= 1.0 else 1.0
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        sel = _strongest(rob[rob["dataset"] == dataset])
        labelled: set[str] = set()
        with_aa = False
        runs = sorted(sel.groupby("run_id"), key=lambda kv: (approach_order(str(kv[1]["method"].iloc[0])), kv[0]))
        for _, g in runs:
            m = str(g["method"].iloc[0])
            label = approach_name(m) if m not in labelled else f"_{m}"
            labelled.add(m)
            ax.plot(g["eps"], g["adv_acc"] * scale, "-o", ms=3, color=colors[m], label=label)
            aa = g[pd.to_numeric(g["aa_acc"], errors="coerce").notna()] if "aa_acc" in g.columns else g.iloc[:0]
            if not aa.empty:
                ax.plot(aa["eps"], aa["aa_acc"].astype(float) * scale, "--s", ms=3, color=colors[m], label=f"_{m} aa")
                with_aa = True
        if with_aa:
            ax.legend(handles=[*ax.get_legend_handles_labels()[0], *_pgd_vs_aa_handles()], fontsize=8)
        else:
            ax.legend(fontsize=8)
        if dataset in train_eps:
            ax.axvline(train_eps[dataset], color="black", linestyle=":", linewidth=1.2)
        ax.set(title=dataset_label(dataset) if dataset else "", xlabel="ε", ylabel="adversarial accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
    margins(fig)
    out_dir.mkdir(parents=True, exist_ok=True)
    return save(fig, out_dir, "fig2")


def _pgd_vs_aa_handles() -> list[Line2D]:
    return [
        Line2D([], [], color="gray", marker="o", ms=3, linestyle="-", label="PGD (steps × restarts of the run)"),
        Line2D([], [], color="gray", marker="s", ms=3, linestyle="--", label="AutoAttack"),
    ]
