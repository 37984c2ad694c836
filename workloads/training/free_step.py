"""Free adversarial training's step (Shafahi et al. 2019, the paper's [25]) and the trainer's step dispatch.

Free training replays each mini-batch m times (attack.replays, default 4). Each replay is ONE forward of
x + delta through the trained (DDP) model in train mode and ONE backward that gives both the weight gradient
(one optimizer step per replay) and the input gradient; delta then moves by alpha * sign(g) (L2: alpha * g /
||g||_2), is projected onto the eps-ball and clamped into the [0, 1] box. So a replay costs one standard step
and the attack is "free"; a mini-batch costs m standard steps, which is why the paper divides the number of
epochs by m (a grid choice: `epochs` is not changed here).

delta is carried over from replay to replay and from mini-batch to mini-batch (rows beyond a smaller last
batch are dropped, missing rows start at 0; a carried delta is clamped into the new batch's box), and starts
at 0 at each epoch (`new_epoch`): so a resume at an epoch boundary is exact without it, and a mid-epoch
checkpoint saves it (`FreeStep.delta`, per rank: workloads.training.resume_point). The input gradient is that of the
replay's mean loss; sign and L2 normalisation do not see the 1/batch factor, nor a GradScaler's scale. The LR
schedule counts mini-batches, not replays. attack.mode does not apply (the gradient is the training forward's)
and neither does random_start.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workloads.adversarial.attacks import ascend, clamp_to_box, project_ball
from workloads.spec import ResolvedAttack
from workloads.training.engine import autocast, train_step


class FreeStep:
    """The free step; holds the carried delta between calls."""

    def __init__(self) -> None:
        self.delta: Tensor | None = None

    def new_epoch(self) -> None:
        self.delta = None

    def carried(self, x: Tensor) -> Tensor:
        """The carried delta fitted to this batch (module docstring); zeros at the start of an epoch."""
        if self.delta is None or self.delta.shape[1:] != x.shape[1:]:
            return torch.zeros_like(x)
        delta = self.delta[: len(x)]
        if len(delta) < len(x):
            delta = torch.cat([delta, torch.zeros_like(x[len(delta) :])])
        return clamp_to_box(delta, x)

    def __call__(
        self,
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
        scaler: Any = None,
        **ignored: Any,
    ) -> tuple[Tensor, Tensor]:
        """attack.replays optimizer steps on (x + delta, y); returns (mean loss, mean number correct) over the
        replays, as device tensors. `model`, `mode`, `gen` and train_step's other keywords (attack_amp, freeze)
        do not apply: the one forward per replay is the training forward."""
        delta = self.carried(x)
        losses, corrects = [], []
        for _ in range(attack.replays):
            delta.requires_grad_(True)
            with autocast(x.device, amp):
                logits = ddp_model(x + delta)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()  # weight AND input gradient
            grad = delta.grad
            assert grad is not None, "x + delta reaches the loss"
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            moved = clamp_to_box(project_ball(ascend(delta.detach(), grad, attack.norm, attack.alpha), attack.norm,
                                              attack.eps), x)  # fmt: skip
            if scaler is not None:  # an overflowing fp16 replay (its weight step skipped) leaves delta as it was
                finite = torch.isfinite(grad.flatten(1)).all(dim=1).view(-1, *([1] * (x.dim() - 1)))
                moved = torch.where(finite, moved, delta.detach())
            delta = moved
            losses.append(loss.detach())
            corrects.append((logits.detach().argmax(1) == y).sum())
        self.delta = delta
        return torch.stack(losses).mean(), torch.stack(corrects).double().mean()


class Stepper:
    """The trainer's step: FreeStep for a method whose step is "free", else engine.train_step (any keyword
    arguments pass through). One object per run; `new_epoch` at each epoch start."""

    def __init__(self) -> None:
        self.free = FreeStep()

    def new_epoch(self) -> None:
        self.free.new_epoch()

    def __call__(
        self,
        model: nn.Module,
        ddp_model: nn.Module,
        opt: torch.optim.Optimizer,
        x: Tensor,
        y: Tensor,
        attack: ResolvedAttack,
        gen: torch.Generator | None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor]:
        step = self.free if attack.step == "free" else train_step
        return step(model, ddp_model, opt, x, y, attack, gen, **kwargs)
