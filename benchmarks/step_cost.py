"""Cost of one training step: standard, fast-L2 and PGD-K through the trainer's own `train_step`, and a bare
hand-written SGD step, measured side by side in one process.

Each repeat runs every variant once, in a rotating order, so machine noise hits all variants alike; the
table shows medians after warm-up. Targets on the 2-core CPU (ResNet-18-CIFAR, batch 64, 2 threads):
fast/std <= 1.8, pgd7/std <= 6.0, trainer std throughput >= 0.97x the bare step's.

    python benchmarks/step_cost.py [--model resnet18_cifar] [--batch 64] [--repeats 7] [--threads 2]
        [--device cpu|cuda] [--precision fp32|bf16|fp16] [--channels-last] [--attack-passes] [--out RECORD.json]
        [--precisions bf16,fp16] [--attack-precision bf16] [--compile]

--device cuda times each call with CUDA events (queued work counted; cuDNN autotuning on, as the trainer);
--attack-passes also times the attacks alone (model in --mode, as train_step runs them), which gives the floor of
each ratio, 1 + attack pass / standard step; --out writes the JSON record printed last (benchmarks/gpu_check.py).
The levers of a fast recipe, side by side with the --precision steps in the same run (every ratio is to the
--precision standard step): --precisions adds standard and fast steps in each listed precision (fp16: autocast +
GradScaler, CUDA only), --attack-precision a fast and a PGD-K step whose attack passes run in that precision (weight
step in --precision), --compile torch.compile'd standard and fast steps (weights frozen during the attack), with
each one's compile time (its first call) and speed-up over the eager step. Quick CPU look (about a minute):

    python benchmarks/step_cost.py --model small_cnn --batch 32 --repeats 5 --precisions bf16 \
        --attack-precision bf16 --compile

--single-step adds the issue-12 methods: nfgsm (one attack pass, like fast: nfgsm/fast ~ 1) and free with
--replays m (default 4), whose cost is shown per replay (one forward + one backward: free per replay/std ~ 1), and
gradalign: fast's attack pass (its gradient is the clean one) + the regulariser's forward and create_graph
backward at x + eta + a weight backward through both graphs (double backprop): gradalign/fast ~ 3 (the paper: 3x).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from workloads.adversarial.attacks import attack_from, attack_mode
from workloads.assets.models import build_model
from workloads.spec import Attack, resolve_attack
from workloads.training.engine import AMP_DTYPES, autocast, train_step
from workloads.training.free_step import FreeStep


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
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=tuple(AMP_DTYPES), help="autocast, as a run's")
    parser.add_argument("--precisions", default="", help="comma-separated: also standard and fast steps in these")
    parser.add_argument("--attack-precision", choices=tuple(AMP_DTYPES), help="also fast/PGD with attacks in this")
    parser.add_argument("--compile", action="store_true", help="also torch.compile'd standard and fast steps")
    parser.add_argument(
        "--single-step", action="store_true", help="also nfgsm, free, gradalign (the newer single-step methods)"
    )
    parser.add_argument("--replays", type=int, default=4, help="free: replays per mini-batch (cost shown per replay)")
    parser.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    parser.add_argument("--attack-passes", action="store_true", help="also time each attack alone (ratio floors)")
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer; the warm-up repeats absorb the autotuning
    extra = [p for p in args.precisions.split(",") if p]
    if bad := [p for p in extra if p not in AMP_DTYPES]:
        parser.error(f"--precisions: expected some of {', '.join(AMP_DTYPES)}; got {', '.join(bad)}")
    if "fp16" in (args.precision, args.attack_precision, *extra) and device.type != "cuda":
        parser.error("fp16 needs --device cuda (autocast + GradScaler; on CPU the reduced precision is bf16)")
    amp = AMP_DTYPES[args.precision]
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format

    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    x, y = x.to(device), y.to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    base = build_model(args.model, 10, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).train()
    base = base.to(device, memory_format=memory_format)

    def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def trainer(
        method: str, precision: str = args.precision, attack_precision: str | None = None, compiled: bool = False
    ) -> Callable[[], object]:
        model = copy.deepcopy(base)
        opt, gen = sgd(model), torch.Generator(device).manual_seed(0)  # on the device, as the trainer's
        attack = resolve_attack(method, Attack(eps=args.eps))
        step_amp = AMP_DTYPES[precision]
        attack_amp = "same" if attack_precision is None else AMP_DTYPES[attack_precision]
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        run = torch.compile(model) if compiled else model
        return lambda: train_step(run, run, opt, x, y, attack, gen, mode=args.mode, amp=step_amp,
                                  attack_amp=attack_amp, scaler=scaler, freeze=compiled)  # fmt: skip

    def free_trainer() -> Callable[[], object]:
        """Free training's replayed step (workloads.training.free_step), as the trainer runs it: m replays per call."""
        model, step = copy.deepcopy(base), FreeStep()
        opt, attack = sgd(model), resolve_attack("free", Attack(eps=args.eps, replays=args.replays))
        scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
        return lambda: step(model, model, opt, x, y, attack, None, amp=amp, scaler=scaler)

    def attack_pass(method: str) -> Callable[[], object]:
        """The attack of `method` alone, as train_step runs it (same mode and autocast), weights untouched."""
        model, gen = copy.deepcopy(base), torch.Generator(device).manual_seed(0)
        attack = resolve_attack(method, Attack(eps=args.eps))

        def run() -> object:
            with autocast(device, amp), attack_mode(model, args.mode):
                return attack_from(model, x, y, attack, generator=gen)

        return run

    def bare() -> Callable[[], object]:
        model = copy.deepcopy(base)
        opt = sgd(model)

        def step() -> None:
            with autocast(device, amp):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    pgd = f"pgd{args.pgd_steps}"
    variants = {"bare std": bare(), "standard": trainer("standard"), "fast": trainer("fast"), pgd: trainer(pgd)}
    if args.attack_passes:
        variants |= {"fast attack": attack_pass("fast"), f"{pgd} attack": attack_pass(pgd)}
    for p in (p for p in extra if p != args.precision):
        variants |= {f"standard {p}": trainer("standard", p), f"fast {p}": trainer("fast", p)}
    if args.attack_precision:
        a = args.attack_precision
        variants |= {f"fast (attack {a})": trainer("fast", attack_precision=a)}
        variants |= {f"{pgd} (attack {a})": trainer(pgd, attack_precision=a)}
    free_name = f"free m{args.replays}"
    if args.single_step:
        variants |= {"nfgsm": trainer("nfgsm"), free_name: free_trainer(), "gradalign": trainer("gradalign")}
    compile_s: dict[str, float] = {}
    if args.compile:
        for method in ("standard", "fast"):
            variants[f"{method} compiled"] = fn = trainer(method, compiled=True)
            compile_s[f"{method} compiled"] = timed(fn, device)  # the first call traces and compiles
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.warmup + args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each repeat
            seconds = timed(variants[name], device)
            if r >= args.warmup:
                times[name].append(seconds)

    med = {name: statistics.median(t) for name, t in times.items()}
    low = {name: min(t) for name, t in times.items()}  # the least-disturbed repeat: robust on a shared machine
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# {args.model}, batch {args.batch}, {args.threads} threads, attack mode {args.mode}, "
          f"{args.repeats} repeats after {args.warmup} warm-up (seconds); load average {load}")  # fmt: skip
    if device.type != "cpu" or args.precision != "fp32" or args.channels_last:
        print(f"# device {device}, {args.precision}{', channels_last' if args.channels_last else ''}")
    header = ("variant", "median_s", "min_s", "max_s", "x std (median)", "x std (min)")
    widths = (max(10, *map(len, names)), 8, 7, 7, 14, 11)
    print("| " + " | ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for name, t in times.items():
        print(
            f"| {name:<{widths[0]}} | {med[name]:8.3f} | {low[name]:7.3f} | {max(t):7.3f} "
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
    if args.single_step:  # floors: nfgsm is fast's cost (one attack pass); a free replay is one standard step
        ratios |= {"nfgsm/std": med["nfgsm"] / med["standard"], "nfgsm/fast": med["nfgsm"] / med["fast"],
                   "free per replay/std": med[free_name] / args.replays / med["standard"],
                   "gradalign/std": med["gradalign"] / med["standard"],
                   "gradalign/fast": med["gradalign"] / med["fast"]}  # fmt: skip
        ratios_min |= {"nfgsm/std": low["nfgsm"] / low["standard"], "nfgsm/fast": low["nfgsm"] / low["fast"],
                       "free per replay/std": low[free_name] / args.replays / low["standard"],
                       "gradalign/std": low["gradalign"] / low["standard"],
                       "gradalign/fast": low["gradalign"] / low["fast"]}  # fmt: skip
    for name, seconds in compile_s.items():
        eager = name.removesuffix(" compiled")
        ratios[f"{eager} compile speed-up"] = med[eager] / med[name]
        ratios_min[f"{eager} compile speed-up"] = low[eager] / low[name]
        print(f"# {name}: compile (first call) {seconds:.1f} s")
    if args.attack_passes:  # an attacking step is its attack plus a standard step: its ratio cannot be lower
        for method in ("fast", pgd):
            ratios[f"{method} floor"] = 1 + med[f"{method} attack"] / med["standard"]
            ratios_min[f"{method} floor"] = 1 + low[f"{method} attack"] / low["standard"]
    targets = {"fast/std": "<= 1.8", f"{pgd}/std": "<= 6.0", "trainer_std_throughput/bare": ">= 0.97",
               "fast floor": "1 + attack/std", f"{pgd} floor": "1 + attack/std", "nfgsm/fast": "~ 1",
               "free per replay/std": "~ 1", "gradalign/fast": "~ 3 (double backprop)"}  # fmt: skip
    print(f"{'ratio':<28} {'median':>7} {'min':>7}   target")
    for key, value in ratios.items():
        print(f"{key:<28} {value:7.3f} {ratios_min[key]:7.3f}   {targets.get(key, '')}")
    record = {"event": "step_cost", "model": args.model, "batch": args.batch, "threads": args.threads,
              "median_s": med, "min_s": low, "ratios_median": ratios, "ratios_min": ratios_min}  # fmt: skip
    if extra or args.attack_precision or compile_s:
        record["levers"] = {"precisions": extra, "attack_precision": args.attack_precision, "compile_s": compile_s}
    if device.type != "cpu" or args.precision != "fp32" or args.channels_last or args.attack_passes:
        record |= {"device": str(device), "precision": args.precision, "channels_last": args.channels_last,
                   "repeats": args.repeats, "warmup": args.warmup}  # fmt: skip
        if device.type == "cuda":
            record["device_name"] = torch.cuda.get_device_name(device)
    print(json.dumps(record))
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return ratios


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call. CUDA: events around it after a synchronize, so the queued kernels are counted."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


if __name__ == "__main__":
    main()
