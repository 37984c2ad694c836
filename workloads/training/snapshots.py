"""Weights-only snapshots of a train run (spec `snapshot_every`): what a judge evaluates off the training clock.

Every `snapshot_every` epochs and at the last epoch, rank 0 writes RUN_DIR/snapshots/snapshot-e<epoch>.pt (the
checkpoint format with the model's weights, its architecture and the run's spec, so
workloads.assets.checkpoint.load_model
and `kind: evaluate` read it as they read a checkpoint) and then appends the snapshot's row to index.csv: epoch,
the run's cumulative train clock (train_s) and wall-clock (elapsed_s) at that epoch's end. A snapshot is listed only
once its file is complete. It is written after the epoch's epochs.csv row and before its checkpoint, so a crash in
between leaves a snapshot past the checkpoint: the resume drops it (truncate) and the epoch writes it again, and a
requeued or resumed run has each snapshot exactly once.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from workloads import layout
from workloads.assets.checkpoint import FORMAT, arch_of
from workloads.assets.models import RobustModel
from workloads.spec import RunSpec


def due(spec: RunSpec, epoch: int) -> bool:
    """Whether epoch `epoch` (1-based) ends with a snapshot."""
    every = spec.snapshot_every
    return every > 0 and (epoch % every == 0 or epoch == spec.epochs)


def save(run_dir: Path, model: RobustModel, spec: RunSpec, epoch: int, train_s: float, elapsed_s: float) -> None:
    """The snapshot of `model` (unwrapped) at the end of `epoch`, then its index row (rank 0)."""
    state = {
        "format": FORMAT,
        "model": model.state_dict(),
        "arch": arch_of(model, spec.model),
        "epoch": epoch,
        "train_s": train_s,
        "elapsed_s": elapsed_s,
        "spec": spec.to_dict(),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    name = layout.snapshot_name(epoch)
    layout.write_bytes_atomic(layout.snapshot_dir(run_dir) / name, buf.getvalue())
    row = {"run_id": spec.run_id, "epoch": epoch, "train_s": train_s, "elapsed_s": elapsed_s, "file": name}
    kept = [r for r in read_index(run_dir) if int(r["epoch"]) != epoch]  # a redone epoch replaces its row
    layout.write_csv_atomic(layout.snapshot_index(run_dir), layout.SNAPSHOT_INDEX_COLUMNS, [*kept, row])


def read_index(run_dir: Path) -> list[dict[str, str]]:
    path = layout.snapshot_index(run_dir)
    return layout.read_csv(path) if path.exists() else []


def truncate(run_dir: Path, completed: int) -> None:
    """Drop the snapshots past the checkpoint's epoch (rows and files), as epochs.csv's rows are dropped."""
    rows = read_index(run_dir)
    kept = [r for r in rows if int(r["epoch"]) <= completed]
    if len(kept) != len(rows):
        layout.write_csv_atomic(layout.snapshot_index(run_dir), layout.SNAPSHOT_INDEX_COLUMNS, kept)
    folder = layout.snapshot_dir(run_dir)
    for path in folder.glob("snapshot-e*.pt") if folder.is_dir() else []:
        if path.stem.removeprefix("snapshot-e").isdigit() and int(path.stem.removeprefix("snapshot-e")) > completed:
            path.unlink(missing_ok=True)
