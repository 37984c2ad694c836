"""Table I (the paper's Table I and its timing semantics): cells from runs.csv, then table1.csv/.md/.tex.

Rows dataset × approach × recipe (every setting but the seed, the method and the shape: runs.csv's recipe_key,
else its recipe column), so only replicates (runs that differ in seed alone) are averaged into a cell; columns
last/best epoch × GPU count (world size). Every column is divided by the baseline's LAST-epoch time, as in the
paper; the default baseline is standard training at the smallest GPU count among that dataset's standard runs (of
several standard recipes: the paper's). A cell whose runs did not all finish shows its last-epoch time marked †
(linearly extrapolated to all epochs when the number of completed epochs is known, else the elapsed time so far)
and "—" for the best epoch, as the paper's footnote 4; table1.csv leaves those cells empty and keeps the number
in last_hours_partial. Deterministic: the same CSVs give byte-identical table1.csv/.md/.tex.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from orchestrator.grid import recipe_key
from orchestrator.report.labels import (
    DASH,
    MARK,
    approach_name,
    approach_order,
    csv_number,
    dataset_label,
    dataset_order,
    fmt_time,
    pick_unit,
    to_hours,
)
from orchestrator.report.tables import ReportError, Tables, number, train_runs
from workloads.catalog import METHOD_HELP, METHOD_RE

TABLE1_COLUMNS = (
    "dataset", "approach", "gpus", "last_hours", "last_relative", "best_hours", "best_relative",
    "method", "runs", "state", "baseline", "last_hours_partial", "last_relative_partial",
    "recipe",  # the row's recipe name (orchestrator.grid.recipe_key.row_names), empty with one recipe per approach
)  # fmt: skip


@dataclass(frozen=True)
class Baseline:
    method: str = "standard"
    gpus: int | None = None  # None: the smallest GPU count among the dataset's runs of `method`
    recipe: str | None = None  # the grid's recipe name (None: any; of several, the paper's)
    given: bool = False  # named by --baseline: one that is not in the experiment is an error, not ignored

    @property
    def label(self) -> str:
        return (f"{self.recipe}-" if self.recipe else "") + self.method + (f"@{self.gpus}" if self.gpus else "")

    def is_recipe(self, name: str) -> bool:
        """Whether a recipe of the baseline's method with Table I row key `name` is the baseline's recipe."""
        return self.recipe is None or recipe_key.parse_key(name).get("recipe") == self.recipe


def parse_baseline(text: str | None) -> Baseline:
    """`[RECIPE-]METHOD[@GPUS]` as run ids begin, e.g. `standard`, `standard@2`, `fast@8`, `paper-fast@1`."""
    if not text:
        return Baseline()
    m = re.fullmatch(r"(?:([A-Za-z][A-Za-z0-9_.]*)-)?([a-z_0-9]+)(?:@([1-9][0-9]*))?", text.strip())
    if not m:
        raise ReportError(f"--baseline: expected [RECIPE-]METHOD[@GPUS] (e.g. standard@2, paper-fast); got {text!r}")
    if not METHOD_RE.match(m.group(2)):
        raise ReportError(f"--baseline: method: expected {METHOD_HELP}, got {m.group(2)!r}")
    return Baseline(m.group(2), int(m.group(3)) if m.group(3) else None, m.group(1), given=True)


@dataclass
class Cell:
    """One (dataset, method, recipe, gpus) group of runs: the replicates of one recipe."""

    dataset: str
    method: str
    gpus: int
    runs: int
    finished: bool
    states: str
    recipe: str = ""  # recipe_key.row_key of the runs' recipe_key
    name: str = ""  # its row name (recipe_key.row_names); "" with one recipe per approach
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


def _recipe_order(name: str) -> tuple[bool, str]:
    """Recipes of one approach: the paper's first, then by name."""
    return name != recipe_key.PAPER, name


def row_keys(runs: pd.DataFrame) -> pd.Series:
    """Each run's Table I row: its recipe_key without the table's axes; a runs.csv from before recipe_key: its
    grid recipe name (empty: one row per approach, as then)."""
    if "recipe_key" in runs.columns:
        return runs["recipe_key"].fillna("").astype(str).map(recipe_key.row_key)
    if "recipe" in runs.columns:
        return runs["recipe"].map(lambda r: "" if pd.isna(r) else f"recipe{recipe_key.EQ}{r}")
    return pd.Series("", index=runs.index)


def recipe_names(runs: pd.DataFrame) -> dict[tuple[str, str], str]:
    """{(method, row key): the row's name} for runs with a `row` column (row_keys)."""
    pairs = sorted(set(zip(runs["method"].astype(str), runs["row"].astype(str), strict=True)))
    keys = [recipe_key.SEP.join(p for p in (f"method{recipe_key.EQ}{m}", r) if p) for m, r in pairs]
    return dict(zip(pairs, recipe_key.row_names(keys), strict=True))


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
    runs = runs.assign(row=row_keys(runs))
    names = recipe_names(runs)
    for (dataset, method, row, _), group in runs.groupby(["dataset", "method", "row", "world_size"], sort=False):
        finished = bool((group["state"] == "finished").all())
        world_size = int(group["world_size"].iloc[0])  # the group's key, as an int (pandas types keys Hashable)
        states = ",".join(sorted(set(group["state"])))
        name = names[(str(method), str(row))]
        cell = Cell(str(dataset), str(method), world_size, len(group), finished, states, str(row), name)
        if finished:
            cell.last_s = _mean(group["elapsed_s_last"].map(number))
            cell.best_s = _mean(group["elapsed_s_best"].map(number)) if "elapsed_s_best" in group else None
        else:
            partial = []
            for row in group.itertuples():
                elapsed = number(getattr(row, "elapsed_s_last", None))
                if elapsed is None:
                    continue
                done = number(getattr(row, done_col)) if done_col else None
                if done is None:
                    done = tables.epochs_done().get(str(row.run_id))
                epochs = number(getattr(row, "epochs", None))
                if done and epochs and done < epochs:
                    elapsed *= epochs / done
                    cell.extrapolated = True
                partial.append(elapsed)
            cell.partial_last_s = _mean(partial)
        cells.append(cell)
    cells.sort(key=lambda c: (dataset_order(c.dataset), approach_order(c.method), *_recipe_order(c.name), c.gpus))
    if baseline.given and not any(c.method == baseline.method and baseline.is_recipe(c.recipe)
                                  and baseline.gpus in (None, c.gpus) for c in cells):  # fmt: skip
        have = sorted({Baseline(c.method, c.gpus, recipe_key.parse_key(c.recipe).get("recipe")).label for c in cells})
        raise ReportError(f"--baseline {baseline.label}: no train run of the experiment is that recipe; its runs: "
                          + ", ".join(have))  # fmt: skip
    for dataset in sorted({c.dataset for c in cells}):
        of_dataset = [c for c in cells if c.dataset == dataset]
        candidates = [c for c in of_dataset if c.method == baseline.method and baseline.is_recipe(c.recipe)]
        if baseline.gpus is not None:
            candidates = [c for c in candidates if c.gpus == baseline.gpus]
        # of several recipes of the baseline method: the paper's (the grids' name for it), else the first by name
        base = min(candidates, key=lambda c: (c.gpus, *_recipe_order(c.name)), default=None)
        for c in of_dataset:
            if base is not None and base.finished and base.last_s:
                c.baseline_s, c.baseline = base.last_s, f"{base.method}@{base.gpus}"
    return cells


def table1_rows(cells: Sequence[Cell]) -> list[dict[str, str]]:
    return [
        {
            "dataset": c.dataset,
            "approach": approach_name(c.method),
            "gpus": str(c.gpus),
            "last_hours": csv_number(to_hours(c.last_s)),
            "last_relative": csv_number(c.ratio(c.last_s)),
            "best_hours": csv_number(to_hours(c.best_s)),
            "best_relative": csv_number(c.ratio(c.best_s)),
            "method": c.method,
            "runs": str(c.runs),
            "state": "finished" if c.finished else c.states,
            "baseline": c.baseline,
            "last_hours_partial": "" if c.finished else csv_number(to_hours(c.partial_last_s)),
            "last_relative_partial": "" if c.finished else csv_number(c.ratio(c.partial_last_s)),
            "recipe": c.name,
        }
        for c in cells
    ]


def row_name(method: str, name: str) -> str:
    """A Table I row's approach text: the method's label, then the recipe's name when there are several."""
    return approach_name(method) + (f", {name}" if name else "")


@dataclass
class Table:
    """Table I laid out for printing: header labels, rows of cell texts, caption and footnotes."""

    gpus: list[int]
    rows: list[tuple[str, str, list[str]]]  # dataset label (first row of a dataset only), approach, cell texts
    caption: str
    notes: list[str]


def table1_layout(cells: Sequence[Cell]) -> Table:
    """Cell texts in the report's unit, with ratios, † for unfinished cells, caption and footnotes."""
    unit = pick_unit([s for c in cells for s in (c.shown_last_s, c.best_s)])
    gpus = sorted({c.gpus for c in cells})
    by_key = {(c.dataset, c.method, c.name, c.gpus): c for c in cells}
    rows: list[tuple[str, str, list[str]]] = []
    unfinished: list[str] = []
    for dataset in sorted({c.dataset for c in cells}, key=dataset_order):
        recipes = sorted({(c.method, c.name) for c in cells if c.dataset == dataset},
                         key=lambda mn: (approach_order(mn[0]), *_recipe_order(mn[1])))  # fmt: skip
        for i, (method, name) in enumerate(recipes):
            last, best = [], []
            for g in gpus:
                c = by_key.get((dataset, method, name, g))
                if c is None:
                    last.append("")
                    best.append("")
                    continue
                shown = c.shown_last_s
                text = DASH if shown is None else fmt_time(shown, unit)
                if shown is not None and c.ratio(shown) is not None:
                    text += f" ({c.ratio(shown):.1f})"
                if c.runs > 1:
                    text += f" n={c.runs}"
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
                        f"{dataset_label(dataset)} {row_name(method, name)}, {g}-GPU (state {c.states}): "
                        f"the last-epoch time shown {how}"
                    )
                last.append(text)
                best_text = DASH if c.best_s is None or not c.finished else fmt_time(c.best_s, unit)
                if best_text != DASH and c.ratio(c.best_s) is not None:
                    best_text += f" ({c.ratio(c.best_s):.1f})"
                if best_text != DASH and c.runs > 1:
                    best_text += f" n={c.runs}"
                best.append(best_text)
            rows.append((dataset_label(dataset) if i == 0 else "", row_name(method, name), last + best))
    baselines = sorted({c.baseline for c in cells if c.baseline})
    if len(baselines) == 1:
        method, _, baseline_gpus = baselines[0].partition("@")
        rel = f"relative to {baseline_gpus}-GPU, {approach_name(method)}"
    else:
        rel = "relative to " + "; ".join(
            f"{dataset_label(d)}: {next(c.baseline for c in cells if c.dataset == d and c.baseline)}"
            for d in sorted({c.dataset for c in cells if c.baseline}, key=dataset_order)
        )
    caption = f"Training times in {unit.name} ({rel}; every column is divided by the baseline's last-epoch time)"
    if not baselines:  # nothing to divide by: say why and how to name one
        caption = (f"Training times in {unit.name}, no ratios: no baseline run finished (the default baseline is "
                   "No PGD at the smallest GPU count of the dataset; `orchestrate report --baseline METHOD[@GPUS]` "
                   "names another)")  # fmt: skip
    notes = [
        "Best epoch: the epoch with the highest adversarial validation accuracy "
        "(clean accuracy for No PGD); times include evaluation."
    ]
    if any(c.name for c in cells):
        notes.append("Rows are recipes (every setting but the seed; runs.csv recipe_key); runs of different recipes "
                     "are never averaged.")  # fmt: skip
    if any(c.runs > 1 for c in cells):
        notes.append("A cell with n=N shows the mean of N replicates (runs of its recipe that differ in seed only).")
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
