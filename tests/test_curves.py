"""TensorBoard curves (`tensorboard: true`): event files in the run directory, read back with tensorboard's own
EventAccumulator, and a resumed run continuing the same curves instead of starting new ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import needs_fmnist
from tests.test_train import tiny_spec
from workloads import layout
from workloads.kinds.train import train
from workloads.training.curves import TAGS, EpochCurves

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_fmnist]
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_curves_are_readable_and_a_resume_continues_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "tiny"
    train(tiny_spec(epochs=2, tensorboard=True, eval={"every": 2, "steps": 1}), run_dir)
    first = _scalars(run_dir)
    assert [s for s, _ in first["train/loss"]] == [1, 2]
    # an attempt that drew epoch 3 and died before its checkpoint: the resume redraws that step once
    interrupted = EpochCurves(run_dir, resume_epoch=2)
    interrupted.epoch({"epoch": 3, "train_loss": 123.0})
    interrupted.close()
    train(tiny_spec(epochs=3, tensorboard=True, eval={"every": 2, "steps": 1}), run_dir)  # resumes from epoch 2
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 3  # one file per attempt, in the same run
    curves = _scalars(run_dir)
    rows = layout.read_csv(run_dir / layout.EPOCHS)
    assert [s for s, _ in curves["train/loss"]] == [1, 2, 3]  # steps 1, 2, 3 once each
    assert 123.0 not in [v for _, v in curves["train/loss"]]
    assert [v for _, v in curves["train/loss"]] == pytest.approx([float(r["train_loss"]) for r in rows], rel=1e-6)
    assert curves["train/loss"][:2] == first["train/loss"]
    # validation only where epochs.csv has it (epochs 2 and 3: every 2, and the last)
    assert [s for s, _ in curves["val/adv_acc"]] == [2, 3]
    assert {TAGS[c] for c in ("train_acc", "lr", "clean_acc", "train_s", "elapsed_s")} <= set(curves)


def test_no_event_files_unless_asked(tmp_path: Path) -> None:
    train(tiny_spec(epochs=1), tmp_path)
    assert not list(tmp_path.glob("events.out.tfevents.*"))
