"""kind: judge: evaluates the snapshots of the train runs it follows, off their training clock, as they appear.

Each poll (judge.poll_s) rank 0 reads the followed runs' states and snapshot indexes (workloads.runtime.judge_follow)
and
every rank learns the new snapshots from one collective. Each new snapshot is judged on its run's validation data
(the val_split held out of training when the run sets it, else its test-set validation data; the first
judge.examples images): clean accuracy and PGD accuracy (judge.steps steps, judge.restarts random starts,
judge.zero_start, alpha = alpha_factor * eps / steps, eps = judge.eps or the run's attack.eps), sharded over the
judge's ranks and counted exactly as `kind: evaluate` counts (workloads.kinds.evaluate.run_batches: per-batch
seeds, so 1 and 2 ranks give identical counts and the numbers equal evaluate's on the same weights and images).
Rank 0 appends the snapshot's row to judged.csv (layout.SNAPSHOT_COLUMNS) atomically; a requeued judge reads it
and never judges a snapshot twice. With judge.keep_every N > 1 the judged snapshot files of a run are then deleted but
every N-th (by position in its run's index), its last epoch and its best judged one so far (rows stay).
The judge ends when every followed run has finished, failed or gone (judge_follow) and nothing is left to judge.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from workloads import layout
from workloads.assets import checkpoint
from workloads.assets.data import build_validation
from workloads.kinds.evaluate import Settings, accuracy_rows, run_batches
from workloads.runtime import distributed
from workloads.runtime.distributed import Dist
from workloads.runtime.judge_follow import Follower, Snapshot
from workloads.spec import Judge, RunSpec, resolve_attack
from workloads.training import snapshots


def attack_label(norm: str, eps: float, j: Judge) -> str:
    """A short label of the judging attack, e.g. pgd10x1-l2-eps1 (steps x random starts, +z: a zero start)."""
    return f"pgd{j.steps}x{j.restarts}{'+z' if j.zero_start else ''}-{norm}-eps{eps:g}"


def read_judged(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / layout.JUDGED
    return layout.read_csv(path) if path.exists() else []


class Judged:
    """Judges snapshots on every rank; caches each run's validation data (keyed by what builds it)."""

    def __init__(self, spec: RunSpec, dist: Dist) -> None:
        self.spec, self.dist = spec, dist
        self.data: dict[tuple[Any, ...], Dataset[Any]] = {}

    def validation(self, source: RunSpec) -> tuple[Dataset[Any], str]:
        if self.spec.data_root is not None:  # this cell's data_root wins (the data may live elsewhere here)
            source = replace(source, data_root=self.spec.data_root)
        key = (source.dataset, source.data_root, source.val_split, source.val_subset)
        if key not in self.data:
            data = build_validation(source)
            self.data[key] = Subset(data, range(min(self.spec.judge.examples, len(data))))
        return self.data[key], "val_split" if source.val_split is not None else "test"

    def __call__(self, snap: Snapshot) -> tuple[dict[str, Any], int]:
        """The snapshot's judged row and its run's number of epochs."""
        t0 = time.perf_counter()
        j, dist = self.spec.judge, self.dist
        model, source = checkpoint.load_model(snap.path, "best", map_location=dist.device)
        data, split = self.validation(source)
        norm = resolve_attack(source.method, source.attack).norm
        eps = source.attack.eps if j.eps is None else j.eps
        s = Settings(norm=norm, eps_list=(eps,), steps=j.steps, restarts=j.restarts, alpha_factor=j.alpha_factor,
                     generator_seed=self.spec.seed, batch_size=j.batch_size, zero_start=j.zero_start)  # fmt: skip
        (row,) = accuracy_rows(run_batches(model, data, s, dist), s, dist if dist.distributed else None)
        return {
            "run_id": snap.run_id, "epoch": snap.epoch, "train_s": snap.train_s, "elapsed_s": snap.elapsed_s,
            "clean_acc": row["clean_acc"], "adv_acc": row["adv_acc"], "n": row["n"],
            "attack": attack_label(norm, eps, j), "split": split, "judge_s": round(time.perf_counter() - t0, 4),
            "judge_run": self.spec.run_id,
        }, source.epochs  # fmt: skip


def prune(run_dir: Path, run_id: str, rows: list[dict[str, Any]], keep_every: int, last_epoch: int) -> None:
    """Delete the judged snapshot files of one followed run that keep_every does not keep: all but every N-th (by
    position in its index), its last epoch and its best judged one so far (a best superseded later goes then)."""
    if keep_every <= 1:
        return
    mine = [r for r in rows if r["run_id"] == run_id]
    best = max(mine, key=lambda r: float(r["adv_acc"]), default=None)  # first of equals: earliest
    kept = {last_epoch, int(best["epoch"]) if best is not None else -1}
    judged = {int(r["epoch"]) for r in mine}
    for position, row in enumerate(snapshots.read_index(run_dir), start=1):
        epoch = int(row["epoch"])
        if epoch in judged and position % keep_every and epoch not in kept:
            (layout.snapshot_dir(run_dir) / row["file"]).unlink(missing_ok=True)


def main(spec: RunSpec, run_dir: str | Path, dist: Dist) -> dict[str, Any]:
    run_dir, j = Path(run_dir), spec.judge
    if not j.source_dirs or len(j.source_dirs) != len(j.source_runs):
        raise ValueError(
            "judge.source_dirs: expected one run directory per judge.source_runs entry; the orchestrator fills "
            f"them at submit time (got {len(j.source_dirs)} for {len(j.source_runs)} runs)"
        )
    rows: list[dict[str, Any]] = list(read_judged(run_dir))
    follower = Follower.of(j.source_runs, j.source_dirs, {(r["run_id"], int(r["epoch"])) for r in rows})
    judge = Judged(spec, dist)
    judged_now = 0
    while True:
        plan = follower.scan(j.idle_timeout_min * 60.0) if dist.is_main else None
        new, ended = distributed.all_gather_object(dist, plan)[0]  # rank 0's view, on every rank
        for snap in new:
            row, epochs = judge(snap)
            follower.judged.add((snap.run_id, snap.epoch))
            judged_now += 1
            if dist.is_main:
                layout.append_csv_row_atomic(run_dir / layout.JUDGED, layout.SNAPSHOT_COLUMNS, row)
                rows.append(row)
                print(json.dumps({"event": "judged", **row}), flush=True)
                prune(snap.path.parent.parent, snap.run_id, rows, j.keep_every, epochs)
            distributed.barrier(dist)
        if ended and not new:
            break
        if not new:
            time.sleep(j.poll_s)
    states = follower.states() if dist.is_main else {}
    if dist.is_main and any(s == "gone" for s in states.values()):
        gone = ", ".join(r for r, s in states.items() if s == "gone")
        print(f"warning: judge stopped waiting for {gone}: no result, no error, no live job for "
              f"{j.idle_timeout_min:g} min (judge.idle_timeout_min)", file=sys.stderr, flush=True)  # fmt: skip
    return {"judged": len(rows), "judged_this_attempt": judged_now, "runs": states, "world_size": dist.world_size}
