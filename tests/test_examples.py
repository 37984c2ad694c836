"""experiments/examples/ run: each grid is submitted as written except for its sizes (TINY: 128 training images,
2 epochs, 8 AutoAttack images at a custom budget), on the local executor, once per module; each test reads what
its example promised from the results. About 2 min on 2 cores (10 cells: process start and data loading are
most of each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import cli
from orchestrator.grid.bases import merge
from workloads import layout

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # ~2.5 min: ten cells, each mostly process start and data loading
EXAMPLES = REPO / "experiments" / "examples"
TINY_TRAIN = {"train_subset": 128, "val_subset": 64, "epochs": 2, "global_batch_size": 64,
              "eval": {"every": 1, "steps": 2}, "guard": {"examples": 64, "steps": 2}}  # fmt: skip
TINY_EVALUATE = {"evaluate": {"max_examples": 8, "eps_list": [1.0], "steps": 2, "restarts": 1,
                              "autoattack_steps": 2, "autoattack_queries": 10}}  # fmt: skip
GRIDS = {  # example file -> (experiment, grid overrides by document number, from 1)
    "recipes.yaml": ("recipes", {3: {"evaluate": [{"source_run": "step-fast-n1g1-b64-s0"},
                                                  {"source_run": "cyclic-fast-n1g1-b64-s0"}]}}),
    "method_schedule.yaml": ("method-schedule", {}),
    "guard.yaml": ("guard", {}),
    "seeds.yaml": ("seeds", {1: {"method": ["fast"], "seed": [0, 1]}}),
}  # fmt: skip


def tiny(text: str, grids: dict[int, dict[str, Any]]) -> str:
    """The grid file with every document's sizes cut (its structure, methods and attacks kept)."""
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for number, doc in enumerate(docs, start=1):
        small = TINY_EVALUATE if doc.get("kind") == "evaluate" else TINY_TRAIN
        doc["defaults"] = merge(doc.get("defaults") or {}, small)
        if number in grids:
            doc["grid"] = merge(doc.get("grid") or {}, grids[number])
    return yaml.safe_dump_all(docs, sort_keys=False)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    for name, (experiment, grids) in GRIDS.items():
        grid = root / name
        grid.write_text(tiny((EXAMPLES / name).read_text(encoding="utf-8"), grids))
        assert cli.main(["submit", str(grid), "--results", str(root), "--wait", "--poll", "1"]) == 0, name
        assert cli.main(["report", experiment, "--results", str(root)]) == 0, name
    return root


def runs(results: Path, experiment: str) -> list[dict[str, str]]:
    return layout.read_csv(results / experiment / "runs.csv")


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted([*GRIDS, "quickstart.yaml"])


def test_recipe_comparison_and_its_autoattack_judge(results: Path) -> None:
    rows = {r["run_id"]: r for r in runs(results, "recipes")}
    train = {r["recipe"] for r in rows.values() if r["kind"] == "train" and r["state"] == "finished"}
    assert train == {"step", "cyclic"}
    robustness = layout.read_csv(results / "recipes" / "robustness.csv")
    judged = {r["run_id"] for r in robustness if r["aa_acc"] not in ("", None)}
    assert judged == {"step-fast-n1g1-b64-s0", "cyclic-fast-n1g1-b64-s0"}, robustness  # the judged runs
    assert all(r["aa_version"] == "custom" and r["n"] == "8" for r in robustness if r["aa_acc"])
    assert (results / "recipes" / "report" / "report.md").exists()


def test_method_schedule(results: Path) -> None:
    rows = {r["run_id"]: r for r in runs(results, "method-schedule")}
    assert set(rows) == {"fast-n1g1-b64-s0", "pgd7-n1g1-b64-s0", "fast2pgd7-pgd7-n1g1-b64-s0"}
    assert rows["fast2pgd7-pgd7-n1g1-b64-s0"]["method_schedule"] == "fast@0.6"
    assert all(r["state"] == "finished" for r in rows.values())


def test_guard_measures_every_epoch(results: Path) -> None:
    epochs = layout.read_csv(results / "guard" / "epochs.csv")
    assert epochs and all(r["guard_adv_acc"] not in ("", None) and r["co_flag"] in ("0", "1") for r in epochs)
    (row,) = runs(results, "guard")
    assert row["state"] == "finished"


def test_replicates_differ_only_in_seed(results: Path) -> None:
    rows = runs(results, "seeds")
    assert sorted(r["seed"] for r in rows) == ["0", "1"] and all(r["state"] == "finished" for r in rows)
    table = (results / "seeds" / "report" / "report.md").read_text(encoding="utf-8")
    assert " n=2" in table and "shows the mean of N replicates" in table  # two runs in one Table I cell
