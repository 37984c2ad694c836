"""`orchestrate report EXP`: the experiment's CSVs -> Table I (csv/md/tex), Fig. 1, Fig. 2 and report.md.

Reads only CSVs (runs.csv, epochs.csv, bench.csv, robustness.csv, features.csv; report.md links the visualize
runs' fig3-5.png where their run directories hold them) and never collects: `orchestrate report` runs
`orchestrator.collect.collect` as its own step first, so a folder of CSVs copied from a cluster works as well.

    labels     approach/dataset names and order (workloads.catalog), time units, the — and † marks
    tables     reading the CSVs (Tables), the derived tables several sections share
    table1     Table I cells, table1.csv/.md/.tex
    markdown   report.md
    plots      Fig. 1 and Fig. 2 (matplotlib, imported only when a figure is drawn)
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.report import markdown, table1
from orchestrator.report import tables as tables_
from workloads.layout import write_csv_atomic, write_text_atomic

REPORT_DIR = "report"  # results/<experiment>/report/


def build_report(exp_dir: Path, baseline: str | None = None) -> Path:
    """Write exp_dir/report/{table1.csv,.md,.tex, fig1.*, fig2.*, report.md}; returns report.md's path."""
    tables = tables_.load_tables(Path(exp_dir))
    out = tables.exp_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    cells = table1.table1_cells(tables, table1.parse_baseline(baseline))
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
    if tables.robustness is not None and not tables.robustness.empty:
        figures += plots.fig2(tables_.robustness_by_dataset(tables), out, tables_.training_eps(tables))
    estimates = tables_.estimates_vs_measured(tables)
    if not estimates.empty:
        write_csv_atomic(out / "estimate_vs_measured.csv", list(estimates.columns), estimates.to_dict("records"))
    path = out / "report.md"
    write_text_atomic(path, markdown.report_markdown(tables, table_md, cells, figures, estimates))
    return path
