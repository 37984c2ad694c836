"""Training recipes over a run: the method schedule (phases of methods) and the eps warm-up. Torch-free.

The attack of iteration i (0-based) of epoch e (1-based) is a pure function of (spec, e, i, iterations per
epoch), so a resumed run (which restarts at an epoch boundary) attacks exactly as the uninterrupted one.

- method_schedule: [{method: fast, until: 0.6}] + method: pgd7 trains with `fast` the epochs whose middle lies
  before 0.6 of the run, e - 0.5 < 0.6 * epochs (epochs 1-6 of 10, 1-2 of 3), then with `pgd7`. Phases are
  listed in order, `until` strictly increasing in (0, 1); every phase attacks in the same norm as the run's
  method (one threat model per run). A schedule spans the run: a resume cannot change `epochs`.
- attack.eps_warmup_epochs N: eps (and alpha with it: the step rule keeps alpha / eps) ramps linearly per
  iteration, eps_t = eps * min(1, t / (N * iterations)), t = (e - 1) * iterations + i + 1; so the last
  iteration of epoch N attacks with the full eps. The validation attack and the guard always use the full eps.
"""

from __future__ import annotations

import dataclasses

from workloads.spec import ResolvedAttack, RunSpec, resolve_attack


def phase_method(spec: RunSpec, epoch: int) -> str:
    """The method that trains `epoch` (1-based)."""
    for phase in spec.method_schedule:
        assert phase.method is not None and phase.until is not None, "check_recipe requires both"
        if epoch - 0.5 < phase.until * spec.epochs:  # the epoch's middle: the nearest epoch boundary to until
            return phase.method
    return spec.method


def schedule_methods(spec: RunSpec) -> list[str]:
    """Every method the run trains with, in order (the schedule's phases, then `method`)."""
    return [*(p.method for p in spec.method_schedule if p.method is not None), spec.method]


def warmup_fraction(spec: RunSpec, epoch: int, iteration: int, iterations: int) -> float:
    """The fraction of eps that iteration `iteration` (0-based) of `epoch` (1-based) attacks with."""
    n = spec.attack.eps_warmup_epochs
    if n == 0:
        return 1.0
    done = (epoch - 1) * iterations + iteration + 1
    return min(1.0, done / (n * max(iterations, 1)))


class Recipe:
    """The training attack per (epoch, iteration): resolve_attack of the phase's method, scaled by the warm-up."""

    def __init__(self, spec: RunSpec, iterations: int) -> None:
        self.spec, self.iterations = spec, iterations
        self._resolved = {m: resolve_attack(m, spec.attack) for m in schedule_methods(spec)}

    def attack(self, epoch: int, iteration: int) -> ResolvedAttack:
        attack = self._resolved[phase_method(self.spec, epoch)]
        f = warmup_fraction(self.spec, epoch, iteration, self.iterations)
        return attack if f == 1.0 else dataclasses.replace(attack, eps=attack.eps * f, alpha=attack.alpha * f)
