"""The report of an evaluate-only experiment has its table (clean, PGD, each AutoAttack attack, the ensemble, n,
SE), and the masking flag ‡ needs the PGD - AutoAttack gap over both its threshold and 2 SE of the difference at
that n (orchestrator.report.masking): closed forms at n = 32 and n = 1000."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.report import build_report, masking, robustness_table
from orchestrator.report import time_to_target as ttt
from orchestrator.report.tables import Tables

THRESHOLD = ttt.MASKING_POINTS  # 3 points
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("n", "k", "flagged"),
    [
        (32, 1, False),  # one image: 3.1 points > 3, but 2 SE = 6.2 points
        (32, 3, False),  # 9.4 points, 2 SE = 10.3
        (32, 4, True),  # 12.5 points, 2 SE = 11.7
        (1000, 31, True),  # 3.1 points, 2 SE = 1.1
        (1000, 30, False),  # 3.0 points: not over the threshold
        (1000, 3, False),
    ],
)
def test_masking_rule_needs_the_threshold_and_two_se(n: int, k: int, flagged: bool) -> None:
    gap = 100 * k / n
    se = 100 * math.sqrt((k / n) * (1 - k / n) / n)
    assert masking.se_points(gap, n) == pytest.approx(se)
    assert masking.masked(gap, n, THRESHOLD) is flagged
    assert (gap > THRESHOLD and gap > 2 * se) is flagged  # the rule as stated


def test_without_n_only_the_threshold_applies() -> None:
    assert masking.masked(3.1, None, THRESHOLD) and not masking.masked(2.9, None, THRESHOLD)
    assert not masking.masked(None, 100, THRESHOLD)


def _rob(n: int, pgd: float, aa: float, run_id: str = "fast-n1g1-b128-s0") -> dict[str, object]:
    return {"run_id": run_id, "method": "fast", "eps": 1.0, "steps": 20, "restarts": 2, "n": n, "clean_acc": 0.8,
            "adv_acc": pgd, "checkpoint": "best", "aa_apgd_ce_acc": pgd - 0.01, "aa_apgd_t_acc": aa,
            "aa_fab_t_acc": aa, "aa_acc": aa, "worst_acc": aa, "aa_version": "standard"}  # fmt: skip


def test_time_to_target_flag_uses_the_evaluations_n(tmp_path: Path) -> None:
    runs = pd.DataFrame([{"run_id": r, "kind": "train", "dataset": "fashion_mnist", "method": "fast",
                          "world_size": 1, "attack_eps": 1.0, "eval_every": 1, "state": "finished"}
                         for r in ("small", "large")])  # fmt: skip
    pd.DataFrame([{"run_id": r, "epoch": 1, "elapsed_s": 10.0, "adv_acc": 0.6} for r in ("small", "large")]).to_csv(
        tmp_path / "epochs.csv", index=False
    )
    rob = pd.DataFrame([_rob(32, 0.5, 0.5 - 1 / 32, "small"), _rob(1000, 0.5, 0.469, "large")])
    got = {r.run_id: r for r in ttt.time_to_target(Tables(tmp_path, runs, None, rob))}
    assert got["small"].gap_points == pytest.approx(3.125) and not got["small"].masked
    assert got["large"].gap_points == pytest.approx(3.1) and got["large"].masked


def test_evaluate_only_report_has_its_table(tmp_path: Path) -> None:
    exp = tmp_path / "judge"
    exp.mkdir()
    pd.DataFrame([_rob(32, 0.5, 0.5 - 1 / 32), _rob(1000, 0.5, 0.45, "pgd7-n1g1-b128-s0")]).to_csv(
        exp / "robustness.csv", index=False
    )
    report = build_report(exp).read_text(encoding="utf-8")
    assert "## Robustness" in report and "over 2 SE of the difference at that n" in report
    table = (exp / "report" / "robustness_table.md").read_text(encoding="utf-8")
    head = table.splitlines()[0]
    for column in ("n", "Clean (%)", "PGD (%)", "APGD-CE (%)", "APGD-T (%)", "FAB-T (%)", "AutoAttack (%)",
                   "SE (points)", "PGD − AA (points)"):  # fmt: skip
        assert f"| {column} |" in head, head
    se32 = 100 * math.sqrt(0.46875 * 0.53125 / 32)  # of the AutoAttack accuracy at n = 32
    row32 = next(line for line in table.splitlines() if line.startswith("| fast-"))
    assert f"| 32 | 80.0 | 50.0 | 49.0 | 46.9 | 46.9 | 46.9 | 46.9 | {se32:.1f} | +3.1 |" in row32, row32  # no ‡
    row1000 = next(line for line in table.splitlines() if line.startswith("| pgd7-"))
    assert row1000.endswith("| +5.0 ‡ |"), row1000
    csv = pd.read_csv(exp / "report" / "robustness_table.csv")
    assert list(csv.columns) == list(robustness_table.COLUMNS)
    assert list(csv["masking_flag"].fillna("")) == ["", "yes"]  # sorted by run_id


def test_every_report_with_train_runs_has_training_curves(tmp_path: Path) -> None:
    exp = tmp_path / "demo"
    exp.mkdir()
    for name in ("runs.csv", "epochs.csv"):  # the committed demo run's: 6 train runs, 9 epochs each
        shutil.copyfile(REPO / "results" / "reference" / "demo" / name, exp / name)
    report = build_report(exp).read_text(encoding="utf-8")
    assert "## Training curves" in report and (exp / "report" / "curves.png").stat().st_size > 0
    assert (exp / "report" / "curves.pdf").exists()
    judge = tmp_path / "judge"  # evaluate only: no curves to draw
    judge.mkdir()
    pd.DataFrame([_rob(100, 0.5, 0.45)]).to_csv(judge / "robustness.csv", index=False)
    assert "## Training curves" not in build_report(judge).read_text(encoding="utf-8")
    assert not (judge / "report" / "curves.png").exists()
