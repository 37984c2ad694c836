"""The newer single-step methods: N-FGSM's noise, step and missing projection, free training's replays
(one backward per replay), the trainer's step dispatch, and the catalog/spec rules that name them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.test_attacks import box_images, ce_input_grad, gen, linear_model, small_cnn
from workloads import catalog
from workloads.adversarial.attacks import attack_from, pgd, sample_ball
from workloads.schema import SpecError
from workloads.spec import Attack, from_dict, resolve_attack
from workloads.training.free_step import FreeStep, Stepper

pytestmark = pytest.mark.usefixtures("one_thread")


def size(delta: Tensor, norm: str) -> Tensor:
    return delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(dim=1)


# ------------------------------------------------------------------------------------------------
# Catalog and resolution


def test_catalog_entries() -> None:
    nfgsm, free = catalog.method_info("nfgsm"), catalog.method_info("free")
    assert (nfgsm.steps, nfgsm.norm, nfgsm.start_factor, nfgsm.project, nfgsm.step) == (1, None, 2.0, False, "pgd")
    assert (free.steps, free.norm, free.replays, free.project, free.step) == (1, None, 4, True, "free")
    assert nfgsm.alpha(0.3, 1) == pytest.approx(0.3) and free.alpha(0.3, 1) == pytest.approx(0.3)
    assert catalog.METHOD_RE.match("nfgsm") and catalog.METHOD_RE.match("free")
    # the existing methods keep their attack exactly (defaults of the new fields)
    for name in ("fast", "fgsm_rs", "pgd7"):
        info = catalog.method_info(name)
        assert (info.start_factor, info.project, info.step, info.replays) == (1.0, True, "pgd", 1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_resolve_new_methods(norm: str) -> None:
    a = resolve_attack("nfgsm", Attack(norm=norm, eps=0.5))
    assert (a.norm, a.steps, a.alpha, a.start_factor, a.project, a.replays) == (norm, 1, 0.5, 2.0, False, 1)
    assert resolve_attack("nfgsm", Attack(norm=norm, eps=0.5, noise_factor=3.0)).start_factor == 3.0
    f = resolve_attack("free", Attack(norm=norm, eps=0.5))
    assert (f.step, f.replays, f.alpha, f.project) == ("free", 4, 0.5, True)
    assert resolve_attack("free", Attack(norm=norm, eps=0.5, replays=8)).replays == 8
    fast = resolve_attack("fast", Attack(eps=0.5))
    assert (fast.start_factor, fast.project, fast.step) == (1.0, True, "pgd")


def test_replays_only_for_free() -> None:
    with pytest.raises(SpecError, match=r"^attack\.replays: only the free method"):
        from_dict({"method": "fast", "attack": {"replays": 2}})
    from_dict({"method": "pgd3", "method_schedule": [{"method": "free", "until": 0.5}], "attack": {"replays": 2}})
    with pytest.raises(SpecError, match=r"^bench\.methods\[1\]: free is not benched"):
        from_dict({"kind": "bench", "bench": {"methods": ["standard", "free"]}})


# ------------------------------------------------------------------------------------------------
# N-FGSM


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_nfgsm_box_and_no_projection(norm: str) -> None:
    """x + delta in the box, ||delta|| <= k eps + alpha, and beyond eps for many examples (not projected)."""
    model = small_cnn().eval()
    x = 0.3 + 0.4 * torch.rand((64, 1, 8, 8), generator=gen(50))  # mid-box: the box clamp rarely binds
    y = torch.randint(0, 5, (64,), generator=gen(51))
    eps = 1.0 if norm == "l2" else 0.1
    attack = resolve_attack("nfgsm", Attack(norm=norm, eps=eps))
    delta = attack_from(model, x, y, attack, generator=gen(52))
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    assert (size(delta, norm) <= (2 * eps + eps) * (1 + 1e-6)).all()
    assert (size(delta, norm) > eps * 1.01).float().mean() > 0.5
    projected = pgd(model, x, y, norm=norm, eps=eps, alpha=eps, steps=1, start_factor=2.0, generator=gen(52))
    assert (size(projected, norm) <= eps * (1 + 1e-6)).all()  # the same with projection: inside the ball


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_nfgsm_matches_closed_form(norm: str) -> None:
    """delta = clamp_box(clamp_box(noise in the 2 eps ball) + alpha * step direction), in float64."""
    model = linear_model(18, 4, seed=53)
    x = box_images(64, seed=54).view(64, -1)[:, :18]
    y = torch.randint(0, 4, (64,), generator=gen(55))
    eps = 0.5 if norm == "l2" else 0.1
    noise = sample_ball(x.shape, 2 * eps, norm, generator=gen(56)).double()
    xd = x.double()
    d0 = noise.clamp(-xd, 1 - xd)
    g = ce_input_grad(model, xd + d0, y)
    step = g / g.norm(dim=1, keepdim=True) if norm == "l2" else g.sign()
    expected = (d0 + eps * step).clamp(-xd, 1 - xd)
    delta = attack_from(model, x, y, resolve_attack("nfgsm", Attack(norm=norm, eps=eps)), generator=gen(56))
    torch.testing.assert_close(delta.double(), expected, atol=1e-6, rtol=0)
    assert ((expected - d0).abs() > 0).any() and ((x + delta == 0) | (x + delta == 1)).any()


class Counting(nn.Module):
    """Counts forwards; the test wraps torch.autograd.grad to see what each attack pass differentiates."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.forwards = model, 0

    def forward(self, z: Tensor) -> Tensor:
        self.forwards += 1
        return self.model(z)


@pytest.mark.parametrize("method", ["nfgsm", "fast", "fgsm_rs"])
def test_attack_pass_is_input_only(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One forward per attack step, gradients via autograd.grad w.r.t. delta only, no .grad touched."""
    model = Counting(small_cnn().eval())
    x, y = box_images(8, seed=57), torch.randint(0, 5, (8,), generator=gen(58))
    calls: list[list[Tensor]] = []
    real_grad = torch.autograd.grad

    def spy(outputs: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(list(inputs))
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    attack = resolve_attack(method, Attack(eps=0.5))
    attack_from(model, x, y, attack, generator=gen(59))
    assert model.forwards == attack.steps == 1 and len(calls) == 1
    (inputs,) = calls
    assert len(inputs) == 1 and inputs[0].shape == x.shape  # delta, not a parameter
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# Free


def free_attack(norm: str, eps: float, replays: int) -> Any:
    return resolve_attack("free", Attack(norm=norm, eps=eps, replays=replays))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_free_replays_closed_form(norm: str) -> None:
    """With lr 0 (weights fixed), m replays are m projected steps from delta = 0; the delta carries over."""
    model = linear_model(18, 4, seed=60)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = box_images(32, seed=61).view(32, -1)[:, :18]
    y = torch.randint(0, 4, (32,), generator=gen(62))
    eps = 0.5 if norm == "l2" else 0.1
    xd, d = x.double(), torch.zeros(32, 18, dtype=torch.float64)

    def step(d: Tensor) -> Tensor:
        g = ce_input_grad(model, xd + d, y)  # the mean loss's gradient has the same direction
        d = d + eps * (g / g.norm(dim=1, keepdim=True) if norm == "l2" else g.sign())
        d = d * (eps / d.norm(dim=1, keepdim=True)).clamp(max=1) if norm == "l2" else d.clamp(-eps, eps)
        return d.clamp(-xd, 1 - xd)

    free = FreeStep()
    free(model, model, opt, x, y, free_attack(norm, eps, 3), None)
    for _ in range(3):
        d = step(d)
    assert free.delta is not None
    torch.testing.assert_close(free.delta.double(), d, atol=1e-6, rtol=0)
    free(model, model, opt, x, y, free_attack(norm, eps, 2), None)  # the next mini-batch starts from it
    for _ in range(2):
        d = step(d)
    torch.testing.assert_close(free.delta.double(), d, atol=1e-6, rtol=0)
    assert (size(free.delta, norm) <= eps * (1 + 1e-6)).all()
    assert ((x + free.delta) >= 0).all() and ((x + free.delta) <= 1).all()
    free.new_epoch()
    assert torch.equal(free.carried(x), torch.zeros_like(x))


def test_free_one_backward_per_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each replay: one forward, one backward (weights and delta), one optimizer step; never autograd.grad."""
    model = Counting(small_cnn(seed=3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = box_images(16, seed=63), torch.randint(0, 5, (16,), generator=gen(64))
    backwards, steps = [0], [0]
    real_backward, real_step = torch.Tensor.backward, opt.step

    def count_backward(self: Tensor, *args: Any, **kwargs: Any) -> None:
        backwards[0] += 1
        real_backward(self, *args, **kwargs)

    def count_step(*args: Any, **kwargs: Any) -> Any:
        steps[0] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", count_backward)
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: pytest.fail("free must not call autograd.grad"))
    monkeypatch.setattr(opt, "step", count_step)
    model.train()
    loss, correct = FreeStep()(model, model, opt, x, y, free_attack("linf", 0.1, 3), None)
    assert (model.forwards, backwards[0], steps[0]) == (3, 3, 3)
    assert torch.isfinite(loss) and 0 <= float(correct) <= 16
    assert all(p.grad is not None for p in model.parameters())  # the same backward gave the weight gradient


def test_free_smaller_last_batch() -> None:
    model = linear_model(18, 4, seed=65)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = 0.5 * torch.ones(8, 18)
    free = FreeStep()
    free(model, model, opt, x, torch.zeros(8, dtype=torch.long), free_attack("linf", 0.1, 1), None)
    assert free.delta is not None and free.delta.shape == (8, 18)
    smaller = free.carried(x[:5])
    assert torch.equal(smaller, free.delta[:5])
    larger = free.carried(torch.ones(10, 18))  # rows beyond start at 0; the box of the new batch applies
    assert torch.equal(larger[8:], torch.zeros(2, 18)) and (larger <= 0).all()


def test_stepper_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr("workloads.training.free_step.train_step", lambda *a, **k: seen.append("train_step"))
    stepper = Stepper()
    monkeypatch.setattr(stepper, "free", lambda *a, **k: seen.append("free"))
    for method in ("fast", "free", "nfgsm"):
        stepper(None, None, None, None, None, resolve_attack(method, Attack()), None, mode="eval")
    assert seen == ["train_step", "free", "train_step"]


def test_free_weight_step_uses_the_perturbed_batch() -> None:
    """Replay 2's weight gradient is the plain gradient at x + delta_1 (the delta after replay 1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 4))
    probe = nn.Sequential(nn.Flatten(), nn.Linear(18, 4))
    probe.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = 0.3 + 0.4 * torch.rand((16, 18), generator=gen(66))
    y = torch.randint(0, 4, (16,), generator=gen(67))
    free = FreeStep()
    free(model, model, opt, x, y, free_attack("l2", 0.5, 1), None)
    assert free.delta is not None
    delta1 = free.delta.clone()
    # reproduce replay 1 (clean step) on the probe, then replay 2's step at x + delta1
    popt = torch.optim.SGD(probe.parameters(), lr=0.5)
    for inputs in (x, x + delta1):
        popt.zero_grad()
        F.cross_entropy(probe(inputs), y).backward()
        popt.step()
    free(model, model, opt, x, y, free_attack("l2", 0.5, 1), None)
    for a, b in zip(model.parameters(), probe.parameters(), strict=True):
        torch.testing.assert_close(a, b)


class OverflowScaler:
    """A GradScaler whose every step overflows: gradients are inf, the weight step is skipped."""

    def scale(self, loss: Tensor) -> Tensor:
        return loss * float("inf")

    def step(self, opt: torch.optim.Optimizer) -> None:
        pass

    def update(self) -> None:
        pass


def test_free_overflowing_replay_keeps_delta() -> None:
    model = linear_model(18, 4, seed=68)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = 0.5 * torch.ones(8, 18), torch.zeros(8, dtype=torch.long)
    free = FreeStep()
    free(model, model, opt, x, y, free_attack("l2", 0.5, 2), None, scaler=OverflowScaler())
    assert free.delta is not None and torch.equal(free.delta, torch.zeros_like(x))  # no NaN carried over
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
