"""Threat models: uniform sampling in an eps-ball and PGD (L2 as in Algorithm 1 of the paper, Linf as Wong et al.).

Pure functions without hidden state. Inputs live in [0, 1] (normalisation is inside the model) and every
perturbation returned satisfies x + delta in [0, 1]. Gradients are taken with `torch.autograd.grad` with respect
to delta only, so no weight gradient is computed and no parameter's `.grad` is touched; the model's
train/eval mode is the caller's choice (see `attack_mode`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workloads.spec import NORMS, ResolvedAttack

LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits, labels) -> per-example loss, shape (batch,)


def cross_entropy_per_example(logits: Tensor, labels: Tensor) -> Tensor:
    """The default attack loss: cross-entropy per example, in fp32 (autocast may hand bf16 logits)."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {', '.join(NORMS)}; got {norm!r}")


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a (batch,) tensor so that it broadcasts over `like` (batch, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _l2_norms(t: Tensor) -> Tensor:
    """Per-example L2 norms, computed in fp32 so that bf16/fp16 tensors do not overflow or lose precision."""
    return t.detach().float().flatten(1).norm(dim=1)


def sample_ball(
    shape: Sequence[int],
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per example (dim 0), a point uniform in the eps-ball of `norm`.

    L2: isotropic direction (normalised Gaussian) times radius eps * U^(1/n), n = numel per example, which is
    uniform in volume (not on the sphere, not a clamped cube). Linf: uniform in [-eps, eps]^n.
    Draws happen on the generator's device (then move to `device`), so a CPU generator gives the same numbers
    whatever the target device.
    """
    _check_norm(norm)
    shape = tuple(shape)
    draw_device = generator.device if generator is not None else device
    if norm == "linf":
        u = torch.rand(shape, generator=generator, device=draw_device, dtype=torch.float32)
        return ((2 * u - 1) * eps).to(device=device, dtype=dtype)
    n = 1
    for size in shape[1:]:
        n *= size
    direction = torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32)
    # Guard the (measure-zero) all-zero draw so no NaN can appear.
    direction = direction / _per_example(_l2_norms(direction).clamp_min(torch.finfo(torch.float32).tiny), direction)
    u = torch.rand(shape[0], generator=generator, device=draw_device, dtype=torch.float32)
    radius = eps * u.pow(1.0 / n)
    return (direction * _per_example(radius, direction)).to(device=device, dtype=dtype)


def clamp_to_box(delta: Tensor, x: Tensor) -> Tensor:
    """Clamp so that x + delta stays in [0, 1] (Algorithm 1, line 8). Only shrinks |delta_i|: norms never grow."""
    return torch.maximum(torch.minimum(delta, 1 - x), -x)


def ascend(delta: Tensor, grad: Tensor, norm: str, alpha: float) -> Tensor:
    """delta + alpha * (L2: grad / ||grad||_2 per example, zero gradient: no move; Linf: sign(grad))."""
    if norm == "l2":
        g_norm = _l2_norms(grad)
        g_norm = torch.where(g_norm > 0, g_norm, torch.ones_like(g_norm))
        return delta + (alpha * grad.float() / _per_example(g_norm, grad)).to(delta.dtype)
    return delta + alpha * grad.sign()


def project_ball(delta: Tensor, norm: str, eps: float) -> Tensor:
    """The eps-ball projection: L2 renorm(p=2, maxnorm=eps) scales down only the examples outside the ball;
    Linf clamps each coordinate to [-eps, eps]."""
    if norm == "l2":
        scale = (eps / _l2_norms(delta).clamp_min(torch.finfo(torch.float32).tiny)).clamp(max=1.0)
        return delta * _per_example(scale, delta).to(delta.dtype)
    return delta.clamp(-eps, eps)


def _step(delta: Tensor, grad: Tensor, x: Tensor, norm: str, eps: float, alpha: float, project: bool) -> Tensor:
    """One ascent step along `grad`, projection onto the eps-ball (unless not `project`), then into the box."""
    delta = ascend(delta, grad, norm, alpha)
    return clamp_to_box(project_ball(delta, norm, eps) if project else delta, x)


def _single_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool,
    generator: torch.Generator | None,
    targeted: bool,
    loss_fn: LossFn,
    start_factor: float = 1.0,
    project: bool = True,
    input_grads: list[Tensor] | None = None,
) -> Tensor:
    if random_start:
        delta = clamp_to_box(sample_ball(x.shape, start_factor * eps, norm, generator, x.device, x.dtype), x)
    else:
        delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model(x + delta), y).sum()  # summed: each example's gradient is independent of batch size
        (grad,) = torch.autograd.grad(loss, [delta])
        if input_grads is not None:
            input_grads.append(grad)
        delta = _step(delta.detach(), -grad if targeted else grad, x, norm, eps, alpha, project)
    return delta.detach()


def _score(
    model: nn.Module, x: Tensor, y: Tensor, delta: Tensor, targeted: bool, loss_fn: LossFn
) -> tuple[Tensor, Tensor]:
    """(success, objective) per example: success = misclassified (targeted: hits y); objective to maximise."""
    with torch.no_grad():
        logits = model(x + delta)
        hit = logits.argmax(dim=1) == y
        loss = loss_fn(logits, y).float()
    return (hit if targeted else ~hit), (-loss if targeted else loss)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    start_factor: float = 1.0,
    project: bool = True,
    input_grads: list[Tensor] | None = None,
) -> Tensor:
    """Projected gradient ascent on the loss; returns delta (same shape/dtype as x) with x + delta in [0, 1].

    L2 (Algorithm 1, lines 5-8): delta ~ Uniform(eps-ball), clamped into the box; each step
    delta += alpha * g / ||g||_2 per example (zero gradient: no move), renorm to eps when larger, clamp into the
    box. Linf: uniform start in the cube, delta += alpha * sign(g), clamp to [-eps, eps], clamp into the box.

    - steps == 0 or eps == 0 returns zeros (also with random_start: a random start alone is not an attack).
    - Each restart draws its start as `sample_ball(x.shape, eps, norm, generator)` before anything else, so
      restart r with a given seed is the r-th run of a restarts=1 attack on the same generator stream.
    - restarts > 1: per example, the last iterate of a restart that misclassifies (targeted: reaches y) if any
      did, else of the restart with the highest loss (targeted: lowest); ties keep the earlier restart. Costs
      one extra forward per restart. Without random_start all restarts are identical, so one is run.
    - targeted: y holds the target classes and the loss is descended.
    - loss_fn(logits, y) must return per-example losses (default: cross-entropy); the gradient is that of their sum.
    - The model's train/eval mode is not changed (use `attack_mode`); parameters' .grad are never touched.
      Works under torch.no_grad() (gradients are enabled locally) and under autocast (norms in fp32).
    - start_factor k: the random start is drawn from the k * eps ball; project=False skips the eps-ball
      projection after each step (only the box clamp). N-FGSM (de Jorge et al. 2022) is k = 2, one step of
      alpha = eps, no projection: ||delta|| <= k * eps + alpha.
    - input_grads: when given, each step's gradient w.r.t. delta (of the summed loss) is appended to it, in order
      (restart after restart); GradAlign reuses its one step's gradient, at the start, instead of another pass.
    """
    _check_norm(norm)
    if restarts < 1:
        raise ValueError(f"restarts: expected an integer >= 1; got {restarts}")
    x, y = x.detach(), y.detach()
    if steps == 0 or eps == 0:
        return torch.zeros_like(x)
    loss_fn = loss_fn or cross_entropy_per_example
    runs = restarts if random_start else 1
    args = (model, x, y, norm, eps, alpha, steps, random_start, generator, targeted, loss_fn, start_factor, project,
            input_grads)  # fmt: skip
    with torch.enable_grad():
        best = _single_run(*args)
        if runs == 1:
            return best
        best_hit, best_obj = _score(model, x, y, best, targeted, loss_fn)
        for _ in range(runs - 1):
            delta = _single_run(*args)
            hit, obj = _score(model, x, y, delta, targeted, loss_fn)
            # Lexicographic (success, objective): success beats any loss; among equals, strictly higher wins.
            better = (hit & ~best_hit) | ((hit == best_hit) & (obj > best_obj))
            best = torch.where(_per_example(better, best), delta, best)
            best_hit, best_obj = best_hit | hit, torch.where(better, obj, best_obj)
    return best


def attack_from(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: ResolvedAttack,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    input_grads: list[Tensor] | None = None,
) -> Tensor:
    """`pgd` with the settings of a resolved attack (steps == 0, i.e. standard training: zeros)."""
    return pgd(
        model,
        x,
        y,
        norm=attack.norm,
        eps=attack.eps,
        alpha=attack.alpha,
        steps=attack.steps,
        random_start=attack.random_start,
        restarts=restarts,
        generator=generator,
        loss_fn=loss_fn,
        start_factor=attack.start_factor,
        project=attack.project,
        input_grads=input_grads,
    )


def _wide(t: Tensor) -> Tensor:
    """At least fp32 (autocast's bf16/fp16 widened; fp64 stays fp64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def gradient_misalignment(
    model: nn.Module, x: Tensor, y: Tensor, grad: Tensor, eps: float, generator: torch.Generator | None = None
) -> Tensor:
    """GradAlign's regulariser (Andriushchenko & Flammarion 2020): 1 - the mean over examples of cos(grad, g),
    g = the input gradient of the cross-entropy at x + eta, eta ~ U([-eps, eps]^n) clamped into the box.

    g is taken with create_graph=True, so the result's gradient w.r.t. the weights is a double backprop through
    it (the caller adds lambda x this to the training loss and runs ONE backward: under DDP, one backward through
    the DDP forward and this graph of the unwrapped model reduces every parameter once, no static_graph needed).
    `grad` (the attack's gradient at its start: x itself for gradalign's zero start) is a constant. Examples where
    either gradient is zero are left out, as the authors' code does (none left: a differentiable 0). Cosines in
    fp32 at least; the model's mode is the caller's."""
    eta = clamp_to_box(sample_ball(x.shape, eps, "linf", generator, x.device, x.dtype), x)
    z = (x + eta).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(_wide(model(z)), y), [z], create_graph=True)
    g1, g2 = _wide(grad.detach().flatten(1)), _wide(g.flatten(1))
    n1, n2 = g1.norm(dim=1), g2.norm(dim=1)
    keep = (n1 > 0) & (n2 > 0)  # masks, not indexing: no host sync, and no 0 / 0 in the backward
    cos = torch.where(keep, (g1 * g2).sum(dim=1) / torch.where(keep, n1 * n2, torch.ones_like(n1)), 0.0)
    return (keep.sum() - cos.sum()) / keep.sum().clamp_min(1)  # mean of 1 - cos over the kept examples


@contextlib.contextmanager
def attack_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Put the model in `mode` ("eval" | "train") for an attack, then restore every submodule's previous mode."""
    if mode not in ("eval", "train"):
        raise ValueError(f"mode: expected one of eval, train; got {mode!r}")
    previous = [(module, module.training) for module in model.modules()]
    model.train(mode == "train")
    try:
        yield model
    finally:
        for module, training in previous:
            module.training = training
