"""The robustness table: every evaluated run's numbers from robustness.csv, one row per run and ε (the report of
an evaluate-only experiment has no other table of them).

Columns: run, checkpoint, ε, n, clean, PGD, each attack of the AutoAttack ensemble (the accuracy after it), the
ensemble, the per-example worst case over AutoAttack and every PGD run, the standard error of the headline
robust accuracy (AutoAttack where it ran, else PGD) as sqrt(p (1 - p) / n), and PGD − AutoAttack with the masking
flag of report.masking. Accuracies in %, SE and gaps in points. Deterministic order (run_id, checkpoint, ε).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from orchestrator.report import masking
from orchestrator.report.labels import DASH
from orchestrator.report.tables import number

ATTACKS = (("aa_apgd_ce_acc", "APGD-CE"), ("aa_apgd_t_acc", "APGD-T"), ("aa_fab_t_acc", "FAB-T"))
COLUMNS = ("run_id", "checkpoint", "eps", "n", "clean_acc", "pgd_acc", *(c for c, _ in ATTACKS), "aa_acc",
           "worst_acc", "se_points", "pgd_minus_aa_points", "masking_flag")  # fmt: skip


def _value(row: Mapping[Any, Any], key: str) -> float | None:
    value = number(row.get(key))
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def rows(rob: pd.DataFrame | None, threshold: float) -> list[dict[str, Any]]:
    """One dict per robustness.csv row (COLUMNS), sorted; `threshold` is the masking flag's gap in points."""
    if rob is None or rob.empty:
        return []
    out = []
    for row in rob.to_dict("records"):
        n = _value(row, "n")
        pgd, aa = _value(row, "adv_acc"), _value(row, "aa_acc")
        headline = aa if aa is not None else pgd
        se = 100 * math.sqrt(headline * (1 - headline) / n) if headline is not None and n else None
        gap = None if aa is None or pgd is None else round((pgd - aa) * 100, 6)
        flag = masking.masked(gap, None if n is None else int(n), threshold)
        out.append({"run_id": str(row["run_id"]), "checkpoint": str(row.get("checkpoint") or ""),
                    "eps": _value(row, "eps"), "n": None if n is None else int(n),
                    "clean_acc": _value(row, "clean_acc"), "pgd_acc": pgd,
                    **{c: _value(row, c) for c, _ in ATTACKS}, "aa_acc": aa, "worst_acc": _value(row, "worst_acc"),
                    "se_points": None if se is None else round(se, 6), "pgd_minus_aa_points": gap,
                    "masking_flag": "yes" if flag else ""})  # fmt: skip
    out.sort(key=lambda r: (r["run_id"], r["checkpoint"], r["eps"] if r["eps"] is not None else -1.0))
    return out


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}"


def markdown(table: list[dict[str, Any]], threshold: float) -> str:
    """The table as markdown with its footnotes ("" without rows)."""
    if not table:
        return ""
    has_aa = any(r["aa_acc"] is not None for r in table)
    head = ["Run", "Checkpoint", "ε", "n", "Clean (%)", "PGD (%)"]
    if has_aa:
        head += [f"{label} (%)" for _, label in ATTACKS] + ["AutoAttack (%)", "Worst case (%)"]
    head += ["SE (points)"] + (["PGD − AA (points)"] if has_aa else [])
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in table:
        cells = [r["run_id"], r["checkpoint"] or DASH, DASH if r["eps"] is None else f"{r['eps']:g}",
                 DASH if r["n"] is None else str(r["n"]), _pct(r["clean_acc"]), _pct(r["pgd_acc"])]  # fmt: skip
        if has_aa:
            cells += [_pct(r[c]) for c, _ in ATTACKS] + [_pct(r["aa_acc"]), _pct(r["worst_acc"])]
        cells.append(DASH if r["se_points"] is None else f"{r['se_points']:.1f}")
        if has_aa:
            gap = r["pgd_minus_aa_points"]
            cells.append(DASH if gap is None else f"{gap:+.1f}" + (" ‡" if r["masking_flag"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["Accuracy on the n evaluated test images; SE: the standard error of the robust accuracy (AutoAttack "
             "where it ran, else PGD), sqrt(p (1 − p) / n), in points."]  # fmt: skip
    if has_aa:
        notes.append("AutoAttack columns: the accuracy left after each attack of the ensemble, in its order, and "
                     "after all of them; worst case: per example over AutoAttack and every PGD run. "
                     f"{masking.rule_text(threshold)}.")  # fmt: skip
    return "\n".join(lines) + "\n\n" + "  \n".join(notes) + "\n"
