"""Replicates grouped into recipes: the statistics (orchestrator.report.stats) on values with known answers, and
the report's replicates table from synthetic CSVs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from orchestrator.report import stats
from tests.fixtures import keep_figures
from workloads.layout import write_csv_atomic

INF = math.inf


def test_median_and_spread() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert stats.median([1.0, INF, 2.0]) == 2.0  # one of three never reached: the median still did
    assert stats.median([1.0, INF]) == INF
    assert stats.spread([5.0, 1.0, 3.0]) == stats.Interval(1.0, 5.0, "min-max")  # n < 5
    assert stats.spread([2.0]).kind == ""
    assert stats.spread([1.0, 2.0, 3.0, 4.0, 5.0]).kind == "bootstrap 95 %"


def test_bootstrap_interval_is_the_hand_computed_one() -> None:
    values = [10.0, 12.0, 9.0, 30.0, 11.0, 14.0]
    got = stats.bootstrap_median(values, draws=400)
    # by hand: the same resamples (numpy's default_rng(0)), numpy's median, order statistics at ranks ceil(q B)
    idx = np.random.default_rng(0).integers(0, len(values), size=(400, len(values)))
    medians = np.sort(np.median(np.asarray(values)[idx], axis=1))
    assert (got.low, got.high) == (medians[math.ceil(0.025 * 400) - 1], medians[math.ceil(0.975 * 400) - 1])
    assert min(values) <= got.low <= stats.median(values) <= got.high <= max(values)
    assert stats.bootstrap_median([7.0] * 5) == stats.Interval(7.0, 7.0, "bootstrap 95 %")


def test_paired_ratio_sees_through_seed_noise_unpaired_does_not() -> None:
    baseline = {0: 10.0, 1: 100.0, 2: 1000.0}  # seed-to-seed noise far larger than the effect
    recipe = {0: 5.0, 1: 50.0, 2: 500.0}  # half the baseline's time at every seed
    paired = stats.ratio_of_medians(recipe, baseline)
    assert paired is not None and paired.paired
    assert paired.value == 0.5 and (paired.interval.low, paired.interval.high) == (0.5, 0.5)
    assert stats.verdict(paired) == "faster"
    unpaired = stats.ratio_of_medians({s + 3: t for s, t in recipe.items()}, baseline)  # other seeds
    assert unpaired is not None and not unpaired.paired and unpaired.value == 0.5
    assert unpaired.interval.contains(1.0) and stats.verdict(unpaired) == "tie within noise"
    assert stats.verdict(stats.ratio_of_medians({0: 50.0, 1: 60.0}, {0: 5.0, 1: 6.0})) == "slower"


def test_an_interval_containing_one_never_says_faster() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        a = {s: float(t) for s, t in enumerate(rng.lognormal(0, 1, size=3))}
        b = {s: float(t) for s, t in enumerate(rng.lognormal(0, 1, size=3))}
        ratio = stats.ratio_of_medians(a, b)
        assert ratio is not None
        if ratio.interval.contains(1.0):
            assert stats.verdict(ratio) == "tie within noise"
        else:
            assert stats.verdict(ratio) == ("faster" if ratio.interval.high < 1 else "slower")
    assert stats.ratio_of_medians({0: 1.0}, {0: 9.0}) is None  # one seed: no interval, so no verdict
    assert stats.verdict(None) == "no interval (fewer than 2 seeds)"
    never = stats.ratio_of_medians({0: 1.0, 1: INF, 2: 2.0}, {0: 9.0, 1: 9.0, 2: 9.0})
    assert never is not None and never.interval.high == INF and stats.verdict(never) == "tie within noise"


def test_binomial_se_and_mean_sd() -> None:
    assert stats.binomial_se(0.5, 100) == pytest.approx(0.05)
    assert stats.mean_sd([0.6, 0.8]) == (pytest.approx(0.7), pytest.approx(math.sqrt(0.02)))
    assert stats.mean_sd([0.6]) == (0.6, 0.0)


# reach epoch per (recipe, seed); None: never. Train clock: paper 3 s per epoch, the others 1 s.
REACH = {("paper", 0): 2, ("paper", 1): 3, ("paper", 2): 4,
         ("cyclic", 0): 1, ("cyclic", 1): 2, ("cyclic", 2): None,
         ("quick", 0): 1, ("quick", 1): 1, ("quick", 2): 1}  # fmt: skip
AA = {("cyclic", 0): (0.6, 100), ("cyclic", 1): (0.7, 100), ("cyclic", 2): (0.5, 200)}


def synthetic(tmp_path: Path) -> Path:
    exp = tmp_path / "reps"
    exp.mkdir()
    runs, epochs, rob = [], [], []
    for (recipe, seed), reach in REACH.items():
        run_id = f"{recipe}-fast-n1g1-b128-s{seed}"
        per_epoch = 3.0 if recipe == "paper" else 1.0
        elapsed = 0.0
        for epoch in range(1, 5):
            elapsed += per_epoch + 0.5
            adv = 0.6 if reach is not None and epoch >= reach else 0.3
            epochs.append({"run_id": run_id, "epoch": epoch, "train_s": per_epoch, "eval_s": 0.5,
                           "elapsed_s": elapsed, "clean_acc": 0.8, "adv_acc": adv})  # fmt: skip
        runs.append({"run_id": run_id, "experiment": "reps", "kind": "train", "dataset": "fashion_mnist",
                     "method": "fast", "attack_eps": 1.0, "world_size": 1, "epochs": 4, "state": "finished",
                     "elapsed_s_last": elapsed, "elapsed_s_best": elapsed, "seed": seed, "eval_every": 1,
                     "recipe": recipe, "recipe_key": f"recipe={recipe};method=fast"})  # fmt: skip
        if (recipe, seed) in AA:
            acc, n = AA[(recipe, seed)]
            rob.append({"run_id": run_id, "method": "fast", "eps": 1.0, "n": n, "adv_acc": acc + 0.01,
                        "aa_acc": acc, "checkpoint": "last"})  # fmt: skip
    write_csv_atomic(exp / "runs.csv", list(runs[0]), runs)
    write_csv_atomic(exp / "epochs.csv", list(epochs[0]), epochs)
    write_csv_atomic(exp / "robustness.csv", list(rob[0]), rob)
    return exp


def test_report_groups_replicates_into_recipes(tmp_path: Path) -> None:
    from orchestrator.report import build_report

    exp = synthetic(tmp_path)
    report = build_report(exp, target_adv_acc=0.5).read_text()
    rows = {r["recipe"]: r for r in csv.DictReader((exp / "report" / "replicates.csv").open())}
    assert list(rows) == ["paper", "cyclic", "quick"]  # the paper recipe first
    paper, cyclic, quick = rows["paper"], rows["cyclic"], rows["quick"]
    assert (paper["runs"], paper["reached"], paper["seeds"]) == ("3", "3", "0;1;2")
    assert (float(paper["median_train_s"]), paper["train_s_low"], paper["train_s_high"]) == (9.0, "6", "12")
    assert (float(paper["median_wall_s"]), paper["spread"]) == (10.5, "min-max")  # 3 x 3.5 s
    assert (cyclic["reached"], float(cyclic["median_train_s"]), cyclic["train_s_high"]) == ("2", 2.0, "")  # inf
    assert float(cyclic["aa_acc_pooled"]) == pytest.approx(0.575)  # (60 + 70 + 100) / 400 images
    assert (cyclic["aa_n"], float(cyclic["aa_se"])) == (
        "400",
        pytest.approx(math.sqrt(0.575 * 0.425 / 400), rel=1e-5),
    )  # %.6g
    assert float(cyclic["best_adv_acc_mean"]) == pytest.approx(0.5)  # 0.6, 0.6, 0.3
    assert cyclic["verdict"] == "tie within noise" and cyclic["paired"] == "yes"  # a never-reached seed
    assert float(quick["train_ratio"]) == pytest.approx(1 / 9, rel=1e-5) and quick["verdict"] == "faster"
    assert float(quick["train_ratio_high"]) == pytest.approx(1 / 6, rel=1e-5)
    assert paper["verdict"] == "" and paper["baseline"] == ""  # the baseline itself
    assert "## Recipes over their replicates (seeds)" in report and "| 2 of 3 |" in report
    assert "bootstrap 95 % interval of the median (2000 resamples, RNG seed 0)" in report
    assert "highest first: 1-Step PGD, cyclic 61.0%." in report  # the findings name the recipe they average


def test_single_seed_experiments_get_no_replicates_table(tmp_path: Path) -> None:
    from orchestrator.report import build_report

    exp = synthetic(tmp_path)
    runs = [r for r in csv.DictReader((exp / "runs.csv").open()) if r["seed"] == "0"]
    write_csv_atomic(exp / "runs.csv", list(runs[0]), runs)
    report = build_report(exp, target_adv_acc=0.5).read_text()
    assert not (exp / "report" / "replicates.csv").exists() and "Recipes over their replicates" not in report
    assert "- replicates: 1 seed per recipe (3 recipes)" in report


def test_figure_draws_each_recipes_median_and_band(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.report import build_report, ttt_plot

    figures = keep_figures(monkeypatch, ttt_plot)
    build_report(synthetic(tmp_path), target_adv_acc=0.5)
    (ax,) = figures["time_to_target"].axes
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["1-Step PGD, paper, 1 GPU, 3 of 3 seeds reached", "1-Step PGD, cyclic, 1 GPU, 2 of 3 seeds "
                      "reached", "1-Step PGD, quick, 1 GPU, 3 of 3 seeds reached"]  # fmt: skip
    paper = ax.get_lines()[0]
    assert list(paper.get_xdata()) == [3.5, 7.0, 10.5, 14.0]  # median time per epoch over the 3 seeds
    assert list(paper.get_ydata()) == [30.0, 30.0, 60.0, 60.0]  # median accuracy: seeds reach at 2, 3, 4
    bands = [c for c in ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
    assert len(bands) == 3  # one band per recipe with several seeds
    stars = [c for c in ax.collections if c not in bands]
    assert sorted(float(c.get_offsets()[0][0]) for c in stars) == [1.5, 3.0, 10.5]  # median wall-clock to target
    box = ax.get_position()
    assert box.x1 > 0.9  # the legend is below the axes: the plot spans the canvas


def test_baseline_names_a_recipe_and_one_not_in_the_experiment_is_refused(tmp_path: Path) -> None:
    from orchestrator.report import build_report
    from orchestrator.report.table1 import Baseline, parse_baseline
    from orchestrator.report.tables import ReportError

    assert parse_baseline("paper-fast@1") == Baseline("fast", 1, "paper", given=True)
    assert parse_baseline("fast") == Baseline("fast", None, None, given=True) and not parse_baseline(None).given
    exp = synthetic(tmp_path)
    build_report(exp, baseline="quick-fast", target_adv_acc=0.5)
    rows = {r["recipe"]: r for r in csv.DictReader((exp / "report" / "replicates.csv").open())}
    assert rows["paper"]["baseline"] == "quick" and float(rows["paper"]["train_ratio"]) == pytest.approx(9.0)
    assert rows["paper"]["verdict"] == "slower" and rows["quick"]["verdict"] == ""
    table = {r["recipe"]: r for r in csv.DictReader((exp / "report" / "table1.csv").open())}
    assert float(table["quick"]["last_relative"]) == 1.0
    with pytest.raises(ReportError) as err:
        build_report(exp, baseline="nope-fast")
    assert str(err.value) == ("--baseline nope-fast: no train run of the experiment is that recipe; its runs: "
                              "cyclic-fast@1, paper-fast@1, quick-fast@1")  # fmt: skip
