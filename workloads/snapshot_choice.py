"""Which judged snapshot of a train run `kind: evaluate` reads (evaluate.source_snapshot), chosen when the evaluate
job runs (its judge may end after the submission) from the judge's judged.csv (evaluate.source_judged, resolved at
submit time like source_dir):
- `best`: the snapshot with the highest judged robust accuracy (adv_acc) on the run's validation data; of equals,
  the earliest epoch (the model the judge would have accepted first);
- an epoch: that snapshot, which must have been judged (its judged accuracy is recorded with the result).
The file is the one the run's snapshot index names for that epoch. A judge still running (a final judge submitted
from another file, without a dependency on it) gives the best of the snapshots judged so far: recorded as such
(judge_finished). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workloads import layout


@dataclass(frozen=True)
class Chosen:
    epoch: int
    judged_adv_acc: float  # the judge's robust accuracy of this snapshot (a fraction)
    judged_n: int  # images the judge used
    split: str  # what the judge judged on (val_split, or the run's validation set)
    path: Path  # the snapshot file
    judge_finished: bool  # its judge had ended (result.json): else the choice is of the snapshots judged so far


def judged_rows(judged_csv: Path, run_id: str) -> list[dict[str, str]]:
    """The judge's rows of `run_id`, by epoch (no file yet: none)."""
    rows = layout.read_csv(judged_csv) if judged_csv.is_file() else []
    return sorted((r for r in rows if r["run_id"] == run_id), key=lambda r: int(r["epoch"]))


def choose(which: int | str, judged_csv: Path, source_dir: Path, run_id: str) -> Chosen:
    """The snapshot `which` ("best" or an epoch) of the run in `source_dir`; ValueError (one line) when nothing
    fits: no snapshot judged, the epoch not judged, or its file gone."""
    rows = judged_rows(judged_csv, run_id)
    if not rows:
        raise ValueError(
            f"evaluate.source_snapshot: no snapshot of {run_id} was judged ({judged_csv} has no row for it); "
            "did its judge run? (orchestrate status)"
        )
    if which == "best":
        row = max(rows, key=lambda r: float(r["adv_acc"]))  # max keeps the first of equals: the earliest epoch
    else:
        found = [r for r in rows if int(r["epoch"]) == which]
        if not found:
            epochs = ", ".join(r["epoch"] for r in rows)
            raise ValueError(f"evaluate.source_snapshot: epoch {which} of {run_id} was not judged (judged: {epochs})")
        row = found[-1]
    epoch = int(row["epoch"])
    index = layout.snapshot_index(source_dir)
    names = [r["file"] for r in layout.read_csv(index) if int(r["epoch"]) == epoch] if index.is_file() else []
    path = layout.snapshot_dir(source_dir) / (names[-1] if names else layout.snapshot_name(epoch))
    if not path.is_file():
        raise ValueError(f"evaluate.source_snapshot: {path} (epoch {epoch} of {run_id}) does not exist (deleted?)")
    finished = (judged_csv.parent / layout.RESULT).is_file()
    return Chosen(epoch, float(row["adv_acc"]), int(row["n"]), row.get("split") or "", path, finished)


def of_evaluate(source_snapshot: int | str | None, judged: str | None, source_dir: str | None,
                run_id: str | None) -> Chosen | None:  # fmt: skip
    """The snapshot an evaluate cell's settings ask for (None: it reads a checkpoint instead)."""
    if source_snapshot is None:
        return None
    if not (judged and source_dir and run_id):
        raise ValueError(
            "evaluate.source_judged: not set; evaluate.source_snapshot reads the judged.csv of the judge following "
            "evaluate.source_run, which the orchestrator fills at submit time"
        )
    return choose(source_snapshot, Path(judged), Path(source_dir), run_id)
