"""kind: bench — per-batch costs for Fig. 1 (left) and the cost model of orchestrator.estimate.

For every batch size in spec.bench.batch_sizes, on the job's device, on one batch of the real training split
(augmented as in training), after spec.bench.prime_steps standard SGD steps on real batches. CPU kernels are
value-dependent: a step costs less on a trained model with real images than on fresh weights with uniform noise,
and a few dozen steps of training reach the trained cost. Without the dataset (no data root here): random inputs
of the dataset's shape, fresh weights (column inputs says which). Then:
- what=pgd: one K-step attack of each attacking method in spec.bench.methods (K forward + input-only backward
  passes, `workloads.adversarial.attacks.attack_from`, model in spec.attack.mode), as the paper's Fig. 1 left;
- what=forward: one forward pass (eval mode, no grad): the paper's "No PGD" proxy;
- what=eval: one validation batch as `workloads.training.accuracy.dataset_accuracy` runs it (`batch_accuracy`: clean
  forward, the eval attack of spec.eval with its restarts, adversarial forward);
- what=train_step: one full training step of each method through `workloads.training.engine.train_step` (attack +
  forward + backward + SGD update). The optimizer runs with lr 0, which costs the same arithmetic but keeps
  the weights fixed, so repeats time the same model and cannot diverge on random labels;
- what=data: fetching one batch of B examples through the REAL dataset and per-sample transforms
  (`workloads.assets.data.build_datasets(spec)`) with a DataLoader configured as the trainer's
  (`workloads.training.engine.loader_kwargs`): method data_train (the train split, augmented when spec.augment) and
  data_val (the validation split, never augmented). CPU: the batch is loaded in-process (what a training step
  waits for); CUDA: worker processes, timed once their prefetch queue has drained, i.e. the loader's steady
  throughput per batch. Skipped, with a printed note, when the dataset cannot be read (e.g. no data root).
- what=allreduce (world size G > 1 only): one all-reduce of a buffer the size of the model's gradients
  across the G ranks (method "gradients"), the communication DDP adds to each training step (DDP overlaps
  part of it with the backward pass, so this is an upper bound on what it adds).
Each is warmed up (spec.bench.warmup calls), then timed spec.bench.repeats times (CUDA: events after a
synchronize; CPU: perf_counter); bench.csv holds the median and the 10th/90th percentiles.

World size (the cell's shape): every row carries it. At G > 1 all ranks run every measurement at once, in
step (a barrier before each), and rank 0's times are recorded: the training steps run through DDP as the
trainer's do, so rows at G hold the gradient all-reduce and whatever G processes contend for (cores, memory
bandwidth, PCIe, network). orchestrator.estimate predicts a G-GPU run from the rows at G when the bench has
them; Fig. 1's single-device panels use the rows at the smallest world size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from workloads import layout
from workloads.adversarial.attacks import attack_from, attack_mode
from workloads.assets.data import DataBundle, DataError, build_datasets
from workloads.assets.models import build_model
from workloads.catalog import dataset_info
from workloads.runtime import distributed
from workloads.runtime.allocator import tune_malloc
from workloads.runtime.distributed import Dist
from workloads.runtime.runinfo import device_name  # env.json's naming: bench rows and runs compare equal
from workloads.spec import ResolvedAttack, RunSpec, resolve_attack, resolve_eval_attack
from workloads.training.accuracy import batch_accuracy
from workloads.training.engine import (
    amp_dtype,
    attack_amp_dtype,
    autocast,
    check_device,
    grad_scaler,
    loader_kwargs,
    to_device,
    train_step,
    wrap_ddp,
)

BENCH_COLUMNS = (
    "device", "model", "dataset", "method", "attack_steps", "batch_size", "repeats", "median_s", "p10_s", "p90_s",
    "what", "attack_restarts", "precision", "channels_last", "threads", "warmup", "world_size", "calls_per_repeat",
    "inputs", "prime_steps",
)  # fmt: skip


# At world size > 1 single calls are noisy (each waits on the slowest rank at every collective) and the first
# few after a barrier run slow while the ranks fall into step. A sample is then the mean of DDP_CALLS_PER_REPEAT
# consecutive calls, after at least DDP_MIN_WARMUP untimed ones: the per-step cost of a long run, which is what an
# epoch sums.
DDP_CALLS_PER_REPEAT, DDP_MIN_WARMUP = 5, 5


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int, calls: int = 1) -> list[float]:
    """Seconds per call of fn, after `warmup` untimed calls: `repeats` samples, each the mean over `calls`
    consecutive calls. CUDA: events, so queued work is counted."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0 / calls)
        return times
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return times


def timing_stats(times: list[float]) -> dict[str, float]:
    p10, p50, p90 = np.percentile(np.asarray(times, dtype=np.float64), [10, 50, 90])
    return {"median_s": float(p50), "p10_s": float(p10), "p90_s": float(p90)}


@dataclass
class _Bench:
    """What every measurement of one job shares: the model, its optimizer and the timing settings."""

    spec: RunSpec
    model: nn.Module
    ddp_model: nn.Module  # what training steps train: DDP-wrapped at world size > 1
    opt: torch.optim.Optimizer
    dist: Dist
    amp: torch.dtype | None
    gen: torch.Generator
    common: dict[str, Any]
    scaler: torch.amp.GradScaler | None = None  # fp16 training steps (precision fp16)

    @property
    def attack_amp(self) -> torch.dtype | None:
        return attack_amp_dtype(self.spec)  # attack.precision, else precision

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def measure(self, fn: Callable[[], Any], **fields: Any) -> dict[str, Any]:
        distributed.barrier(self.dist)  # all ranks start each measurement together (contention as in training)
        times = time_calls(fn, self.device, self.spec.bench.repeats, self.common["warmup"],
                           self.common["calls_per_repeat"])  # fmt: skip
        row = {**self.common, **fields, **timing_stats(times)}
        if self.dist.is_main:
            what, method, b = row["what"], row["method"], row["batch_size"]
            print(f"bench {what} {method} b={b} world={self.dist.world_size}: {row['median_s']:.4g} s", flush=True)
        return row

    def attack(self, x: Tensor, y: Tensor, method: str, attack: ResolvedAttack) -> dict[str, Any]:
        def run() -> Tensor:
            with autocast(self.device, self.attack_amp), attack_mode(self.model, self.spec.attack.mode):
                return attack_from(self.model, x, y, attack, generator=self.gen)

        return self.measure(run, what="pgd", method=method, attack_steps=attack.steps, attack_restarts=1,
                            batch_size=len(x))  # fmt: skip

    def forward(self, x: Tensor) -> dict[str, Any]:
        def run() -> Tensor:
            with autocast(self.device, self.amp), torch.no_grad():
                return self.model(x)

        self.model.eval()
        return self.measure(run, what="forward", method="standard", attack_steps=0, attack_restarts=1,
                            batch_size=len(x))  # fmt: skip

    def validation(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        attack, restarts = resolve_eval_attack(self.spec), self.spec.eval.restarts

        def run() -> Tensor:
            with autocast(self.device, self.amp):
                clean, robust = batch_accuracy(self.model, x, y, attack, restarts=restarts, generator=self.gen)
            return clean.sum() + robust.sum()  # device tensors: no call waits for the device

        self.model.eval()
        return self.measure(run, what="eval", method="eval", attack_steps=attack.steps, attack_restarts=restarts,
                            batch_size=len(x))  # fmt: skip

    def train_step(self, x: Tensor, y: Tensor, method: str, attack: ResolvedAttack) -> dict[str, Any]:
        def run() -> Tensor:
            loss, _ = train_step(self.model, self.ddp_model, self.opt, x, y, attack, self.gen,
                                 mode=self.spec.attack.mode, amp=self.amp, attack_amp=self.attack_amp,
                                 scaler=self.scaler)  # fmt: skip
            return loss

        self.model.train()
        return self.measure(run, what="train_step", method=method, attack_steps=attack.steps, attack_restarts=1,
                            batch_size=len(x))  # fmt: skip

    def allreduce(self, b: int) -> dict[str, Any]:
        """One all-reduce of a gradient-sized buffer (the model's parameters, their dtype) across the ranks."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        buffer = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=self.device)

        def run() -> None:
            torch.distributed.all_reduce(buffer)

        return self.measure(run, what="allreduce", method="gradients", attack_steps=0, attack_restarts=1,
                            batch_size=b)  # fmt: skip


def load_data(spec: RunSpec) -> DataBundle | None:
    """The trainer's datasets (train augmented as spec.augment, val plain), or None with a printed note when
    the data cannot be read here: the data rows are then left out, the rest of the bench still runs."""
    try:
        return build_datasets(spec)
    except (DataError, OSError) as exc:
        print(f"bench: no data rows ({spec.dataset} unavailable: {exc})", flush=True)
        return None


def random_batches(dataset: Dataset[Any], b: int, batches: int, seed: int, **loader: Any) -> DataLoader[Any]:
    """A DataLoader of `batches` batches of b examples drawn with replacement (so any b and count work), through
    the dataset's transforms; sampling and worker seeds from `seed` (no global RNG is drawn)."""
    gen = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=batches * b, generator=gen)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours are map-style
    return DataLoader(dataset, b, sampler=sampler, generator=torch.Generator().manual_seed(seed), **loader)


def time_batches(dataset: Dataset[Any], b: int, dist: Dist, repeats: int, warmup: int, seed: int) -> list[float]:
    """Seconds to fetch each of `repeats` batches of b examples from one DataLoader iterator set up as the
    trainer's. Untimed first: `warmup` batches, plus the batches worker processes prefetch (their queue would
    hand out ready batches at no cost), so each timed fetch is the loader's steady cost per batch."""
    kwargs = loader_kwargs(dist)
    workers = kwargs.get("num_workers", 0)
    skip = warmup + (workers * 2 if workers else 0)  # DataLoader's default prefetch_factor is 2 per worker
    batches = iter(random_batches(dataset, b, skip + repeats, seed, **kwargs))
    for _ in range(skip):
        next(batches)
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        next(batches)
        times.append(time.perf_counter() - t0)
    del batches  # shuts the workers down
    return times


def real_batch(dataset: Dataset[Any], b: int, seed: int) -> tuple[Tensor, Tensor]:
    """One batch of b examples of `dataset` (random_batches)."""
    x, y = next(iter(random_batches(dataset, b, 1, seed)))
    return x, y


def prime_model(model: nn.Module, spec: RunSpec, data: DataBundle, device: torch.device) -> int:
    """Train `model` for spec.bench.prime_steps standard SGD steps (the spec's optimizer) on real training
    batches of the smallest benched size, so the timed kernels see trained-like weights; returns the steps."""
    o, b, steps = spec.optimizer, min(spec.bench.batch_sizes), spec.bench.prime_steps
    if steps == 0:
        return 0  # a sampler of zero samples is refused
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    standard = resolve_attack("standard", spec.attack)
    model.train()
    for x, y in random_batches(data.train, b, steps, spec.seed):
        x, y = to_device(x, y, device, spec.channels_last)
        train_step(model, model, opt, x, y, standard, None, amp=amp_dtype(spec))
    return steps


def data_rows(spec: RunSpec, data: DataBundle, b: int, dist: Dist, common: dict[str, Any]) -> list[dict[str, Any]]:
    """what=data rows of batch size b: data_train (train split) and data_val (validation split)."""
    rows = []
    for method, dataset in (("data_train", data.train), ("data_val", data.val)):
        distributed.barrier(dist)
        times = time_batches(dataset, b, dist, spec.bench.repeats, common["warmup"], spec.seed + b + dist.rank)
        row = {**common, "what": "data", "method": method, "attack_steps": 0, "attack_restarts": 1,
               "batch_size": b, "calls_per_repeat": 1, **timing_stats(times)}  # fmt: skip
        if dist.is_main:
            print(f"bench data {method} b={b} world={dist.world_size}: {row['median_s']:.4g} s", flush=True)
        rows.append(row)
    return rows


def main(spec: RunSpec, run_dir: str | Path, dist: Dist) -> dict[str, Any]:
    run_dir = Path(run_dir)
    device = dist.device
    check_device(spec, device)  # fp16 needs CUDA
    memory_format = torch.channels_last if spec.channels_last else torch.preserve_format
    tune_malloc()  # as entry.run does for every job (idempotent): this bench may also be called directly
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer; warm-up absorbs the autotuning
    info = dataset_info(spec.dataset)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, info.num_classes, info.in_channels, info.mean, info.std)
    model = model.to(device, memory_format=memory_format)  # type: ignore[call-overload]  # torch's stubs omit memory_format
    data = load_data(spec)
    # every rank primes the same way (same seeds); wrap_ddp then broadcasts rank 0's weights regardless
    primed = prime_model(model, spec, data, device) if data is not None else 0
    o = spec.optimizer
    common = {
        "device": device_name(dist),
        "model": spec.model,
        "dataset": spec.dataset,
        "repeats": spec.bench.repeats,
        "precision": spec.precision,
        "channels_last": spec.channels_last,
        "threads": torch.get_num_threads(),
        "warmup": max(spec.bench.warmup, DDP_MIN_WARMUP) if dist.distributed else spec.bench.warmup,
        "world_size": dist.world_size,
        "calls_per_repeat": DDP_CALLS_PER_REPEAT if dist.distributed else 1,
        "inputs": "random" if data is None else "data",
        "prime_steps": primed,
    }
    bench = _Bench(
        spec=spec,
        model=model,
        ddp_model=wrap_ddp(model, dist),
        opt=torch.optim.SGD(model.parameters(), lr=0.0, momentum=o.momentum, weight_decay=o.weight_decay),
        dist=dist,
        amp=amp_dtype(spec),
        gen=torch.Generator(device).manual_seed(spec.seed),
        common=common,
        scaler=grad_scaler(spec, device),
    )
    attacks = {m: resolve_attack(m, spec.attack) for m in spec.bench.methods}
    rows: list[dict[str, Any]] = []
    for b in spec.bench.batch_sizes:
        seed = spec.seed + b + 7919 * dist.rank  # rank 0: as at world size 1
        if data is not None:
            x, y = real_batch(data.train, b, seed)
        else:
            cpu_gen = torch.Generator().manual_seed(seed)
            x = torch.rand((b, info.in_channels, info.image_size, info.image_size), generator=cpu_gen)
            y = torch.randint(0, info.num_classes, (b,), generator=cpu_gen)
        x, y = to_device(x, y, device, spec.channels_last)
        rows += [bench.attack(x, y, m, a) for m, a in attacks.items() if a.steps]
        rows.append(bench.forward(x))
        rows.append(bench.validation(x, y))
        rows += [bench.train_step(x, y, m, a) for m, a in attacks.items()]
        if dist.distributed:
            rows.append(bench.allreduce(b))
        if data is not None:
            rows += data_rows(spec, data, b, dist, common)
    distributed.barrier(dist)  # ranks leave together: none tears the process group down under another
    if not dist.is_main:
        return {"rank": dist.rank}  # rank 0 writes the rows (its own times)
    layout.write_csv_atomic(run_dir / layout.BENCH, BENCH_COLUMNS, rows)
    return {"bench_csv": layout.BENCH, "rows": len(rows), "device": common["device"], "world_size": dist.world_size}
