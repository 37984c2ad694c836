"""What the judges have said of each train run so far, for `status` and `status --watch`: per followed run the last
judged snapshot (epoch) and its judged robust accuracy, read from the judge cells' judged.csv (layout.JUDGED)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from workloads import layout


def last_judged(runs_dir: Path, judge_ids: Iterable[str]) -> dict[str, str]:
    """run_id -> "e<epoch> <adv_acc>%" of its latest judged snapshot (a judge being written or torn is skipped)."""
    latest: dict[str, tuple[int, float]] = {}
    for judge in judge_ids:
        try:
            with open(runs_dir / judge / layout.JUDGED, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            continue
        for row in rows:
            try:
                epoch, acc = int(row["epoch"]), float(row["adv_acc"])
            except (KeyError, TypeError, ValueError):
                continue
            if epoch >= latest.get(row["run_id"], (-1, 0.0))[0]:
                latest[row["run_id"]] = (epoch, acc)
    return {run: f"e{epoch} {100 * acc:.1f}%" for run, (epoch, acc) in latest.items()}


def with_column(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], judged: list[str]) -> list[tuple[str, ...]]:
    """The table with a `judged` column when any run has been judged (else as it was)."""
    if not any(judged):
        return [header, *rows]
    return [(*header, "judged"), *((*r, j or "-") for r, j in zip(rows, judged, strict=True))]
