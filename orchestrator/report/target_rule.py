"""A target fixed before the runs, relative to a baseline recipe (grid `report.target: {share, of, baseline}`,
recorded at submit by orchestrator.grid.report_settings): share x the baseline recipe's median best judged robust
accuracy
(of: best_adv_acc) or its AutoAttack accuracy pooled over its runs' images (of: aa_acc). Only the baseline's
finished runs that learned something count (reach_rule.at_chance); none is one line (ReportError, exit 2)."""

from __future__ import annotations

import pandas as pd

from orchestrator.grid.report_settings import ReportSettings, baseline_matches
from orchestrator.report import reach_rule, stats
from orchestrator.report.tables import ReportError, Tables, autoattack_of, number, train_runs


def relative_target(tables: Tables, settings: ReportSettings) -> tuple[float, str]:
    """(target, the rule in words with its number) for a recorded relative target."""
    baseline, share, of = str(settings.target_baseline), float(settings.target_share or 0), settings.target_of
    where = f"{tables.exp_dir}: report.target.baseline {baseline!r}"
    runs = train_runs(tables.runs)
    recipes = runs["recipe"] if "recipe" in runs.columns else pd.Series(None, index=runs.index)
    mine = runs[[baseline_matches(baseline, None if pd.isna(r) else str(r), str(m))
                 for r, m in zip(recipes, runs["method"], strict=True)]]  # fmt: skip
    finished = mine[mine["state"].astype(str) == "finished"] if "state" in mine.columns else mine
    if finished.empty:
        raise ReportError(f"{where}: no finished run of that recipe ({len(mine)} run(s) of it), so no target yet")
    judged, _ = reach_rule.judged_table(tables.exp_dir, tables.runs)
    learned = []
    for row in finished.to_dict("records"):
        rows = judged[judged["run_id"].astype(str) == str(row["run_id"])]
        rows = rows.assign(adv=pd.to_numeric(rows["adv_acc"], errors="coerce")).dropna(subset=["adv"])
        if not rows.empty and not reach_rule.at_chance(rows, str(row["dataset"])):
            learned.append(row)
    if not learned:
        raise ReportError(f"{where}: every finished run of that recipe is at chance (learned nothing); no target")
    if of == "aa_acc":
        measured = [autoattack_of(tables.robustness, str(r["run_id"]), number(r.get("attack_eps"))) for r in learned]
        pooled = [(acc, n) for acc, _, _, n in measured if acc is not None and n]
        images = sum(n for _, n in pooled if n)
        if not images:
            raise ReportError(f"{where}: no AutoAttack accuracy of that recipe's runs (robustness.csv aa_acc)")
        value = sum(acc * n for acc, n in pooled if n) / images
        what = f"AutoAttack accuracy pooled over its {len(pooled)} run(s) ({images} images)"
    else:
        best = [float(judged.loc[judged["run_id"].astype(str) == str(r["run_id"]), "adv_acc"].astype(float).max())
                for r in learned]  # fmt: skip
        value = stats.median(best)
        what = f"median best judged robust accuracy of its {len(best)} run(s)"
    rule = f"{share:.0%} of recipe {baseline}'s {what} ({value * 100:.1f} %), fixed in advance (report.target)"
    return round(share * value, 6), rule
