"""Recipes over a run: the method schedule and the eps warm-up (values per iteration, validation,
run_ids, resume exactness), and the epochs.csv columns they and the guard add."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.collect import run_row
from orchestrator.grid.run_ids import derive_run_ids
from orchestrator.monitor.status import CellStatus
from tests.test_train import tiny_spec, weights
from workloads import layout
from workloads.kinds import train as train_kind
from workloads.kinds.train import train, truncate_epochs_csv
from workloads.schema import SpecError
from workloads.spec import from_dict
from workloads.training.recipe import Recipe, phase_method, warmup_fraction

pytestmark = pytest.mark.usefixtures("one_thread")


def spec_of(**overrides: Any) -> Any:
    return from_dict({"method": "pgd7", "epochs": 10, **overrides})


def test_phase_boundaries() -> None:
    spec = spec_of(method_schedule=[{"method": "fast", "until": 0.6}])
    assert [phase_method(spec, e) for e in range(1, 11)] == ["fast"] * 6 + ["pgd7"] * 4
    half = spec_of(epochs=3, method_schedule=[{"method": "fast", "until": 0.5}])
    assert [phase_method(half, e) for e in (1, 2, 3)] == ["fast", "pgd7", "pgd7"]  # 1.5 epochs: the nearest, 1
    spec = spec_of(epochs=3, method_schedule=[{"method": "fast", "until": 0.34}, {"method": "pgd2", "until": 0.67}])
    assert [phase_method(spec, e) for e in (1, 2, 3)] == ["fast", "pgd2", "pgd7"]
    assert [phase_method(spec_of(), e) for e in (1, 10)] == ["pgd7", "pgd7"]


def test_warmup_per_iteration() -> None:
    spec = spec_of(attack={"eps": 0.5, "eps_warmup_epochs": 2})
    fractions = [warmup_fraction(spec, e, i, 4) for e in (1, 2, 3) for i in range(4)]
    assert fractions == [k / 8 for k in range(1, 9)] + [1.0] * 4
    recipe = Recipe(spec, 4)
    first, full = recipe.attack(1, 0), recipe.attack(3, 0)
    assert (full.eps, full.steps) == (0.5, 7) and full.alpha == pytest.approx(2.5 * 0.5 / 7)
    assert first.eps == pytest.approx(0.5 / 8) and first.alpha == pytest.approx(full.alpha / 8)  # alpha / eps kept
    assert Recipe(spec_of(), 4).attack(1, 0) == Recipe(spec_of(), 4).attack(9, 3)  # no warm-up: constant


def test_recipe_combines_schedule_and_warmup() -> None:
    spec = spec_of(epochs=4, method_schedule=[{"method": "fast", "until": 0.5}], attack={"eps_warmup_epochs": 1})
    recipe = Recipe(spec, 2)
    assert [(a.steps, round(a.eps, 3)) for a in (recipe.attack(1, 0), recipe.attack(1, 1), recipe.attack(3, 0))] == [
        (1, 0.5),
        (1, 1.0),
        (7, 1.0),
    ]
    assert recipe.attack(1, 1).alpha == pytest.approx(1.5)  # fast's rule


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method_schedule": [{"method": "fast"}]}, r"^method_schedule\[0\]: expected a mapping with both method"),
        ({"method_schedule": [{"until": 0.5}]}, r"^method_schedule\[0\]: expected a mapping with both"),
        ({"method_schedule": [{"method": "fast", "until": 1.0}]}, r"^method_schedule\[0\]\.until: expected a fraction"),
        (
            {"method_schedule": [{"method": "fast", "until": 0.6}, {"method": "pgd2", "until": 0.6}]},
            r"^method_schedule\[1\]\.until: expected a fraction of the epochs above the previous phase's until 0\.6",
        ),
        ({"method_schedule": [{"method": "fgsm_rs", "until": 0.5}]}, r"^method_schedule\[0\]\.method: fgsm_rs .* linf"),
        ({"method_schedule": [{"method": "pgd0", "until": 0.5}]}, r"^method_schedule\[0\]\.method: expected"),
        ({"method_schedule": [{"method": "fast", "until": 0.5, "x": 1}]}, r"^method_schedule\[0\]\.x: unknown key"),
        ({"attack": {"eps_warmup_epochs": -1}}, r"^attack\.eps_warmup_epochs: expected a value >= 0"),
        ({"guard": {"action": "maybe"}}, r"^guard\.action: expected one of none, flag, stop"),
        ({"guard": {"action": "flag"}, "eval": {"steps": 0}}, r"^guard\.steps: expected a number of PGD steps"),
        ({"guard": {"drop": 0}}, r"^guard\.drop: expected a value > 0"),
    ],
)
def test_validation_one_line(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        spec_of(**overrides)
    assert "\n" not in str(info.value)


def test_spec_json_and_run_ids() -> None:
    a = spec_of(method_schedule=[{"method": "fast", "until": 0.6}])
    assert a.to_dict()["method_schedule"] == [{"method": "fast", "until": 0.6}]
    assert from_dict(a.to_dict()) == a  # spec.json round trip
    ids = derive_run_ids("train", [a, spec_of()])
    assert ids == ["pgd7-n1g1-b128-s0-method_schedulefast_0.6", "pgd7-n1g1-b128-s0-method_schedule"]
    assert derive_run_ids("train", [a, a]) == ["pgd7-n1g1-b128-s0", "pgd7-n1g1-b128-s0"]  # not varying: no suffix
    warm = derive_run_ids("train", [spec_of(attack={"eps_warmup_epochs": 2}), spec_of()])
    assert warm == ["pgd7-n1g1-b128-s0-eps_warmup_epochs2", "pgd7-n1g1-b128-s0-eps_warmup_epochs0"]


def interrupted(run_dir: Path, spec: Any, after: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train until `after` epochs are checkpointed, then fail (as a preempted job), then resume to the end."""
    calls = [0]
    real = train_kind.distributed.barrier

    def barrier(dist: Any) -> None:
        real(dist)
        calls[0] += 1
        if calls[0] == after:
            raise KeyboardInterrupt("preempted")

    with monkeypatch.context() as m:
        m.setattr(train_kind.distributed, "barrier", barrier)
        with pytest.raises(KeyboardInterrupt):
            train(spec, run_dir)
    train(spec, run_dir)


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_schedule_free_and_warmup_resume_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """free (2 replays) for epoch 1, then pgd2, with eps warmed up over epoch 1: 1 + resume + 1 == 2 epochs."""
    spec = tiny_spec(
        method="pgd2", epochs=2, train_subset=256, method_schedule=[{"method": "free", "until": 0.5}],
        attack={"eps": 1.0, "replays": 2, "eps_warmup_epochs": 1}, eval={"every": 2, "steps": 1},
    )  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(spec, straight)
    interrupted(resumed, spec, 1, monkeypatch)
    assert len(layout.read_json(resumed / layout.ENV)["attempts"]) == 2  # it did resume
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    a, b = (layout.read_csv(d / layout.EPOCHS) for d in (straight, resumed))
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert layout.read_json(straight / layout.SPEC)["method_schedule"] == [{"method": "free", "until": 0.5}]
    with pytest.raises(ValueError, match="epochs: 2 -> 3"):  # a schedule spans the run: its epochs are fixed
        train(tiny_spec(**{**spec.to_dict(), "epochs": 3}), resumed)


def test_old_epochs_csv_still_parses(tmp_path: Path) -> None:
    """A file written before the guard columns: truncation rewrites it with them (empty), collect reads it."""
    old = layout.EPOCH_COLUMNS[: layout.EPOCH_COLUMNS.index("guard_clean_acc")]
    rows = [{"run_id": "r", "epoch": e, "clean_acc": 0.5, "adv_acc": 0.25, "elapsed_s": e} for e in (1, 2)]
    layout.write_csv_atomic(tmp_path / layout.EPOCHS, old, rows)
    truncate_epochs_csv(tmp_path, 1)
    (row,) = layout.read_csv(tmp_path / layout.EPOCHS)
    assert row["co_flag"] == "" and row["adv_acc"] == "0.25"
    status = CellStatus(run_id="r", state="finished", attempts=1)
    spec = from_dict({"run_id": "r", "method": "fast"})
    assert run_row(spec, status, [row], {})["co_flag"] is None
    flagged = [{**row, "co_flag": "0"}, {**row, "epoch": "2", "co_flag": "1"}]
    row = run_row(spec, status, flagged, {})
    assert (row["co_flag"], row["co_epoch"], row["method_schedule"]) == (True, "2", "")
    phased = from_dict({"method": "pgd7", "method_schedule": [{"method": "fast", "until": 0.6}]})
    assert run_row(phased, status, [], {})["method_schedule"] == "fast@0.6"


def test_grid_file_with_phases_and_guard(tmp_path: Path) -> None:
    """The documented YAML form: a schedule axis and the guard expand into cells with readable run_ids."""
    from orchestrator.grid.files import load_grid

    path = tmp_path / "phases.yaml"
    path.write_text(
        "name: phases\nexecutor: local\n"
        "defaults:\n  method: pgd7\n  epochs: 10\n  attack: {eps: 0.5, eps_warmup_epochs: 2}\n"
        "  guard: {action: stop, examples: 512}\n"
        "grid:\n  method_schedule:\n    - [{method: fast, until: 0.6}]\n    - []\n"
    )
    grid = load_grid(path)
    assert [c.run_id for c in grid.cells] == [
        "pgd7-n1g1-b128-s0-method_schedulefast_0.6",
        "pgd7-n1g1-b128-s0-method_schedule",
    ]
    assert grid.cells[0].guard.action == "stop" and grid.cells[0].attack.eps_warmup_epochs == 2
