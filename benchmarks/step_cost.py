"""Cost of one training step: standard, fast-L2 and PGD-K through the trainer's own `train_step`, and a bare
hand-written SGD step, measured side by side in one process.

Each repeat runs every variant once, in a rotating order, so machine noise hits all variants alike; the
table shows medians after warm-up. Targets on the 2-core CPU (ResNet-18-CIFAR, batch 64, 2 threads):
fast/std <= 1.8, pgd7/std <= 6.0, trainer std throughput >= 0.97x the bare step's.

    python benchmarks/step_cost.py [--model resnet18_cifar] [--batch 64] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from workloads.models import build_model
from workloads.spec import Attack, resolve_attack
from workloads.train import train_step


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18_cifar")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported), >= 5")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pgd-steps", type=int, default=7)
    parser.add_argument("--eps", type=float, default=1.0)
    parser.add_argument("--mode", default="eval", choices=("eval", "train"), help="model mode during the attack")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    base = build_model(args.model, 10, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).train()

    def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def trainer(method: str) -> Callable[[], object]:
        model = copy.deepcopy(base)
        opt, gen = sgd(model), torch.Generator().manual_seed(0)
        attack = resolve_attack(method, Attack(eps=args.eps))
        return lambda: train_step(model, model, opt, x, y, attack, gen, mode=args.mode)

    def bare() -> Callable[[], object]:
        model = copy.deepcopy(base)
        opt = sgd(model)

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    pgd = f"pgd{args.pgd_steps}"
    variants = {"bare std": bare(), "standard": trainer("standard"), "fast": trainer("fast"), pgd: trainer(pgd)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.warmup + args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each repeat
            t0 = time.perf_counter()
            variants[name]()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    med = {name: statistics.median(t) for name, t in times.items()}
    low = {name: min(t) for name, t in times.items()}  # the least-disturbed repeat: robust on a shared machine
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# {args.model}, batch {args.batch}, {args.threads} threads, attack mode {args.mode}, "
          f"{args.repeats} repeats after {args.warmup} warm-up (seconds); load average {load}")  # fmt: skip
    header = ("variant", "median_s", "min_s", "max_s", "x std (median)", "x std (min)")
    widths = (10, 8, 7, 7, 14, 11)
    print("| " + " | ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for name, t in times.items():
        print(
            f"| {name:<10} | {med[name]:8.3f} | {low[name]:7.3f} | {max(t):7.3f} "
            f"| {med[name] / med['standard']:14.2f} | {low[name] / low['standard']:11.2f} |"
        )
    ratios = {
        "fast/std": med["fast"] / med["standard"],
        f"{pgd}/std": med[pgd] / med["standard"],
        "trainer_std_throughput/bare": med["bare std"] / med["standard"],
    }
    ratios_min = {
        "fast/std": low["fast"] / low["standard"],
        f"{pgd}/std": low[pgd] / low["standard"],
        "trainer_std_throughput/bare": low["bare std"] / low["standard"],
    }
    targets = {"fast/std": "<= 1.8", f"{pgd}/std": "<= 6.0", "trainer_std_throughput/bare": ">= 0.97"}
    print(f"{'ratio':<28} {'median':>7} {'min':>7}   target")
    for key, value in ratios.items():
        print(f"{key:<28} {value:7.3f} {ratios_min[key]:7.3f}   {targets[key]}")
    record = {"event": "step_cost", "model": args.model, "batch": args.batch, "threads": args.threads,
              "median_s": med, "min_s": low, "ratios_median": ratios, "ratios_min": ratios_min}  # fmt: skip
    print(json.dumps(record))
    return ratios


if __name__ == "__main__":
    main()
