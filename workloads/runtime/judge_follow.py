"""What a judge knows of the train runs it follows, from their run directories alone: whether each has ended,
and which of its snapshots are new. Torch-free (orchestrator.monitor.status reads the judged rows the same way).

A followed run is
- finished: result.json is there;
- failed: error.txt is there;
- live: a job holds its run lock (workloads.runtime.runlock.held);
- gone: none of these for idle_timeout_s on end, measured by the judge since it last saw the run live (or since
  the judge started): cancelled or killed (the kernel dropped the lock with the process), or waiting in the queue
  for a requeue or a start that long. A gone run ends the judge's wait for it: a judge never hangs on a dead run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workloads import layout
from workloads.runtime import runlock

ENDED = ("finished", "failed", "gone")


@dataclass
class Followed:
    """One followed run and the judge's view of it."""

    run_id: str
    path: Path
    seen_live: float  # monotonic time the judge last saw it live (its start when never)
    state: str = "waiting"

    def update(self, idle_timeout_s: float, now: float) -> str:
        """Its state now (`gone` is final: the judge has stopped waiting for it)."""
        if self.state == "gone":
            return self.state
        if (self.path / layout.RESULT).exists():
            self.state = "finished"
        elif (self.path / layout.ERROR).exists():
            self.state = "failed"
        elif runlock.held(self.path):
            self.state, self.seen_live = "live", now
        else:
            self.state = "gone" if now - self.seen_live >= idle_timeout_s else "waiting"
        return self.state


@dataclass
class Snapshot:
    """A snapshot of a followed run, as its index lists it."""

    run_id: str
    epoch: int
    train_s: float
    elapsed_s: float
    path: Path
    position: int  # 1-based position in its run's index (keep_every counts these)


@dataclass
class Follower:
    """The followed runs; `scan` returns the snapshots not judged yet and whether every run has ended."""

    runs: list[Followed]
    judged: set[tuple[str, int]] = field(default_factory=set)
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def of(cls, run_ids: list[str], dirs: list[str], judged: set[tuple[str, int]]) -> Follower:
        now = time.monotonic()
        return cls([Followed(r, Path(d), now) for r, d in zip(run_ids, dirs, strict=True)], judged)

    def scan(self, idle_timeout_s: float) -> tuple[list[Snapshot], bool]:
        """(new snapshots, every run ended). The states are read before the indexes: a run that ends after its
        state was read has its last snapshot listed in this scan or the next."""
        now = self.clock()
        ended = all(run.update(idle_timeout_s, now) in ENDED for run in self.runs)
        new = []
        for run in self.runs:
            path = layout.snapshot_index(run.path)
            rows = layout.read_csv(path) if path.exists() else []
            for position, row in enumerate(rows, start=1):
                key = (run.run_id, int(row["epoch"]))
                if key not in self.judged:
                    folder = layout.snapshot_dir(run.path)
                    new.append(Snapshot(run.run_id, key[1], float(row["train_s"]), float(row["elapsed_s"]),
                                        folder / row["file"], position))  # fmt: skip
        return new, ended

    def states(self) -> dict[str, str]:
        return {run.run_id: run.state for run in self.runs}
