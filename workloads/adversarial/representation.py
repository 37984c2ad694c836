"""What a model's penultimate representation has learned, made visible (Figs. 3-5): three optimisers in pixel
space ([0, 1], the model normalises inside), each recording its objective at every iterate so that tests (and
users) can see them climb, and the spectral measure the visualize kind reports.

- `visualize_units` (Fig. 3): from a seed image, maximise one unit of `model.features(x)` by L2 gradient
  ascent with normalised steps, projected onto the eps-ball around the seed and clamped into [0, 1]
  (Engstrom et al. 2019, "Adversarial robustness as a prior for learned representations": eps 1000, step 1,
  200 iterations at 224 px; the eps-ball is then effectively only the [0, 1] box). A representation ending in
  a ReLU is maximised before the ReLU (same maximiser, but a unit at 0 still has a gradient).
- `interpolate` (Fig. 4): for each lambda find x whose representation matches the CONVEX combination
  lambda * f(x1) + (1 - lambda) * f(x2), starting from the pixel-space blend, by normalised gradient descent on
  the relative distance ||f(x) - t|| / ||t||. The paper's eq. (14) prints lambda f(x1) - (1 - lambda) f(x2); that
  is a typo (at lambda = 1/2 it would target half the difference of two representations, not a point between
  them), so the convex combination is implemented.
- `large_targeted` (Fig. 5): targeted L2 PGD (`attacks.pgd(targeted=True)`) towards a class with a large eps and
  many steps (paper: eps 500, K 1000), alpha = 2.5 eps / K, no random start (a random point of a 500-ball
  clamped into the box would be binary noise).
- `high_freq_share`: the share of an image's spectral energy above half the Nyquist frequency.

All three optimisers return the best iterate per example (highest objective), as the robustness library's
`use_best`. Pure functions of a model and tensors: no spec, no files (workloads.kinds.visualize wires them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workloads.adversarial.attacks import pgd
from workloads.assets.models import RobustModel

Objective = Callable[[Tensor], Tensor]  # x -> per-example objective to maximise, shape (batch,)


@dataclass
class Trace:
    """Best iterate per example and the objective of every iterate: trace[t] for t = 0 (start) .. iterations."""

    x: Tensor  # (batch, C, H, W), the best iterate
    trace: Tensor  # (iterations + 1, batch)

    @property
    def best(self) -> Tensor:
        return self.trace.max(dim=0).values


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _l2(t: Tensor) -> Tensor:
    return t.detach().float().flatten(1).norm(dim=1)


def _normalised(g: Tensor) -> Tensor:
    """g / ||g||_2 per example; a zero gradient gives a zero step (no move), never NaN."""
    n = _l2(g)
    return g / _bcast(torch.where(n > 0, n, torch.ones_like(n)), g)


def _project(x: Tensor, center: Tensor, eps: float | None) -> Tensor:
    """Onto the L2 eps-ball around `center` (skipped for eps None), then into the [0, 1] box.
    Clamping after the renorm only shrinks |x - center| per pixel when center is in the box, so both hold."""
    if eps is not None:
        d = x - center
        scale = (eps / _l2(d).clamp_min(torch.finfo(torch.float32).tiny)).clamp(max=1.0)
        x = center + d * _bcast(scale, d)
    return x.clamp(0.0, 1.0)


def ascend(
    objective: Objective,
    start: Tensor,
    *,
    step: float,
    iterations: int,
    eps: float | None,
    center: Tensor | None = None,
) -> Trace:
    """Projected gradient ascent with normalised L2 steps: x += step * g / ||g||, project, clamp into [0, 1].

    `center` (default: start) is the middle of the eps-ball. Gradients are taken for x only
    (torch.autograd.grad), so model parameters' .grad are never touched."""
    center = (start if center is None else center).detach()
    x = _project(start.detach().clone(), center, eps)
    best_x, best_obj = x.clone(), torch.full((len(x),), -torch.inf, device=x.device)
    values = []
    with torch.enable_grad():
        for t in range(iterations + 1):
            x.requires_grad_(True)
            obj = objective(x)
            last = t == iterations
            grad = None if last else torch.autograd.grad(obj.sum(), [x])[0]
            obj = obj.detach().float()
            x = x.detach()
            values.append(obj)
            better = obj > best_obj
            best_x = torch.where(_bcast(better, x), x, best_x)
            best_obj = torch.where(better, obj, best_obj)
            if grad is not None:
                x = _project(x + step * _normalised(grad), center, eps)
    return Trace(best_x, torch.stack(values))


# ---------------------------------------------------------------------------------------------
# The three tools.


def visualize_units(
    model: RobustModel, seeds: Tensor, units: Sequence[int], *, eps: float, step: float, iterations: int
) -> Trace:
    """Fig. 3: for every seed (N) and unit (K), maximise features(x)[unit] within the eps-ball around the seed
    (its pre-activation when the representation ends in a ReLU, see `unit_objective`).

    Returns a Trace over the N*K pairs in seed-major order (pair i*K + k = seed i, unit k); reshape x to
    (N, K, C, H, W)."""
    n, k = len(seeds), len(units)
    start = seeds.detach().repeat_interleave(k, dim=0)
    unit_idx = torch.tensor(list(units), device=seeds.device).repeat(n)
    rows = torch.arange(n * k, device=seeds.device)

    representation = unit_objective(model)

    def objective(x: Tensor) -> Tensor:
        return representation(x)[rows, unit_idx]

    return ascend(objective, start, step=step, iterations=iterations, eps=eps)


def unit_objective(model: RobustModel) -> Callable[[Tensor], Tensor]:
    """x -> the representation to maximise a unit of: the pre-activation when the body ends in a ReLU.

    max(z, 0) and z have the same maximiser wherever the unit is positive, but a unit clipped at 0 has zero
    input gradient, so ascent on the post-ReLU value could never move it (the 128-d small CNN has ~20% of its
    units active per image). ResNets end in average pooling, whose output is used as is."""
    body = model.body
    if isinstance(body, nn.Sequential) and isinstance(body[-1], nn.ReLU):
        pre = body[:-1]
        return lambda x: pre(model.normalize(x))
    return model.features


def relative_distance(feats: Tensor, target: Tensor) -> Tensor:
    """||f - t|| / ||t|| per example (||t|| floored so an all-zero target cannot divide by zero)."""
    diff = (feats - target).float()
    # sqrt(sum + tiny): the norm's gradient at an exact match would otherwise be NaN
    dist = (diff.pow(2).sum(dim=1) + 1e-12).sqrt()
    return dist / target.float().norm(dim=1).clamp_min(1e-12)


def _pairs(x1: Tensor, x2: Tensor, lambdas: Sequence[float]) -> tuple[Tensor, Tensor, Tensor]:
    """(lambda, x1, x2) repeated in pair-major order: element p*L + l is pair p with lambda l."""
    lam = torch.tensor(list(lambdas), dtype=x1.dtype, device=x1.device).repeat(len(x1))
    n_l = len(lambdas)
    return lam, x1.detach().repeat_interleave(n_l, dim=0), x2.detach().repeat_interleave(n_l, dim=0)


def pixel_blend(x1: Tensor, x2: Tensor, lambdas: Sequence[float]) -> Tensor:
    """lambda x1 + (1 - lambda) x2 per pair and lambda (pair-major): the start of `interpolate`."""
    lam, a, b = _pairs(x1, x2, lambdas)
    lam = _bcast(lam, a)
    return lam * a + (1 - lam) * b


def interpolate(
    model: RobustModel,
    x1: Tensor,
    x2: Tensor,
    lambdas: Sequence[float],
    *,
    step: float,
    iterations: int,
    start: Tensor | None = None,
) -> Trace:
    """Fig. 4: for every pair (P) and lambda (L), find x with f(x) close to lambda f(x1) + (1 - lambda) f(x2).

    Convex combination (the paper's eq. (14) prints a minus sign; see the module docstring). Starts from the
    pixel blend lambda x1 + (1 - lambda) x2 unless `start` (P*L images) is given; minimises the relative
    distance ||f(x) - t|| / ||t|| with normalised gradient steps, clamped into [0, 1]. Pairs are in pair-major
    order (pair p, lambda l at p*L + l); the Trace's objective is the NEGATIVE relative distance."""
    lam, a, b = _pairs(x1, x2, lambdas)
    with torch.no_grad():
        lam_f = lam[:, None].float()
        target = lam_f * model.features(a).float() + (1 - lam_f) * model.features(b).float()
    init = pixel_blend(x1, x2, lambdas) if start is None else start

    def objective(x: Tensor) -> Tensor:
        return -relative_distance(model.features(x), target)

    return ascend(objective, init, step=step, iterations=iterations, eps=None)


def large_targeted(model: RobustModel, x: Tensor, targets: Tensor, *, eps: float, steps: int) -> Trace:
    """Fig. 5: targeted L2 PGD (attacks.pgd, targeted=True, no random start, alpha = 2.5 eps / steps).

    The objective recorded is the target log-probability, read at every step through pgd's loss hook, so the
    Trace comes from the very iterates pgd takes. x returned = x + delta (the final iterate, as pgd returns)."""
    values: list[Tensor] = []

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        values.append(-loss.detach())
        return loss

    delta = pgd(
        model,
        x,
        targets,
        norm="l2",
        eps=eps,
        alpha=2.5 * eps / steps,
        steps=steps,
        random_start=False,
        targeted=True,
        loss_fn=loss_fn,
    )
    adv = (x + delta).detach()
    with torch.no_grad():
        values.append(-F.cross_entropy(model(adv).float(), targets, reduction="none"))
    return Trace(adv, torch.stack(values))


# ---------------------------------------------------------------------------------------------
# The quantitative companion.


def high_freq_share(images: Tensor, cutoff: float = 0.5) -> Tensor:
    """Per image, the share of 2-D spectral energy at radial frequencies above cutoff x Nyquist.

    images: (N, C, H, W); energy |FFT2|^2 summed over channels; frequencies in cycles/pixel (Nyquist 0.5), radius
    sqrt(fx^2 + fy^2), so white noise scores 1 - pi/16 ~ 0.80 at the default cutoff and smooth images near 0.
    An all-zero image gives NaN (no energy to share)."""
    img = images.detach().float()
    h, w = img.shape[-2:]
    power = torch.fft.fft2(img).abs().pow(2).sum(dim=1)  # (N, H, W)
    fy = torch.fft.fftfreq(h, device=img.device)[:, None]
    fx = torch.fft.fftfreq(w, device=img.device)[None, :]
    high = (fy.pow(2) + fx.pow(2)).sqrt() > cutoff * 0.5
    total = power.flatten(1).sum(dim=1)
    share = (power * high).flatten(1).sum(dim=1) / total
    return torch.where(total > 0, share, torch.full_like(share, torch.nan))
