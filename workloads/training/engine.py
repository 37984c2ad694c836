"""The training engine every kind shares: one training step, the DDP wrapper, autocast, device transfer,
data-loader settings and a device-synchronised clock.

The trainer (kinds.train) runs these; the bench (kinds.bench) times the very same functions, so a benched
step is a trained step. No spec parsing and no files here.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from workloads.adversarial.attacks import attack_from, attack_mode, gradient_misalignment
from workloads.runtime.distributed import Dist
from workloads.spec import ResolvedAttack, RunSpec

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(spec: RunSpec) -> torch.dtype | None:
    """The autocast dtype of spec.precision (None: fp32, autocast off)."""
    return AMP_DTYPES[spec.precision]


def attack_amp_dtype(spec: RunSpec) -> torch.dtype | None:
    """The autocast dtype of the attack passes: attack.precision, else spec.precision."""
    return AMP_DTYPES[spec.attack.precision or spec.precision]


def check_device(spec: RunSpec, device: torch.device) -> None:
    """fp16 needs CUDA (the grid refuses it for CPU cells; this catches a hand-made spec.json at job start)."""
    if device.type != "cuda" and "fp16" in (spec.precision, spec.attack.precision):
        key = "precision" if spec.precision == "fp16" else "attack.precision"
        raise ValueError(f"{key}: fp16 needs a CUDA device; this job runs on {device.type} (use bf16 or fp32)")


def grad_scaler(spec: RunSpec, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 weight steps scale the loss (torch.amp.GradScaler); fp32 and bf16 need none."""
    return torch.amp.GradScaler(device.type) if spec.precision == "fp16" else None


def autocast(device: torch.device, amp: torch.dtype | None) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None)


@contextlib.contextmanager
def frozen(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Parameters with requires_grad False inside: a compiled graph's backward computes every gradient that
    required grad when it was traced, so the attack passes of a compiled model must see frozen weights to stay
    input-only (eager autograd.grad skips them anyway)."""
    params = [p for p in model.parameters() if p.requires_grad] if enabled else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def train_step(
    model: nn.Module,
    ddp_model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    attack: ResolvedAttack,
    gen: torch.Generator | None,
    *,
    mode: str = "eval",
    amp: torch.dtype | None = None,
    attack_amp: torch.dtype | str | None = "same",
    scaler: torch.amp.GradScaler | None = None,
    freeze: bool = False,
) -> tuple[Tensor, Tensor]:
    """One training step (model in train mode); returns (mean loss, number correct) as device tensors,
    so that no step waits for the device. `model` is the module the attack runs on (unwrapped: no DDP
    all-reduce for attack passes), `ddp_model` what gets trained (either may be torch.compile'd).
    amp: autocast dtype of the weight step; attack_amp: of the attack passes ("same": amp); scaler: fp16 loss
    scaling of the weight step; freeze: frozen parameters during the attack (compiled models).
    attack.step "gradalign": the weight step minimises the cross-entropy + lambda x gradient_misalignment (its
    second input gradient on the eager, unfrozen `model`: compiled graphs have no double backward), in the same
    backward; the returned loss is the cross-entropy alone (comparable with the other methods)."""
    attack_dtype = amp if attack_amp == "same" else attack_amp
    assert not isinstance(attack_dtype, str), "attack_amp: a dtype, None (fp32) or 'same'"
    x_adv, align = x, None
    if attack.steps:
        grads: list[Tensor] | None = [] if attack.step == "gradalign" else None
        with autocast(x.device, attack_dtype), attack_mode(model, mode), frozen(model, freeze):
            x_adv = x + attack_from(model, x, y, attack, generator=gen, input_grads=grads)
        if grads:
            eager = cast(nn.Module, getattr(model, "_orig_mod", model))
            with autocast(x.device, amp), attack_mode(eager, mode):
                align = gradient_misalignment(eager, x, y, grads[0], attack.eps, gen)
    with autocast(x.device, amp):
        logits = ddp_model(x_adv)
        loss = F.cross_entropy(logits.float(), y)
    total = loss if align is None else loss + attack.align * align
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        total.backward()
        opt.step()
    else:
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
    return loss.detach(), (logits.argmax(1) == y).sum()


def wrap_ddp(model: nn.Module, dist: Dist) -> nn.Module:
    """The module the optimizer trains: DDP (gradient all-reduce overlapped with backward) when distributed."""
    if not dist.distributed:
        return model
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


def compile_models(model: nn.Module, ddp_model: nn.Module, enabled: bool) -> tuple[nn.Module, nn.Module]:
    """(attack model, trained model): torch.compile'd when enabled (compiled lazily, at the first step: the compile
    time lands in the first epoch's train_s), else the modules as they are. One compiled module when there is no
    DDP wrapper; checkpoints keep saving the plain `model` (same parameters, no `_orig_mod.` prefix)."""
    if not enabled:
        return model, ddp_model
    attack_model = cast(nn.Module, torch.compile(model))
    return attack_model, attack_model if ddp_model is model else cast(nn.Module, torch.compile(ddp_model))


def loader_kwargs(dist: Dist) -> dict[str, Any]:
    """CPU: load in the training process (cores are for compute); CUDA: worker processes + pinned memory.
    Workers are not persistent: they are reseeded each epoch from the loader's generator (resumable)."""
    if dist.device.type != "cuda":
        return {"num_workers": 0}
    return {"num_workers": max(0, min(8, len(os.sched_getaffinity(0)) - 1)), "pin_memory": True}


def to_device(x: Tensor, y: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def clock(dist: Dist) -> float:
    if dist.device.type == "cuda":
        torch.cuda.synchronize(dist.device)
    return time.perf_counter()
