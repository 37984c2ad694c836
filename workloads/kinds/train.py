"""Standard, fast-L2 (Algorithm 1 of Goodwin et al. 2020) and K-step PGD adversarial training, DDP-ready.

Per step: the attack runs on the unwrapped model (no DDP gradient all-reduce for attack passes) in
`spec.attack.mode`, then one SGD step on x + delta in train mode through DDP. Per epoch (rank 0 writes):
an epochs.csv row, then checkpoint-best.pt when the validation metric improved, then checkpoint-last.pt.
Within an epoch checkpoint-last.pt is also written every `checkpoint_every_min` minutes and on SIGUSR2 (then the
job stops for its requeue): workloads.training.resume_point. A restart resumes from checkpoint-last.pt (an epoch
boundary or
the step it was saved at) and drops csv rows past its epoch, so an interrupted run ends bit-identical to an
uninterrupted one.

    python -m workloads.kinds.train --spec spec.json --out RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from workloads import catalog, entry, layout
from workloads.assets import checkpoint
from workloads.assets.checkpoint import derive_seed
from workloads.assets.data import DataBundle, build_datasets
from workloads.assets.models import RobustModel, build_model
from workloads.runtime import distributed, preempt
from workloads.runtime.distributed import Dist
from workloads.spec import RunSpec, from_dict, resolve_eval_attack
from workloads.training import resume_point, snapshots
from workloads.training.accuracy import dataset_accuracy
from workloads.training.curves import EpochCurves
from workloads.training.engine import (
    amp_dtype,
    attack_amp_dtype,
    check_device,
    clock,
    compile_models,
    grad_scaler,
    loader_kwargs,
    to_device,
    wrap_ddp,
)
from workloads.training.free_step import Stepper
from workloads.training.guard import Guard, History
from workloads.training.recipe import Recipe
from workloads.training.resume_point import SAVE, STOP, Cadence, Partial
from workloads.training.schedules import Schedule

# Independent random streams per (seed, rank): each is reproducible and none depends on another's use.
STREAM_GLOBAL, STREAM_ATTACK, STREAM_EVAL, STREAM_LOADER = range(4)


# Settings a resumed run must share with its checkpoint (others, e.g. epochs or eval, may change to extend a run).
RESUME_KEYS = (
    "dataset",
    "train_subset",
    "augment",
    "model",
    "method",
    "method_schedule",
    "global_batch_size",
    "seed",
    "optimizer",
    "attack",
)


def check_resumable(spec: RunSpec, saved: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint trained with other RESUME_KEYS (settings added since it was made take their defaults);
    a schedule other than step, and a method_schedule, span the run, so its epochs cannot change either."""
    now, saved = spec.to_dict(), from_dict(saved).to_dict()
    spans_run = spec.optimizer.schedule != "step" or spec.method_schedule  # phases are fractions of the epochs
    keys = (*RESUME_KEYS, "epochs") if spans_run else RESUME_KEYS
    changed = [k for k in keys if saved.get(k) != now[k]]
    if changed:
        diff = "; ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"{path}: the checkpoint was trained with other settings ({diff}); use a new run directory")


def truncate_epochs_csv(run_dir: Path, completed: int) -> None:
    """Drop rows past the checkpoint (written before a crash that preceded their checkpoint)."""
    path = run_dir / layout.EPOCHS
    if path.exists():
        rows = layout.read_csv(path)
        kept = [r for r in rows if int(r["epoch"]) <= completed]
        if len(kept) != len(rows):
            layout.write_csv_atomic(path, layout.EPOCH_COLUMNS, kept)


def run_result(run_dir: Path, spec: RunSpec, metric_name: str) -> dict[str, Any]:
    """result.json contents from epochs.csv (rank 0)."""
    path = run_dir / layout.EPOCHS
    rows = layout.read_csv(path) if path.exists() else []
    best = layout.best_epoch_row(rows, metric_name)
    last = rows[-1] if rows else {}
    number = lambda r, k: float(r[k]) if r and r.get(k) not in (None, "") else None  # noqa: E731
    return {
        "epochs": len(rows),
        "elapsed_s_last": number(last, "elapsed_s"),
        "best_metric": metric_name,
        "best_epoch": int(best["epoch"]) if best else None,
        "elapsed_s_best": number(best, "elapsed_s"),
        "best_adv_acc": number(best, "adv_acc"),
        "best_clean_acc": number(best, "clean_acc"),
        "last_clean_acc": number(last, "clean_acc"),
        "last_adv_acc": number(last, "adv_acc"),
        "last_train_loss": number(last, "train_loss"),
        "batch_per_rank": spec.batch_per_rank,
    }


@dataclass
class Trainer:
    """What build() makes for one attempt: the data, the model and its wrappers, the optimizer and the streams."""

    spec: RunSpec
    dist: Dist
    data: DataBundle
    batch: int
    model: RobustModel
    train_model: torch.nn.Module
    attack_model: torch.nn.Module
    sampler: DistributedSampler[Any]
    loader: DataLoader[Any]
    loader_gen: torch.Generator
    opt: torch.optim.SGD
    sched: Schedule
    scaler: torch.amp.GradScaler | None
    gen: torch.Generator  # this rank's attack stream
    recipe: Recipe
    stepper: Stepper
    amp: torch.dtype | None
    attack_amp: torch.dtype | None

    def state(self, **extra: Any) -> dict[str, Any]:
        """checkpoint.save's keywords that every checkpoint of the run shares."""
        return dict(model=self.model, optimizer=self.opt, scheduler=self.sched, spec=self.spec, scaler=self.scaler,
                    **extra)  # fmt: skip


@dataclass
class Position:
    """Where the run stands: epochs completed, their wall-clock and train clock, the best so far, and the partial
    epoch a mid-epoch checkpoint left (None at an epoch boundary)."""

    completed: int = 0
    elapsed: float = 0.0  # wall-clock of the earlier attempts (checkpointed)
    best: dict[str, Any] | None = None
    partial: Partial | None = None
    train_clock: float = 0.0  # sum of the completed epochs' train_s (epochs.csv)


def build(spec: RunSpec, dist: Dist, data: DataBundle | None = None) -> Trainer:
    """Data, model (identical initial weights on every rank), loader, optimizer, schedule and random streams."""
    assert spec.global_batch_size % dist.world_size == 0, "check_spec rejects a global batch not divisible by world"
    batch = spec.global_batch_size // dist.world_size
    check_device(spec, dist.device)
    memory_format = torch.channels_last if spec.channels_last else torch.preserve_format
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = data or build_datasets(spec)

    torch.manual_seed(spec.seed)  # identical initial weights on every rank
    # Module.to accepts memory_format at run time; torch's stubs omit it (the ignore below)
    model: RobustModel = build_model(spec.model, data.info.num_classes, data.info.in_channels, data.info.mean,
                                     data.info.std).to(dist.device, memory_format=memory_format)  # type: ignore[call-overload]  # fmt: skip
    sampler: DistributedSampler[Any]
    sampler = DistributedSampler(data.train, dist.world_size, dist.rank, shuffle=True, seed=spec.seed)
    loader_gen = torch.Generator()
    loader = DataLoader(data.train, batch, sampler=sampler, generator=loader_gen, **loader_kwargs(dist))
    o = spec.optimizer
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = Schedule(opt, o, spec.epochs, len(loader))  # stepped after every optimizer step
    scaler = grad_scaler(spec, dist.device)
    ddp_model = wrap_ddp(model, dist)
    attack_model, train_model = compile_models(model, ddp_model, spec.compile)
    torch.manual_seed(derive_seed(spec.seed, dist.rank, STREAM_GLOBAL))  # augmentation stream of this rank
    gen = torch.Generator(dist.device).manual_seed(derive_seed(spec.seed, dist.rank, STREAM_ATTACK))
    recipe, stepper = Recipe(spec, len(loader)), Stepper()  # the attack of (epoch, iteration); free's replays
    return Trainer(spec, dist, data, batch, model, train_model, attack_model, sampler, loader, loader_gen, opt, sched,
                   scaler, gen, recipe, stepper, amp_dtype(spec), attack_amp_dtype(spec))  # fmt: skip


def resume(t: Trainer, run_dir: Path) -> Position:
    """The newest checkpoint that loads, into the trainer; rows and snapshots past it dropped (rank 0)."""
    dist, at = t.dist, Position()
    if (latest := checkpoint.load_latest(run_dir, warn=dist.is_main)) is not None:  # newest that loads
        state, state_path = latest
        check_resumable(t.spec, state["spec"], state_path)
        t.model.load_state_dict(state["model"])
        t.opt.load_state_dict(state["optimizer"])
        t.sched.load_state_dict(state["scheduler"])
        if t.scaler is not None and state.get("scaler"):
            t.scaler.load_state_dict(state["scaler"])
        at.completed, at.elapsed, at.best = state["epoch"], state["elapsed_s"], state["best"]
        at.partial = resume_point.from_checkpoint(state, dist)  # None at an epoch boundary
        if at.partial is None and len(state["rng"]) == dist.world_size:
            checkpoint.restore_rng(state["rng"][dist.rank], t.gen)
        elif at.partial is None and dist.is_main:
            print(f"warning: checkpoint from {len(state['rng'])} ranks, now {dist.world_size}: fresh RNG streams",
                  file=sys.stderr)  # fmt: skip
    if dist.is_main:
        truncate_epochs_csv(run_dir, at.completed)
        snapshots.truncate(run_dir, at.completed)
        if latest is not None:  # where this attempt starts: `step` optimizer steps into epoch completed + 1
            event = {"event": "resume", "completed": at.completed, "step": at.partial.step if at.partial else 0}
            print(json.dumps(event), flush=True)
    return at


@dataclass
class EpochStats:
    """One epoch's training: its starting lr, its train clock (steps and data loading; mid-epoch checkpoint writes
    excluded) and the all-reduced loss sum, correct count and examples."""

    lr: float
    train_s: float
    loss_sum: float
    correct: float
    n: float


def train_one_epoch(t: Trainer, run_dir: Path, epoch: int, at: Position, cadence: Cadence, attempt_start: float,
                    show_progress: bool) -> EpochStats:  # fmt: skip
    """The epoch's optimizer steps (the rest of them, when a mid-epoch checkpoint left it partly done); saves
    mid-epoch on the cadence's decision and stops on SIGUSR2 (after saving)."""
    spec, dist = t.spec, t.dist
    t.stepper.new_epoch()
    t.sampler.set_epoch(epoch - 1)
    t.loader_gen.manual_seed(derive_seed(spec.seed, dist.rank, STREAM_LOADER, epoch))
    resumed = at.partial if at.partial is not None and at.partial.epoch == epoch else None
    at.partial = None if resumed else at.partial
    lr = resumed.lr if resumed else t.opt.param_groups[0]["lr"]
    t0 = clock(dist) - (resumed.train_s if resumed else 0.0)
    t.train_model.train()
    stats = resumed.stats if resumed else resume_point.stats_zeros(dist.device)
    batches: Iterable[Any] = tqdm(t.loader, desc=f"epoch {epoch}", leave=False, disable=not show_progress)
    first = resumed.step if resumed else 0
    n_steps = len(t.loader)
    with preempt.steps():  # a SIGUSR2 in here is acted on at the next step boundary (preempt docstring)
        todo = resumed.remaining(batches, n_steps) if resumed else iter(batches)
        if resumed:
            resume_point.restore(resumed, t.gen, t.stepper)
        for i, (x, y) in enumerate(todo, start=first):
            x, y = to_device(x, y, dist.device, spec.channels_last)
            attack = t.recipe.attack(epoch, i)
            loss, correct = t.stepper(t.attack_model, t.train_model, t.opt, x, y, attack, t.gen,
                                      mode=spec.attack.mode, amp=t.amp, attack_amp=t.attack_amp, scaler=t.scaler,
                                      freeze=spec.compile)  # fmt: skip
            t.sched.step()
            stats += torch.stack([loss * len(y), correct, torch.tensor(len(y), device=dist.device)]).double()
            decision = cadence.decide()  # collective when distributed
            if decision == STOP or (decision == SAVE and i + 1 < n_steps):  # else the epoch end saves
                paused = clock(dist)
                position = Partial(epoch, i + 1, lr, paused - t0, stats, None, None)
                elapsed_now = at.elapsed + paused - attempt_start
                save_mid_epoch(run_dir, dist, position, t.gen, t.stepper, decision, elapsed_now,
                               t.state(best=at.best))  # fmt: skip
                cadence.saved()
                if decision == STOP:
                    preempt.stop()
                t0 += clock(dist) - paused  # the checkpoint write is off the train clock
    loss_sum, correct_sum, n = distributed.all_reduce_sum(dist, stats.tolist())
    return EpochStats(lr, clock(dist) - t0, loss_sum, correct_sum, n)


def evaluated(spec: RunSpec, epoch: int, stopped: bool) -> bool:
    """Whether epoch `epoch` ends with on-clock validation: every eval.every epochs, the last, a guard stop;
    never with eval.every 0."""
    every = spec.eval.every
    return every > 0 and (epoch % every == 0 or epoch == spec.epochs or stopped)


def end_epoch(t: Trainer, run_dir: Path, epoch: int, at: Position, e: EpochStats, guard: Guard,
              elapsed_s: Callable[[], float], curves: EpochCurves | None) -> None:  # fmt: skip
    """Guard, on-clock validation, the epochs.csv row, the snapshot, the checkpoints; `at` advanced to `epoch`."""
    spec, dist = t.spec, t.dist
    guard_row = guard.measure(t.model, epoch, t.amp, clock)  # collective when guard.action is not none
    clean_acc = adv_acc = None
    eval_s = 0.0
    if evaluated(spec, epoch, guard.stopped):
        t1 = clock(dist)
        eval_gen = torch.Generator(dist.device).manual_seed(derive_seed(spec.seed, dist.rank, STREAM_EVAL, epoch))
        clean_acc, adv_acc, _ = dataset_accuracy(
            t.model, t.data.val, dist, resolve_eval_attack(spec), batch_size=spec.eval.batch_size or t.batch,
            restarts=spec.eval.restarts, generator=eval_gen, amp=t.amp, channels_last=spec.channels_last,
        )  # fmt: skip
        eval_s = clock(dist) - t1
    train_s = round(e.train_s, 4)
    row = {
        "run_id": spec.run_id, "epoch": epoch, "train_s": train_s, "eval_s": round(eval_s, 4),
        "elapsed_s": round(elapsed_s(), 4), "lr": e.lr,
        "train_loss": e.loss_sum / e.n, "train_acc": e.correct / e.n, "clean_acc": clean_acc, "adv_acc": adv_acc,
        "batch_per_rank": t.batch, "world_size": dist.world_size, **guard_row,
    }  # fmt: skip
    metric = clean_acc if catalog.method_info(spec.method).best_metric == "clean_acc" else adv_acc
    improved = layout.improves(metric, at.best["metric"] if at.best else None)
    if improved:
        at.best = {"epoch": epoch, "metric": metric}
    at.completed, at.train_clock = epoch, at.train_clock + train_s
    rng = distributed.all_gather_object(dist, checkpoint.capture_rng(t.gen))  # collective
    if dist.is_main:
        # Row first: a crash before the checkpoint below leaves a row (and a snapshot) that the resume drops.
        layout.append_csv_row_atomic(run_dir / layout.EPOCHS, layout.EPOCH_COLUMNS, row)
        print(json.dumps({"event": "epoch", **row}), flush=True)
        if curves is not None:
            curves.epoch(row)
        if snapshots.due(spec, epoch):
            snapshots.save(run_dir, t.model, spec, epoch, round(at.train_clock, 4), row["elapsed_s"])
        ckpt = t.state(epoch=epoch, elapsed_s=row["elapsed_s"], best=at.best, rng=rng)
        if improved:
            checkpoint.save(run_dir / layout.CKPT_BEST, **ckpt)
        checkpoint.save(run_dir / layout.CKPT_LAST, **ckpt)
    distributed.barrier(dist)


def main(spec: RunSpec, run_dir: str | Path, dist: Dist, data: DataBundle | None = None) -> dict[str, Any]:
    """Train (or resume) the run in run_dir; every rank calls it. `data` overrides build_datasets(spec)."""
    run_dir = Path(run_dir)
    t = build(spec, dist, data)
    at = resume(t, run_dir)
    rows = layout.read_csv(run_dir / layout.EPOCHS) if at.completed and (run_dir / layout.EPOCHS).exists() else []
    at.train_clock = sum(float(r["train_s"]) for r in rows)
    # rank 0 only; the same run directory, so a resumed run continues the same curves (from its checkpoint)
    curves = EpochCurves(run_dir, at.completed) if spec.tensorboard and dist.is_main else None
    guard = Guard(spec, t.data.train, dist, spec.eval.batch_size or t.batch, History.from_rows(rows, at.completed))
    attempt_start = clock(dist)
    cadence = Cadence(spec.checkpoint_every_min, dist, spec.collective_timeout_s)
    show_progress = dist.is_main and sys.stderr.isatty()
    for epoch in range(at.completed + 1, spec.epochs + 1):  # 1-based: epoch e is the e-th completed epoch
        if guard.stopped:
            break
        stats = train_one_epoch(t, run_dir, epoch, at, cadence, attempt_start, show_progress)
        end_epoch(t, run_dir, epoch, at, stats, guard, lambda: at.elapsed + clock(dist) - attempt_start, curves)
        cadence.saved()
    if curves is not None:
        curves.close()
    metric_name = catalog.method_info(spec.method).best_metric
    return {**run_result(run_dir, spec, metric_name), **guard.summary()} if dist.is_main else {"rank": dist.rank}


def save_mid_epoch(
    run_dir: Path,
    dist: Dist,
    at: Partial,
    gen: torch.Generator,
    stepper: Stepper,
    decision: int,
    elapsed_s: float,
    ckpt: dict[str, Any],
) -> None:
    """checkpoint-last.pt at step `at.step` of epoch `at.epoch` (every rank calls it: one gather, one barrier;
    rank 0 writes it and logs a checkpoint event)."""
    parts = resume_point.gather(dist, gen, at.stats, stepper)  # collective
    if dist.is_main:
        extra = resume_point.fields(parts, at.step, at.lr, round(at.train_s, 4))
        checkpoint.save(run_dir / layout.CKPT_LAST, epoch=at.epoch - 1, elapsed_s=round(elapsed_s, 4), **ckpt, **extra)
        event = {"event": "checkpoint", "epoch": at.epoch, "step": at.step, "reason": resume_point.REASONS[decision]}
        print(json.dumps(event), flush=True)
    distributed.barrier(dist)


def train(spec: RunSpec, run_dir: str | Path) -> dict[str, Any]:
    """Single-process convenience: write spec.json into run_dir (creating it) and run the job there
    (env.json, epochs.csv, checkpoints, result.json), resuming if it has a checkpoint."""
    path = Path(run_dir) / layout.SPEC
    layout.write_json_atomic(path, spec.to_dict())
    return entry.run(path, dist=distributed.single(spec))


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workloads.kinds.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--spec", type=Path, required=True, help="a spec.json (RunSpec)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumed if it has a checkpoint)")
    args = parser.parse_args(argv)
    target = args.out / layout.SPEC
    args.out.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and target.samefile(args.spec)):
        shutil.copyfile(args.spec, target)
    entry.run(target)


if __name__ == "__main__":
    cli()
