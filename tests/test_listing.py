"""For scripts and overviews: `status --json`, `orchestrate list` (experiments under the results root with their
state counts) and `orchestrate report A B` (a side-by-side page of several experiments)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator import cli
from workloads import layout

REPO = Path(__file__).resolve().parent.parent


def _results(tmp_path: Path) -> Path:
    """exp-a: one finished and one missing cell; exp-b: one finished; notes/: a folder that is no experiment."""
    root = tmp_path / "results"
    for exp, cells in (("exp-a", {"r1": True, "r2": False}), ("exp-b", {"r1": True})):
        for run_id, done in cells.items():
            run = layout.run_dir(root, exp, run_id)
            run.mkdir(parents=True)
            layout.write_json_atomic(run / layout.SPEC, {"kind": "train", "epochs": 1})
            if done:
                layout.write_json_atomic(run / layout.RESULT, {"epochs": 1})
    (root / "notes").mkdir()
    return root


def test_list_counts_cells_per_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _results(tmp_path)
    assert cli.main(["list", "--results", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [["experiment", "cells", "finished", "missing"],
                                                 ["exp-a", "2", "1", "1"], ["exp-b", "1", "1", "0"]]  # fmt: skip
    assert cli.main(["list", "--results", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out.startswith("no experiments under ")


def test_status_json_has_every_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _results(tmp_path)
    assert cli.main(["status", "exp-a", "--json", "--results", str(root)]) == 0
    (exp,) = json.loads(capsys.readouterr().out)["experiments"]
    assert exp["name"] == "exp-a" and exp["counts"] == {"finished": 1, "missing": 1}
    assert [(c["run_id"], c["state"], c["kind"]) for c in exp["cells"]] == [("r1", "finished", "train"),
                                                                            ("r2", "missing", "train")]  # fmt: skip
    assert cli.main(["status", "--json", "--results", str(root)]) == 0  # bare status: every experiment
    names = [e["name"] for e in json.loads(capsys.readouterr().out)["experiments"]]
    assert names == ["exp-a", "exp-b", "notes"]


def test_report_two_experiments_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "results"
    for name, source in (("demo", "demo"), ("fast-recipes", "fast-recipes")):  # folders of CSVs, as from a cluster
        (root / name).mkdir(parents=True)
        for csv in ("runs.csv", "robustness.csv"):
            shutil.copyfile(REPO / "results" / "reference" / source / csv, root / name / csv)
    assert cli.main(["report", "demo", "fast-recipes", "--results", str(root)]) == 0
    out = capsys.readouterr().out.split()
    page = root / "comparisons" / "demo+fast-recipes" / "comparison.md"
    assert out[-1] == str(page) and (root / "demo" / "report" / "report.md").exists()
    text = page.read_text(encoding="utf-8")
    assert "| demo | fast-n1g1-b128-s0 |" in text and "| fast-recipes | cyclic-fast-n1g1-b128-s0 |" in text
    assert "## Evaluated runs" in text and "(../../demo/report/report.md)" in text
    rows = layout.read_csv(page.with_suffix(".csv"))
    assert {r["experiment"] for r in rows} == {"demo", "fast-recipes"}
    assert len(rows) == 6 + 15  # every train run of both
