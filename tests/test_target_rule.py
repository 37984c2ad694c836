"""A target fixed in advance (grid `report.target`): absolute, or relative to a named baseline recipe's median
best judged robust accuracy or pooled AutoAttack accuracy; refused in one FILE:LINE line when the baseline is not
in the experiment or the share is outside (0, 1]; at report time a baseline without a finished run is one line."""

from __future__ import annotations

import csv
import re
import textwrap
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.grid import report_settings as grid_report
from orchestrator.grid.files import GridError, load_grids
from orchestrator.report import build_report
from orchestrator.report.tables import ReportError
from tests.test_replicates import synthetic
from workloads.layout import write_csv_atomic

GRID = """\
    name: tgt
    kind: train
    executor: local
    defaults: {{recipe: paper, method: pgd7, epochs: 2}}
    report:
      target: {target}
    ---
    name: tgt
    kind: train
    executor: local
    defaults: {{recipe: cyclic, method: fast, epochs: 2}}
    report:
      target: {target}
    """


def grids(tmp_path: Path, target: str) -> Path:
    path = tmp_path / "tgt.yaml"
    path.write_text(textwrap.dedent(GRID.format(target=target)))
    return path


def test_relative_target_is_parsed_recorded_and_read_back(tmp_path: Path) -> None:
    loaded = load_grids(grids(tmp_path, "{share: 0.95, of: aa_acc, baseline: paper-pgd7}"))
    settings = loaded[0].report
    assert settings == grid_report.ReportSettings(None, 0.95, "aa_acc", "paper-pgd7")
    grid_report.save(tmp_path / "exp", settings)
    assert grid_report.load(tmp_path / "exp") == settings
    assert load_grids(grids(tmp_path, "0.6"))[0].report == grid_report.ReportSettings(0.6)  # absolute
    assert grid_report.baseline_matches("pgd7", None, "pgd7") and not grid_report.baseline_matches("pgd7", "x", "pgd7")


@pytest.mark.parametrize(
    "target, expected",
    [
        ("{share: 0.95, baseline: paper-fast}", "tgt.yaml:6: report.target.baseline: no train cell of experiment "
         "tgt is recipe 'paper-fast'; its recipes: cyclic-fast, paper-pgd7"),
        ("{share: 1.5, baseline: paper-pgd7}", "report.target.share: expected a fraction in (0, 1]"),
        ("{share: 0, baseline: paper-pgd7}", "report.target.share: expected a fraction in (0, 1]"),
        ("{share: 0.9, of: worst, baseline: paper-pgd7}", "report.target.of: expected one of best_adv_acc, aa_acc"),
        ("{share: 0.9}", "report.target.baseline: expected a recipe as [RECIPE-]METHOD"),
        ("1.2", "report.target: expected a fraction in (0, 1]"),
    ],
)  # fmt: skip
def test_bad_targets_are_one_line(tmp_path: Path, target: str, expected: str) -> None:
    with pytest.raises(GridError) as err:
        load_grids(grids(tmp_path, target))
    lines = str(err.value).splitlines()  # one line per document that has the section (both here), or per experiment
    assert 1 <= len(lines) <= 2 and all(expected in line for line in lines), lines


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_target_relative_to_the_baselines_median(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = synthetic(tmp_path)  # recipes paper, cyclic, quick of method fast, 3 seeds each; paper's bests 60 %
    grid_report.save(exp, grid_report.ReportSettings(None, 0.9, "best_adv_acc", "paper-fast"))
    build_report(exp)
    rows = list(csv.DictReader((exp / "report" / "time_to_target.csv").open()))
    assert {r["target_adv_acc"] for r in rows} == {"0.54"}
    assert rows[0]["target_rule"] == ("90% of recipe paper-fast's median best judged robust accuracy of its 3 run(s) "
                                      "(60.0 %), fixed in advance (report.target)")  # fmt: skip
    grid_report.save(exp, grid_report.ReportSettings(None, 0.9, "aa_acc", "cyclic-fast"))
    build_report(exp)
    rows = list(csv.DictReader((exp / "report" / "time_to_target.csv").open()))
    assert float(rows[0]["target_adv_acc"]) == pytest.approx(0.9 * 0.575)  # pooled over 400 images
    # the baseline recipe has no finished run: one line, exit 2
    runs = list(csv.DictReader((exp / "runs.csv").open()))
    write_csv_atomic(exp / "runs.csv", list(runs[0]), [{**r, "state": "running"} if r["recipe"] == "cyclic" else r
                                                       for r in runs])  # fmt: skip
    with pytest.raises(
        ReportError, match=re.escape("report.target.baseline 'cyclic-fast': no finished run of that recipe")
    ):
        build_report(exp)
    capsys.readouterr()
    assert cli.main(["report", str(exp)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no finished run of that recipe (3 run(s) of it)" in line
