"""Atomic run-directory writes: a failure at any point leaves the old file whole and no temp file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workloads import layout


def test_failed_replace_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "epochs.csv"
    layout.append_csv_row_atomic(path, ("epoch", "loss"), {"epoch": 1, "loss": 0.5})
    before = path.read_bytes()

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        layout.append_csv_row_atomic(path, ("epoch", "loss"), {"epoch": 2, "loss": 0.25})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["epochs.csv"]


def test_append_rows_roundtrip_and_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "epochs.csv"
    for epoch in (1, 2, 3):
        row = {"epoch": epoch, "adv_acc": 0.5 if epoch == 3 else None, "extra": "ignored"}
        layout.append_csv_row_atomic(path, ("epoch", "adv_acc"), row)
    rows = layout.read_csv(path)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [r["adv_acc"] for r in rows] == ["", "", "0.5"]
    assert path.read_text().splitlines()[0] == "epoch,adv_acc"


def test_json_roundtrip_and_readable_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "result.json"
    layout.write_json_atomic(path, {"b": 1, "a": [1.5, None]})
    assert layout.read_json(path) == {"a": [1.5, None], "b": 1}
    assert path.stat().st_mode & 0o777 == 0o666 & ~layout.UMASK


def test_the_best_epoch_is_the_earliest_highest_and_skips_missing_and_nan() -> None:
    rows = [
        {"epoch": "1", "adv_acc": ""},  # not evaluated
        {"epoch": "2", "adv_acc": "0.5"},
        {"epoch": "3", "adv_acc": "nan"},  # a diverged evaluation never wins
        {"epoch": "4", "adv_acc": "0.7"},
        {"epoch": "5", "adv_acc": "0.7"},  # a tie: the earlier epoch stays best
        {"epoch": "6", "adv_acc": "n/a"},
    ]
    best = layout.best_epoch_row(rows, "adv_acc")
    assert best is not None and best["epoch"] == "4"
    assert layout.best_epoch_row(rows[:1], "adv_acc") is None and layout.best_epoch_row([], "adv_acc") is None
    assert layout.best_epoch_row([{"epoch": "1"}], "clean_acc") is None  # a column the rows lack
    assert layout.improves(0.1, None) and not layout.improves(None, None) and not layout.improves(float("nan"), None)
    assert layout.improves(0.6, 0.5) and not layout.improves(0.5, 0.5) and not layout.improves(0.4, 0.5)
