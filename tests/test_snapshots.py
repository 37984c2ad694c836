"""Snapshots (snapshot_every) and training without on-clock validation (eval.every 0): the snapshot set, its
train clock (the sum of the epochs' train_s) and wall-clock, and a requeue, resume or crash that neither loses
nor duplicates a snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures import needs_fmnist
from tests.test_midepoch import STEPS, Crash, at_step, usr2, usr2_handler  # noqa: F401  (a fixture)
from tests.test_train import tiny_spec
from workloads import layout
from workloads.assets import checkpoint
from workloads.kinds.train import train
from workloads.runtime import preempt
from workloads.training import snapshots

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_fmnist]

OFF_CLOCK = {"eval": {"every": 0, "steps": 2}}


def index(run_dir: Path) -> list[dict[str, str]]:
    return snapshots.read_index(run_dir)


def snapshot_weights(run_dir: Path, epoch: int) -> dict[str, torch.Tensor]:
    return checkpoint.load(layout.snapshot_dir(run_dir) / layout.snapshot_name(epoch))["model"]


def test_eval_every_0_trains_without_validation_and_the_train_clock_sums_the_epochs(tmp_path: Path) -> None:
    result = train(tiny_spec(epochs=3, snapshot_every=2, **OFF_CLOCK), tmp_path)
    rows = layout.read_csv(tmp_path / layout.EPOCHS)
    assert [r["adv_acc"] for r in rows] == ["", "", ""] and [float(r["eval_s"]) for r in rows] == [0.0] * 3
    assert result["best_epoch"] is None and result["best_adv_acc"] is None  # nothing on the clock to choose by
    snaps = index(tmp_path)
    assert [int(s["epoch"]) for s in snaps] == [2, 3]  # every 2 epochs and the last
    for s in snaps:
        upto = [r for r in rows if int(r["epoch"]) <= int(s["epoch"])]
        assert float(s["train_s"]) == pytest.approx(sum(float(r["train_s"]) for r in upto), abs=1e-6)
        assert float(s["elapsed_s"]) == float(upto[-1]["elapsed_s"])
        assert s["file"] == layout.snapshot_name(int(s["epoch"])) and s["run_id"] == "tiny"
    assert sorted(p.name for p in layout.snapshot_dir(tmp_path).iterdir()) == [
        layout.SNAPSHOT_INDEX,
        layout.snapshot_name(2),
        layout.snapshot_name(3),
    ]
    model, spec = checkpoint.load_model(layout.snapshot_dir(tmp_path) / layout.snapshot_name(3))
    last = checkpoint.load(tmp_path / layout.CKPT_LAST)["model"]
    assert spec.run_id == "tiny" and all(torch.equal(model.state_dict()[k], last[k]) for k in last)


def test_snapshots_are_off_by_default(tmp_path: Path) -> None:
    train(tiny_spec(epochs=1), tmp_path)
    assert not layout.snapshot_dir(tmp_path).exists()


@pytest.mark.usefixtures("usr2_handler")
@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_a_run_preempted_mid_epoch_has_the_uninterrupted_runs_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_spec(epochs=3, snapshot_every=1, **OFF_CLOCK), straight)
    spec = tiny_spec(epochs=3, snapshot_every=1, checkpoint_every_min=1e-9, **OFF_CLOCK)
    at_step(monkeypatch, STEPS + 3, usr2)  # during epoch 2
    with pytest.raises(preempt.Preempted):
        train(spec, resumed)
    before = index(resumed)
    assert [int(s["epoch"]) for s in before] == [1]
    at_step(monkeypatch, None, usr2)
    train(spec, resumed)
    after = index(resumed)
    assert [s["epoch"] for s in after] == [s["epoch"] for s in index(straight)] == ["1", "2", "3"]
    assert after[0] == before[0]  # the snapshot before the preemption is kept as it was
    rows = layout.read_csv(resumed / layout.EPOCHS)
    clock = 0.0
    for s, r in zip(after, rows, strict=True):
        clock += float(r["train_s"])  # epoch 2's train_s holds both attempts' parts of it
        assert float(s["train_s"]) == pytest.approx(clock, abs=1e-6)
    for epoch in (1, 2, 3):
        a, b = snapshot_weights(straight, epoch), snapshot_weights(resumed, epoch)
        assert all(torch.equal(a[k], b[k]) for k in a), f"snapshot {epoch} differs"


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_a_crash_after_a_snapshot_before_its_checkpoint_writes_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 2's row and snapshot are written, the job dies before its checkpoint: the resume redoes epoch 2 and
    the index lists it once, with the redone weights."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    spec = tiny_spec(epochs=2, snapshot_every=1, **OFF_CLOCK)
    saves: list[object] = []
    real_save = checkpoint.save

    def dying_save(path: Path, **kw: object) -> None:
        saves.append(kw["epoch"])
        if kw["epoch"] == 2 and len(saves) == 2:
            raise Crash("node lost")
        real_save(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint, "save", dying_save)
    with pytest.raises(Crash):
        train(spec, run)
    assert [s["epoch"] for s in index(run)] == ["1", "2"]  # written before the checkpoint that failed
    monkeypatch.setattr(checkpoint, "save", real_save)
    train(spec, run)
    assert [s["epoch"] for s in index(run)] == ["1", "2"]
    assert [r["epoch"] for r in layout.read_csv(run / layout.EPOCHS)] == ["1", "2"]
    train(spec, straight)
    a, b = snapshot_weights(straight, 2), snapshot_weights(run, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
