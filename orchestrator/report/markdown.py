"""report.md: the settings, Table I, the figures, estimate vs measured, Figs. 3-5 and auto-generated findings,
as Markdown text (orchestrator.report.build_report writes it next to the tables and figures it links).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.grid import recipe_key
from orchestrator.report.labels import approach_name, approach_order, dataset_label, dataset_order, fmt_time, pick_unit
from orchestrator.report.table1 import Cell, recipe_names, row_keys, row_name
from orchestrator.report.tables import Tables, number, robustness_by_dataset, train_runs, training_eps
from workloads import layout
from workloads.catalog import method_info

FEATURE_TABLE_COLUMNS = ("run_id", "method", "vis_hf_share", "large_hf_share", "target_other_mean", "robust_acc")
FEATURE_FIGURES = (
    ("fig3", "Fig. 3: feature visualisation"),
    ("fig4", "Fig. 4: representation interpolation"),
    ("fig5", "Fig. 5: large targeted perturbations"),
)


def _text(value: object) -> str:
    """A CSV value as written: pandas reads an integer column with empty cells as floats (10000 -> 10000.0)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _values(df: pd.DataFrame, column: str, integer: bool = False) -> str:
    if column not in df.columns:
        return ""
    vals = sorted({(_text if integer else str)(v) for v in df[column].dropna()}, key=lambda v: (len(v), v))
    return ", ".join(vals)


def settings_lines(tables: Tables) -> list[str]:
    runs = train_runs(tables.runs)
    lines: list[str] = []
    fields = [
        ("device", "device"), ("dataset", "dataset"), ("model", "model"), ("epochs", "epochs"),
        ("global batch", "global_batch_size"), ("GPUs (world size)", "world_size"), ("methods", "method"),
        ("attack norm", "attack_norm"), ("attack eps", "attack_eps"), ("train subset", "train_subset"),
        ("val subset", "val_subset"), ("eval every", "eval_every"), ("eval steps", "eval_steps"),
        ("precision", "precision"),
    ]  # fmt: skip
    integers = {"epochs", "global_batch_size", "world_size", "train_subset", "val_subset", "eval_every", "eval_steps"}
    for label, column in fields:
        vals = _values(runs, column, integer=column in integers)
        if vals:
            lines.append(f"- {label}: {vals}")
    lines += recipe_lines(runs)
    if tables.bench is not None:
        worlds = sorted({int(w) for w in tables.bench.get("world_size", pd.Series([1])).fillna(1)})
        lines.append(
            f"- bench: {_values(tables.bench, 'model')} on {_values(tables.bench, 'device')}, batch sizes "
            f"{', '.join(str(b) for b in sorted(tables.bench['batch_size'].unique()))}, world sizes "
            f"{', '.join(map(str, worlds))}"
        )
    return lines


def recipe_lines(runs: pd.DataFrame) -> list[str]:
    """What varies across the train cells (runs.csv recipe_key: the recipe settings, as its columns name them), the
    schedule, and how many seeds each recipe has."""
    lines = []
    if "optimizer.schedule" in runs.columns:
        lines.append(f"- lr schedule: {_values(runs, 'optimizer.schedule')}")
    if "recipe_key" in runs.columns and not runs.empty:
        values: dict[str, set[str]] = {}
        for key in runs["recipe_key"].fillna("").astype(str):
            for k, v in recipe_key.parse_key(key).items():
                values.setdefault(k, set()).add(v)
        for k, vals in values.items():
            shown = sorted((v or "none" for v in vals), key=lambda v: (len(v), v))
            lines.append(f"- varies: {k}: " + ", ".join(shown))
        seeds = runs.groupby(runs["recipe_key"].fillna("").astype(str))["run_id"].count()
        counts = sorted({int(n) for n in seeds})
        lines.append(f"- replicates: {', '.join(map(str, counts))} seed{'' if counts == [1] else 's'} per recipe "
                     f"({len(seeds)} recipe{'' if len(seeds) == 1 else 's'})")  # fmt: skip
    return lines


def findings(cells: Sequence[Cell], tables: Tables) -> list[str]:
    """Auto-generated sentences: time ordering with measured ratios, robustness ordering at the training eps."""
    out: list[str] = []
    for dataset in sorted({c.dataset for c in cells}, key=dataset_order):
        for g in sorted({c.gpus for c in cells if c.dataset == dataset}):
            row = sorted(
                (c for c in cells if c.dataset == dataset and c.gpus == g and c.finished and c.last_s),
                key=lambda c: -float(c.last_s or 0),
            )
            if len(row) < 2:
                continue
            parts = [
                f"{row_name(c.method, c.name)} {c.ratio(c.last_s):.2f}×" if c.baseline_s else row_name(c.method, c.name)
                for c in row
            ]
            text = f"{dataset_label(dataset)}, {g}-GPU, last-epoch time from slowest to fastest: " + ", ".join(parts)
            if row[0].baseline:
                text += f" (relative to {row[0].baseline})"
            by_method = {(c.method, c.name): c for c in row}  # fast against K-step PGD of the same recipe only
            for (method, name), fast in sorted(by_method.items()):
                if method != "fast":
                    continue
                slower = [m for m, n in by_method if n == name and m.startswith("pgd") and method_info(m).steps > 1]
                for m in sorted(slower, key=approach_order):
                    speedup = float(by_method[(m, name)].last_s or 0) / float(fast.last_s or 1)
                    text += f"; {row_name('fast', name)} is {speedup:.2f}× faster than {row_name(m, name)}"
            out.append(text + ".")
    rob = robustness_by_dataset(tables)
    runs = train_runs(tables.runs)
    names: dict[str, str] = {}
    if not runs.empty:
        runs = runs.assign(row=row_keys(runs))
        rows = recipe_names(runs)
        # Table I's rows: the shape is its columns, and DDP at one global batch trains the same model
        names = {str(r): row_name(str(m), rows[(str(m), str(k))])
                 for r, m, k in zip(runs["run_id"], runs["method"], runs["row"], strict=True)}  # fmt: skip
    if rob is not None and not rob.empty and "adv_acc" in rob.columns:
        for dataset, eps in sorted(training_eps(tables).items(), key=lambda kv: dataset_order(kv[0])):
            sel = rob[rob["dataset"] == dataset]
            if sel.empty:
                continue
            nearest = float(min(sel["eps"].unique(), key=lambda e: (abs(float(e) - eps), float(e))))
            sel = sel[sel["eps"] == nearest]
            named = sel["run_id"].astype(str).map(names)  # a recipe's replicates are averaged, recipes never
            sel = sel.assign(row=named.fillna(sel["method"].astype(str).map(approach_name)))
            at = sel.groupby("row", sort=False)["adv_acc"].mean().sort_values(ascending=False, kind="stable")
            scale = 100.0 if at.max() <= 1.0 else 1.0
            parts = [f"{m} {v * scale:.1f}%" for m, v in at.items()]
            out.append(
                f"{dataset_label(dataset)}: adversarial accuracy at ε = {nearest:g} (training ε {eps:g}), "
                "highest first: " + ", ".join(parts) + "."
            )
    return out


def report_markdown(
    tables: Tables,
    table_md: str,
    cells: Sequence[Cell],
    figures: Sequence[Path],
    estimates: pd.DataFrame,
    ttt_md: str = "",
    robust_md: str = "",
    replicates_md: str = "",
) -> str:
    name = tables.exp_dir.name
    lines = [f"# Report: {name}", "", "Generated by `orchestrate report` from the experiment's CSVs.", ""]
    settings = settings_lines(tables)
    if settings:
        lines += ["## Settings", "", *settings, ""]
    if cells:
        lines += ["## Table I: training time", "", table_md.rstrip(), ""]
        lines += ["Also as [table1.csv](table1.csv) and [table1.tex](table1.tex).", ""]
    names = {p.name for p in figures}
    if "fig1.png" in names:
        lines += [
            "## Fig. 1: cost of PGD and estimated training time",
            "",
            "![Fig. 1](fig1.png)",
            "",
            "Left: one K-step PGD execution and one forward pass (the No PGD proxy) per batch size on one device. "
            "Middle: estimated total training time on one device vs batch size (solid: from the measured full "
            "training step when the bench has it; dotted: the paper's lower bound from PGD/forward alone). "
            "Right: estimated time vs GPU count at a fixed global batch, from the bench rows measured at that "
            "GPU count where the bench ran one (else one device plus the measured all-reduce; hollow markers: "
            "extrapolated); stars: measured runs (last epoch).",
            "",
        ]
    lines += estimate_lines(estimates)
    if "curves.png" in names:  # orchestrator.report.curves_plot
        lines += ["## Training curves", "", "![Training curves](curves.png)", "",
                  "One line per train run: training loss, learning rate, clean and PGD validation accuracy against "
                  "the epoch (top) and against elapsed time, evaluation included (bottom).", ""]  # fmt: skip
    if robust_md:  # orchestrator.report.robustness_table
        lines += [
            "## Robustness",
            "",
            robust_md.rstrip(),
            "",
            "Also as [robustness_table.csv](robustness_table.csv).",
            "",
        ]
    if "fig2.png" in names:
        lines += [
            "## Fig. 2: adversarial accuracy vs ε",
            "",
            "![Fig. 2](fig2.png)",
            "",
            "One line per evaluated run; the dotted line marks the training ε"
            + ("; dashed lines with squares: AutoAttack (aa_acc) of the same run." if _has_autoattack(tables) else "."),
            "",
        ]
    lines += time_to_target_lines(ttt_md, names)
    if replicates_md:
        lines += ["## Recipes over their replicates (seeds)", "", replicates_md.rstrip(), ""]
        lines += ["Also as [replicates.csv](replicates.csv).", ""]
    lines += feature_lines(tables)
    found = findings(cells, tables)
    if found:
        lines += ["## Findings", "", " ".join(found), ""]
    return "\n".join(lines)


def _has_autoattack(tables: Tables) -> bool:
    rob = tables.robustness
    return rob is not None and "aa_acc" in rob.columns and bool(rob["aa_acc"].notna().any())


def time_to_target_lines(ttt_md: str, figure_names: set[str]) -> list[str]:
    """The time-to-target section: its table (time_to_target.md) and figure."""
    if not ttt_md:
        return []
    lines = ["## Time to target robust accuracy", "", ttt_md.rstrip(), ""]
    lines += ["Also as [time_to_target.csv](time_to_target.csv) and [time_to_target.tex](time_to_target.tex).", ""]
    if "time_to_target.png" in figure_names:
        lines += [
            "![Time to target](time_to_target.png)",
            "",
            "Judged robust accuracy vs wall-clock, one line per recipe and GPU count (line style: GPU count): the "
            "median over its replicates, shaded from their lowest to highest; dashed: the target; stars: the "
            "recipe's median time to it (the sustained rule).",
            "",
        ]
    return lines


def estimate_lines(df: pd.DataFrame) -> list[str]:
    """The estimate-vs-measured section of report.md (estimate_vs_measured.csv has every column)."""
    if df.empty:
        return []
    unit = pick_unit([*df["predicted_s"], *df["measured_s"]])
    lines = [
        "## Estimate vs measured",
        "",
        f"| run | GPUs | predicted ({unit.name}) | measured ({unit.name}) | error | bench rows at |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in df.to_dict("records"):
        mark = " *" if r["extrapolated"] else ""
        lines.append(
            f"| {r['run_id']}{mark} | {r['gpus']} | {fmt_time(float(r['predicted_s']), unit)} | "
            f"{fmt_time(float(r['measured_s']), unit)} | {float(r['error_pct']):+.1f} % | "
            f"{r['bench_world_size']} rank(s) |"
        )
    lines += [
        "",
        "Predicted by the cost model (`orchestrate estimate`) from this experiment's bench.csv: per-batch costs of "
        "training steps, validation batches and data loading measured at the run's world size where the bench "
        "ran one (else one device plus the measured all-reduce); * extrapolated beyond the benched batch sizes.",
        "",
    ]
    return lines


def _cell(value: Any) -> str:
    """A DataFrame cell (any pandas scalar) as table text."""
    number_ = number(value)
    if number_ is not None:
        return f"{number_:.3f}"
    return "" if pd.isna(value) else str(value)


def feature_lines(tables: Tables) -> list[str]:
    """Figs. 3-5: each visualize run's figures (relative links into its run directory, where it holds them) and
    features.csv's key columns."""
    df = tables.features
    if df is None or df.empty:
        return []
    lines = ["## Figs. 3-5: what the features have learned", ""]
    vis_runs = sorted(set(df["visualize_run"].dropna().astype(str))) if "visualize_run" in df.columns else []
    for vis_run in vis_runs:
        for stem, title in FEATURE_FIGURES:
            if (layout.run_dir(tables.exp_dir.parent, tables.exp_dir.name, vis_run) / f"{stem}.png").exists():
                lines += [f"![{title}](../{layout.RUNS}/{vis_run}/{stem}.png)", ""]
    columns = [c for c in FEATURE_TABLE_COLUMNS if c in df.columns]
    numeric = [c not in ("run_id", "method") for c in columns]
    lines += ["| " + " | ".join(columns) + " |", "|" + "".join("---:|" if n else "---|" for n in numeric)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for _, row in df[columns].iterrows()]
    lines += [
        "",
        "One row per model (features.csv has every column). vis_hf_share / large_hf_share: share of the "
        "spectral energy above half the Nyquist frequency in the Fig. 3 visualisations / Fig. 5 perturbations; "
        "target_other_mean: share of one model's large targeted perturbations that the other models also "
        "classify as the target; robust_acc: PGD accuracy on the same validation examples.",
        "",
    ]
    return lines
