"""Optional TensorBoard curves of a training run (`tensorboard: true` in the grid; extra [tensorboard]).

A view, not a source: epochs.csv stays what collect and report read. Rank 0 writes the event files straight
into the run directory, so `tensorboard --logdir results/<experiment>/runs` names each run by its run_id, and a
requeued or resumed run appends to the same run's curves: the writer purges the steps after the checkpoint the
run resumed from (epochs that were trained but not checkpointed before an interruption are redrawn once).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# epochs.csv column -> TensorBoard tag (the rows' own units: accuracies in [0, 1], seconds)
TAGS: dict[str, str] = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "lr": "train/lr",
    "clean_acc": "val/clean_acc",
    "adv_acc": "val/adv_acc",
    "train_s": "time/train_s",
    "eval_s": "time/eval_s",
    "elapsed_s": "time/elapsed_s",
}


class CurvesUnavailable(RuntimeError):
    """`tensorboard: true` without the tensorboard package; the message says what to install."""


class EpochCurves:
    """One scalar per epochs.csv column per epoch (step = epoch)."""

    def __init__(self, run_dir: Path, resume_epoch: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch imports tensorboard lazily; missing package -> ImportError here
            raise CurvesUnavailable(
                "tensorboard: true needs the tensorboard package: pip install 'fastrobust[tensorboard]'"
            ) from exc
        # purge_step: a reader drops events of earlier files at steps >= it, so a resumed run continues cleanly
        self._writer = SummaryWriter(log_dir=str(run_dir), purge_step=resume_epoch + 1)

    def epoch(self, row: Mapping[str, Any]) -> None:
        step = int(row["epoch"])
        for column, tag in TAGS.items():
            value = row.get(column)
            if value is not None and value != "":
                self._writer.add_scalar(tag, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
