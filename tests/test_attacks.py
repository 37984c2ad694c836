"""Threat models: the ball sampler's distribution, PGD's constraints, closed-form steps, restarts, side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

from workloads.adversarial.attacks import attack_from, attack_mode, pgd, sample_ball
from workloads.spec import Attack, resolve_attack

P_OK = 1e-3  # a correct sampler passes a KS test at this level (fixed seeds: deterministic)
P_WRONG = 1e-8  # a wrong sampler fails it by a wide margin


pytestmark = pytest.mark.usefixtures("one_thread")  # the machine is shared; these tensors are small


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def radius_pvalue(delta: Tensor, eps: float) -> float:
    """KS p-value of ||delta||_2 / eps against the radius CDF r^n of the uniform n-ball."""
    n = delta[0].numel()
    r = (delta.flatten(1).norm(dim=1) / eps).double().numpy()
    return stats.kstest(r, lambda t: t.clip(0, 1) ** n).pvalue


def uniform_pvalue(values: Tensor, low: float, high: float) -> float:
    return stats.kstest(values.double().numpy(), stats.uniform(low, high - low).cdf).pvalue


# ------------------------------------------------------------------------------------------------
# sample_ball


@pytest.mark.parametrize(("shape", "eps"), [((20000, 3), 0.7), ((4000, 2, 5, 5), 2.0)])
def test_l2_radius_is_uniform_in_volume(shape: tuple[int, ...], eps: float) -> None:
    delta = sample_ball(shape, eps, "l2", generator=gen(1))
    assert delta.shape == shape and delta.dtype == torch.float32
    assert radius_pvalue(delta, eps) > P_OK


def test_radius_test_rejects_wrong_samplers() -> None:
    """The KS radius test has the power to catch the usual mistakes."""
    shape, eps = (20000, 3), 0.7
    on_sphere = F.normalize(torch.randn(shape, generator=gen(2)), dim=1) * eps
    linear_radius = F.normalize(torch.randn(shape, generator=gen(3)), dim=1) * eps * torch.rand(shape[0], 1)
    clamped_gauss = (torch.randn(shape, generator=gen(4)) * eps / 2).clamp(-eps, eps)
    clamped_gauss = clamped_gauss * (eps / clamped_gauss.norm(dim=1, keepdim=True)).clamp(max=1)  # into the ball
    for wrong in (on_sphere, linear_radius, clamped_gauss):
        assert radius_pvalue(wrong, eps) < P_WRONG


def test_l2_direction_is_isotropic() -> None:
    n_samples = 20000
    delta = sample_ball((n_samples, 3), 1.0, "l2", generator=gen(5))
    u = F.normalize(delta, dim=1)
    assert u.mean(dim=0).abs().max() < 0.02  # std of each mean is sqrt(1/3 / 20000) = 0.004
    assert torch.allclose(u.T @ u / n_samples, torch.eye(3) / 3, atol=0.01)
    # Archimedes: each coordinate of a uniform direction on S^2 is uniform on [-1, 1].
    for i in range(3):
        assert uniform_pvalue(u[:, i], -1, 1) > P_OK


def test_isotropy_test_rejects_cube_directions() -> None:
    """Normalising a uniform cube sample (a common mistake) piles directions onto the diagonals."""
    u = F.normalize(torch.rand((20000, 3), generator=gen(6)) * 2 - 1, dim=1)
    assert uniform_pvalue(u[:, 0], -1, 1) < P_WRONG


def test_linf_marginals_uniform() -> None:
    eps = 0.3
    delta = sample_ball((5000, 2, 3), eps, "linf", generator=gen(7))
    assert delta.abs().max() <= eps
    flat = delta.flatten(1)
    for i in range(flat.shape[1]):
        assert uniform_pvalue(flat[:, i], -eps, eps) > P_OK
    # Independent coordinates: correlations near zero (std ~ 1/sqrt(5000) = 0.014).
    corr = torch.corrcoef(flat.T) - torch.eye(flat.shape[1])
    assert corr.abs().max() < 0.06
    # A clamped Gaussian is not uniform on the cube.
    assert uniform_pvalue((torch.randn(5000, generator=gen(8)) * eps).clamp(-eps, eps), -eps, eps) < P_WRONG


def test_sample_ball_deterministic_and_dtype() -> None:
    a = sample_ball((4, 3, 2, 2), 1.0, "l2", generator=gen(9), dtype=torch.float64)
    b = sample_ball((4, 3, 2, 2), 1.0, "l2", generator=gen(9), dtype=torch.float64)
    c = sample_ball((4, 3, 2, 2), 1.0, "l2", generator=gen(10), dtype=torch.float64)
    assert a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="norm"):
        sample_ball((2, 3), 1.0, "l1")


# ------------------------------------------------------------------------------------------------
# Models and data for the PGD tests


def linear_model(n_in: int, n_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_classes))


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(4 * 8 * 8, 5),
    )


def box_images(n: int, seed: int) -> Tensor:
    """Images in [0, 1] with many pixels exactly at 0 or 1, so the box clamp is active."""
    x = torch.rand((n, 1, 8, 8), generator=gen(seed))
    return torch.where(x < 0.2, 0.0, torch.where(x > 0.8, 1.0, x))


def per_example_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def trained_mlp() -> tuple[nn.Module, Tensor, Tensor]:
    """A small MLP trained to high accuracy on two separable Gaussian blobs inside [0, 1]^20."""
    torch.manual_seed(0)
    n, d = 512, 20
    y = torch.randint(0, 2, (n,))
    centre = torch.where(y[:, None] == 1, 0.6, 0.4) * torch.ones(n, d)
    x = (centre + 0.08 * torch.randn(n, d)).clamp(0, 1)
    model = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.97
    return model, x[:256], y[:256]


# ------------------------------------------------------------------------------------------------
# PGD constraints


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("restarts", [1, 3])
def test_pgd_stays_in_ball_and_box(norm: str, steps: int, restarts: int) -> None:
    model = small_cnn().eval()
    x = box_images(32, seed=11)
    y = torch.randint(0, 5, (32,), generator=gen(12))
    eps = 2.0 if norm == "l2" else 0.3
    alpha = 2.5 * eps / steps
    delta = pgd(model, x, y, norm=norm, eps=eps, alpha=alpha, steps=steps, restarts=restarts, generator=gen(13))
    assert delta.shape == x.shape and delta.dtype == x.dtype
    size = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(dim=1)
    assert (size <= eps * (1 + 1e-6)).all()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    assert (size > 0.5 * eps).all()  # it did move: the steps are large compared with eps


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_no_attack_is_zero(norm: str) -> None:
    model = small_cnn().eval()
    x, y = box_images(4, seed=14), torch.zeros(4, dtype=torch.long)
    for eps, steps in ((1.0, 0), (0.0, 3)):
        delta = pgd(model, x, y, norm=norm, eps=eps, alpha=0.5, steps=steps, random_start=True, generator=gen(0))
        assert torch.equal(delta, torch.zeros_like(x))
    standard = resolve_attack("standard", Attack(norm=norm))
    assert torch.equal(attack_from(model, x, y, standard), torch.zeros_like(x))


# ------------------------------------------------------------------------------------------------
# Closed form on a linear model (Algorithm 1, lines 5-8, computed independently in float64)


def ce_input_grad(model: nn.Module, z: Tensor, y: Tensor) -> Tensor:
    """d/dz of the per-example cross-entropy of a linear model: (softmax(Wz + b) - onehot(y)) @ W."""
    w, b = model[1].weight.detach().double(), model[1].bias.detach().double()
    z = z.flatten(1).double()
    return ((torch.softmax(z @ w.T + b, dim=1) - F.one_hot(y, w.shape[0]).double()) @ w).view(z.shape[0], -1)


def closed_form_step(model: nn.Module, x: Tensor, y: Tensor, delta0: Tensor, norm: str, eps: float, alpha: float):
    xf = x.flatten(1).double()
    d0 = delta0.flatten(1).double().clamp(-xf, 1 - xf)  # the random start is clamped into the box first
    g = ce_input_grad(model, xf + d0, y)
    if norm == "l2":
        d1 = d0 + alpha * g / g.norm(dim=1, keepdim=True)
        d1 = d1 * (eps / d1.norm(dim=1, keepdim=True)).clamp(max=1)  # renorm, then ...
    else:
        d1 = (d0 + alpha * g.sign()).clamp(-eps, eps)
    return d1.clamp(-xf, 1 - xf).view_as(x)  # ... clamp into the box


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("where", ["mid_box", "box_edges"])
def test_one_step_matches_closed_form(norm: str, random_start: bool, where: str) -> None:
    n_classes, shape = 4, (64, 2, 3, 3)
    model = linear_model(18, n_classes, seed=15)
    if where == "mid_box":  # no clamping active: x mid-box, small eps
        x = 0.4 + 0.2 * torch.rand(shape, generator=gen(16))
        eps = 0.05 if norm == "l2" else 0.02
    else:  # pixels at 0 and 1: both box clamps (start and step) are active
        x = box_images(64, seed=16).view(64, -1)[:, :18].reshape(shape)
        eps = 1.0 if norm == "l2" else 0.3
    y = torch.randint(0, n_classes, (shape[0],), generator=gen(17))
    alpha = 1.5 * eps if norm == "l2" else 1.25 * eps
    # pgd's random start is the first draw of sample_ball on the generator stream.
    delta0 = sample_ball(shape, eps, norm, generator=gen(18)) if random_start else torch.zeros(shape)
    expected = closed_form_step(model, x, y, delta0, norm, eps, alpha)
    delta = pgd(model, x, y, norm=norm, eps=eps, alpha=alpha, steps=1, random_start=random_start, generator=gen(18))
    torch.testing.assert_close(delta.double(), expected, atol=1e-6, rtol=0)
    if norm == "l2" and random_start and where == "mid_box":  # the renorm branch was hit for some, not all
        unclamped = (delta0.flatten(1) + alpha * F.normalize(delta.flatten(1) - delta0.flatten(1), dim=1)).norm(dim=1)
        assert (unclamped > eps).any()
    if where == "box_edges" and random_start:  # the start's box clamp was exercised
        assert ((delta0 + x < 0) | (delta0 + x > 1)).any()


class GradProbe(nn.Module):
    """Wraps a model and records the gradient that reaches its input during the attack."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grads: list[Tensor] = []

    def forward(self, z: Tensor) -> Tensor:
        if z.requires_grad:
            z.register_hook(lambda g: self.grads.append(g.detach().clone()))
        return self.model(z)


def test_gradient_is_of_the_summed_loss() -> None:
    """Per-example input gradients do not shrink with the batch size (summed, not averaged, loss)."""
    model = linear_model(6, 3, seed=19)
    x = 0.4 + 0.2 * torch.rand((50, 6), generator=gen(20))
    y = torch.randint(0, 3, (50,), generator=gen(21))
    probe = GradProbe(model)
    pgd(probe, x, y, norm="l2", eps=0.1, alpha=0.15, steps=1, random_start=False)
    (grad,) = probe.grads
    torch.testing.assert_close(grad.double(), ce_input_grad(model, x, y), atol=1e-6, rtol=1e-5)


def test_l2_zero_gradient_does_not_move() -> None:
    """A constant model has zero input gradient: the step guard must give no move, not NaN."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    nn.init.zeros_(model[1].weight)
    x, y = torch.full((5, 6), 0.5), torch.zeros(5, dtype=torch.long)
    delta0 = sample_ball((5, 6), 0.1, "l2", generator=gen(22))
    delta = pgd(model, x, y, norm="l2", eps=0.1, alpha=0.15, steps=3, generator=gen(22))
    torch.testing.assert_close(delta, delta0)


# ------------------------------------------------------------------------------------------------
# Attack strength on a trained model


def test_k_steps_reach_at_least_one_step_loss() -> None:
    model, x, y = trained_mlp()
    eps = 0.5
    clean = per_example_loss(model, x, y).mean()
    noise = sample_ball(x.shape, eps, "l2", generator=gen(20))
    random_loss = per_example_loss(model, (x + noise).clamp(0, 1), y).mean()
    fast = pgd(model, x, y, norm="l2", eps=eps, alpha=1.5 * eps, steps=1, generator=gen(21))
    pgd10 = pgd(model, x, y, norm="l2", eps=eps, alpha=2.5 * eps / 10, steps=10, generator=gen(21))
    fast_loss = per_example_loss(model, x + fast, y).mean()
    pgd10_loss = per_example_loss(model, x + pgd10, y).mean()
    assert fast_loss > 2 * max(clean, random_loss)  # ascent, not descent, and much stronger than noise
    assert pgd10_loss >= fast_loss


# ------------------------------------------------------------------------------------------------
# Side effects: no weight gradients, mode untouched


def test_pgd_leaves_grads_and_modes_alone() -> None:
    model = small_cnn()
    model.train()
    model[4].eval()  # a mixed state must survive as it is
    modes = [m.training for m in model.modules()]
    existing = torch.randn_like(model[0].weight)
    model[0].weight.grad = existing.clone()
    x, y = box_images(8, seed=22), torch.randint(0, 5, (8,), generator=gen(23))
    for norm in ("l2", "linf"):
        pgd(model, x, y, norm=norm, eps=1.0, alpha=0.5, steps=2, restarts=2, generator=gen(24))
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[0].weight.grad, existing)
    assert all(p.grad is None for name, p in model.named_parameters() if name != "0.weight")


def test_pgd_works_under_no_grad() -> None:
    model = small_cnn().eval()
    x, y = box_images(8, seed=25), torch.randint(0, 5, (8,), generator=gen(26))
    with torch.no_grad():
        delta = pgd(model, x, y, norm="l2", eps=1.0, alpha=0.5, steps=2, generator=gen(27))
    assert delta.abs().sum() > 0 and not delta.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_attack_mode_sets_and_restores() -> None:
    model = small_cnn()
    model.train()
    model[1].eval()
    before = [m.training for m in model.modules()]
    with attack_mode(model, "eval"):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    model.eval()
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError), attack_mode(model, "train"):
        assert all(m.training for m in model.modules())
        raise RuntimeError("restored even on error")
    assert [m.training for m in model.modules()] == before
    with pytest.raises(ValueError, match="mode"), attack_mode(model, "test"):
        pass


def test_bf16_autocast_keeps_constraints() -> None:
    model = small_cnn().eval()
    x, y = box_images(16, seed=28), torch.randint(0, 5, (16,), generator=gen(29))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta = pgd(model, x, y, norm="l2", eps=1.0, alpha=0.5, steps=3, restarts=2, generator=gen(30))
    assert delta.dtype == torch.float32 and torch.isfinite(delta).all()
    assert (delta.flatten(1).norm(dim=1) <= 1.0 + 1e-6).all()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()


# ------------------------------------------------------------------------------------------------
# Restarts


def restart_case(targeted: bool) -> tuple[nn.Module, Tensor, Tensor, dict[str, float]]:
    """A linear model where the random start decides success for many examples (small alpha, large eps)."""
    model = linear_model(12, 3, seed=31).eval()
    x = 0.3 + 0.4 * torch.rand((200, 12), generator=gen(32))
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = (pred + 1) % 3 if targeted else pred  # untargeted: start correctly classified
    return model, x, y, {"norm": "l2", "eps": 0.9, "alpha": 0.1, "steps": 1}


def attack_outcome(model: nn.Module, x: Tensor, y: Tensor, delta: Tensor, targeted: bool) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        logits = model(x + delta)
    hit = logits.argmax(1) == y
    return (hit if targeted else ~hit), F.cross_entropy(logits, y, reduction="none")


@pytest.mark.parametrize("targeted", [False, True])
def test_restarts_select_per_example(targeted: bool) -> None:
    model, x, y, kw = restart_case(targeted)
    stream, runs = gen(33), 4
    candidates = torch.stack([pgd(model, x, y, **kw, generator=stream, targeted=targeted) for _ in range(runs)])
    outcomes = [attack_outcome(model, x, y, d, targeted) for d in candidates]
    success = torch.stack([s for s, _ in outcomes])  # (runs, batch)
    loss = torch.stack([ls for _, ls in outcomes])
    chosen = pgd(model, x, y, **kw, restarts=runs, generator=gen(33), targeted=targeted)

    # The chosen delta is, per example, one of the restarts' deltas.
    matches = (candidates == chosen).flatten(2).all(dim=2)  # (runs, batch)
    assert matches.any(dim=0).all()
    chosen_success, chosen_loss = attack_outcome(model, x, y, chosen, targeted)
    any_success = success.any(dim=0)
    assert torch.equal(chosen_success, any_success)
    # Where no restart succeeded: the highest loss (targeted: lowest).
    best = loss.amax(dim=0) if not targeted else loss.amin(dim=0)
    torch.testing.assert_close(chosen_loss[~any_success], best[~any_success])
    # The case exercises every branch: disagreeing restarts, and failures whose losses differ.
    mixed = success.any(dim=0) & ~success.all(dim=0)
    assert mixed.sum() >= 5 and (~any_success).sum() >= 5
    assert (loss[:, ~any_success].std(dim=0) > 1e-3).all()
    assert (chosen_success & ~success[0]).any()  # restart 0 alone would have been worse


@pytest.mark.parametrize("targeted", [False, True])
def test_more_restarts_never_fewer_successes(targeted: bool) -> None:
    model, x, y, kw = restart_case(targeted)
    counts = []
    for restarts in (1, 2, 4, 8):
        delta = pgd(model, x, y, **kw, restarts=restarts, generator=gen(34), targeted=targeted)
        counts.append(int(attack_outcome(model, x, y, delta, targeted)[0].sum()))
    assert counts == sorted(counts) and counts[-1] > counts[0]


# ------------------------------------------------------------------------------------------------
# Targeted attacks, determinism, attack_from


def target_margin(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad():
        logits = model(x)
    target = logits.gather(1, t[:, None]).squeeze(1)
    others = logits.scatter(1, t[:, None], float("-inf")).amax(dim=1)
    return target - others


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_targeted_raises_target_margin(norm: str) -> None:
    model = linear_model(16, 5, seed=35).eval()
    x = 0.3 + 0.4 * torch.rand((64, 16), generator=gen(36))
    t = torch.randint(0, 5, (64,), generator=gen(37))
    eps = 0.5 if norm == "l2" else 0.1
    kw: dict = {"norm": norm, "eps": eps, "alpha": 2.5 * eps / 10, "steps": 10, "random_start": False}
    before = target_margin(model, x, t)
    toward = target_margin(model, x + pgd(model, x, t, targeted=True, **kw), t)
    away = target_margin(model, x + pgd(model, x, t, targeted=False, **kw), t)
    assert (toward > before).all()
    assert (away < before).all()


def test_large_targeted_perturbation_hits_target() -> None:
    """The paper's large targeted perturbations (eps 500) are effectively box-constrained only."""
    model = linear_model(16, 5, seed=38).eval()
    x = torch.rand((32, 16), generator=gen(39))
    t = torch.randint(0, 5, (32,), generator=gen(40))
    delta = pgd(model, x, t, norm="l2", eps=500.0, alpha=1.0, steps=50, targeted=True, generator=gen(41))
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    reachable = target_margin(model, (model[1].weight[t] > 0).float(), t) > 0  # best box corner per target
    hits = model(x + delta).argmax(1) == t
    assert hits[reachable].all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_same_seed_same_delta(norm: str) -> None:
    model = small_cnn().eval()
    x, y = box_images(8, seed=42), torch.randint(0, 5, (8,), generator=gen(43))
    kw: dict = {"norm": norm, "eps": 0.5, "alpha": 0.2, "steps": 3, "restarts": 2}
    a = pgd(model, x, y, **kw, generator=gen(44))
    b = pgd(model, x, y, **kw, generator=gen(44))
    c = pgd(model, x, y, **kw, generator=gen(45))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", ["fast", "pgd3", "fgsm_rs"])
def test_attack_from_matches_pgd(method: str) -> None:
    model = small_cnn().eval()
    x, y = box_images(8, seed=46), torch.randint(0, 5, (8,), generator=gen(47))
    attack = resolve_attack(method, Attack(eps=0.5))
    expected = pgd(
        model, x, y, norm=attack.norm, eps=0.5, alpha=attack.alpha, steps=attack.steps, restarts=2, generator=gen(48)
    )
    torch.testing.assert_close(attack_from(model, x, y, attack, restarts=2, generator=gen(48)), expected)
