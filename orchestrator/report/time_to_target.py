"""Time to target: per train run, the wall-clock (and GPU-hours) at which its validation robust accuracy first
reaches a target, the DAWNBench-style answer to "what is the cheapest way to a model this robust?".

Definitions (report.md states them):
- robust accuracy: the judged rows' adv_acc (orchestrator.report.reach_rule: snapshots.csv, the off-clock judge,
  when collect wrote one, else epochs.csv's validation PGD accuracy at the eval eps on the epochs that evaluated;
  eval.every is then the table's resolution, so it is printed);
- reached: reach_rule's sustained rule (ties at the target count as reached); its elapsed_s (cumulative
  wall-clock; from epochs.csv evaluation included, as Table I) and its train clock (cumulative train_s); the plain
  first hit is kept beside it (first_hit_* columns) and the ranking under it is stated;
- GPU-hours: that wall-clock × the run's world size (runs.csv world_size, else epochs.csv's);
- target: the given one (`--target-adv-acc`), else the grid's `report.target_adv_acc` (recorded at submit time,
  orchestrator.grid.report_settings), else per dataset TARGET_SHARE of the best adv_acc any train run of that dataset
  reached at any evaluation;
- AutoAttack: per run the robustness.csv row at the training eps with an aa_acc (the last checkpoint's where
  both were evaluated); PGD minus AutoAttack more than MASKING_POINTS points, and more than 2 SE of the
  difference at that n, flags the run (gradient masking: PGD's number is not to be trusted; report.masking).
- learned nothing: a run whose best adv_acc, or best clean_acc, is within reach_rule.CHANCE_MARGIN of chance (1 / the
  dataset's classes, workloads.catalog) is flagged: it is never reached, never first, and never sets the default
  target (a constant prediction scores exactly chance on the stratified validation split).
A run that never reaches the target has no time (no extrapolation) and says so. Deterministic output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from orchestrator.grid import report_settings as grid_report
from orchestrator.report import masking, reach_rule, stats
from orchestrator.report.labels import (
    DASH,
    Unit,
    approach_name,
    approach_order,
    csv_number,
    dataset_label,
    dataset_order,
    fmt_time,
    pick_unit,
    to_hours,
)
from orchestrator.report.tables import ReportError, Tables, autoattack_of, number, train_runs

TARGET_SHARE = 0.95  # default target: 95 % of the best robust accuracy any run of the dataset reached
MASKING_POINTS = 3.0  # PGD - AutoAttack gap (percentage points) that flags a run
TTT_COLUMNS = (
    "dataset", "approach", "gpus", "run_id", "method", "target_adv_acc", "target_rule", "reached", "epoch",
    "wall_hours", "gpu_hours", "adv_acc_at_target", "best_adv_acc", "best_epoch", "evaluations", "eval_every",
    "final_aa_acc", "final_pgd_acc", "pgd_minus_aa_points", "masking_flag", "aa_version",
    "chance_flag",  # "yes": best robust or clean accuracy at chance (learned nothing): never reached
    "reached_rule", "train_hours", "first_hit_epoch", "first_hit_wall_hours", "judged_by",  # reach_rule
    "on_clock_wall_hours",  # judged off the clock: the wall-clock with on-clock evaluation at the run's cadence
)  # fmt: skip


def parse_target(text: str | float | None) -> float | None:
    """`--target-adv-acc`: a fraction in (0, 1] (0.6) or a percentage with % (60%)."""
    if text is None or text == "":
        return None
    raw = str(text).strip()
    try:
        value = float(raw.removesuffix("%")) / (100.0 if raw.endswith("%") else 1.0)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ReportError(f"--target-adv-acc: expected a fraction in (0, 1] or a percentage like 60%; got {text!r}")
    return value


@dataclass
class Reach:
    """One train run's answer."""

    dataset: str
    run_id: str
    method: str
    gpus: int
    target: float
    rule: str
    epoch: int | None = None  # None: never reached
    elapsed_s: float | None = None
    acc_at_target: float | None = None
    best_acc: float | None = None
    best_epoch: int | None = None
    evaluations: int = 0
    eval_every: int | None = None
    aa_acc: float | None = None
    aa_pgd_acc: float | None = None
    aa_version: str = ""
    aa_n: int | None = None  # images the AutoAttack accuracy was measured on (robustness.csv n)
    train_s: float | None = None  # train clock at the reach
    first_epoch: int | None = None  # the plain first-hit rule's answer (reach_rule.first_hit)
    first_elapsed_s: float | None = None
    judged_by: str = "epochs"  # "snapshots" | "epochs" (reach_rule.judged_table)
    best_n: int | None = None  # images the best accuracy was judged on (None: unknown)
    on_clock_s: float | None = None  # judged off the clock: the wall-clock with on-clock evaluation (reach_rule)
    at_chance: bool = False  # learned nothing (module docstring): never reached

    @property
    def reached(self) -> bool:
        return self.epoch is not None

    @property
    def gpu_s(self) -> float | None:
        return None if self.elapsed_s is None else self.elapsed_s * self.gpus

    @property
    def gap_points(self) -> float | None:
        if self.aa_acc is None or self.aa_pgd_acc is None:
            return None
        return round((self.aa_pgd_acc - self.aa_acc) * 100, 6)

    @property
    def masked(self) -> bool:
        return masking.masked(self.gap_points, self.aa_n, MASKING_POINTS)


def epochs_table(tables: Tables) -> pd.DataFrame:
    """The judged rows (reach_rule.judged_table: snapshots.csv, else epochs.csv)."""
    return reach_rule.judged_table(tables.exp_dir, tables.runs)[0]


def _evaluated(epochs: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """The run's evaluated epochs in epoch order (a requeued epoch recorded twice: its last row)."""
    rows = epochs[epochs["run_id"] == run_id]
    rows = rows.assign(adv=pd.to_numeric(rows["adv_acc"], errors="coerce"),
                       t=pd.to_numeric(rows["elapsed_s"], errors="coerce"),
                       train=pd.to_numeric(rows["train_clock"], errors="coerce"),
                       n=pd.to_numeric(rows["n"], errors="coerce"))  # fmt: skip
    rows = rows.dropna(subset=["adv", "t"]).drop_duplicates("epoch", keep="last")
    return rows.sort_values("epoch", kind="stable")


def given_target(tables: Tables, target: float | None) -> tuple[float | None, str]:
    """The given target and where it comes from: the argument (--target-adv-acc), else the grid's report section
    that `orchestrate submit` recorded for the experiment (orchestrator.grid.report_settings), else (None, "")."""
    if target is not None:
        return target, "given (--target-adv-acc)"
    settings = grid_report.load(tables.exp_dir)
    if settings.target_share is not None:
        from orchestrator.report.target_rule import relative_target

        return relative_target(tables, settings)
    recorded = settings.target_adv_acc
    return recorded, "" if recorded is None else "given (report.target_adv_acc of the grid file)"


def _targets(
    runs: pd.DataFrame, epochs: pd.DataFrame, given: float | None, source: str, at_chance: set[str]
) -> dict[str, tuple[float, str]]:
    """Per dataset (target, the rule in words); runs in `at_chance` never set it."""
    out: dict[str, tuple[float, str]] = {}
    for dataset, group in runs.groupby("dataset", sort=True):
        if given is not None:
            out[str(dataset)] = (given, source)
            continue
        learned = [r for r in group["run_id"] if r not in at_chance]
        adv = pd.to_numeric(epochs.loc[epochs["run_id"].isin(learned), "adv_acc"], errors="coerce").dropna()
        if adv.empty:
            continue
        best = float(adv.max())
        rule = (f"{TARGET_SHARE:.0%} of the best validation PGD accuracy of any run ({best * 100:.1f} %; the default "
                "for single-seed studies, not fixed in advance: set report.target in the grid)")  # fmt: skip
        out[str(dataset)] = (round(TARGET_SHARE * best, 6), rule)
    return out


def time_to_target(tables: Tables, target: float | None = None) -> list[Reach]:
    """One Reach per train run with evaluations, in table order (dataset, approach, GPUs, run_id)."""
    runs = train_runs(tables.runs)
    if runs.empty:
        return []
    epochs, judged_by = reach_rule.judged_table(tables.exp_dir, tables.runs)
    costs = reach_rule.eval_costs(tables.exp_dir) if judged_by == "snapshots" else {}
    if epochs.empty or "adv_acc" not in epochs.columns:
        return []
    runs = runs.assign(run_id=runs["run_id"].astype(str), dataset=runs["dataset"].astype(str))
    at_chance = {str(r): bool(reach_rule.at_chance(_evaluated(epochs, str(r)), str(d)))
                 for r, d in zip(runs["run_id"], runs["dataset"], strict=True)}  # fmt: skip
    targets = _targets(runs, epochs, *given_target(tables, target), {r for r, flag in at_chance.items() if flag})
    out: list[Reach] = []
    for row in runs.to_dict("records"):
        run_id, dataset = str(row["run_id"]), str(row["dataset"])
        evaluated = _evaluated(epochs, run_id)
        if dataset not in targets or evaluated.empty:
            continue
        goal, rule = targets[dataset]
        gpus = number(row.get("world_size")) or number(evaluated.get("world_size", pd.Series([1])).iloc[0])
        every = number(row.get("eval_every"))
        best = evaluated.iloc[int(evaluated["adv"].to_numpy().argmax())]  # argmax: the earliest of equal maxima
        reach = Reach(dataset, run_id, str(row["method"]), int(gpus or 1), goal, rule,
                      best_acc=float(best["adv"]), best_epoch=int(best["epoch"]), evaluations=len(evaluated),
                      eval_every=int(every) if every else None)  # fmt: skip
        best_n = number(best["n"])
        reach.best_n = None if best_n is None else int(best_n)
        reach.at_chance, reach.judged_by = at_chance[run_id], judged_by
        adv = [float(a) for a in evaluated["adv"]]
        se = [reach_rule.standard_error(goal, number(n)) for n in evaluated["n"]]
        hit, first = reach_rule.sustained(adv, goal, se), reach_rule.first_hit(adv, goal)
        if hit is not None and not reach.at_chance:
            at = evaluated.iloc[hit]
            reach.epoch, reach.elapsed_s = int(at["epoch"]), float(at["t"])
            reach.acc_at_target, reach.train_s = float(at["adv"]), number(at["train"])
            if (cost := costs.get(run_id)) is not None:
                reach.on_clock_s = reach_rule.on_clock_wall(reach.elapsed_s, reach.epoch, reach.eval_every, cost)
        if first is not None and not reach.at_chance:
            at = evaluated.iloc[first]
            reach.first_epoch, reach.first_elapsed_s = int(at["epoch"]), float(at["t"])
        eps = number(row.get("attack_eps"))
        reach.aa_acc, reach.aa_pgd_acc, reach.aa_version, reach.aa_n = autoattack_of(tables.robustness, run_id, eps)
        out.append(reach)
    out.sort(key=lambda r: (dataset_order(r.dataset), approach_order(r.method), r.gpus, r.run_id))
    return out


def ttt_rows(reaches: Sequence[Reach]) -> list[dict[str, str]]:
    return [
        {
            "dataset": r.dataset,
            "approach": approach_name(r.method),
            "gpus": str(r.gpus),
            "run_id": r.run_id,
            "method": r.method,
            "target_adv_acc": csv_number(r.target),
            "target_rule": r.rule,
            "reached": "yes" if r.reached else "no",
            "epoch": "" if r.epoch is None else str(r.epoch),
            "wall_hours": csv_number(to_hours(r.elapsed_s)),
            "gpu_hours": csv_number(to_hours(r.gpu_s)),
            "adv_acc_at_target": csv_number(r.acc_at_target),
            "best_adv_acc": csv_number(r.best_acc),
            "best_epoch": "" if r.best_epoch is None else str(r.best_epoch),
            "evaluations": str(r.evaluations),
            "eval_every": "" if r.eval_every is None else str(r.eval_every),
            "final_aa_acc": csv_number(r.aa_acc),
            "final_pgd_acc": csv_number(r.aa_pgd_acc),
            "pgd_minus_aa_points": csv_number(r.gap_points),
            "masking_flag": "yes" if r.masked else "",
            "aa_version": r.aa_version,
            "chance_flag": "yes" if r.at_chance else "",
            "reached_rule": reach_rule.SUSTAINED,
            "train_hours": csv_number(to_hours(r.train_s)),
            "first_hit_epoch": "" if r.first_epoch is None else str(r.first_epoch),
            "first_hit_wall_hours": csv_number(to_hours(r.first_elapsed_s)),
            "judged_by": r.judged_by,
            "on_clock_wall_hours": csv_number(to_hours(r.on_clock_s)),
        }
        for r in reaches
    ]


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:.1f}"


def ttt_table(reaches: Sequence[Reach]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows of cell texts, notes) in the report's unit; shared by the Markdown and LaTeX versions."""
    unit = pick_unit([r.elapsed_s for r in reaches] + [r.gpu_s for r in reaches])
    head = ["Dataset", "Approach", "GPUs", "Run", "Target (%)", f"Wall-clock ({unit.name})", f"GPU-{unit.name}",
            "Epoch", "Eval every", "Best PGD (% ± SE)", "AutoAttack (% ± SE)", "PGD − AA (points)"]  # fmt: skip
    rows: list[list[str]] = []
    for r in reaches:
        wall = fmt_time(r.elapsed_s, unit) if r.elapsed_s is not None else "not reached"
        wall += " (at chance)" if r.at_chance else ""
        gpu = fmt_time(r.gpu_s, unit) if r.gpu_s is not None else DASH
        gap = DASH if r.gap_points is None else f"{r.gap_points:+.1f}" + (" ‡" if r.masked else "")
        epoch = DASH if r.epoch is None else str(r.epoch)
        every = DASH if r.eval_every is None else str(r.eval_every)
        rows.append([dataset_label(r.dataset), approach_name(r.method), str(r.gpus), r.run_id, _pct(r.target), wall,
                     gpu, epoch, every, stats.accuracy_text(r.best_acc, r.best_n),
                     stats.accuracy_text(r.aa_acc, r.aa_n), gap])  # fmt: skip
    rules = sorted({f"{dataset_label(r.dataset)}: {r.rule}" for r in reaches})
    notes = [
        "Wall-clock: elapsed time (evaluation included, as Table I) when the run reached the target; "
        f"{reach_rule.RULE_TEXT}. GPU-time = wall-clock × GPUs. The resolution is the run's evaluation cadence "
        "(Eval every, epochs). Target: " + "; ".join(rules) + ".",
    ]
    notes += fastest_lines(reaches, unit)
    notes += first_hit_lines(reaches)
    missed = [r for r in reaches if not r.reached]
    if missed:
        notes.append(
            "Not reached: " + "; ".join(f"{r.run_id} (best {_pct(r.best_acc)} % at epoch {r.best_epoch}, "
                                         f"{r.evaluations} evaluations)" for r in missed) + "; no time is invented."
        )  # fmt: skip
    flagged = [r for r in reaches if r.at_chance]
    if flagged:
        notes.append(
            "At chance (learned nothing: best PGD or clean accuracy within "
            f"{reach_rule.CHANCE_MARGIN * 100:g} point of 1/classes): " + ", ".join(r.run_id for r in flagged)
            + "; never counted as reached, never first, never the source of the default target."
        )  # fmt: skip
    if any(r.aa_acc is not None for r in reaches):
        notes.append(
            "AutoAttack: the run's evaluate-kind accuracy at the training ε (robustness.csv aa_acc; PGD − AA compares "
            f"the same evaluation's PGD number); {masking.rule_text(MASKING_POINTS)}."
        )
    return head, rows, notes


def fastest_lines(reaches: Sequence[Reach], unit: Unit) -> list[str]:
    """Per dataset: the run that reached the target first, and how much longer each other one took."""
    out = []
    for dataset in sorted({r.dataset for r in reaches}, key=dataset_order):
        done = sorted((r for r in reaches if r.dataset == dataset and r.elapsed_s is not None),
                      key=lambda r: (r.elapsed_s or 0.0, approach_order(r.method), r.gpus, r.run_id))  # fmt: skip
        if not done:
            continue
        first = done[0]
        text = (f"{dataset_label(dataset)}: first to the target is {first.run_id} "
                f"({approach_name(first.method)}, {first.gpus} GPU) in {fmt_time(first.elapsed_s or 0.0, unit)} "
                f"{unit.name}")  # fmt: skip
        others = [f"{r.run_id} {(r.elapsed_s or 0.0) / (first.elapsed_s or 1.0):.1f}×" for r in done[1:]]
        out.append(text + (" (others, times as long: " + ", ".join(others) + ")" if others else "") + ".")
    return out


def _ranking(reaches: Sequence[Reach], first_hit: bool) -> list[str]:
    def time(r: Reach) -> float | None:
        return r.first_elapsed_s if first_hit else r.elapsed_s

    done = [r for r in reaches if time(r) is not None]
    return [r.run_id for r in sorted(done, key=lambda r: (time(r) or 0.0, approach_order(r.method), r.gpus, r.run_id))]


def first_hit_lines(reaches: Sequence[Reach]) -> list[str]:
    """Per dataset: the ranking under the plain first-hit rule, and whether it differs from the sustained one."""
    out = []
    for dataset in sorted({r.dataset for r in reaches}, key=dataset_order):
        of = [r for r in reaches if r.dataset == dataset]
        plain, kept = _ranking(of, first_hit=True), _ranking(of, first_hit=False)
        if not plain:
            continue
        same = "the same ranking" if plain == kept else "a different ranking from the rule above"
        moved = [r.run_id for r in of if r.first_epoch is not None and r.first_epoch != r.epoch]
        text = (f"{dataset_label(dataset)}, under the plain first-hit rule (one evaluation at or above the target): "
                f"{same}, " + " < ".join(plain))  # fmt: skip
        if moved:
            text += "; reached later (or never) under the sustained rule: " + ", ".join(moved)
        out.append(text + ".")
    return out


def ttt_markdown(reaches: Sequence[Reach]) -> str:
    head, rows, notes = ttt_table(reaches)
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---|" + "---:|" * (len(head) - 4)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += ["", *[f"{n}  " if i < len(notes) - 1 else n for i, n in enumerate(notes)]]
    return "\n".join(lines) + "\n"


_TEX_SYMBOLS = {"‡": r"$^\ddagger$", "−": "-", "×": r"$\times$", "ε": r"$\varepsilon$", "±": r"$\pm$"}


def ttt_latex(reaches: Sequence[Reach]) -> str:
    from orchestrator.report.table1 import tex_escape as escape

    def tex_escape(text: str) -> str:
        out = escape(text)
        for symbol, tex in _TEX_SYMBOLS.items():
            out = out.replace(symbol, tex)
        return out

    head, rows, notes = ttt_table(reaches)
    lines = [
        r"% Generated by orchestrate report; needs \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{Time to the target robust accuracy}",
        r"\label{tab:time-to-target}",
        rf"\begin{{tabular}}{{llrl{'r' * (len(head) - 4)}}}",
        r"\toprule",
        " & ".join(tex_escape(h) for h in head) + r" \\",
        r"\midrule",
        *[" & ".join(tex_escape(c) for c in cells) + r" \\" for cells in rows],
        r"\bottomrule",
        r"\end{tabular}",
        r"\par\smallskip\footnotesize",
        *[tex_escape(n) + (r"\\" if i < len(notes) - 1 else "") for i, n in enumerate(notes)],
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def curves(tables: Tables, reaches: Sequence[Reach]) -> pd.DataFrame:
    """The judged rows of the runs in `reaches` (run_id, dataset, method, gpus, epoch, elapsed_s, adv_acc)."""
    epochs = epochs_table(tables)
    parts = []
    for r in reaches:
        ev = _evaluated(epochs, r.run_id)
        parts.append(pd.DataFrame({"run_id": r.run_id, "dataset": r.dataset, "method": r.method, "gpus": r.gpus,
                                   "epoch": ev["epoch"].to_numpy(), "elapsed_s": ev["t"].to_numpy(),
                                   "adv_acc": ev["adv"].to_numpy()}))  # fmt: skip
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
