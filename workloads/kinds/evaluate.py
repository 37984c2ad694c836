"""kind: evaluate (Fig. 2): clean and PGD accuracy over a list of eps for a trained run's checkpoint.

Per eps: `steps`-step PGD with alpha = alpha_factor * eps / steps, `restarts` random starts and (zero_start)
one more run from delta = 0. An example counts as robust only if it is classified correctly clean and at every
point the attack evaluated (each iterate of each run, each returned delta): the worst case over restarts
(`workloads.training.accuracy.batch_accuracy(worst_case=True)`).
eps = 0 (or steps = 0) gives the clean accuracy.
With `autoattack`, AutoAttack's standard ensemble (workloads.assets.external.autoattack: APGD-CE, APGD-T, FAB-T, Square,
the original code via pyautoattack) attacks every clean-correct example of the same batch with the same per-batch
seed, so the sharding, resume and 1-vs-2-rank guarantees below hold for it too; robustness.csv gets its
cumulative per-attack accuracies, aa_acc, worst_acc (worst case over AutoAttack and every PGD run) and the
package, version and budgets.

Determinism and sharding: the data are cut into global batches of `batch_size` consecutive examples, and
rank r attacks batches r, r + W, ... Every batch draws its random starts from its own generator, seeded from
(seed, index of the batch's first example, eps), so a batch's result does not depend on the world size, the
rank that ran it, or the other eps in the list: 1 and 2 ranks give identical counts, a restart-r attack is a
prefix of a restart-(r+k) one, and a resumed evaluation equals an uninterrupted one. Counts are all-reduced.

Long evaluations survive requeues: after each batch every rank records its per-batch counts in
evaluate-progress-rank<r>.json (with a fingerprint of the settings); a restarted job skips recorded batches.
(One concept: the count engine and the job share Settings and the progress format; what the job reads is
workloads.kinds.evaluate_source.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from workloads import layout, snapshot_choice, stage
from workloads.adversarial.attacks import attack_mode
from workloads.assets.checkpoint import derive_seed
from workloads.assets.external import autoattack as strong  # `autoattack` is a setting's name here
from workloads.catalog import dataset_info
from workloads.kinds.evaluate_source import Source, choose_snapshot, load_source, val_dataset
from workloads.runtime import distributed
from workloads.runtime.distributed import Dist
from workloads.spec import ResolvedAttack, RunSpec
from workloads.training.accuracy import batch_accuracy
from workloads.training.engine import loader_kwargs

CSV_COLUMNS = (
    "run_id", "method", "eps", "steps", "restarts", "n", "clean_acc", "adv_acc",  # the contract's columns
    "norm", "alpha", "zero_start", "checkpoint", "checkpoint_epoch", "source_experiment", "dataset", "model",
    "attack_eps",  # the training eps: Fig. 2's dotted line (empty for standard training)
    # evaluate.autoattack only (empty otherwise): accuracy after each attack of AutoAttack's ensemble, cumulative
    # (aa_acc: after all four), worst_acc: per example the worst case over AutoAttack and the PGD runs
    "aa_apgd_ce_acc", "aa_apgd_t_acc", "aa_fab_t_acc", "aa_acc", "worst_acc",
    "aa_version", "aa_steps", "aa_queries", "aa_targets", "aa_package", "aa_package_version",
    # evaluate.source_snapshot only: which was asked, the judge's robust accuracy and n of the snapshot, its file
    "source_snapshot", "snapshot_judged_adv_acc", "snapshot_judged_n", "snapshot_file",
)  # fmt: skip
STRONG_COLUMNS = ("aa_apgd_ce_acc", "aa_apgd_t_acc", "aa_fab_t_acc", "aa_acc", "worst_acc")
PROGRESS = "evaluate-progress-rank{rank}.json"


def eps_key(eps: float) -> int:
    return round(eps * 1_000_000)  # eps in micro-units: a stable integer seed key


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no BN statistic updates, no dropout) and parameters without requires_grad (PGD needs input
    gradients only; this also saves the memory of weight-gradient bookkeeping); both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with attack_mode(model, "eval"):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


@dataclasses.dataclass(frozen=True)
class Settings:
    norm: str
    eps_list: tuple[float, ...]
    steps: int
    restarts: int
    alpha_factor: float
    generator_seed: int
    batch_size: int
    zero_start: bool = True
    autoattack: bool = False
    autoattack_steps: int = strong.STANDARD_STEPS
    autoattack_queries: int = strong.STANDARD_QUERIES
    num_classes: int | None = None  # the model's (AutoAttack's target classes follow from it); recorded only

    def alpha(self, eps: float) -> float:
        return self.alpha_factor * eps / self.steps if self.steps else 0.0

    def width(self) -> int:
        """Length of a batch's count vector: n, clean, adv per eps, then the STRONG_COLUMNS counts per eps."""
        return 2 + len(self.eps_list) * (1 + (len(STRONG_COLUMNS) if self.autoattack else 0))


def batch_counts(model: nn.Module, x: Tensor, y: Tensor, start: int, s: Settings) -> list[int]:
    """Counts for one global batch whose first example has index `start` (model frozen by the caller)."""
    clean, _ = batch_accuracy(model, x, y, ResolvedAttack(s.norm, 0.0, 0, 0.0, False))  # no attack: clean only
    adv_counts: list[int] = []
    strong_counts: list[int] = []
    for eps in s.eps_list:
        stage.report(f"pgd eps {eps:g}", examples=len(y))
        seed = derive_seed(s.generator_seed, start, eps_key(eps))
        attack = ResolvedAttack(s.norm, eps, s.steps, s.alpha(eps), True)
        gen = torch.Generator().manual_seed(seed)  # CPU: the same random starts on any device (sample_ball)
        _, robust = batch_accuracy(model, x, y, attack, restarts=s.restarts, generator=gen, worst_case=True,
                                   zero_start=s.zero_start, clean=clean)  # fmt: skip
        adv_counts.append(int(robust.sum()))
        if s.autoattack:  # on every clean-correct example (AutoAttack's own number), then the worst case with PGD
            masks = strong.robust_masks(model, x, y, norm=s.norm, eps=eps, seed=seed, steps=s.autoattack_steps,
                                        queries=s.autoattack_queries)  # fmt: skip
            final = masks[strong.ATTACKS[-1]]
            strong_counts += [int(masks[name].sum()) for name in strong.ATTACKS] + [int((final & robust).sum())]
    return [len(y), int(clean.sum()), *adv_counts, *strong_counts]


def _as_dataset(data: Dataset[Any] | tuple[Tensor, Tensor]) -> Dataset[Any]:
    if isinstance(data, tuple):
        return TensorDataset(*data)
    return data


def run_batches(
    model: nn.Module,
    data: Dataset[Any] | tuple[Tensor, Tensor],
    s: Settings,
    dist: Dist | None = None,
    *,
    device: torch.device | None = None,
    num_workers: int = 0,
    done: Mapping[int, list[int]] | None = None,
    on_batch: Callable[[int, list[int]], None] | None = None,
) -> dict[int, list[int]]:
    """Per-batch counts of this rank's batches (batch b = examples [b*B, (b+1)*B), rank b % W); batches in
    `done` are taken as given, `on_batch(b, counts)` is called after each computed batch. No collectives."""
    dist = dist or Dist()
    device = device or dist.device
    dataset = _as_dataset(data)
    n_total = len(dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours are map-style
    n_batches = -(-n_total // s.batch_size)
    mine = range(dist.rank, n_batches, dist.world_size)
    results = {b: list(done[b]) for b in mine if done and b in done}
    todo = [b for b in mine if b not in results]
    sampler = [list(range(b * s.batch_size, min((b + 1) * s.batch_size, n_total))) for b in todo]
    # Own generator: the loader's base seed would otherwise be drawn from (and advance) the global RNG.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # fmt: skip
    with frozen(model):
        for b, (x, y) in zip(todo, loader, strict=True):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            results[b] = batch_counts(model, x, y, b * s.batch_size, s)
            if on_batch is not None:
                on_batch(b, results[b])
    return results


def accuracy_rows(results: Mapping[int, list[int]], s: Settings, dist: Dist | None = None) -> list[dict[str, Any]]:
    """Sum per-batch counts (then over ranks: collective when distributed) -> one row per eps."""
    totals = [0] * s.width()
    for counts in results.values():
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
    if dist is not None:
        totals = [round(v) for v in distributed.all_reduce_sum(dist, [float(v) for v in totals])]
    n, clean = totals[0], totals[1]
    k = len(s.eps_list)
    rows = []
    for i, eps in enumerate(s.eps_list):
        row: dict[str, Any] = {
            "eps": eps,
            "steps": s.steps,
            "restarts": s.restarts,
            "norm": s.norm,
            "alpha": s.alpha(eps),
            "zero_start": s.zero_start,
            "n": n,
            "clean_acc": clean / n if n else None,
            "adv_acc": totals[2 + i] / n if n else None,
        }
        if s.autoattack:
            base = 2 + k + len(STRONG_COLUMNS) * i
            for j, col in enumerate(STRONG_COLUMNS):
                row[col] = totals[base + j] / n if n else None
            row.update(autoattack_labels(s))
        rows.append(row)
    return rows


def autoattack_labels(s: Settings) -> dict[str, Any]:
    """What robustness.csv records of the AutoAttack run: version, budgets, package and its version."""
    return {
        "aa_version": strong.version_name(s.autoattack_steps, s.autoattack_queries),
        "aa_steps": s.autoattack_steps,
        "aa_queries": s.autoattack_queries,
        "aa_targets": strong.n_targets(s.num_classes) if s.num_classes else None,
        "aa_package": strong.PACKAGE,
        "aa_package_version": strong.package_version(),
    }


def evaluate_model(
    model: nn.Module,
    data: Dataset[Any] | tuple[Tensor, Tensor],
    *,
    norm: str,
    eps_list: Sequence[float],
    steps: int,
    restarts: int,
    alpha_factor: float = 2.5,
    generator_seed: int = 0,
    dist: Dist | None = None,
    batch_size: int = 256,
    zero_start: bool = True,
    autoattack: bool = False,
    autoattack_steps: int = strong.STANDARD_STEPS,
    autoattack_queries: int = strong.STANDARD_QUERIES,
    device: torch.device | None = None,
    num_workers: int = 0,
) -> list[dict[str, Any]]:
    """Clean and robust accuracy of `model` (inputs in [0, 1]) on a Dataset of (x, y) or an (x, y) tensor pair,
    one row per eps: eps, steps, restarts, norm, alpha, n, clean_acc, adv_acc (+ STRONG_COLUMNS with
    autoattack). With `dist` every rank calls it and gets the all-reduced rows. The model is left unchanged
    (mode, parameters, buffers, requires_grad; no .grad is created)."""
    num_classes = None
    if autoattack:
        strong.require()
        first = _as_dataset(data)[0][0].unsqueeze(0).to(device or (dist or Dist()).device)
        with frozen(model), torch.no_grad():
            num_classes = int(model(first).shape[1])
    s = Settings(
        norm=norm,
        eps_list=tuple(float(e) for e in eps_list),
        steps=steps,
        restarts=restarts,
        alpha_factor=alpha_factor,
        generator_seed=generator_seed,
        batch_size=batch_size,
        zero_start=zero_start,
        autoattack=autoattack,
        autoattack_steps=autoattack_steps,
        autoattack_queries=autoattack_queries,
        num_classes=num_classes,
    )
    results = run_batches(model, data, s, dist, device=device, num_workers=num_workers)
    return accuracy_rows(results, s, dist if dist is not None and dist.distributed else None)


# ---------------------------------------------------------------------------------------------
# The workload: resolve the source run, load its checkpoint, evaluate, write robustness.csv.


def settings_of(spec: RunSpec) -> Settings:
    ev = spec.evaluate
    return Settings(
        norm=ev.norm,
        eps_list=tuple(ev.eps_list),
        steps=ev.steps,
        restarts=ev.restarts,
        alpha_factor=ev.alpha_factor,
        generator_seed=spec.seed,
        batch_size=ev.batch_size,
        zero_start=ev.zero_start,
        autoattack=ev.autoattack,
        autoattack_steps=ev.autoattack_steps,
        autoattack_queries=ev.autoattack_queries,
    )


def _fingerprint(s: Settings, source: Source, n: int) -> dict[str, Any]:
    stat = source.path.stat()
    return {
        "settings": repr(s),
        "checkpoint": str(source.path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "n": n,
    }


def _load_progress(run_dir: Path, fingerprint: dict[str, Any]) -> dict[int, list[int]]:
    """Per-batch counts recorded by any rank of an earlier attempt with the same settings."""
    done: dict[int, list[int]] = {}
    for path in sorted(run_dir.glob(PROGRESS.format(rank="*"))):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # unreadable (should not happen: atomic writes): recompute those batches
        if record.get("fingerprint") == fingerprint:
            done.update({int(b): counts for b, counts in record["batches"].items()})
    return done


def _snapshot_result(spec: RunSpec, snap: snapshot_choice.Chosen) -> dict[str, Any]:
    return {"source_snapshot": spec.evaluate.source_snapshot, "snapshot_epoch": snap.epoch,
            "snapshot_judged_adv_acc": snap.judged_adv_acc, "snapshot_judge_finished": snap.judge_finished}  # fmt: skip


def main(spec: RunSpec, run_dir: str | Path, dist: Dist) -> dict[str, Any]:
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    elapsed = lambda: round(time.perf_counter() - t0, 3)  # noqa: E731
    if spec.evaluate.autoattack:
        strong.require()
    model, source = load_source(spec, run_dir, map_location=dist.device, chosen=choose_snapshot(spec, dist))
    if source.snapshot is not None and not source.snapshot.judge_finished and dist.is_main:
        warning = f"the judge of {source.run_id} has not finished: the snapshot is chosen among those judged so far"
        print(json.dumps({"event": "warning", "message": warning}), file=sys.stderr, flush=True)
    data = val_dataset(source, spec.evaluate.max_examples)
    s = settings_of(spec)
    n = len(data)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours are map-style
    ds = dataset_info(source.spec.dataset)
    shape = (model.head.out_features, model.normalize.mean.numel())
    if shape != (ds.num_classes, ds.in_channels):
        raise ValueError(
            f"{source.path}: the model has {shape[0]} classes and {shape[1]} input channels; "
            f"{ds.name} has {ds.num_classes} and {ds.in_channels}"
        )
    s = dataclasses.replace(s, num_classes=ds.num_classes)

    fingerprint = _fingerprint(s, source, n)
    done = _load_progress(run_dir, fingerprint)
    distributed.barrier(dist)  # everyone has read the old files before anyone rewrites its own
    progress_path = run_dir / PROGRESS.format(rank=dist.rank)
    n_batches = -(-n // s.batch_size)
    mine: dict[int, list[int]] = {b: c for b, c in done.items() if b % dist.world_size == dist.rank}
    show = dist.is_main

    def record(b: int, counts: list[int]) -> None:
        mine[b] = counts
        layout.write_json_atomic(progress_path, {"fingerprint": fingerprint, "batches": mine})
        if show:
            event = {"event": "evaluate_batch", "batch": b, "batches": n_batches, "elapsed_s": elapsed()}
            print(json.dumps(event), file=sys.stderr, flush=True)

    def on_step(step: str, details: dict[str, Any]) -> None:  # batch: this rank's, the one being attacked
        event = {"event": "evaluate_step", "step": step, **details, "batch": len(mine) + 1,
                 "batches": len(range(dist.rank, n_batches, dist.world_size)), "elapsed_s": elapsed()}  # fmt: skip
        print(json.dumps(event), file=sys.stderr, flush=True)
        layout.write_json_atomic(run_dir / layout.STAGE, event)

    layout.write_json_atomic(progress_path, {"fingerprint": fingerprint, "batches": mine})
    with stage.reporting(on_step) if show else contextlib.nullcontext():
        results = run_batches(
            model, data, s, dist, num_workers=loader_kwargs(dist)["num_workers"], done=done, on_batch=record
        )
    rows = accuracy_rows(results, s, dist if dist.distributed else None)

    label = {
        "run_id": source.run_id,
        "method": source.method,
        "checkpoint": "snapshot" if source.snapshot else spec.evaluate.checkpoint,
        "checkpoint_epoch": source.epoch,
        "source_experiment": source.experiment,
        "dataset": source.spec.dataset,
        "model": source.model,
        "attack_eps": source.attack_eps,
    }
    snap = source.snapshot
    if snap is not None:
        label.update(source_snapshot=spec.evaluate.source_snapshot, snapshot_judged_adv_acc=snap.judged_adv_acc,
                     snapshot_judged_n=snap.judged_n, snapshot_file=str(snap.path))  # fmt: skip
    rows = [{**label, **row} for row in rows]
    distributed.barrier(dist)  # every rank has finished its progress writes
    if dist.is_main:
        layout.write_csv_atomic(run_dir / layout.ROBUSTNESS, CSV_COLUMNS, rows)
        for path in run_dir.glob(PROGRESS.format(rank="*")):
            path.unlink(missing_ok=True)
        (run_dir / layout.STAGE).unlink(missing_ok=True)
    return {
        "source_run": source.run_id,
        "source_experiment": source.experiment,
        "checkpoint": str(source.path),
        "n": rows[0]["n"] if rows else 0,
        "clean_acc": rows[0]["clean_acc"] if rows else None,
        "adv_acc": {str(r["eps"]): r["adv_acc"] for r in rows},
        "checkpoint_epoch": source.epoch,
        **(_snapshot_result(spec, snap) if snap else {}),
        "eval_s": elapsed(),
        "world_size": dist.world_size,
    }
