"""Replicates grouped into recipes (orchestrator.grid.recipe_key: every setting but the seed): per recipe and GPU count,
runs n, reached k of n, median time to target on the train clock and on the wall clock with its spread, median
GPU-hours, best validation robust accuracy mean ± SD, final AutoAttack accuracy pooled over the replicates' test
images with its binomial SE, and ratios against the baseline recipe with a bootstrap interval over seeds
(orchestrator.report.stats; "faster" only when the interval excludes 1).

Written (replicates.csv/.md) only when some recipe has two or more runs: a single-seed experiment keeps the
per-run time-to-target table alone. Reached, and the train clock at it, are time_to_target's (reach_rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.grid import recipe_key
from orchestrator.report import stats
from orchestrator.report.labels import DASH, approach_order, csv_number, dataset_label, dataset_order, to_hours
from orchestrator.report.table1 import Baseline, recipe_names, row_keys, row_name
from orchestrator.report.tables import Tables, number, train_runs
from orchestrator.report.time_to_target import Reach

REPLICATE_COLUMNS = (
    "dataset", "approach", "recipe", "gpus", "runs", "seeds", "reached", "median_train_s", "train_s_low",
    "train_s_high", "median_wall_s", "wall_s_low", "wall_s_high", "spread", "median_gpu_hours", "best_adv_acc_mean",
    "best_adv_acc_sd", "aa_acc_pooled", "aa_n", "aa_se", "baseline", "train_ratio", "train_ratio_low",
    "train_ratio_high", "paired", "verdict",
)  # fmt: skip


@dataclass
class Recipe:
    dataset: str
    method: str
    name: str
    row: str
    gpus: int
    reaches: dict[int, Reach] = field(default_factory=dict)  # by seed
    train_s: dict[int, float] = field(default_factory=dict)  # train clock at the reach (inf: never)

    @property
    def wall_s(self) -> dict[int, float]:
        return {s: math.inf if r.elapsed_s is None else r.elapsed_s for s, r in self.reaches.items()}

    @property
    def reached(self) -> int:
        return sum(r.reached for r in self.reaches.values())

    def aa_pooled(self) -> tuple[float | None, int]:
        measured = [(r.aa_acc, r.aa_n) for r in self.reaches.values() if r.aa_acc is not None and r.aa_n]
        total = sum(n for _, n in measured if n)
        if not total:
            return None, 0
        return sum(a * n for a, n in measured if a is not None and n) / total, total


def recipes(tables: Tables, reaches: Sequence[Reach]) -> list[Recipe]:
    """The reaches grouped by (dataset, method, recipe row, GPUs), in Table I's order."""
    runs = train_runs(tables.runs)
    if runs.empty or not reaches:
        return []
    runs = runs.assign(row=row_keys(runs), run_id=runs["run_id"].astype(str))
    names = recipe_names(runs)
    info = {str(r["run_id"]): r for r in runs.to_dict("records")}
    groups: dict[tuple[str, str, str, int], Recipe] = {}
    for reach in reaches:
        row = info.get(reach.run_id)
        if row is None:
            continue
        seed = int(number(row.get("seed")) or 0)
        key = (reach.dataset, reach.method, str(row["row"]), reach.gpus)
        recipe = groups.setdefault(key, Recipe(*key[:2], names[(reach.method, str(row["row"]))], key[2], key[3]))
        recipe.reaches[seed] = reach
        recipe.train_s[seed] = math.inf if reach.train_s is None else reach.train_s
    out = list(groups.values())
    out.sort(key=lambda r: (dataset_order(r.dataset), approach_order(r.method), r.name != recipe_key.PAPER, r.name,
                            r.gpus))  # fmt: skip
    return out


def baseline_of(recipe: Recipe, all_recipes: Sequence[Recipe], baseline: Baseline | None = None) -> Recipe | None:
    """The --baseline recipe of the same dataset (at its GPU count, else the recipe's); without one, the paper
    recipe of the same dataset, method and GPU count. None: none, or the recipe is it."""
    for other in all_recipes:
        if other is recipe or other.dataset != recipe.dataset:
            continue
        if baseline is not None and baseline.given:
            if (other.method == baseline.method and baseline.is_recipe(other.row)
                    and other.gpus == (baseline.gpus or recipe.gpus)):  # fmt: skip
                return other
        elif (other.method, other.gpus, other.name) == (recipe.method, recipe.gpus, recipe_key.PAPER):
            return other
    return None


def has_replicates(all_recipes: Sequence[Recipe]) -> bool:
    return any(len(r.reaches) > 1 for r in all_recipes)


def _num(x: float) -> str:
    return "" if math.isinf(x) or math.isnan(x) else csv_number(x)


def replicate_rows(all_recipes: Sequence[Recipe], baseline: Baseline | None = None) -> list[dict[str, str]]:
    rows = []
    for r in all_recipes:
        train, wall = list(r.train_s.values()), list(r.wall_s.values())
        t_iv, w_iv = stats.spread(train), stats.spread(wall)
        best = [x.best_acc for x in r.reaches.values() if x.best_acc is not None]
        mean, sd = stats.mean_sd(best) if best else (math.nan, math.nan)
        aa, aa_n = r.aa_pooled()
        base = baseline_of(r, all_recipes, baseline)
        ratio = stats.ratio_of_medians(r.train_s, base.train_s) if base else None
        rows.append({
            "dataset": r.dataset, "approach": row_name(r.method, ""), "recipe": r.name, "gpus": str(r.gpus),
            "runs": str(len(r.reaches)), "seeds": ";".join(map(str, sorted(r.reaches))), "reached": str(r.reached),
            "median_train_s": _num(stats.median(train)), "train_s_low": _num(t_iv.low),
            "train_s_high": _num(t_iv.high), "median_wall_s": _num(stats.median(wall)), "wall_s_low": _num(w_iv.low),
            "wall_s_high": _num(w_iv.high), "spread": t_iv.kind,
            "median_gpu_hours": _num(to_hours(stats.median(wall) * r.gpus) or math.nan),
            "best_adv_acc_mean": _num(mean), "best_adv_acc_sd": _num(sd),
            "aa_acc_pooled": "" if aa is None else csv_number(aa), "aa_n": str(aa_n) if aa_n else "",
            "aa_se": "" if aa is None else csv_number(stats.binomial_se(aa, aa_n)),
            "baseline": base.name if base else "",
            "train_ratio": _num(ratio.value) if ratio else "",
            "train_ratio_low": _num(ratio.interval.low) if ratio else "",
            "train_ratio_high": _num(ratio.interval.high) if ratio else "",
            "paired": ("yes" if ratio.paired else "no") if ratio else "",
            "verdict": stats.verdict(ratio) if base else "",
        })  # fmt: skip
    return rows


def _t(x: str) -> str:
    """A time of replicate_rows: empty there means never reached (inf)."""
    return "∞" if x == "" else f"{float(x):.1f}"


def replicates_markdown(rows: Sequence[dict[str, str]]) -> str:
    head = ["Dataset", "Approach, recipe", "GPUs", "Runs", "Reached", "Train clock to target (s, median [spread])",
            "Wall-clock (s, median [spread])", "Best PGD (%, mean ± SD)", "AutoAttack (%, pooled ± SE, n)",
            "Train-clock ratio vs baseline [95 % interval]", "Verdict"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        never = "never" if r["reached"] == "0" else ""
        train = never or f"{_t(r['median_train_s'])} [{_t(r['train_s_low'])}–{_t(r['train_s_high'])}]"
        wall = never or f"{_t(r['median_wall_s'])} [{_t(r['wall_s_low'])}–{_t(r['wall_s_high'])}]"
        best = DASH if not r["best_adv_acc_mean"] else (
            f"{float(r['best_adv_acc_mean']) * 100:.1f} ± {float(r['best_adv_acc_sd'] or 0) * 100:.1f}")  # fmt: skip
        aa = DASH if not r["aa_acc_pooled"] else (
            f"{float(r['aa_acc_pooled']) * 100:.1f} ± {float(r['aa_se']) * 100:.1f}, n={r['aa_n']}")  # fmt: skip
        ratio = DASH if not r["train_ratio"] else (
            f"{float(r['train_ratio']):.2f} [{_s2(r['train_ratio_low'])}, {_s2(r['train_ratio_high'])}]"
            + (" paired" if r["paired"] == "yes" else " unpaired"))  # fmt: skip
        lines.append("| " + " | ".join([dataset_label(r["dataset"]), row_name_text(r), r["gpus"], r["runs"],
                                        f"{r['reached']} of {r['runs']}", train, wall, best, aa, ratio,
                                        r["verdict"] or DASH]) + " |")  # fmt: skip
    lines += [
        "",
        "Per recipe (every setting but the seed) and GPU count, over its replicates. Time to target: "
        "the time-to-target table's rule, on the train clock (cumulative train_s) and the wall clock; a run that "
        "never reached it counts as infinitely slow. Spread: "
        f"min–max for fewer than {stats.BOOTSTRAP_FROM} runs, else a bootstrap 95 % interval of the median "
        f"({stats.BOOTSTRAP_DRAWS} resamples, RNG seed {stats.BOOTSTRAP_SEED}). Ratio: median train clock over the "
        "baseline recipe's (--baseline [RECIPE-]METHOD[@GPUS], by default the paper recipe of the same method "
        "and GPUs), its interval a bootstrap over seeds (paired by seed when both "
        'have the same seeds); "faster"/"slower" only when the interval excludes 1, else "tie within noise". '
        "AutoAttack: accuracy pooled over the replicates' test images, ± its binomial standard error.",
    ]
    return "\n".join(lines) + "\n"


def _s2(x: str) -> str:
    return "∞" if x == "" else f"{float(x):.2f}"


def row_name_text(row: dict[str, str]) -> str:
    return row["approach"] + (f", {row['recipe']}" if row["recipe"] else "")
