"""Mid-epoch checkpoints (spec `checkpoint_every_min`, and SIGUSR2 through workloads.runtime.preempt): when the trainer
saves inside an epoch, what it adds to checkpoint-last.pt, and how a resume gets back to that very step.

When: at every step boundary rank 0 decides CONTINUE, SAVE (checkpoint_every_min has passed on its clock since
the last checkpoint) or STOP (SIGUSR2 arrived: save, then preempt.stop()); every rank learns the decision from
one broadcast of a small int per step (only when distributed; a CPU tensor over gloo, no device sync). A SAVE at
an epoch's last step is left to the epoch-end checkpoint that follows; a STOP there saves (step = all steps
done), so the epoch's evaluation runs in the next attempt instead of racing the time limit.

What: checkpoint-last.pt (the same writer, one generation kept back) with `epoch` = completed epochs as ever,
`step` = optimizer steps done in epoch `epoch + 1`, `partial` = {lr: that epoch's starting lr (its epochs.csv
column), train_s: its training seconds so far, stats: per rank (loss sum, correct, n) so far, delta: per rank the
free step's carried perturbation (None for other steps)}, and `rng` captured at the boundary. A checkpoint
without `step` (older, or an epoch end) resumes at the epoch boundary as before; epochs.csv never gets a row for
a partial epoch.

How (resume): the epoch's loader is built exactly as the uninterrupted run builds it (sampler.set_epoch, the
loader generator's per-epoch seed), its first `step` batches are drawn and dropped, and only then are the RNG
states and the carried delta restored. So the remaining batches, their augmentation (in the training process or
in worker processes seeded from the loader generator) and every random draw are the uninterrupted run's, for any
worker count and augmentation, and the epoch's row and the final weights are bit-identical (timing columns
aside). Skipping costs the skipped batches' data loading (not their training). A resume on another world size
continues the same global batches (DistributedSampler's b-th global batch does not depend on the world size) but
not bit-identically: fresh RNG streams, rank 0 carries the partial sums, the free delta restarts at zero.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from workloads.assets import checkpoint
from workloads.runtime import distributed, preempt
from workloads.runtime.distributed import Dist
from workloads.training.free_step import Stepper

CONTINUE, SAVE, STOP = 0, 1, 2
REASONS = {SAVE: "interval", STOP: "preempt"}


def stats_zeros(device: torch.device) -> Tensor:
    return torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, n


@dataclasses.dataclass
class Partial:
    """The epoch in progress as a mid-epoch checkpoint left it, for this rank."""

    epoch: int  # 1-based: the epoch in progress
    step: int  # optimizer steps done in it
    lr: float  # its lr at its start
    train_s: float  # its training seconds in earlier attempts
    stats: Tensor  # this rank's (loss sum, correct, n) so far, on the device
    rng: dict[str, Any] | None  # this rank's RNG states at the boundary (None: fresh streams)
    delta: Tensor | None  # the free step's carried delta (None: starts at zero)

    def remaining(self, batches: Iterable[Any], steps: int) -> Iterator[Any]:
        """The epoch's batches after the `step` the checkpoint had trained (drawn and dropped; none left when it
        had trained all `steps`: then not even a loader iterator is made). Call restore() next."""
        if self.step >= steps:
            return iter(())
        todo = iter(batches)
        for _ in range(self.step):
            next(todo)
        return todo


def from_checkpoint(state: dict[str, Any], dist: Dist) -> Partial | None:
    """The partial epoch of a mid-epoch checkpoint (None for an epoch-boundary one)."""
    step = int(state.get("step") or 0)
    if step == 0:
        return None
    p = state["partial"]
    same_layout = len(p["stats"]) == dist.world_size
    if same_layout:
        stats, rng, delta = p["stats"][dist.rank], state["rng"][dist.rank], p["delta"][dist.rank]
    else:  # another world size: rank 0 carries the sums, the rest start afresh (module docstring)
        stats = torch.stack(list(p["stats"])).sum(0) if dist.is_main else stats_zeros(torch.device("cpu"))
        rng, delta = None, None
        if dist.is_main:
            print(f"warning: mid-epoch checkpoint from {len(p['stats'])} ranks, now {dist.world_size}: the epoch "
                  "continues with fresh RNG streams (not bit-identical)", file=sys.stderr)  # fmt: skip
    return Partial(
        epoch=int(state["epoch"]) + 1, step=step, lr=float(p["lr"]), train_s=float(p["train_s"]),
        stats=stats.to(dist.device, torch.float64), rng=rng, delta=None if delta is None else delta.to(dist.device),
    )  # fmt: skip


def restore(partial: Partial, gen: torch.Generator, stepper: Stepper) -> None:
    """After the skip: the boundary's RNG states and carried delta."""
    if partial.rng is not None:
        checkpoint.restore_rng(partial.rng, gen)
    stepper.free.delta = partial.delta


class Cadence:
    """Rank 0's decision at each step boundary, agreed by every rank (module docstring)."""

    def __init__(self, every_min: float, dist: Dist, timeout_s: float | None = None) -> None:
        self.every_s, self.dist, self.timeout_s = every_min * 60.0, dist, timeout_s
        self.last = time.monotonic()

    def saved(self) -> None:
        """A checkpoint was written (mid-epoch or at an epoch end): the interval counts from here."""
        self.last = time.monotonic()

    def decide(self) -> int:
        if preempt.requested():
            local = STOP
        elif self.every_s > 0 and time.monotonic() - self.last >= self.every_s:
            local = SAVE
        else:
            local = CONTINUE
        return distributed.broadcast_int(self.dist, local, self.timeout_s)  # collective when distributed


def gather(dist: Dist, gen: torch.Generator, stats: Tensor, stepper: Stepper) -> list[dict[str, Any]]:
    """Every rank's part of a mid-epoch checkpoint, on every rank (collective): rng, stats, delta."""
    delta = stepper.free.delta
    mine = {
        "rng": checkpoint.capture_rng(gen),
        "stats": stats.detach().cpu(),
        "delta": delta.detach().cpu() if delta is not None else None,
    }
    return distributed.all_gather_object(dist, mine)


def fields(parts: list[dict[str, Any]], step: int, lr: float, train_s: float) -> dict[str, Any]:
    """checkpoint.save's keywords for a mid-epoch checkpoint, from gather()'s parts."""
    partial = {"lr": lr, "train_s": train_s, "stats": [p["stats"] for p in parts],
               "delta": [p["delta"] for p in parts]}  # fmt: skip
    return {"rng": [p["rng"] for p in parts], "step": step, "partial": partial}
