"""The paper's cost model (Section IV-A, Fig. 1): training time from per-batch costs measured by `kind: bench`.

    total ≈ epochs × ⌈N_train/B⌉ × (t_step(B) + d_train(B)) + n_eval × ⌈N_val/B_eval⌉ × (t_eval(B_eval) + d_val(B_eval))

with n_eval the number of evaluated epochs (every `eval.every` epochs and at the last one, paper: 150/5 = 30).

Multi-GPU at a fixed global batch: each of G GPUs holds ⌈N/G⌉ examples (DistributedSampler) in batches of
global/G and all GPUs work in parallel. What G ranks add to each step (DDP's gradient all-reduce, contention
for the node's cores, memory bandwidth or network) comes from the bench rows measured at world size G (a bench
cell of the same shape: every rank measures at once, training steps through DDP; `workloads.kinds.bench`):
- train_step rows at G: used as they are (basis "train_step", bench_world_size G);
- else the rows of the smallest benched world size plus the bench's `allreduce` time at G (a gradient-sized
  all-reduce; at the nearest benched world size, flagged extrapolated, when G itself was not benched);
- else plus `allreduce_s` when given (basis "+allreduce_s"), else nothing: perfect scaling, the paper's bound
  (basis "+perfect_scaling", and `format_estimate` says so).
Validation and data rows follow the same rule (rows at G, else the smallest world size). The lower_bound basis
is the paper's: single-device costs at the per-GPU batch, no communication.

Data loading (d_train, d_val), from the bench's `what == data` rows (method data_train / data_val: one batch
fetched through the real dataset and transforms with the trainer's DataLoader settings), when the bench has them:
- CPU devices load in the training process (num_workers 0), serially with compute: d = t_data(B);
- CUDA devices load in worker processes while the GPU computes: only what the loader cannot hide adds,
  d = max(0, t_data(B) − t_step(B)) (resp. t_eval), t_data being the loaders' steady throughput per batch.
A device counts as CUDA when its name looks like a GPU's (`is_gpu_device`: NVIDIA, Tesla, GeForce, ...), as
torch.cuda.get_device_name names it; CPU model names never do. Without data rows d = 0 (the paper's bound).

t(B) comes from orchestrator.estimate.bench_costs (log-log interpolation between measured batch sizes, extrapolation
flagged).

Cost bases for t_step:
- "train_step": the bench's measured full training step of the method (best predictor of wall-clock);
  without one, that of a benched method making the same passes ("train_step(fast)" for nfgsm: one attack pass,
  then the weight step), else the standard step plus the method's K-step PGD ("pgd+standard").
- "lower_bound": the paper's Fig. 1 bound: K-step PGD alone, a forward pass for standard training.
free (never benched: its replayed step is not train_step) costs m standard steps per mini-batch ("4xtrain_step"),
and a method_schedule the phases' steps weighted by their share of the iterations ("train_step[fast=60%,pgd7=40%]");
orchestrator.estimate.phases has the per-batch rules. The eps warm-up costs nothing.

Not modelled: DataLoader worker start-up (CUDA), checkpoint writes, process start-up and dataset reading
(before the clock of epochs.csv starts), nor contention with other jobs on the node: measure the bench where
the runs will run.
This module reads CSVs only (pandas); it never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestrator.estimate import judging
from orchestrator.estimate.bench_costs import (
    BenchCosts,
    EstimateError,
    is_gpu_device,
    read_bench,
    select_costs,
)
from orchestrator.estimate.phases import PERFECT_SCALING, data_cost, phase_shares, recipe_cost, recipe_notes
from workloads.catalog import DATASETS
from workloads.spec import RunSpec

BASES = ("train_step", "lower_bound")
ESTIMATE_COLUMNS = (
    "run_id", "method", "gpus", "batch_per_gpu", "predicted_s", "predicted_hours", "gpu_hours", "extrapolated",
    "basis", "device", "bench_world_size",
    "snapshot_s",  # train cells: writing their snapshots (orchestrator.estimate.judging), beside predicted_s
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Closed forms


def eval_epochs(epochs: int, every: int) -> int:
    """Evaluated epochs: every `every` epochs and always the last one (paper: 150 / 5 = 30); none with every 0."""
    if every == 0:
        return 0
    return epochs // every + (1 if epochs % every else 0)


def split_sizes(
    dataset: str, train_subset: int | None = None, val_subset: int | None = None, val_split: int | None = None
) -> tuple[int, int]:
    """(N_train, N_val) of a dataset (workloads.catalog's standard split sizes), reduced to the subsets when given;
    a val_split is held out of the training images and validates instead of the test set."""
    if dataset not in DATASETS:
        raise EstimateError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    n_train, n_val = DATASETS[dataset].train_size, DATASETS[dataset].val_size
    if val_split is not None:
        n_train, n_val, val_subset = max(0, n_train - val_split), val_split, None
    return min(n_train, train_subset or n_train), min(n_val, val_subset or n_val)


def batches_per_gpu(n: int, gpus: int, batch_per_gpu: int) -> int:
    """Batches one rank runs per pass over n examples (DistributedSampler pads to ⌈n/G⌉ per rank)."""
    return math.ceil(math.ceil(n / gpus) / batch_per_gpu)


def total_time(
    *,
    epochs: int,
    n_train: int,
    n_val: int,
    batch_per_gpu: int,
    t_step: float,
    t_eval: float,
    eval_every: int,
    gpus: int = 1,
    eval_batch_per_gpu: int | None = None,
    allreduce_s: float = 0.0,
    d_train: float = 0.0,
    d_val: float = 0.0,
) -> float:
    """Seconds for a whole run given per-batch costs (the bound of Fig. 1 middle/right); d_train / d_val:
    what data loading adds per train / validation batch (`data_cost`)."""
    eval_batch = eval_batch_per_gpu or batch_per_gpu
    per_step = t_step + d_train + (allreduce_s if gpus > 1 else 0.0)
    train = epochs * batches_per_gpu(n_train, gpus, batch_per_gpu) * per_step
    evaluation = eval_epochs(epochs, eval_every) * batches_per_gpu(n_val, gpus, eval_batch) * (t_eval + d_val)
    return train + evaluation


# ---------------------------------------------------------------------------------------------
# Per-cell prediction


@dataclass(frozen=True)
class RunSettings:
    """What the cost model needs about a training run besides its method and GPU count: from a RunSpec
    (`of_spec`), a runs.csv row (estimate.compare) or a group of rows (the report's Fig. 1)."""

    dataset: str
    epochs: int
    global_batch: int
    eval_every: int = 5
    eval_steps: int = 20
    eval_restarts: int = 1
    eval_batch: int | None = None  # per GPU; None: the training batch per GPU
    train_subset: int | None = None
    val_subset: int | None = None
    val_split: int | None = None  # training images held out to validate on (workloads.assets.data)
    replays: int | None = None  # free's m (None: the catalog's)
    method_schedule: tuple[tuple[str, float], ...] = ()  # (method, until) phases before the run's method

    @classmethod
    def of_spec(cls, spec: RunSpec) -> RunSettings:
        return cls(
            replays=spec.attack.replays,
            method_schedule=tuple((str(p.method), float(p.until or 0.0)) for p in spec.method_schedule),
            dataset=spec.dataset,
            epochs=spec.epochs,
            global_batch=spec.global_batch_size,
            eval_every=spec.eval.every,
            eval_steps=spec.eval.steps,
            eval_restarts=spec.eval.restarts,
            eval_batch=spec.eval.batch_size,
            train_subset=spec.train_subset,
            val_subset=spec.val_subset,
            val_split=spec.val_split,
        )


@dataclass(frozen=True)
class Prediction:
    seconds: float
    extrapolated: bool
    basis: str
    bench_world_size: int = 1  # world size of the bench rows the step cost came from


def predict(
    costs: BenchCosts,
    *,
    method: str,
    dataset: str,
    epochs: int,
    global_batch: int,
    gpus: int = 1,
    eval_every: int = 5,
    eval_steps: int = 20,
    eval_restarts: int = 1,
    eval_batch_per_gpu: int | None = None,
    train_subset: int | None = None,
    val_subset: int | None = None,
    val_split: int | None = None,
    basis: str = "train_step",
    allreduce_s: float | None = None,
    replays: int | None = None,
    method_schedule: Sequence[tuple[str, float]] = (),
) -> Prediction:
    """Wall-clock of one run on `gpus` GPUs at a fixed global batch (per-GPU batch = global / gpus).
    allreduce_s: per-step communication seconds when the bench has no rows at `gpus` (None: its allreduce
    rows, else 0); replays: free's m (None: attack.replays' default, the catalog's); method_schedule: the
    (method, until) phases before `method` (orchestrator.estimate.phases weighs them by their iterations)."""
    if basis not in BASES:
        raise EstimateError(f"basis: expected one of {', '.join(BASES)}; got {basis!r}")
    b = global_batch / gpus
    shares = phase_shares(method, method_schedule, epochs)
    step = recipe_cost(costs, shares, b, gpus, basis=basis, replays=replays, allreduce_s=allreduce_s)
    b_eval = eval_batch_per_gpu or b
    data_world = gpus if basis == "train_step" else None  # the paper's bound: one device's costs
    t_eval, e2 = costs.eval_batch(eval_steps, eval_restarts, b_eval, basis, data_world)
    d_val = 0.0
    if (loading := costs.data("val", b_eval, data_world)) is not None:
        d_val, e3 = data_cost(loading[0], t_eval, overlapped=is_gpu_device(costs.device)), loading[1]
        e2 = e2 or e3
    n_train, n_val = split_sizes(dataset, train_subset, val_subset, val_split)
    seconds = total_time(
        epochs=epochs,
        n_train=n_train,
        n_val=n_val,
        batch_per_gpu=max(1, global_batch // gpus),
        t_step=step.seconds,  # communication and data loading included (phases.batch_cost)
        t_eval=t_eval,
        eval_every=eval_every,
        gpus=gpus,
        eval_batch_per_gpu=max(1, int(b_eval)),
        d_val=d_val,
    )
    return Prediction(seconds, step.extrapolated or e2, step.basis, step.world)


def predict_run(
    costs: BenchCosts,
    settings: RunSettings,
    *,
    method: str,
    gpus: int,
    global_batch: int | None = None,
    basis: str = "train_step",
    allreduce_s: float | None = None,
) -> Prediction:
    """`predict` for a run described by `settings` (global_batch overrides the run's, e.g. for a batch sweep)."""
    return predict(
        costs,
        method=method,
        dataset=settings.dataset,
        epochs=settings.epochs,
        global_batch=settings.global_batch if global_batch is None else global_batch,
        gpus=gpus,
        eval_every=settings.eval_every,
        eval_steps=settings.eval_steps,
        eval_restarts=settings.eval_restarts,
        eval_batch_per_gpu=settings.eval_batch,
        train_subset=settings.train_subset,
        val_subset=settings.val_subset,
        val_split=settings.val_split,
        basis=basis,
        allreduce_s=allreduce_s,
        replays=settings.replays,
        method_schedule=settings.method_schedule,
    )


def estimate_cells(
    cells: Iterable[RunSpec],
    bench: pd.DataFrame,
    *,
    device: str | None = None,
    basis: str = "train_step",
    allreduce_s: float | None = None,
) -> pd.DataFrame:
    rows = []
    cells = list(cells)
    trains = {c.run_id: c for c in cells if c.kind == "train"}
    for spec in cells:
        if spec.kind == "judge":
            rows.append(judge_row(spec, [trains[r] for r in spec.judge.source_runs if r in trains], bench, device,
                                  basis))  # fmt: skip
        if spec.kind != "train":
            continue
        costs = select_costs(
            bench,
            model=spec.model,
            dataset=spec.dataset,
            device=device,
            precision=spec.precision,
            channels_last=spec.channels_last,
        )
        pred = predict_run(costs, RunSettings.of_spec(spec), method=spec.method, gpus=spec.world_size, basis=basis,
                           allreduce_s=allreduce_s)  # fmt: skip
        rows.append(
            {
                "run_id": spec.run_id,
                "method": spec.method,
                "gpus": spec.world_size,
                "batch_per_gpu": spec.batch_per_rank,
                "predicted_s": pred.seconds,
                "predicted_hours": pred.seconds / 3600,
                "gpu_hours": pred.seconds * spec.world_size / 3600,
                "extrapolated": pred.extrapolated,
                "basis": pred.basis,
                "device": costs.device,
                "bench_world_size": pred.bench_world_size,
                "snapshot_s": judging.snapshot_seconds(spec),
            }
        )
    if not rows:
        raise EstimateError("the grid has no train cells to estimate (estimate predicts kind: train grids)")
    return pd.DataFrame(rows, columns=list(ESTIMATE_COLUMNS))


def judge_row(judge: RunSpec, followed: list[RunSpec], bench: pd.DataFrame, device: str | None, basis: str
              ) -> dict[str, object]:  # fmt: skip
    """A judge cell's row: its work on every followed cell's snapshots (orchestrator.estimate.judging)."""
    seconds, extrapolated, devices = 0.0, False, set()
    for cell in followed:
        costs = select_costs(bench, model=cell.model, dataset=cell.dataset, device=device, precision=cell.precision,
                             channels_last=cell.channels_last)  # fmt: skip
        n_val = split_sizes(cell.dataset, cell.train_subset, cell.val_subset, cell.val_split)[1]
        s, e = judging.judge_seconds(judge, cell, costs, n_val, basis)
        seconds, extrapolated = seconds + s, extrapolated or e
        devices.add(costs.device)
    ranks = judge.judge.ranks
    return {
        "run_id": judge.run_id, "method": "judge", "gpus": ranks, "batch_per_gpu": judge.judge.batch_size,
        "predicted_s": seconds, "predicted_hours": seconds / 3600, "gpu_hours": seconds * ranks / 3600,
        "extrapolated": extrapolated, "basis": f"judge:eval({judge.judge.steps}x{judge.judge.restarts})",
        "device": ", ".join(sorted(devices)) or "-", "bench_world_size": 1, "snapshot_s": 0.0,
    }  # fmt: skip


def estimate_grid(
    grid_path: Path,
    bench_source: Path,
    *,
    device: str | None = None,
    basis: str = "train_step",
    allreduce_s: float | None = None,
) -> pd.DataFrame:
    """One row per train cell of a grid file (all its documents): predicted wall-clock from bench data
    (a bench.csv or an experiment folder holding one); EstimateError when a cell has no matching bench data."""
    from orchestrator.grid.files import load_grids  # lazy: the grid module pulls YAML parsing and profiles

    cells = [cell for grid in load_grids(Path(grid_path)) for cell in grid.cells]  # every document's cells
    bench = read_bench(Path(bench_source))
    return estimate_cells(cells, bench, device=device, basis=basis, allreduce_s=allreduce_s)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def judging_notes(df: pd.DataFrame) -> list[str]:
    """The summary lines of snapshots and judge jobs (none when the grid has neither)."""
    lines = []
    snap = float(df["snapshot_s"].sum()) if len(df) else 0.0
    if snap:
        lines.append(f"snapshots: {_duration(snap)} of writes in all (off the train clock; "
                     f"{judging.SNAPSHOT_MB_S:g} MB/s assumed)")  # fmt: skip
    judges = df[df["method"] == "judge"] if len(df) else df
    if len(judges):
        lines.append(f"judges: {len(judges)} job(s), {float(judges['gpu_hours'].sum()):.3g} GPU-hours of judging, "
                     "beside the training (included in the total)")  # fmt: skip
    return lines


def format_estimate(df: pd.DataFrame) -> str:
    """A fixed-width table of the per-cell predictions and the total GPU-hours."""
    header = ("run_id", "method", "gpus", "batch/gpu", "predicted", "GPU-hours", "basis")
    body: list[Sequence[str]] = [
        (
            str(r["run_id"]) + (" *" if r["extrapolated"] else ""),
            str(r["method"]),
            str(r["gpus"]),
            str(r["batch_per_gpu"]),
            _duration(float(r["predicted_s"])),
            f"{float(r['gpu_hours']):.3g}",
            str(r["basis"]),
        )
        for r in df.to_dict("records")
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    devices = ", ".join(sorted(df["device"].astype(str).unique())) if len(df) else "-"
    total = float(df["gpu_hours"].sum()) if len(df) else 0.0
    lines.append(f"total: {total:.3g} GPU-hours over {len(df)} cells (bench device: {devices})")
    lines += judging_notes(df)
    if len(df) and df["extrapolated"].any():
        lines.append("* extrapolated beyond the measured batch sizes or GPU counts (bench a wider range to confirm)")
    lines += recipe_notes(df["basis"].astype(str).tolist() if len(df) else [])
    if len(df) and df["basis"].astype(str).str.contains(PERFECT_SCALING, regex=False).any():
        lines.append(
            f"{PERFECT_SCALING}: the bench has no rows at that GPU count nor an all-reduce time, so communication "
            "is not counted (bench a cell of that shape, or give --allreduce-s)"
        )
    return "\n".join(lines)
