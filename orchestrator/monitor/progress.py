"""Following cells while they run: the local executor's one-at-a-time cells (a tqdm bar or plain lines), waiting
until every cell of a submission has ended (`orchestrate submit --wait`), and `orchestrate status --watch`.
"""

from __future__ import annotations

import csv
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator.monitor import judged, manifest, status
from workloads import layout


class LocalProgress:
    """Local cells, which run one at a time: a tqdm bar over them (position = cells ended) with the running cell's
    run_id and epochs (epochs.csv vs spec.epochs) as postfix, and one line per ended cell. Without a bar (stderr
    not a terminal) a line per completed epoch stands in for the postfix, so logs get no bar redraws."""

    def __init__(self, total: int, log: Callable[[str], None] = print, bar: bool = False) -> None:
        from tqdm import tqdm

        self.log = log
        self.bar = tqdm(total=total, unit="cell", desc="cells done", file=sys.stderr, disable=not bar)
        self.running: tuple[Path, str, float] | None = None  # experiment folder, run_id, start (monotonic)
        self.shown = ""  # the running cell's progress as last shown

    def write(self, line: str) -> None:
        """A line that leaves the bar intact."""
        if self.bar.disable:
            self.log(line)
        else:
            self.bar.write(line, file=sys.stdout)

    def start(self, exp_dir: Path, run_id: str) -> None:
        self.running, self.shown = (exp_dir, run_id, time.monotonic()), run_id
        self.bar.set_postfix_str(run_id)  # a no-op without a bar (the "submitted" line names it)

    def _show(self, text: str) -> None:
        if text != self.shown:
            self.shown = text
            if self.bar.disable:
                self.write(text)
            else:
                self.bar.set_postfix_str(text)

    def wait(self, poll_s: float = 1.0) -> bool:
        """Until the running cell has ended (a pid check is cheap: poll each second); True when it finished."""
        if self.running is None:
            return True
        exp_dir, run_id, t0 = self.running
        while True:
            (cell,) = status.poll(exp_dir, [run_id])
            if cell.state in status.TERMINAL or cell.state == "missing":
                break
            if cell.epochs is not None:
                self._show(f"{run_id} epoch {cell.epoch or 0}/{cell.epochs}")
            time.sleep(poll_s)
        if cell.state == "finished":
            # the wall time includes what elapsed_s (the cell's own clock, Table I's) leaves out
            inside = "" if cell.elapsed_s is None else (f" (elapsed_s {cell.elapsed_s:.1f} s: training and evaluation; "
                                                        "the rest is process start and data loading)")  # fmt: skip
            self.write(f"{run_id} finished in {time.monotonic() - t0:.0f} s{inside}")
        else:
            error = manifest.run_dir(exp_dir, run_id) / layout.ERROR
            where = error if error.exists() else exp_dir / layout.SUBMITIT
            self.write(f"{run_id} {cell.state}: {cell.error or f'see {where}'}")  # one line: message + error.txt
        self.bar.update(1)
        self.bar.set_postfix_str("")
        self.running = None
        return cell.state == "finished"

    def close(self) -> None:
        self.bar.close()


def wait_for_cells(exp_cells: dict[Path, list[str]], poll_s: float, progress: Callable[[int, int], object]) -> bool:
    """Poll until every cell is finished/failed/cancelled; True when all finished."""
    total = sum(len(v) for v in exp_cells.values())
    while True:
        cells = [c for exp_dir, ids in exp_cells.items() for c in status.poll(exp_dir, ids)]
        done = sum(c.state in status.TERMINAL or c.state == "missing" for c in cells)
        progress(done, total)
        if done == total:
            return all(c.state == "finished" for c in cells)
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------------------------------
# `orchestrate status --watch`: a fuller table than `status`, refreshed until no cell is running or pending.

CLEAR = "\x1b[H\x1b[2J"  # cursor home + clear screen: a terminal redraws the table in place
WATCH_HEADER = ("run_id", "state", "job_id", "attempts", "epoch", "loss", "clean", "robust", "co", "elapsed", "eta")
_FALSE = ("", "0", "false", "none", "nan")


@dataclass
class EpochView:
    """What the last epochs.csv rows say beyond status.CellStatus (one read of the file per refresh)."""

    train_loss: float | None = None
    clean_acc: float | None = None  # the last evaluated epoch's
    adv_acc: float | None = None
    co_flag: bool | None = None  # catastrophic overfitting, when the trainer records it (epochs.csv or result.json)
    mean_epoch_s: float | None = None  # elapsed_s / epoch: this cell's own pace, evaluations included


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _flag(value: object) -> bool | None:
    """True/False for a recorded flag; None when nothing was recorded (an empty cell: the check did not run)."""
    if value is None or str(value).strip() == "":
        return None
    return str(value).strip().lower() not in _FALSE


def epoch_view(run_dir: Path) -> EpochView:
    """The last train loss, the last clean/robust accuracies, the co flag and the mean epoch time of a run."""
    view = EpochView()
    path = run_dir / layout.EPOCHS
    rows: list[dict[str, str]] = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    if rows:
        last = rows[-1]
        view.train_loss = _number(last.get("train_loss"))
        evaluated = [r for r in rows if r.get("clean_acc") not in (None, "")]
        if evaluated:
            view.clean_acc, view.adv_acc = _number(evaluated[-1]["clean_acc"]), _number(evaluated[-1].get("adv_acc"))
        flags = [f for f in (_flag(r.get("co_flag")) for r in rows) if f is not None]
        view.co_flag = any(flags) if flags else None
        elapsed, epoch = _number(last.get("elapsed_s")), _number(last.get("epoch"))
        if elapsed is not None and epoch:
            view.mean_epoch_s = elapsed / epoch
    result = run_dir / layout.RESULT
    if result.exists():
        flag = layout.read_json(result).get("co_flag")
        if flag is not None:
            view.co_flag = _flag(flag)
    return view


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 60:.1f}m" if seconds >= 600 else f"{seconds:.0f}s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


class Predictions:
    """Predicted wall-clock of cells that have no epoch yet (the ETA's fallback): from `bench` or the
    experiment's own bench.csv, read once per experiment; each cell predicted once."""

    def __init__(self, bench: Path | None = None) -> None:
        self.bench = bench
        self._tables: dict[Path, Any] = {}
        self._seconds: dict[tuple[Path, str], float | None] = {}

    def seconds(self, exp_dir: Path, run_id: str) -> float | None:
        key = (exp_dir, run_id)
        if key not in self._seconds:
            self._seconds[key] = self._predict(exp_dir, run_id)
        return self._seconds[key]

    def _predict(self, exp_dir: Path, run_id: str) -> float | None:
        from orchestrator.estimate import time_guard
        from workloads.spec import from_dict

        if exp_dir not in self._tables:
            path = time_guard.bench_file(exp_dir, self.bench)
            self._tables[exp_dir] = time_guard.read(path) if path is not None else None
        spec_path = manifest.run_dir(exp_dir, run_id) / layout.SPEC
        if self._tables[exp_dir] is None or not spec_path.exists():
            return None
        return time_guard.predicted_s(from_dict(layout.read_json(spec_path)), self._tables[exp_dir])


def eta_s(cell: status.CellStatus, view: EpochView, predicted: Callable[[], float | None]) -> float | None:
    """Time left: the cell's own mean epoch time x remaining epochs, else the estimate (minus elapsed)."""
    if cell.state not in ("running", "pending") or cell.epochs is None:
        return None
    done = cell.epoch or 0
    if done and view.mean_epoch_s is not None:
        return view.mean_epoch_s * (cell.epochs - done)
    seconds = predicted()
    return None if seconds is None else seconds - (cell.elapsed_s or 0.0)


def watch_rows(exp_dir: Path, cells: list[status.CellStatus], predictions: Predictions) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for c in cells:
        view = epoch_view(manifest.run_dir(exp_dir, c.run_id))
        epoch = f"{c.epoch or 0}/{c.epochs}" if c.epochs is not None else c.stage or str(c.epoch or "-")
        elapsed = _duration(c.elapsed_s) if c.elapsed_s is not None else c.scheduler_elapsed or "-"
        eta = eta_s(c, view, functools.partial(predictions.seconds, exp_dir, c.run_id))
        loss = "-" if view.train_loss is None else f"{view.train_loss:.4f}"
        co = {None: "", True: "CO", False: "-"}[view.co_flag]
        rows.append((c.run_id, c.state, c.job_id or "-", str(c.attempts), epoch, loss, _pct(view.clean_acc),
                     _pct(view.adv_acc), co, elapsed, _duration(eta)))  # fmt: skip
    return rows


def format_watch(cells: list[status.CellStatus], rows: list[tuple[str, ...]]) -> str:
    table = judged.with_column(WATCH_HEADER, rows, [c.judged for c in cells])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table]
    summary = ", ".join(f"{n} {s}" for s, n in status.counts(cells).items())
    return "\n".join([*lines, f"{len(cells)} cells: {summary}" if cells else "no cells"])


def refresh(targets: dict[Path, list[str] | None], predictions: Predictions) -> tuple[str, bool]:
    """One refresh: (the tables, whether any cell is still running or pending). One status.poll (one batched
    scheduler call) per experiment."""
    parts, active = [], False
    for exp_dir, ids in targets.items():
        cells = status.poll(exp_dir, ids)
        active |= any(c.state in ("running", "pending") for c in cells)
        table = format_watch(cells, watch_rows(exp_dir, cells, predictions))
        parts.append(f"== {exp_dir.name}\n{table}" if len(targets) > 1 else table)
    return "\n".join(parts), active


def watch(
    targets: dict[Path, list[str] | None],
    interval_s: float,
    out: TextIO | None = None,
    bench: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Refresh every `interval_s` until no cell is running or pending: in place on a terminal, else one table
    after another (a log file gets every refresh, no escape codes)."""
    out = out or sys.stdout
    predictions = Predictions(bench)
    tty = out.isatty()
    while True:
        t0 = time.perf_counter()
        text, active = refresh(targets, predictions)
        stamp = f"{time.strftime('%H:%M:%S')}  refresh {time.perf_counter() - t0:.2f} s, every {interval_s:g} s"
        out.write(f"{CLEAR if tty else ''}{stamp}{'' if active else '  (no cell running or pending)'}\n{text}\n")
        out.flush()
        if not active:
            return
        sleep(interval_s)
