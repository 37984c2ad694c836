"""The training engine every kind shares: one training step, the DDP wrapper, autocast, device transfer,
data-loader settings and a device-synchronised clock.

The trainer (kinds.train) runs these; the bench (kinds.bench) times the very same functions, so a benched
step is a trained step. No spec parsing and no files here.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from workloads.attacks import attack_from, attack_mode
from workloads.distributed import Dist
from workloads.spec import ResolvedAttack, RunSpec


def amp_dtype(spec: RunSpec) -> torch.dtype | None:
    """The autocast dtype of spec.precision (None: fp32, autocast off)."""
    return torch.bfloat16 if spec.precision == "bf16" else None


def autocast(device: torch.device, amp: torch.dtype | None) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None)


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
) -> tuple[Tensor, Tensor]:
    """One training step (model in train mode); returns (mean loss, number correct) as device tensors,
    so that no step waits for the device. `model` is the unwrapped module, `ddp_model` what gets trained."""
    with autocast(x.device, amp):
        if attack.steps:
            with attack_mode(model, mode):
                x = x + attack_from(model, x, y, attack, generator=gen)
        logits = ddp_model(x)
        loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


def wrap_ddp(model: nn.Module, dist: Dist) -> nn.Module:
    """The module the optimizer trains: DDP (gradient all-reduce overlapped with backward) when distributed."""
    if not dist.distributed:
        return model
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


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
