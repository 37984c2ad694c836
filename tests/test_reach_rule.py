"""Reached, spike-proof (orchestrator.report.reach_rule): the sustained rule against the plain first hit, the
judge's SE as the tolerance, and the off-clock judge's snapshots.csv as the source of times when it exists."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.report import reach_rule
from orchestrator.report import time_to_target as ttt
from tests.test_time_to_target import epochs, experiment, reaches, run_row

# the committed study's winner: 66.4 % at one evaluation between 59.6 % and 61.6 %, above the target only later
SPIKE = [0.50, 0.664, 0.596, 0.616, 0.62, 0.66, 0.67]
TARGET = 0.6555


def test_one_lucky_evaluation_does_not_reach_the_target() -> None:
    se = reach_rule.standard_error(TARGET, 500)
    assert se == pytest.approx(math.sqrt(TARGET * (1 - TARGET) / 500))  # 2.1 points
    assert reach_rule.first_hit(SPIKE, TARGET) == 1
    assert reach_rule.sustained(SPIKE, TARGET, [se] * len(SPIKE)) == 5  # 59.6 % is more than 1 SE below
    assert reach_rule.sustained(SPIKE, TARGET, [0.06] * len(SPIKE)) == 1  # a judge this noisy cannot tell
    assert reach_rule.sustained([0.5, 0.6], 0.7, [0.0, 0.0]) is None and reach_rule.first_hit([0.5], 0.7) is None
    assert reach_rule.sustained([0.7, 0.7], 0.7, [0.0, 0.0]) == 0  # ties at the target count
    assert reach_rule.sustained([0.8, 0.7, 0.69], 0.7, [0.0] * 3) is None  # the last evaluation fell below
    assert reach_rule.standard_error(0.5, None) == 0.0


def test_the_report_states_the_rule_and_the_first_hit_ranking(tmp_path: Path) -> None:
    spike = epochs("spike", dict(zip(range(1, 8), SPIKE, strict=True)), every_s=1.0, last=7)
    steady = epochs("steady", {1: 0.5, 2: 0.6, 3: 0.66, 4: 0.67, 5: 0.67, 6: 0.68, 7: 0.68}, every_s=1.0, last=7)
    runs = [run_row("spike", val_subset=500), run_row("steady", "pgd7", val_subset=500)]
    exp = experiment(tmp_path, runs, spike + steady)
    got = reaches(exp, target=TARGET)
    assert (got["spike"].epoch, got["spike"].first_epoch) == (6, 2)
    assert (got["steady"].epoch, got["steady"].first_epoch) == (3, 3)
    md = ttt.ttt_markdown(list(got.values()))
    assert "first to the target is steady" in md  # sustained: steady at epoch 3 beats spike's epoch 6
    assert "plain first-hit rule (one evaluation at or above the target): a different ranking" in md
    assert "| 68.0 ± 2.1, n=500 |" in md  # steady's best with its binomial SE on the 500 validation images
    assert r"68.0 $\pm$ 2.1, n=500" in ttt.ttt_latex(list(got.values()))
    assert "spike < steady" in md and "reached later (or never) under the sustained rule: spike" in md
    row = {r["run_id"]: r for r in ttt.ttt_rows(list(got.values()))}["spike"]
    assert (row["reached_rule"], row["first_hit_epoch"], row["epoch"], row["judged_by"]) == (
        "sustained", "2", "6", "epochs")  # fmt: skip


def test_snapshots_csv_gives_off_clock_times(tmp_path: Path) -> None:
    rows = [{**r, "train_s": 2.0} for r in epochs("run", {2: 0.4, 4: 0.6, 6: 0.62})]  # on the clock: 10 s/epoch
    exp = experiment(tmp_path, [run_row("run")], rows)
    on_clock = reaches(exp, target=0.5)["run"]
    assert (on_clock.epoch, on_clock.elapsed_s, on_clock.train_s, on_clock.judged_by) == (4, 40.0, 8.0, "epochs")
    snapshots = [  # the judge's rows: cumulative clocks, every epoch judged, n images
        {"run_id": "run", "epoch": e, "train_s": 2.0 * e, "elapsed_s": 2.5 * e, "clean_acc": 0.7, "adv_acc": a,
         "n": 1000, "attack": "pgd20"}
        for e, a in ((1, 0.3), (2, 0.45), (3, 0.55), (4, 0.6), (5, 0.61), (6, 0.62))
    ]  # fmt: skip
    pd.DataFrame(snapshots).to_csv(exp / reach_rule.SNAPSHOTS_CSV, index=False)
    off = reaches(exp, target=0.5)["run"]
    assert (off.epoch, off.elapsed_s, off.train_s, off.judged_by) == (3, 7.5, 6.0, "snapshots")
    assert (off.best_acc, off.evaluations) == (0.62, 6)
    assert off.on_clock_s is None  # epochs.csv measured no on-clock evaluation: no cost to add


def test_on_clock_wall_clock_from_the_measured_evaluation_cost(tmp_path: Path) -> None:
    """A run judged off the clock that also evaluated on it (eval_s 3 s at epochs 2 and 4): at epoch 5 its wall-clock
    less the 6 s counted, plus 5 // every evaluations at the median 3 s."""
    rows = [{**r, "train_s": 2.0, "eval_s": 3.0 if r["adv_acc"] is not None else 0.0}
            for r in epochs("run", {2: 0.4, 4: 0.45}, last=5)]  # fmt: skip
    exp = experiment(tmp_path, [run_row("run", eval_every=1)], rows)
    snapshots = [{"run_id": "run", "epoch": e, "train_s": 2.0 * e, "elapsed_s": 10.0 * e, "adv_acc": a, "n": 0}
                 for e, a in ((1, 0.3), (3, 0.45), (5, 0.6))]  # fmt: skip
    pd.DataFrame(snapshots).to_csv(exp / reach_rule.SNAPSHOTS_CSV, index=False)
    got = reaches(exp, target=0.5)["run"]
    assert (got.epoch, got.elapsed_s) == (5, 50.0)
    assert got.on_clock_s == 50.0 - 6.0 + 5 * 3.0
    row = ttt.ttt_rows([got])[0]
    assert float(row["on_clock_wall_hours"]) == pytest.approx(59.0 / 3600, rel=1e-5)
