"""Learning-rate schedules (`optimizer.schedule`), stepped once per optimizer step, built on torch.optim.lr_scheduler.

    step      StepLR: lr x gamma every step_epochs epochs (the paper's; the default). Stepped per iteration with
              step_size = step_epochs x iterations per epoch, which multiplies by gamma at exactly the epoch starts
              where the per-epoch StepLR did (same float operations, same order): every lr value is bit-identical.
    onecycle  OneCycleLR: max_lr / 25 -> max_lr (cosine, at peak_fraction of the run) -> max_lr / 25e4. Momentum
              is not cycled (optimizer.momentum stays what the grid says).
    cyclic    Wong et al.'s triangle: 0 -> max_lr at peak_fraction of the run -> 0, piecewise linear (LambdaLR; the
              value of iteration i is the triangle at i + 1, as fast_adversarial's lr_schedule(epoch + (i+1)/n)).
    cosine    CosineAnnealingLR: lr -> 0 over the run (after the warm-up).

warmup_epochs W (every schedule): the first w = round(W x iterations per epoch) iterations rise linearly to the
schedule's peak, which is the iteration right after them (iteration w); the schedule's own shape takes the rest.
    step, cosine  LinearLR from lr / (w + 1) up to lr, then the schedule (SequentialLR): cosine anneals over the
                  remaining iterations, step's step_epochs count from the end of the warm-up.
    onecycle      LinearLR from max_lr / 25 (OneCycleLR's start) up to max_lr, then OneCycleLR's cosine decay to
                  max_lr / 25e4, reached at the last iteration (CosineAnnealingLR with that eta_min; SequentialLR).
                  The warm-up replaces OneCycleLR's cosine rise: same start, same peak, same decay formula, the
                  rise linear and w iterations long. (A LinearLR in front of a whole OneCycleLR would ramp only
                  up to max_lr / 25 - OneCycleLR's constructor rewrites the groups' initial_lr, which SequentialLR
                  resets the lr to - and then rise again: two rises, the first one below max_lr / 25.)
    cyclic        the triangle peaks at iteration w instead of at peak_fraction of the run: its rise, (i + 1) /
                  (w + 1) x max_lr, is the values of step's and cosine's ramp; then linear down to 0 at the end.
With a warm-up the peak is where the warm-up ends, so onecycle and cyclic do not read peak_fraction (the spec check
refuses a peak_fraction other than its default next to warmup_epochs): one key says where the peak is.

The schedule's length is the run's (epochs x iterations per epoch), so for every schedule but step the checkpoint
can only continue a run of the same `epochs` (kinds.train adds epochs to the resume keys). The state saved in the
checkpoint says it counts iterations; a checkpoint of the per-epoch StepLR (before schedules existed) is converted
on load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import lr_scheduler

from workloads.spec import Optimizer

UNIT = "iteration"  # what the saved state counts; a state without it is a legacy per-epoch StepLR


def lengths(o: Optimizer, epochs: int, steps_per_epoch: int) -> tuple[int, int]:
    """(total optimizer steps of the run, warm-up steps)."""
    total = epochs * steps_per_epoch
    warmup = max(1, round(o.warmup_epochs * steps_per_epoch)) if o.warmup_epochs > 0 else 0
    return total, min(warmup, total - 1)


DIV_FACTOR, FINAL_DIV_FACTOR = 25.0, 1e4  # OneCycleLR's defaults: start = max_lr / 25, end = start / 1e4


def _main(opt: torch.optim.Optimizer, o: Optimizer, total: int, warmup: int, steps_per_epoch: int) -> Any:
    """The schedule after the warm-up (the whole run when there is none)."""
    if o.schedule == "step":
        return lr_scheduler.StepLR(opt, step_size=o.step_epochs * steps_per_epoch, gamma=o.gamma)
    if o.schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=0.0)
    peak = o.max_lr if o.max_lr is not None else o.lr
    if o.schedule == "onecycle" and warmup:  # the decay of OneCycleLR: max_lr at iteration w, its end at the last
        _set_lr(opt, peak)
        end = peak / DIV_FACTOR / FINAL_DIV_FACTOR
        return lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warmup - 1), eta_min=end)
    if o.schedule == "onecycle":
        return lr_scheduler.OneCycleLR(
            opt, max_lr=peak, total_steps=total, pct_start=o.peak_fraction, anneal_strategy="cos", cycle_momentum=False
        )
    if o.schedule == "cyclic":
        top = warmup + 1 if warmup else o.peak_fraction * total  # the iteration (1-based) at the peak

        def triangle(i: int) -> float:
            t = i + 1
            return t / top if t <= top else max(0.0, (total - t) / (total - top))

        _set_lr(opt, peak)  # LambdaLR multiplies the lr it finds: start from the peak
        return lr_scheduler.LambdaLR(opt, triangle)
    raise ValueError(f"optimizer.schedule: expected one of step, onecycle, cyclic, cosine; got {o.schedule!r}")


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _ramp_start(o: Optimizer, warmup: int) -> float | None:
    """The warm-up's first value relative to the peak (None: the main schedule rises itself, cyclic)."""
    if o.schedule == "cyclic":
        return None
    return 1.0 / DIV_FACTOR if o.schedule == "onecycle" else 1.0 / (warmup + 1)


class Schedule:
    """The run's lr schedule: `step()` after every optimizer step; state_dict/load_state_dict for checkpoints."""

    def __init__(self, opt: torch.optim.Optimizer, o: Optimizer, epochs: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        total, warmup = lengths(o, epochs, steps_per_epoch)
        main = _main(opt, o, total, warmup, steps_per_epoch)
        if warmup and (start := _ramp_start(o, warmup)) is not None:
            ramp = lr_scheduler.LinearLR(opt, start_factor=start, end_factor=1.0, total_iters=warmup)
            self.torch: Any = lr_scheduler.SequentialLR(opt, [ramp, main], milestones=[warmup])
        else:
            self.torch = main

    def step(self) -> None:
        self.torch.step()

    def state_dict(self) -> dict[str, Any]:
        return {"unit": UNIT, "steps_per_epoch": self.steps_per_epoch, "torch": self.torch.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("unit") != UNIT:
            state = legacy_step_state(state, self.steps_per_epoch)
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"the checkpoint's lr schedule counted {state['steps_per_epoch']} iterations per epoch, this run "
                f"{self.steps_per_epoch} (other train_subset, batch or world size?); use a new run directory"
            )
        self.torch.load_state_dict(state["torch"])


def legacy_step_state(state: dict[str, Any], steps_per_epoch: int) -> dict[str, Any]:
    """A per-epoch StepLR state (checkpoints before schedules existed) as the per-iteration StepLR's: its counters
    and step size in iterations; the lr values (`base_lrs`, `_last_lr`) are the same in both units."""
    if "step_size" not in state:
        raise ValueError("the checkpoint's lr scheduler state is neither a schedule nor a StepLR; use a new run")
    converted = {
        **state,
        "step_size": state["step_size"] * steps_per_epoch,
        "last_epoch": state["last_epoch"] * steps_per_epoch,
        "_step_count": state.get("_step_count", 1) + (state["last_epoch"]) * (steps_per_epoch - 1),
    }
    return {"unit": UNIT, "steps_per_epoch": steps_per_epoch, "torch": converted}
