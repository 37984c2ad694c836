"""`orchestrate report EXP`: the experiment's CSVs -> Table I (csv/md/tex), Fig. 1, Fig. 2 and report.md.

Reads only CSVs (runs.csv, epochs.csv, bench.csv, robustness.csv, features.csv; report.md links the visualize
runs' fig3-5.png where their run directories hold them) and never collects: `orchestrate report` runs
`orchestrator.collect.collect` as its own step first, so a folder of CSVs copied from a cluster works as well.

    labels     approach/dataset names and order (workloads.catalog), time units, the — and † marks
    tables     reading the CSVs (Tables), the derived tables several sections share
    table1     Table I cells, table1.csv/.md/.tex
    markdown   report.md
    plots      Fig. 1 and Fig. 2 (matplotlib, imported only when a figure is drawn)
    time_to_target  per train run: wall-clock and GPU-hours until validation robust accuracy reaches a target,
               beside its AutoAttack accuracy (time_to_target.csv/.md/.tex); ttt_plot draws its figure
    robustness_table  every evaluated run's clean, PGD and AutoAttack numbers with n and SE (robustness_table.*)
    curves_plot  training curves of every train run (loss, lr, clean and PGD accuracy vs epoch and vs time)
    masking    the gradient-masking flag's rule (the gap over a threshold and over 2 SE at that n)
    replicates per recipe over its seeds: medians, spreads, pooled AutoAttack, ratios vs the paper recipe
               (replicates.csv/.md, only when a recipe has several runs); stats holds the statistics
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from orchestrator import collect
from orchestrator.report import markdown, replicates, robustness_table, table1
from orchestrator.report import tables as tables_
from orchestrator.report import time_to_target as ttt
from workloads.layout import write_csv_atomic, write_text_atomic

REPORT_DIR = "report"  # results/<experiment>/report/


def build_report(exp_dir: Path, baseline: str | None = None, target_adv_acc: str | float | None = None) -> Path:
    """Write exp_dir/report/{table1.csv,.md,.tex, fig1.*, fig2.*, time_to_target.*, report.md}; returns report.md's
    path. target_adv_acc: the time-to-target table's target (None: its stated default rule). An explicit `baseline`
    that no train run has is refused (ReportError) before anything is written."""
    target = ttt.parse_target(target_adv_acc)
    tables = tables_.load_tables(Path(exp_dir))
    baseline_ = table1.parse_baseline(baseline)
    cells = table1.table1_cells(tables, baseline_)  # refuses an explicit baseline no train run is
    out = tables.exp_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    table_md = ""
    if cells:
        write_csv_atomic(out / "table1.csv", table1.TABLE1_COLUMNS, table1.table1_rows(cells))
        table = table1.table1_layout(cells)
        table_md = table1.table1_markdown(table)
        write_text_atomic(out / "table1.md", table_md)
        write_text_atomic(out / "table1.tex", table1.table1_latex(table))
    from orchestrator.report import plots  # lazy: matplotlib is the slow import

    figures: list[Path] = []
    if tables.bench is not None and not tables.bench.empty:
        figures += plots.fig1(tables.bench, tables_.train_runs(tables.runs), out)
    robustness = tables_.robustness_by_dataset(tables)  # None exactly when there is no robustness.csv
    if robustness is not None and not robustness.empty:
        figures += plots.fig2(robustness, out, tables_.training_eps(tables))
    train_ids = tables_.train_runs(tables.runs)["run_id"].astype(str).tolist()
    if train_ids and (tables.exp_dir / collect.EPOCHS_CSV).exists():
        from orchestrator.report import curves_plot

        epochs = pd.read_csv(tables.exp_dir / collect.EPOCHS_CSV, dtype={"run_id": str})
        figures += curves_plot.figure(epochs, train_ids, out)
    robust = robustness_table.rows(tables.robustness, ttt.MASKING_POINTS)
    robust_md = robustness_table.markdown(robust, ttt.MASKING_POINTS)
    if robust:
        write_csv_atomic(out / "robustness_table.csv", robustness_table.COLUMNS, robust)
        write_text_atomic(out / "robustness_table.md", robust_md)
    reaches = ttt.time_to_target(tables, target)
    groups = replicates.recipes(tables, reaches)  # replicates grouped into recipes: the figure and their table
    ttt_md = ""
    if reaches:
        write_csv_atomic(out / "time_to_target.csv", ttt.TTT_COLUMNS, ttt.ttt_rows(reaches))
        ttt_md = ttt.ttt_markdown(reaches)
        write_text_atomic(out / "time_to_target.md", ttt_md)
        write_text_atomic(out / "time_to_target.tex", ttt.ttt_latex(reaches))
        from orchestrator.report import ttt_plot

        figures += ttt_plot.figure(ttt.curves(tables, reaches), groups, out)
    replicates_md = ""
    if replicates.has_replicates(groups):
        rows = replicates.replicate_rows(groups, baseline_)
        write_csv_atomic(out / "replicates.csv", replicates.REPLICATE_COLUMNS, rows)
        replicates_md = replicates.replicates_markdown(rows)
        write_text_atomic(out / "replicates.md", replicates_md)
    estimates = tables_.estimates_vs_measured(tables)
    if not estimates.empty:
        rows = [{str(k): v for k, v in row.items()} for row in estimates.to_dict("records")]  # str column names
        write_csv_atomic(out / "estimate_vs_measured.csv", list(estimates.columns), rows)
    path = out / "report.md"
    text = markdown.report_markdown(tables, table_md, cells, figures, estimates, ttt_md, robust_md, replicates_md)
    write_text_atomic(path, text)
    return path
