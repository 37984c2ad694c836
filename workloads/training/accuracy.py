"""Clean and robust accuracy: the one place that decides whether an example counts as robust.

`batch_accuracy` serves every caller: training validation (`dataset_accuracy`, every eval.every epochs), the
bench's what=eval timing, the visualize kind's robustness ranking and the evaluate kind (Fig. 2). Two
definitions of "robust", both on x + delta inside the eps-ball and the [0, 1] box:
- default (validation, bench, ranking): the prediction on x + delta of one attack (restarts keep the worst
  delta) is correct;
- worst_case (evaluate): correct clean AND at every point the attack evaluated (each iterate of each run, each
  returned delta), with one more run from delta = 0 when zero_start. Only the clean-correct examples are
  attacked (a function of the batch, so the random starts they draw are too).
Callers choose the generator, the autocast context and the model's mode; nothing here draws the global RNG.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from workloads.adversarial.attacks import attack_from
from workloads.runtime import distributed
from workloads.runtime.distributed import Dist
from workloads.spec import ResolvedAttack
from workloads.training.engine import autocast, loader_kwargs, to_device


def batch_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: ResolvedAttack,
    *,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    worst_case: bool = False,
    zero_start: bool = False,
    clean: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(clean, robust) per-example boolean masks of one batch; no attack (steps or eps 0): robust = clean.
    `clean` (this batch's clean mask) skips the clean forward when the caller attacks one batch several times."""
    if clean is None:
        with torch.no_grad():
            clean = model(x).argmax(1) == y
    if not (attack.steps and attack.eps > 0):
        return clean, clean
    if not worst_case:
        delta = attack_from(model, x, y, attack, restarts=restarts, generator=generator)
        with torch.no_grad():
            return clean, model(x + delta).argmax(1) == y
    idx = clean.nonzero().flatten()
    robust = torch.zeros_like(clean)
    if len(idx):
        robust[idx] = _survives(model, x[idx], y[idx], attack, restarts, generator, zero_start)
    return clean, robust


def _survives(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: ResolvedAttack,
    restarts: int,
    generator: torch.Generator | None,
    zero_start: bool,
) -> Tensor:
    """Per example: classified correctly at every point the attack evaluated, i.e. each iterate of each run
    (PGD's loss forwards, seen through its loss_fn) and each returned delta. Every iterate lies in the eps-ball
    and the [0, 1] box, so a miss at any of them is a valid adversarial example, at no extra cost.

    Runs: `restarts` random starts (per example the worst case: pgd keeps a misclassifying restart), plus with
    `zero_start` one run from delta = 0. Why: the random start (uniform in the ball's volume, Algorithm 1, like
    the robustness library's) lies almost on the sphere in high dimension, and from there 10-20 steps end ~1
    point of accuracy weaker than from inside the ball (measured against torchattacks' PGDL2, whose start
    radius is uniform in [0, eps]); the zero start closes that gap for 1/restarts more work."""
    fooled = torch.zeros(len(y), dtype=torch.bool, device=y.device)

    def loss_fn(logits: Tensor, labels: Tensor) -> Tensor:
        nonlocal fooled
        fooled = fooled | (logits.detach().argmax(1) != labels)
        return F.cross_entropy(logits.float(), labels, reduction="none")

    random = dataclasses.replace(attack, random_start=True)
    deltas = [attack_from(model, x, y, random, restarts=restarts, generator=generator, loss_fn=loss_fn)]
    if zero_start:
        zero = dataclasses.replace(attack, random_start=False)
        deltas.append(attack_from(model, x, y, zero, loss_fn=loss_fn))
    with torch.no_grad():
        for delta in deltas:
            fooled = fooled | (model(x + delta).argmax(1) != y)
    return ~fooled


def dataset_accuracy(
    model: nn.Module,
    dataset: Dataset[Any],
    dist: Dist,
    attack: ResolvedAttack,
    *,
    batch_size: int,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[float, float, int]:
    """(clean acc, adversarial acc, n) on the whole dataset (training validation): rank r takes examples r, r+W,
    ... (no padding, so the all-reduced counts are exact). Eval mode; restores train mode. Uses no global RNG."""
    shard = range(dist.rank, len(dataset), dist.world_size)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours are map-style
    loader = DataLoader(dataset, batch_size, sampler=shard, generator=torch.Generator(), **loader_kwargs(dist))
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=dist.device)  # clean, adversarial, n
    for x, y in loader:
        x, y = to_device(x, y, dist.device, channels_last)
        with autocast(x.device, amp):
            clean, adv = batch_accuracy(model, x, y, attack, restarts=restarts, generator=generator)
        counts += torch.stack([clean.sum(), adv.sum(), torch.tensor(len(y), device=dist.device)]).double()
    model.train(was_training)
    clean_n, adv_n, n = distributed.all_reduce_sum(dist, counts.tolist())
    return clean_n / max(n, 1), adv_n / max(n, 1), int(n)
