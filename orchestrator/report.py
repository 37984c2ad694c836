"""`orchestrate report EXP`: the experiment's CSVs -> Table I (csv/md/tex), Fig. 1, Fig. 2 and report.md.

Reads only CSVs (runs.csv, epochs.csv, bench.csv, robustness.csv, features.csv; report.md links the visualize
runs' fig3-5.png where their run directories hold them); when the experiment folder holds run
directories, `orchestrator.collect.collect` refreshes the CSVs first, so a folder of CSVs copied from a
cluster works as well. Table outputs are deterministic: the same CSVs give byte-identical table1.csv/.md/.tex.

Table I (paper Table I, Timing semantics in design.md): rows dataset × approach, columns last/best epoch ×
GPU count (world size). Every column is divided by the baseline's LAST-epoch time, as in the paper; the
default baseline is standard training at the smallest GPU count among that dataset's standard runs.
A cell whose runs did not all finish shows its last-epoch time marked † (linearly extrapolated to all
epochs when the number of completed epochs is known, else the elapsed time so far) and "—" for the best
epoch, as the paper's footnote 4; table1.csv leaves those cells empty and keeps the number in
last_hours_partial.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from orchestrator.errors import UserError
from workloads.layout import write_csv_atomic, write_text_atomic
from workloads.spec import DATASETS, method_steps

RUNS, EPOCHS, BENCH, ROBUSTNESS = "runs.csv", "epochs.csv", "bench.csv", "robustness.csv"
FEATURES = "features.csv"
FEATURE_TABLE_COLUMNS = ("run_id", "method", "vis_hf_share", "large_hf_share", "target_other_mean", "robust_acc")
FEATURE_FIGURES = (
    ("fig3", "Fig. 3: feature visualisation"),
    ("fig4", "Fig. 4: representation interpolation"),
    ("fig5", "Fig. 5: large targeted perturbations"),
)
TABLE1_COLUMNS = (
    "dataset", "approach", "gpus", "last_hours", "last_relative", "best_hours", "best_relative",
    "method", "runs", "state", "baseline", "last_hours_partial", "last_relative_partial",
)  # fmt: skip
DATASET_LABELS = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR", "restricted_imagenet": "Restricted ImageNet"}
DASH = "—"
MARK = "†"


class ReportError(UserError, ValueError):
    """Nothing to report on, or a bad --baseline; one line naming the folder or the value."""


# ---------------------------------------------------------------------------------------------
# Names and order


def approach_name(method: str) -> str:
    """Paper names: pgdK -> "K-Step PGD", fast -> "1-Step PGD", standard -> "No PGD", fgsm_rs -> "FGSM-RS"."""
    if method == "standard":
        return "No PGD"
    if method == "fast":
        return "1-Step PGD"
    if method == "fgsm_rs":
        return "FGSM-RS"
    steps = method_steps(method)[1]
    # pgd1 (alpha 2.5 eps) would otherwise share its name with the paper's fast 1-step method
    return f"{steps}-Step PGD" + (" (pgd1)" if steps == 1 else "")


def approach_order(method: str) -> tuple[int, int, str]:
    """Most attack steps first (as the paper), then pgdK, fast, fgsm_rs; unknown names last."""
    try:
        steps = method_steps(method)[1]
    except ValueError:
        return (1, 0, method)
    kind = 0 if method.startswith("pgd") else {"fast": 1, "fgsm_rs": 2}.get(method, 3)
    return (-steps, kind, method)


def dataset_order(name: str) -> tuple[int, str]:
    return (DATASETS.index(name) if name in DATASETS else len(DATASETS), name)


def dataset_label(name: str) -> str:
    return DATASET_LABELS.get(name, name)


# ---------------------------------------------------------------------------------------------
# Loading


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
            path = self.exp_dir / EPOCHS
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
    """Collect first when run directories exist, then read the CSVs."""
    exp_dir = Path(exp_dir).expanduser()
    if not exp_dir.is_dir():
        raise ReportError(f"{exp_dir}: no such experiment folder")
    if (exp_dir / "runs").is_dir():
        try:
            from orchestrator.collect import collect
        except ImportError as exc:
            msg = f"{exp_dir}: has run directories but orchestrator.collect is unavailable ({exc})"
            raise ReportError(msg) from exc
        collect(exp_dir)
    tables = Tables(
        exp_dir, _read(exp_dir / RUNS), _read(exp_dir / BENCH), _read(exp_dir / ROBUSTNESS), _read(exp_dir / FEATURES)
    )
    if tables.runs is None and tables.bench is None and tables.robustness is None:
        raise ReportError(f"{exp_dir}: no runs.csv, bench.csv or robustness.csv (nothing to report)")
    return tables


def train_runs(runs: pd.DataFrame | None) -> pd.DataFrame:
    """The rows of runs.csv that are training runs (kind column absent: all rows)."""
    if runs is None:
        return pd.DataFrame(columns=["run_id", "dataset", "method", "world_size", "state"])
    return runs[runs["kind"] == "train"] if "kind" in runs.columns else runs


# ---------------------------------------------------------------------------------------------
# Table I


@dataclass(frozen=True)
class Baseline:
    method: str = "standard"
    gpus: int | None = None  # None: the smallest GPU count among the dataset's runs of `method`

    @property
    def label(self) -> str:
        return self.method + (f"@{self.gpus}" if self.gpus else "")


def parse_baseline(text: str | None) -> Baseline:
    """`METHOD[@GPUS]`, e.g. `standard`, `standard@2`, `fast@8`."""
    if not text:
        return Baseline()
    m = re.fullmatch(r"([a-z_0-9]+)(?:@([1-9][0-9]*))?", text.strip())
    if not m:
        raise ReportError(f"--baseline: expected METHOD[@GPUS] (e.g. standard@2); got {text!r}")
    try:
        method_steps(m.group(1))
    except ValueError as exc:
        raise ReportError(f"--baseline: {exc}") from exc
    return Baseline(m.group(1), int(m.group(2)) if m.group(2) else None)


@dataclass
class Cell:
    """One (dataset, method, gpus) group of runs."""

    dataset: str
    method: str
    gpus: int
    runs: int
    finished: bool
    states: str
    last_s: float | None = None  # finished runs only
    best_s: float | None = None
    partial_last_s: float | None = None  # unfinished: extrapolated (or so-far) last-epoch time
    extrapolated: bool = False
    baseline_s: float | None = None
    baseline: str = ""

    def ratio(self, seconds: float | None) -> float | None:
        return None if seconds is None or not self.baseline_s else seconds / self.baseline_s

    @property
    def shown_last_s(self) -> float | None:
        return self.last_s if self.finished else self.partial_last_s


def _mean(values: Iterable[float]) -> float | None:
    finite = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(finite) / len(finite) if finite else None


def _num(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def table1_cells(tables: Tables, baseline: Baseline | None = None) -> list[Cell]:
    """Cells in table order: dataset (paper order), approach (most steps first), GPU count."""
    baseline = baseline or Baseline()
    runs = train_runs(tables.runs)
    cells: list[Cell] = []
    if runs.empty:
        return cells
    gpus = pd.to_numeric(runs["world_size"], errors="coerce").fillna(1).astype(int)
    runs = runs.assign(world_size=gpus, state=runs["state"].fillna("missing").astype(str))
    done_col = next((c for c in ("epochs_done", "last_epoch") if c in runs.columns), None)
    for (dataset, method, gpus), group in runs.groupby(["dataset", "method", "world_size"], sort=False):
        finished = bool((group["state"] == "finished").all())
        cell = Cell(str(dataset), str(method), int(gpus), len(group), finished, ",".join(sorted(set(group["state"]))))
        if finished:
            cell.last_s = _mean(group["elapsed_s_last"].map(_num))
            cell.best_s = _mean(group["elapsed_s_best"].map(_num)) if "elapsed_s_best" in group else None
        else:
            partial = []
            for row in group.itertuples():
                elapsed = _num(getattr(row, "elapsed_s_last", None))
                if elapsed is None:
                    continue
                done = _num(getattr(row, done_col)) if done_col else None
                if done is None:
                    done = tables.epochs_done().get(str(row.run_id))
                epochs = _num(getattr(row, "epochs", None))
                if done and epochs and done < epochs:
                    elapsed *= epochs / done
                    cell.extrapolated = True
                partial.append(elapsed)
            cell.partial_last_s = _mean(partial)
        cells.append(cell)
    cells.sort(key=lambda c: (dataset_order(c.dataset), approach_order(c.method), c.gpus))
    for dataset in sorted({c.dataset for c in cells}):
        of_dataset = [c for c in cells if c.dataset == dataset]
        candidates = [c for c in of_dataset if c.method == baseline.method]
        if baseline.gpus is not None:
            candidates = [c for c in candidates if c.gpus == baseline.gpus]
        base = min(candidates, key=lambda c: c.gpus, default=None)
        for c in of_dataset:
            if base is not None and base.finished and base.last_s:
                c.baseline_s, c.baseline = base.last_s, f"{base.method}@{base.gpus}"
    return cells


def _g(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def table1_rows(cells: Sequence[Cell]) -> list[dict[str, str]]:
    hours = lambda s: None if s is None else s / 3600  # noqa: E731
    return [
        {
            "dataset": c.dataset,
            "approach": approach_name(c.method),
            "gpus": str(c.gpus),
            "last_hours": _g(hours(c.last_s)),
            "last_relative": _g(c.ratio(c.last_s)),
            "best_hours": _g(hours(c.best_s)),
            "best_relative": _g(c.ratio(c.best_s)),
            "method": c.method,
            "runs": str(c.runs),
            "state": "finished" if c.finished else c.states,
            "baseline": c.baseline,
            "last_hours_partial": "" if c.finished else _g(hours(c.partial_last_s)),
            "last_relative_partial": "" if c.finished else _g(c.ratio(c.partial_last_s)),
        }
        for c in cells
    ]


@dataclass(frozen=True)
class Unit:
    name: str
    seconds: float


UNITS = (Unit("hours", 3600.0), Unit("minutes", 60.0), Unit("seconds", 1.0))


def pick_unit(seconds: Iterable[float | None]) -> Unit:
    """Hours when the largest time is at least an hour (as the paper), else minutes, else seconds."""
    largest = max((s for s in seconds if s is not None), default=0.0)
    return next((u for u in UNITS if largest >= u.seconds), UNITS[-1])


def fmt_time(seconds: float, unit: Unit) -> str:
    v = seconds / unit.seconds
    return f"{v:.1f}" if v >= 0.1 or v == 0 else f"{v:.2g}"


@dataclass
class Table:
    """Table I laid out for printing: header labels, rows of cell texts, caption and footnotes."""

    gpus: list[int]
    rows: list[tuple[str, str, list[str]]]  # dataset label (first row of a dataset only), approach, cell texts
    caption: str
    notes: list[str]


def layout(cells: Sequence[Cell]) -> Table:
    unit = pick_unit([s for c in cells for s in (c.shown_last_s, c.best_s)])
    gpus = sorted({c.gpus for c in cells})
    by_key = {(c.dataset, c.method, c.gpus): c for c in cells}
    rows: list[tuple[str, str, list[str]]] = []
    unfinished: list[str] = []
    for dataset in sorted({c.dataset for c in cells}, key=dataset_order):
        methods = sorted({c.method for c in cells if c.dataset == dataset}, key=approach_order)
        for i, method in enumerate(methods):
            last, best = [], []
            for g in gpus:
                c = by_key.get((dataset, method, g))
                if c is None:
                    last.append("")
                    best.append("")
                    continue
                shown = c.shown_last_s
                text = DASH if shown is None else fmt_time(shown, unit)
                if shown is not None and c.ratio(shown) is not None:
                    text += f" ({c.ratio(shown):.1f})"
                if not c.finished:
                    text += MARK
                    how = (
                        "is extrapolated linearly from its completed epochs"
                        if c.extrapolated
                        else "is the elapsed time at its last completed epoch"
                        if shown is not None
                        else "is unavailable"
                    )
                    unfinished.append(
                        f"{dataset_label(dataset)} {approach_name(method)}, {g}-GPU (state {c.states}): "
                        f"the last-epoch time shown {how}"
                    )
                last.append(text)
                best_text = DASH if c.best_s is None or not c.finished else fmt_time(c.best_s, unit)
                if best_text != DASH and c.ratio(c.best_s) is not None:
                    best_text += f" ({c.ratio(c.best_s):.1f})"
                best.append(best_text)
            rows.append((dataset_label(dataset) if i == 0 else "", approach_name(method), last + best))
    baselines = sorted({c.baseline for c in cells if c.baseline})
    if len(baselines) == 1:
        method, _, g = baselines[0].partition("@")
        rel = f"relative to {g}-GPU, {approach_name(method)}"
    elif baselines:
        rel = "relative to " + "; ".join(
            f"{dataset_label(d)}: {next(c.baseline for c in cells if c.dataset == d and c.baseline)}"
            for d in sorted({c.dataset for c in cells if c.baseline}, key=dataset_order)
        )
    else:
        rel = "no baseline run finished, so no ratios"
    caption = f"Training times in {unit.name} ({rel}; every column is divided by the baseline's last-epoch time)"
    notes = [
        "Best epoch: the epoch with the highest adversarial validation accuracy "
        "(clean accuracy for No PGD); times include evaluation."
    ]
    if any(c.runs > 1 for c in cells):
        notes.append("Cells with several runs (e.g. seeds) show their mean.")
    if unfinished:
        notes.append(f"{MARK} Did not finish (best epoch unavailable): " + "; ".join(unfinished) + ".")
    return Table(gpus, rows, caption, notes)


def table1_markdown(table: Table) -> str:
    heads = [f"Last Epoch {g}-GPU" for g in table.gpus] + [f"Best Epoch {g}-GPU" for g in table.gpus]
    lines = [
        f"**Table I.** {table.caption}.",
        "",
        "| Dataset | Approach | " + " | ".join(heads) + " |",
        "|---|---|" + "---:|" * len(heads),
    ]
    lines += [f"| {d} | {a} | " + " | ".join(cells) + " |" for d, a, cells in table.rows]
    lines += ["", *[f"{n}  " if i < len(table.notes) - 1 else n for i, n in enumerate(table.notes)]]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}  # fmt: skip


def tex_escape(text: str) -> str:
    out = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    return out.replace(DASH, "---").replace(MARK, r"\textsuperscript{\dag}")


def table1_latex(table: Table) -> str:
    n = len(table.gpus)
    lines = [
        r"% Generated by orchestrate report; needs \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(table.caption)}}}",
        r"\label{tab:training-times}",
        rf"\begin{{tabular}}{{ll{'r' * (2 * n)}}}",
        r"\toprule",
        rf"Dataset & Approach & \multicolumn{{{n}}}{{c}}{{Last Epoch}} & \multicolumn{{{n}}}{{c}}{{Best Epoch}} \\",
        rf"\cmidrule(lr){{3-{2 + n}}}\cmidrule(lr){{{3 + n}-{2 + 2 * n}}}",
        " & & " + " & ".join(f"{g}-GPU" for g in table.gpus * 2) + r" \\",
        r"\midrule",
    ]
    for i, (d, a, cells) in enumerate(table.rows):
        if d and i:
            lines.append(r"\midrule")
        lines.append(" & ".join(tex_escape(t) for t in (d, a, *cells)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip\footnotesize"]
    lines += [tex_escape(note) + (r"\\" if i < len(table.notes) - 1 else "") for i, note in enumerate(table.notes)]
    lines += [r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# report.md


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
    if tables.bench is not None:
        worlds = sorted({int(w) for w in tables.bench.get("world_size", pd.Series([1])).fillna(1)})
        lines.append(
            f"- bench: {_values(tables.bench, 'model')} on {_values(tables.bench, 'device')}, batch sizes "
            f"{', '.join(str(b) for b in sorted(tables.bench['batch_size'].unique()))}, world sizes "
            f"{', '.join(map(str, worlds))}"
        )
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
                f"{approach_name(c.method)} {c.ratio(c.last_s):.2f}×" if c.baseline_s else approach_name(c.method)
                for c in row
            ]
            text = f"{dataset_label(dataset)}, {g}-GPU, last-epoch time from slowest to fastest: " + ", ".join(parts)
            if row[0].baseline:
                text += f" (relative to {row[0].baseline})"
            by_method = {c.method: c for c in row}
            if "fast" in by_method:
                slower = [m for m in by_method if m.startswith("pgd") and method_steps(m)[1] > 1]
                for m in sorted(slower, key=approach_order):
                    speedup = float(by_method[m].last_s or 0) / float(by_method["fast"].last_s or 1)
                    text += f"; 1-Step PGD is {speedup:.2f}× faster than {approach_name(m)}"
            out.append(text + ".")
    rob = robustness_by_dataset(tables)
    if rob is not None and not rob.empty and "adv_acc" in rob.columns:
        for dataset, eps in sorted(training_eps(tables).items(), key=lambda kv: dataset_order(kv[0])):
            sel = rob[rob["dataset"] == dataset]
            if sel.empty:
                continue
            nearest = float(min(sel["eps"].unique(), key=lambda e: (abs(float(e) - eps), float(e))))
            at = sel[sel["eps"] == nearest].groupby("method")["adv_acc"].mean()
            at = at.sort_values(ascending=False, kind="stable")
            scale = 100.0 if at.max() <= 1.0 else 1.0
            parts = [f"{approach_name(str(m))} {v * scale:.1f}%" for m, v in at.items()]
            out.append(
                f"{dataset_label(dataset)}: adversarial accuracy at ε = {nearest:g} (training ε {eps:g}), "
                "highest first: " + ", ".join(parts) + "."
            )
    return out


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


def report_markdown(
    tables: Tables, table_md: str, cells: Sequence[Cell], figures: Sequence[Path], estimates: pd.DataFrame
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
    if "fig2.png" in names:
        lines += [
            "## Fig. 2: adversarial accuracy vs ε",
            "",
            "![Fig. 2](fig2.png)",
            "",
            "One line per evaluated run; the dotted line marks the training ε.",
            "",
        ]
    lines += feature_lines(tables)
    found = findings(cells, tables)
    if found:
        lines += ["## Findings", "", " ".join(found), ""]
    return "\n".join(lines)


def estimates_vs_measured(tables: Tables) -> pd.DataFrame:
    """Each finished train run's last-epoch time against `orchestrate estimate`'s prediction from this
    experiment's bench (orchestrator.estimate.compare_runs; empty without runs or bench)."""
    from orchestrator.estimate import COMPARE_COLUMNS, compare_runs

    if tables.bench is None or tables.runs is None:
        return pd.DataFrame(columns=list(COMPARE_COLUMNS))
    return compare_runs(tables.runs, tables.bench)


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
    for r in df.itertuples():
        mark = " *" if r.extrapolated else ""
        lines.append(
            f"| {r.run_id}{mark} | {r.gpus} | {fmt_time(float(r.predicted_s), unit)} | "
            f"{fmt_time(float(r.measured_s), unit)} | {float(r.error_pct):+.1f} % | {r.bench_world_size} rank(s) |"
        )
    lines += [
        "",
        "Predicted by the cost model (`orchestrate estimate`) from this experiment's bench.csv: per-batch costs of "
        "training steps, validation batches and data loading measured at the run's world size where the bench "
        "ran one (else one device plus the measured all-reduce); * extrapolated beyond the benched batch sizes.",
        "",
    ]
    return lines


def _cell(value: object) -> str:
    number = _num(value)
    if number is not None:
        return f"{number:.3f}"
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
            if (tables.exp_dir / "runs" / vis_run / f"{stem}.png").exists():
                lines += [f"![{title}](../runs/{vis_run}/{stem}.png)", ""]
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


# ---------------------------------------------------------------------------------------------
# Entry point


def build_report(exp_dir: Path, baseline: str | None = None) -> Path:
    """Write exp_dir/report/{table1.csv,.md,.tex, fig1.*, fig2.*, report.md}; returns report.md's path."""
    tables = load_tables(Path(exp_dir))
    out = tables.exp_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    cells = table1_cells(tables, parse_baseline(baseline))
    table_md = ""
    if cells:
        write_csv_atomic(out / "table1.csv", TABLE1_COLUMNS, table1_rows(cells))
        table = layout(cells)
        table_md = table1_markdown(table)
        write_text_atomic(out / "table1.md", table_md)
        write_text_atomic(out / "table1.tex", table1_latex(table))
    from orchestrator import plots  # lazy: matplotlib is the slow import

    figures: list[Path] = []
    if tables.bench is not None and not tables.bench.empty:
        figures += plots.fig1(tables.bench, train_runs(tables.runs), out)
    if tables.robustness is not None and not tables.robustness.empty:
        figures += plots.fig2(robustness_by_dataset(tables), out, training_eps(tables))
    estimates = estimates_vs_measured(tables)
    if not estimates.empty:
        write_csv_atomic(out / "estimate_vs_measured.csv", list(estimates.columns), estimates.to_dict("records"))
    path = out / "report.md"
    write_text_atomic(path, report_markdown(tables, table_md, cells, figures, estimates))
    return path
