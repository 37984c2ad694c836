"""How well `orchestrate estimate` predicts measured wall-clock (target: within 15 % per cell).

Writes a two-document grid into a temporary folder: a `kind: bench` (small CNN on Fashion-MNIST, one thread,
batch sizes 32/64/128, standard/fast/pgd7; one bench cell per shape, so G-GPU cells are predicted from rows
measured by G ranks at once) and a `kind: train` (standard, fast and pgd7 on 3000 training and 500
validation images, 3 epochs, one evaluation at the end, global batch 64) under one experiment name; runs both with
the local executor (`orchestrate submit --wait`, cells one at a time), collects, then predicts every train cell
from the bench.csv just measured (orchestrator.estimate.estimate_grid) and prints predicted vs measured
(runs.csv elapsed_s_last) with the error per cell. Takes a few minutes on one CPU core per "GPU"; run it on an
otherwise idle machine (contention with other jobs is not modelled).

    python benchmarks/estimate_accuracy.py [--shapes 1,2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from orchestrator.estimate.model import estimate_grid

NAME = "estacc"

BENCH_DOC = f"""\
name: {NAME}
kind: bench
executor: local
description: estimate accuracy - per-batch costs on this machine
defaults:
  dataset: fashion_mnist
  data_root: null
  model: small_cnn
  threads: 1
  attack: {{norm: l2, eps: 1.0}}
  eval: {{steps: 10, restarts: 1}}
  bench: {{batch_sizes: [32, 64, 128], methods: [standard, fast, pgd7], repeats: 5, warmup: 2}}
  resources: {{timeout_min: 10, cpus_per_task: 1}}
grid:
  shape:
{{shapes}}"""

TRAIN_DOC = f"""\
name: {NAME}
kind: train
executor: local
description: estimate accuracy - small training runs to compare with the prediction
defaults:
  dataset: fashion_mnist
  data_root: null
  train_subset: 3000
  val_subset: 500
  model: small_cnn
  epochs: 3
  global_batch_size: 64
  seed: 0
  threads: 1
  optimizer: {{lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4, step_epochs: 3, gamma: 0.1}}
  attack: {{norm: l2, eps: 1.0, random_start: true}}
  eval: {{every: 3, steps: 10, restarts: 1}}
  resources: {{timeout_min: 30, cpus_per_task: 1}}
grid:
  method: [standard, fast, pgd7]
  shape:
{{shapes}}"""


def grid_text(gpus: list[int]) -> str:
    shapes = "".join(f"    - {{nodes: 1, gpus_per_node: {g}}}\n" for g in gpus)
    return BENCH_DOC.replace("{shapes}", shapes) + "---\n" + TRAIN_DOC.replace("{shapes}", shapes)


def orchestrate(*args: str) -> None:
    exe = Path(sys.executable).with_name("orchestrate")
    cmd = [str(exe) if exe.exists() else "orchestrate", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def compare(grid: Path, exp_dir: Path) -> pd.DataFrame:
    predicted = estimate_grid(grid, exp_dir)[["run_id", "gpus", "predicted_s", "extrapolated"]]
    runs = pd.read_csv(exp_dir / "runs.csv")
    runs = runs[runs["kind"] == "train"][["run_id", "elapsed_s_last"]].rename(columns={"elapsed_s_last": "measured_s"})
    df = predicted.merge(runs, on="run_id", how="left")
    df["error_pct"] = 100.0 * (df["predicted_s"] - df["measured_s"]) / df["measured_s"]
    return df


def format_table(df: pd.DataFrame) -> str:
    lines = [f"{'run_id':<28} {'predicted_s':>11} {'measured_s':>10} {'error %':>8}"]
    for r in df.itertuples():
        flag = " *" if r.extrapolated else ""
        lines.append(f"{r.run_id + flag:<28} {r.predicted_s:>11.1f} {r.measured_s:>10.1f} {r.error_pct:>+8.1f}")
    lines.append(f"max |error|: {df['error_pct'].abs().max():.1f} %  (* extrapolated beyond the benched batch sizes)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1", help="comma-separated GPU counts of the train cells (default: 1)")
    ap.add_argument("--keep", metavar="DIR", help="keep the grid and results here (default: a temporary folder)")
    args = ap.parse_args()
    gpus = [int(g) for g in args.shapes.split(",") if g.strip()]

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="estacc-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        grid = tmp / "estacc.yaml"
        grid.write_text(grid_text(gpus))
        results = tmp / "results"
        t0 = time.perf_counter()
        orchestrate("submit", str(grid), "--executor", "local", "--wait", "--results", str(results))
        orchestrate("collect", NAME, "--results", str(results))
        print(f"bench + train: {time.perf_counter() - t0:.0f} s wall-clock")
        print(format_table(compare(grid, results / NAME)))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
