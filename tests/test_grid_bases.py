"""Shared defaults across the documents of a grid file (`base:` / `extends:`, orchestrator.grid.bases) and YAML
merge keys within a document: precedence (later wins, nested mappings merge, lists replace) and the refusals,
one line each."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.grid.bases import merge
from orchestrator.grid.files import GridError, load_grids

REPO = Path(__file__).resolve().parent.parent

BASES = """\
base: common
executor: local
defaults:
  epochs: 4
  train_subset: 200
  optimizer: {lr: 0.2, momentum: 0.8, schedule: step, step_epochs: 2}
  bench: {batch_sizes: [32, 64]}
  eval: {every: 2, steps: 3}
---
base: cyclic
extends: common
defaults:
  optimizer: {schedule: cyclic, step_epochs: 3}
  eval: {steps: 5}
grid:
  method: [standard, fast]
---
"""


def grid_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


def test_merge_is_deep_for_mappings_and_replaces_everything_else() -> None:
    under = {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": {"f": 1}}
    over = {"a": {"c": [3]}, "d": None, "e": 5}
    assert merge(under, over) == {"a": {"b": 1, "c": [3]}, "d": None, "e": 5}
    assert under == {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": {"f": 1}}, "merge copies, never edits"


def test_later_wins_nested_keys_merge_lists_replace(tmp_path: Path) -> None:
    path = grid_file(tmp_path, BASES + """\
name: study
extends: [common, cyclic]
defaults:
  epochs: 3
  optimizer: {max_lr: 0.3}
  bench: {batch_sizes: [16]}
grid:
  seed: [0, 1]
""")  # fmt: skip
    (grid,) = load_grids(path)
    assert grid.executor == "local" and len(grid.cells) == 4  # method from the base's grid x the document's seeds
    cell = grid.cells[0]
    assert cell.epochs == 3 and cell.train_subset == 200  # the document wins; the base's other keys stay
    o = cell.optimizer
    assert (o.lr, o.momentum, o.schedule, o.step_epochs, o.max_lr) == (0.2, 0.8, "cyclic", 3, 0.3)  # B over A
    assert cell.bench.batch_sizes == [16]  # a list replaces, never appends
    assert (cell.eval.every, cell.eval.steps) == (2, 5)
    assert sorted(c.run_id for c in grid.cells) == sorted(
        f"{m}-n1g1-b128-s{s}" for m in ("standard", "fast") for s in (0, 1)
    )


def test_a_base_may_give_the_name_and_kind(tmp_path: Path) -> None:
    text = "base: named\nname: s\nkind: bench\nexecutor: local\n---\nextends: named\ngrid: {seed: [0, 1]}\n"
    (grid,) = load_grids(grid_file(tmp_path, text))  # the base itself is not run
    assert (grid.name, grid.kind, len(grid.cells)) == ("s", "bench", 2)


def test_a_document_may_drop_a_base_value_with_null(tmp_path: Path) -> None:
    (grid,) = load_grids(grid_file(tmp_path, BASES + "name: s\nextends: cyclic\ndefaults: {train_subset: null}\n"))
    assert grid.cells[0].train_subset is None and grid.cells[0].epochs == 4


def test_a_bad_key_in_a_base_is_reported_at_its_line(tmp_path: Path) -> None:
    text = BASES.replace("  train_subset: 200\n", "  trian_subset: 200\n") + "name: s\nextends: cyclic\n"
    with pytest.raises(GridError) as info:
        load_grids(grid_file(tmp_path, text))
    (problem,) = info.value.problems
    assert problem.startswith(f"{tmp_path / 'g.yaml'}:5: defaults.trian_subset: unknown key; closest valid keys: "
                              "train_subset"), problem  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("name: s\nextends: comon\n", 22, "extends: unknown base 'comon'; bases of this file: common, cyclic"),
        ("name: s\nextends: [common, common]\n", 22, "extends: expected a base name or a list of distinct"),
        ("name: s\nextends: {a: 1}\n", 22, "extends: expected a base name or a list of distinct"),
        ("base: loop\nextends: loop2\n---\nbase: loop2\nextends: loop\n---\nname: s\nextends: loop\n", 25,
         "extends: a cycle of bases: loop -> loop2 -> loop"),
        ("base: me\nextends: me\n", 22, "extends: a cycle of bases: me -> me"),
        ("base: spare\nexecutor: local\n---\nname: s\nextends: common\n", 21,
         "base: base 'spare' is extended by no document (extends: spare)"),
        ("base: named\nname: s\n---\nextends: named\nkind: bench\n---\nextends: cyclic\n", 27,
         "name: required: the experiment name"),
        ("base: common\n", 21, "base: a second base named 'common' (the first is document 1)"),
        ("base: ../x\n", 21, "base: expected a name for this base"),
    ],
    ids=["unknown", "repeated", "not-a-list", "cycle", "self", "unused", "no-name", "twice", "bad-name"],
)  # fmt: skip
def test_refusals_are_one_line_each(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = grid_file(tmp_path, BASES + "name: used\nextends: cyclic\n---\n" + text)
    with pytest.raises(GridError) as info:
        load_grids(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:{line}: {message}"), problem


def test_a_diamond_of_many_bases_is_merged_once_each(tmp_path: Path) -> None:
    """Each base extending the two before it: naive re-merging would take 2^40 steps."""
    docs = ["base: b0\ndefaults: {seed: 0}\n", "base: b1\nextends: b0\ndefaults: {epochs: 2}\n"]
    docs += [f"base: b{i}\nextends: [b{i - 2}, b{i - 1}]\ndefaults: {{seed: {i}}}\n" for i in range(2, 40)]
    docs.append("name: s\nexecutor: local\nextends: [b38, b39]\n")
    t0 = time.perf_counter()
    (grid,) = load_grids(grid_file(tmp_path, "---\n".join(docs)))
    assert time.perf_counter() - t0 < 10  # linear: milliseconds; exponential would never end
    assert (grid.cells[0].seed, grid.cells[0].epochs) == (39, 2)


def test_yaml_merge_keys_within_a_document(tmp_path: Path) -> None:
    path = grid_file(tmp_path, """\
name: s
executor: local
x-common: &common {epochs: 2, seed: 3, optimizer: {lr: 0.2}}
defaults:
  <<: *common
  epochs: 5
""")  # fmt: skip
    (grid,) = load_grids(path)  # an override of a merged key is not a duplicate key
    cell = grid.cells[0]
    assert (cell.epochs, cell.seed, cell.optimizer.lr) == (5, 3, 0.2)


def test_merge_key_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["name: s", "x-0: &a0 {seed: 1}"]
    lines += [f"x-{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 9)}]}}" for i in range(1, 12)]
    lines.append("defaults: {<<: *a11}")
    t0 = time.perf_counter()
    with pytest.raises(GridError) as info:
        load_grids(grid_file(tmp_path, "\n".join(lines) + "\n"))
    assert time.perf_counter() - t0 < 5
    (problem,) = info.value.problems
    assert "alias bomb" in problem, problem


def test_fast_recipes_grid_with_bases_gives_every_recipe_its_settings() -> None:
    """experiments/fast_recipes.yaml writes its shared settings once (base documents study, paper, cyclic): every
    train cell still has the study's settings, its schedule's and its own (checked against the flat file when it
    was rewritten: identical cells and dry run)."""
    grids = load_grids(REPO / "experiments" / "fast_recipes.yaml")
    train = {c.run_id: c for g in grids if g.kind == "train" for c in g.cells}
    assert len(train) == 15 and {g.name for g in grids} == {"fast-recipes"}
    for c in train.values():
        assert (c.train_subset, c.val_subset, c.val_split, c.global_batch_size, c.threads) == (2000, 500, 2000, 128, 1)
        assert (c.optimizer.momentum, c.optimizer.weight_decay, c.attack.eps, c.eval.steps) == (0.9, 5e-4, 1.0, 10)
        assert c.judge.examples == 2000 and c.resources.timeout_min == 60
        paper = c.recipe == "paper"
        o = c.optimizer
        assert (o.schedule, o.lr) == (("step", 0.1) if paper else ("cyclic", 0.2)), c.run_id
        assert (c.snapshot_every, c.eval.every) == ((5, 5) if paper else (1, 0)), c.run_id
        epochs = {"paper": 150, "free": 4, "cyclic30": 30}.get(c.recipe or "", 15)
        assert c.epochs == epochs, c.run_id
    assert train["bf16-fast-n1g1-b128-s0"].precision == "bf16"
    assert [p.method for p in train["fast2pgd7-pgd7-n1g1-b128-s0"].method_schedule] == ["fast"]
