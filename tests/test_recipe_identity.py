"""Recipe identity (orchestrator.grid.recipe_key): a recipe is every setting but the seed; runs.csv names each run's
recipe and carries the settings that vary; Table I's rows are recipes and only replicates are averaged."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path
from typing import Any

import pytest

from orchestrator import collect
from orchestrator.grid import recipe_key
from orchestrator.grid.files import GridError, load_grid
from orchestrator.grid.run_ids import derive_run_ids
from tests.test_collect import make_run
from workloads.spec import from_dict

SCHEDULES = (  # one sweep of the optimizer as a user writes it: max_lr only where the schedule reads it
    {"schedule": "step"},
    {"schedule": "onecycle", "max_lr": 0.2},
    {"schedule": "cyclic", "max_lr": 0.2},
)


def cell(run_id: str = "", **settings: Any) -> Any:
    return from_dict({"experiment": "exp", "run_id": run_id, "method": "fast", "epochs": 2, **settings})


def test_the_seed_and_run_specific_fields_are_not_the_recipe() -> None:
    specs = [cell(optimizer=o, seed=s, resources={"timeout_min": 5 + s}) for o in SCHEDULES for s in (0, 1)]
    varying = recipe_key.varying_settings(specs)
    assert varying == ["optimizer.schedule", "optimizer.max_lr"]
    keys = [recipe_key.recipe_key(s, varying) for s in specs]
    assert keys[0] == keys[1] != keys[2] == keys[3] != keys[4] == keys[5]  # seeds pair up, schedules do not
    assert keys[2] == "optimizer.schedule=onecycle;optimizer.max_lr=0.2"
    assert recipe_key.parse_key(keys[2]) == {"optimizer.schedule": "onecycle", "optimizer.max_lr": "0.2"}
    columns = recipe_key.recipe_columns(specs[4], varying)
    assert columns["recipe_label"] == "schedule cyclic, max_lr 0.2"
    assert (columns["optimizer.schedule"], columns["optimizer.max_lr"], columns["optimizer.lr"]) == ("cyclic", 0.2, 0.1)
    assert recipe_key.recipe_columns(cell(recipe="wong", optimizer=SCHEDULES[2]), varying)["recipe_label"] == "wong"
    assert recipe_key.varying_settings([cell(seed=0), cell(seed=1)]) == []  # replicates only: one recipe, key ""


def test_row_names_use_the_recipe_name_and_what_tells_rows_of_one_name_apart() -> None:
    keys = [
        "recipe=paper;method=fast;precision=fp32;shape.gpus_per_node=1",
        "recipe=paper;method=fast;precision=fp32;shape.gpus_per_node=2",
        "recipe=bf16;method=fast;precision=bf16;shape.gpus_per_node=1",
        "recipe=paper;method=pgd7;precision=bf16;shape.gpus_per_node=1",
        "recipe=paper;method=pgd7;precision=fp32;shape.gpus_per_node=1",
        "method=fast;optimizer.schedule=cyclic",
    ]
    rows = [recipe_key.row_key(k) for k in keys]
    assert rows[0] == rows[1] == "recipe=paper;precision=fp32"  # the GPU count is Table I's column, not its row
    names = recipe_key.row_names(keys)  # of one name and method, the settings that differ are named
    assert names == ["paper", "paper", "bf16", "paper, precision bf16", "paper, precision fp32", "schedule cyclic"]
    assert recipe_key.row_names([""]) == [""]


def test_run_ids_leave_out_settings_a_schedule_does_not_have() -> None:
    specs = [cell(optimizer=o) for o in SCHEDULES]
    assert derive_run_ids("train", specs) == [
        "fast-n1g1-b128-s0-schedulestep",
        "fast-n1g1-b128-s0-scheduleonecycle-max_lr0.2",
        "fast-n1g1-b128-s0-schedulecyclic-max_lr0.2",
    ]
    # cyclic reads max_lr (unset: lr), so its "none" stays, as every other unset setting's does
    unset = [cell(optimizer={"schedule": "cyclic"}), cell(optimizer={"schedule": "cyclic", "max_lr": 0.2})]
    assert derive_run_ids("train", unset) == ["fast-n1g1-b128-s0-max_lrnone", "fast-n1g1-b128-s0-max_lr0.2"]


def write_sweep(tmp_path: Path) -> Path:
    """A grid that sweeps the schedule at two seeds (6 cells), as a user writes it."""
    path = tmp_path / "sweep.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: sweep
            kind: train
            executor: local
            defaults: {method: fast, epochs: 2, train_subset: 64, val_subset: 32}
            grid:
              optimizer:
                - {schedule: step}
                - {schedule: onecycle, max_lr: 0.2}
                - {schedule: cyclic, max_lr: 0.2}
              seed: [0, 1]
            """
        )
    )
    return path


def collected(tmp_path: Path, times: dict[str, float]) -> Path:
    """The sweep's cells as finished run directories (elapsed per run_id), collected."""
    exp = tmp_path / "sweep"
    cells = load_grid(write_sweep(tmp_path)).cells
    for spec in cells:
        t = times[spec.run_id]
        make_run(exp, spec, [(t / 2, "0.6", "0.4"), (t, "0.7", "0.5")])
    standard = from_dict({**cells[0].to_dict(), "run_id": "standard-s0", "method": "standard", "seed": 0})
    make_run(exp, standard, [(0.5, "0.8", "0.1"), (1.0, "0.8", "0.1")])
    collect.collect(exp)
    return exp


TIMES = {
    "fast-n1g1-b128-s0-schedulestep": 10.0,
    "fast-n1g1-b128-s1-schedulestep": 14.0,
    "fast-n1g1-b128-s0-scheduleonecycle-max_lr0.2": 20.0,
    "fast-n1g1-b128-s1-scheduleonecycle-max_lr0.2": 22.0,
    "fast-n1g1-b128-s0-schedulecyclic-max_lr0.2": 40.0,
    "fast-n1g1-b128-s1-schedulecyclic-max_lr0.2": 60.0,
}


def test_runs_csv_names_the_recipe_and_the_settings_that_vary(tmp_path: Path) -> None:
    exp = collected(tmp_path, TIMES)
    rows = {r["run_id"]: r for r in csv.DictReader((exp / "runs.csv").open())}
    header = next(csv.reader((exp / "runs.csv").open()))
    assert header[: len(collect.RUN_COLUMNS)] == list(collect.RUN_COLUMNS)  # existing columns first, unchanged
    assert header[len(collect.RUN_COLUMNS) :] == [  # method varies too, but has its column already
        "recipe_key", "recipe_label", "optimizer.lr", "optimizer.momentum", "optimizer.weight_decay",
        "optimizer.step_epochs", "optimizer.gamma", "optimizer.schedule", "optimizer.warmup_epochs",
        "optimizer.max_lr", "optimizer.peak_fraction",
    ]  # fmt: skip
    assert "seed" not in header[len(collect.RUN_COLUMNS) :]  # already a column, and never part of a recipe
    a, b = rows["fast-n1g1-b128-s0-schedulecyclic-max_lr0.2"], rows["fast-n1g1-b128-s1-schedulecyclic-max_lr0.2"]
    assert a["recipe_key"] == b["recipe_key"] == "method=fast;optimizer.schedule=cyclic;optimizer.max_lr=0.2"
    assert a["recipe_label"] == "fast, schedule cyclic, max_lr 0.2" and a["recipe"] == ""  # recipe: the grid's name
    assert (a["optimizer.schedule"], a["optimizer.max_lr"], a["optimizer.momentum"]) == ("cyclic", "0.2", "0.9")
    assert rows["fast-n1g1-b128-s0-schedulestep"]["optimizer.max_lr"] == ""
    assert rows["standard-s0"]["recipe_key"] == "method=standard;optimizer.schedule=step;optimizer.max_lr=none"


def test_table1_rows_are_recipes_and_average_replicates_only(tmp_path: Path) -> None:
    from orchestrator.report import build_report

    exp = collected(tmp_path, TIMES)
    report = build_report(exp).read_text()
    rows = list(csv.DictReader((exp / "report" / "table1.csv").open()))
    fast = {r["recipe"]: r for r in rows if r["method"] == "fast"}
    assert sorted(fast) == ["schedule cyclic, max_lr 0.2", "schedule onecycle, max_lr 0.2", "schedule step"]
    assert {r["runs"] for r in fast.values()} == {"2"}
    hours = {name: round(float(r["last_hours"]) * 3600, 3) for name, r in fast.items()}  # %.6g hours in the CSV
    assert hours == {"schedule step": 12.0, "schedule onecycle, max_lr 0.2": 21.0, "schedule cyclic, max_lr 0.2": 50.0}
    assert float(fast["schedule cyclic, max_lr 0.2"]["last_relative"]) == 50.0  # standard's 1.0 s
    md = (exp / "report" / "table1.md").read_text()
    assert "| 1-Step PGD, schedule cyclic, max_lr 0.2 | 50.0 (50.0) n=2 |" in md
    assert "runs of different recipes are never averaged" in md
    assert "- varies: optimizer.schedule: step, cyclic, onecycle" in report
    assert "- varies: optimizer.max_lr: 0.2, none" in report
    assert "- replicates: 1, 2 seeds per recipe (4 recipes)" in report


def grid_file(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "reps.yaml"
    path.write_text(f"name: reps\nkind: train\nexecutor: local\ndefaults: {{method: fast}}\n{extra}")
    return path


def test_replicates_expand_to_seeds_and_bad_values_are_one_line(tmp_path: Path) -> None:
    cells = load_grid(grid_file(tmp_path, "replicates: 3\ngrid: {precision: [fp32, bf16]}\n")).cells
    assert sorted((c.precision, c.seed) for c in cells) == [(p, s) for p in ("bf16", "fp32") for s in (0, 1, 2)]
    assert {recipe_key.recipe_key(c, recipe_key.varying_settings(cells)) for c in cells} == {
        "precision=fp32", "precision=bf16"}  # fmt: skip
    shifted = grid_file(tmp_path, "replicates: 2\n").read_text().replace("{method: fast}", "{method: fast, seed: 5}")
    (tmp_path / "shifted.yaml").write_text(shifted)
    assert [c.run_id for c in load_grid(tmp_path / "shifted.yaml").cells] == ["fast-n1g1-b128-s5", "fast-n1g1-b128-s6"]
    for extra, expected in (
        ("replicates: 0\n", "reps.yaml:5: replicates: expected a whole number of runs per recipe in 1..1000; got 0"),
        ("replicates: '3'\n", "replicates: expected a whole number of runs per recipe in 1..1000; got '3'"),
        ("replicates: 2\ngrid: {seed: [0, 1]}\n", "replicates: grid.seed lists the seeds already"),
    ):
        with pytest.raises(GridError) as err:
            load_grid(grid_file(tmp_path, extra))
        lines = str(err.value).splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
