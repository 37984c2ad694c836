"""What snapshots and judge jobs cost (`orchestrate estimate`), priced apart from the training they follow.

- Snapshots of a train cell: n_snap = every `snapshot_every` epochs and the last (the eval_epochs rule), each the
  model's weights (STATE_MB, fp32 state_dict of the catalog model at 10 classes, measured with torch) written at
  SNAPSHOT_MB_S. Off the train clock (workloads.training.snapshots), on the wall-clock.
- A judge cell: for each followed cell, n_snap × ⌈⌈n/B⌉ / R⌉ × t_eval(B) with n = min(judge.examples, the cell's
  validation size), B = judge.batch_size, R = judge.ranks and t_eval the bench's validation batch at judge.steps
  and judge.restarts (bench_costs.eval_batch, the followed cell's model and precision). It runs beside the
  training: its seconds are its own work, not added to the training's.
"""

from __future__ import annotations

import math

from orchestrator.estimate.bench_costs import BenchCosts
from workloads.spec import RunSpec

# MB (10^6 bytes) of a snapshot file: the fp32 state_dict, measured with torch (benchmarks/snapshot_cost.py).
STATE_MB = {"small_cnn": 0.83, "resnet18_cifar": 44.77, "resnet50_cifar": 94.4, "resnet50": 94.43}
# MB/s of one snapshot save (serialise, write, fsync, rename), measured for resnet50_cifar on the 2-vCPU EPYC's
# local disk (94.4 MB in 0.63 s); a cluster file system may be slower or faster: the estimate says it assumed this
SNAPSHOT_MB_S = 150.0


def snapshot_count(epochs: int, every: int) -> int:
    """Snapshots of a run: every `every` epochs and the last (none with every 0)."""
    if every <= 0:
        return 0
    return epochs // every + (1 if epochs % every else 0)


def snapshot_seconds(cell: RunSpec) -> float:
    """Seconds a train cell spends writing its snapshots (0 without)."""
    return snapshot_count(cell.epochs, cell.snapshot_every) * STATE_MB.get(cell.model, 0.0) / SNAPSHOT_MB_S


def judge_seconds(judge: RunSpec, followed: RunSpec, costs: BenchCosts, n_val: int, basis: str) -> tuple[float, bool]:
    """(seconds, extrapolated) the judge spends on one followed cell's snapshots."""
    j = judge.judge
    n = min(j.examples, n_val)
    batches_per_rank = math.ceil(math.ceil(n / j.batch_size) / j.ranks)
    t_eval, extrapolated = costs.eval_batch(j.steps, j.restarts + (1 if j.zero_start else 0), j.batch_size, basis)
    count = snapshot_count(followed.epochs, followed.snapshot_every)
    return count * batches_per_rank * t_eval, extrapolated
