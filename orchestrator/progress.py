"""Following cells while they run: the local executor's one-at-a-time cells (a tqdm bar or plain lines), and
waiting until every cell of a submission has ended (`orchestrate submit --wait`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator import manifest, status
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
            self.write(f"{run_id} finished in {time.monotonic() - t0:.0f} s")
        else:
            error = manifest.run_dir(exp_dir, run_id) / layout.ERROR
            where = error if error.exists() else exp_dir / layout.SUBMITIT
            self.write(f"{run_id} {cell.state}: see {where}")
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
