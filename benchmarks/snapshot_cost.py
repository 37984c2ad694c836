"""What a snapshot and judging one snapshot cost (workloads.training.snapshots, workloads.kinds.judge), on this machine.

Per model (small_cnn, resnet50_cifar by default): the snapshot file's size (the fp32 state_dict:
orchestrator.estimate.judging.STATE_MB holds these) and the median seconds of workloads.training.snapshots.save into a
temporary run directory (serialise + write + fsync + rename + index row). Then judging one small-CNN snapshot:
clean + PGD (steps, 1 random start) on `--examples` Fashion-MNIST training images held out (val_split), as the
judge counts them (workloads.kinds.evaluate.run_batches), one process. Numbers, never pass/fail; run it on a quiet
machine (contention is not modelled).

    python benchmarks/snapshot_cost.py [--models small_cnn,resnet50_cifar] [--repeats 5] [--examples 2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from workloads import layout
from workloads.assets.data import build_held_out
from workloads.assets.models import build_model
from workloads.kinds.evaluate import Settings, run_batches
from workloads.spec import from_dict
from workloads.training import snapshots


def snapshot_cost(model_name: str, repeats: int) -> tuple[float, float]:
    """(MB of the file, median seconds of one save)."""
    spec = from_dict({"run_id": "bench", "model": model_name, "epochs": repeats, "snapshot_every": 1})
    channels = 1 if model_name == "small_cnn" else 3
    model = build_model(model_name, 10, channels, [0.5] * channels, [0.25] * channels)
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for epoch in range(1, repeats + 1):
            t0 = time.perf_counter()
            snapshots.save(Path(folder), model, spec, epoch, 0.0, 0.0)
            times.append(time.perf_counter() - t0)
        size = (layout.snapshot_dir(folder) / layout.snapshot_name(1)).stat().st_size / 1e6
    return size, statistics.median(times)


def judge_cost(examples: int, steps: int) -> float:
    """Seconds to judge one small-CNN snapshot on `examples` held-out images (batches of 256)."""
    spec = from_dict({"dataset": "fashion_mnist", "val_split": examples})
    data = Subset(build_held_out(spec), range(examples))
    model = build_model("small_cnn", 10, 1, [0.286], [0.353]).eval()
    s = Settings(norm="l2", eps_list=(1.0,), steps=steps, restarts=1, alpha_factor=2.5, generator_seed=0,
                 batch_size=256, zero_start=False)  # fmt: skip
    t0 = time.perf_counter()
    run_batches(model, data, s)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small_cnn,resnet50_cifar")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread")
    for name in args.models.split(","):
        size, seconds = snapshot_cost(name, args.repeats)
        print(f"snapshot {name}: {size:.2f} MB, {1000 * seconds:.1f} ms per save (median of {args.repeats})")
    seconds = judge_cost(args.examples, args.steps)
    print(f"judge small_cnn: {seconds:.2f} s for {args.examples} images, PGD-{args.steps} x 1 "
          f"({1000 * seconds / args.examples:.2f} ms per image)")  # fmt: skip


if __name__ == "__main__":
    main()
