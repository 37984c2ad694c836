"""The grid-key reference (docs/grid-keys.md) is generated from workloads/spec.py and cannot drift from it; the
unknown-key error names the closest valid keys in full and points to the reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.grid import keys as grid_keys
from orchestrator.grid.files import GridError, load_grids
from workloads.schema import KEYS_DOC
from workloads.spec import RunSpec

REPO = Path(__file__).resolve().parent.parent


def test_committed_reference_equals_the_generated_one() -> None:
    committed = (REPO / KEYS_DOC).read_text(encoding="utf-8")
    assert committed == grid_keys.markdown(), "docs/grid-keys.md is stale: python -m orchestrator.grid.keys"


def test_every_setting_is_listed_once_with_a_meaning() -> None:
    rows = grid_keys.keys()
    paths = [k.path for k in rows]
    assert len(paths) == len(set(paths))
    expected = {f.name for f in dataclasses.fields(RunSpec)} - {"experiment", "run_id", "kind"}
    sections = grid_keys.sections()
    for name, cls in sections.items():
        expected.remove(name)
        expected |= {f"{name}.{f.name}" for f in dataclasses.fields(cls)}
    assert set(paths) == expected
    assert not [k.path for k in rows if not k.meaning], "a setting without a comment in workloads/spec.py"
    by_path = {k.path: k for k in rows}
    assert by_path["optimizer.schedule"].allowed == "step \\| onecycle \\| cyclic \\| cosine"
    assert by_path["optimizer.lr"].default == "0.1" and by_path["optimizer.lr"].allowed == "> 0"
    assert by_path["evaluate.autoattack"].kinds == "evaluate"
    assert by_path["seed"].kinds == "all"


def test_reference_explains_grid_syntax_evaluate_and_autoattack() -> None:
    text = grid_keys.markdown()
    for needle in ("optimizer.schedule: [step, cyclic]", "kind: evaluate", "source_run:", "autoattack: true",
                   "about 50 s", "extends:", "| `train_subset` |"):  # fmt: skip
        assert needle in text, needle


def test_keys_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recipe ") and "optimizer.max_lr" in out and KEYS_DOC in out
    assert cli.main(["keys", "--markdown"]) == 0
    assert capsys.readouterr().out == grid_keys.markdown()


def test_writes_the_reference(tmp_path: Path) -> None:
    target = tmp_path / "docs" / "keys.md"
    assert grid_keys.main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == grid_keys.markdown()


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("defaults:\n  trian_subset: 100\n", 3,
         "defaults.trian_subset: unknown key; closest valid keys: train_subset, val_subset (every key: "),
        ("grid:\n  optimizer.shedule: [step]\n", 3,
         "grid.optimizer.shedule: unknown key; valid keys of optimizer: lr, momentum, weight_decay, step_epochs, "
         "gamma, schedule, warmup_epochs, max_lr, peak_fraction (every key: "),
        ("defaults:\n  attack: {epz: 0.2}\n", 3,
         "defaults.attack.epz: unknown key; closest valid keys: eps (every key: "),
        ("defaults:\n  zzzz: 1\n", 3, "defaults.zzzz: unknown key; no valid key is close (every key: "),
        ("defautls:\n  seed: 1\n", 2, "defautls: unknown key; closest valid keys: defaults (every key: "),
    ],
)  # fmt: skip
def test_unknown_key_names_the_closest_keys(tmp_path: Path, body: str, line: int, message: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("name: x\n" + body)
    with pytest.raises(GridError) as info:
        load_grids(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:{line}: {message}"), problem
    assert problem.endswith(f"{KEYS_DOC})") and "..." not in problem, problem
