"""Training speed with glibc's default malloc thresholds vs the fixed ones of workloads.runtime.allocator.

Runs the same short training (`python -m workloads.kinds.train`: small CNN on real Fashion-MNIST, one thread, global
batch 128, evaluation every 2 epochs) in fresh processes, alternating FASTROBUST_TUNE_MALLOC=0 (glibc's
defaults) and 1 (the default: thresholds fixed), `--rounds` times per method, and prints per-epoch training
and evaluation times (median over epochs and rounds) with the speed-up measured side by side. Also prints the
drift within a run (last epoch / first epoch), which the default thresholds made depend on what ran before.

    python benchmarks/malloc_tuning.py [--methods standard,fast] [--rounds 2] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from workloads import layout
from workloads.spec import from_dict

ROOT = Path(__file__).resolve().parents[1]


def run_once(tmp: Path, method: str, epochs: int, tuned: bool, index: int) -> pd.DataFrame:
    run_dir = tmp / f"{method}-{'tuned' if tuned else 'default'}-{index}"
    spec = from_dict({
        "run_id": run_dir.name, "dataset": "fashion_mnist", "train_subset": 6000, "val_subset": 1000,
        "model": "small_cnn", "method": method, "epochs": epochs, "global_batch_size": 128, "threads": 1,
        "attack": {"norm": "l2", "eps": 1.0}, "eval": {"every": 2, "steps": 10},
    })  # fmt: skip
    run_dir.mkdir(parents=True)
    layout.write_json_atomic(run_dir / layout.SPEC, spec.to_dict())
    env = {**os.environ, "FASTROBUST_TUNE_MALLOC": "1" if tuned else "0"}
    cmd = [sys.executable, "-m", "workloads.kinds.train", "--spec", str(run_dir / layout.SPEC), "--out", str(run_dir)]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
    return pd.read_csv(run_dir / layout.EPOCHS).assign(tuned=tuned, method=method)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="standard,fast")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    frames = []
    with tempfile.TemporaryDirectory(prefix="malloc-") as tmp:
        for method in args.methods.split(","):
            for i in range(args.rounds):
                for tuned in (False, True):  # interleaved: drift of the machine hits both alike
                    frames.append(run_once(Path(tmp), method, args.epochs, tuned, i))
    df = pd.concat(frames, ignore_index=True)
    print(f"{'method':<9} {'malloc':<8} {'train_s/epoch':>13} {'eval_s':>7} {'last/first epoch':>16}")
    for (method, tuned), sel in df.groupby(["method", "tuned"], sort=False):
        drift = statistics.median(float(r["train_s"].iloc[-1] / r["train_s"].iloc[0]) for _, r in sel.groupby("run_id"))
        evals = sel.loc[sel["eval_s"] > 0, "eval_s"]
        print(f"{method:<9} {'fixed' if tuned else 'default':<8} {sel['train_s'].median():>13.3f} "
              f"{evals.median():>7.3f} {drift:>16.2f}")  # fmt: skip
    for method, sel in df.groupby("method", sort=False):
        medians = {}
        for column in ("train_s", "eval_s"):
            timed = sel[sel[column] > 0]
            medians[column] = timed[~timed["tuned"]][column].median() / timed[timed["tuned"]][column].median()
        print(f"{method}: speed-up train {medians['train_s']:.2f}x, eval {medians['eval_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
