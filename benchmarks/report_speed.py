"""How long `orchestrate report` takes on a large experiment: 10^5 epoch rows (target: <= 3 s).

Synthetic CSV-only experiment: 1000 training runs x 100 epochs (epochs.csv: 10^5 rows), 5 % of them unfinished
(so epochs.csv is read to extrapolate them), a bench.csv and a robustness.csv; then build_report (Table I,
Fig. 1, Fig. 2, report.md). Prints the wall-clock and CPU time of the report, imports included.

    python benchmarks/report_speed.py [--runs 1000] [--epochs 100]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from workloads.layout import write_csv_atomic

DATASETS = ("cifar10", "restricted_imagenet")
METHODS = {"pgd7": 7.0, "fast": 2.3, "standard": 1.0}


def make_experiment(root: Path, runs: int, epochs: int) -> Path:
    rng = random.Random(0)
    exp = root / "speed"
    run_rows, epoch_rows, rob_rows, bench_rows = [], [], [], []
    for i in range(runs):
        dataset, method = DATASETS[i % 2], list(METHODS)[(i // 2) % 3]
        gpus = (2, 8)[(i // 6) % 2]
        run_id = f"{method}-g{gpus}-{dataset}-s{i}"
        per_epoch = 60.0 * METHODS[method] / (gpus / 2) * rng.uniform(0.95, 1.05)
        done = epochs if i % 20 else epochs // 2  # every 20th run is still running
        accs = [0.3 + 0.4 * e / epochs + rng.uniform(-0.02, 0.02) for e in range(1, done + 1)]
        best = max(range(done), key=lambda e: accs[e])
        for e in range(1, done + 1):
            epoch_rows.append({"run_id": run_id, "epoch": e, "train_s": per_epoch, "eval_s": 0.0,
                               "elapsed_s": per_epoch * e, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5,
                               "clean_acc": accs[e - 1] + 0.2, "adv_acc": accs[e - 1]})  # fmt: skip
        run_rows.append({"run_id": run_id, "experiment": "speed", "kind": "train", "dataset": dataset,
                         "model": "resnet50_cifar", "method": method, "attack_norm": "l2", "attack_eps": 1.0,
                         "world_size": gpus, "global_batch_size": 256, "epochs": epochs,
                         "state": "finished" if done == epochs else "running", "elapsed_s_last": per_epoch * done,
                         "best_epoch": best + 1, "elapsed_s_best": per_epoch * (best + 1), "last_epoch": done,
                         "device": "NVIDIA V100"})  # fmt: skip
        if i < 60:
            for eps in (0.0, 0.25, 0.5, 1.0, 2.0):
                rob_rows.append({"run_id": run_id, "method": method, "eps": eps, "steps": 20, "restarts": 10,
                                 "n": 1000, "clean_acc": 0.8, "adv_acc": max(0.0, 0.8 - eps * 0.3)})  # fmt: skip
    for b in (16, 32, 64, 128, 256):
        for what, method, steps, k in (("pgd", "pgd7", 7, 7.0), ("pgd", "fast", 1, 1.0),
                                       ("forward", "standard", 0, 0.35), ("train_step", "standard", 0, 1.1),
                                       ("train_step", "fast", 1, 2.1), ("train_step", "pgd7", 7, 8.1)):  # fmt: skip
            t = k * (0.01 + 0.001 * b)
            bench_rows.append({"device": "NVIDIA V100", "model": "resnet50_cifar", "dataset": "cifar10",
                               "method": method, "attack_steps": steps, "batch_size": b, "repeats": 10,
                               "median_s": t, "p10_s": t, "p90_s": t, "what": what})  # fmt: skip
    for name, rows in (("runs", run_rows), ("epochs", epoch_rows), ("robustness", rob_rows), ("bench", bench_rows)):
        write_csv_atomic(exp / f"{name}.csv", list(rows[0]), rows)
    return exp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exp = make_experiment(Path(tmp), args.runs, args.epochs)
        t0, c0 = time.perf_counter(), time.process_time()
        from orchestrator.report import build_report  # the import (pandas, then matplotlib) is part of the cost

        build_report(exp)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        files = sorted(p.name for p in (exp / "report").iterdir())
    # CPU time as well: on a shared machine the wall-clock includes waiting for a core
    print(
        f"report over {args.runs * args.epochs} epoch rows ({args.runs} runs): {seconds:.2f} s wall, "
        f"{cpu:.2f} s CPU (target <= 3 s)"
    )
    print(f"wrote: {', '.join(files)}")


if __name__ == "__main__":
    main()
