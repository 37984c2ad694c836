"""GradAlign (Andriushchenko & Flammarion 2020): the catalog entry (FGSM from delta = 0, alpha = eps, Linf), the
regulariser in closed form on a linear model (zero gradients left out), its weight gradient a true derivative
(double backprop, gradcheck), the passes and gradients of a training step (no extra pass for the clean gradient),
and 2 gloo DDP ranks == one process averaging the ranks' losses (one backward reduces the regulariser too)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from tests.fixtures import free_port
from tests.test_attacks import box_images, ce_input_grad, gen, linear_model
from tests.test_distributed import TORCHRUN_VARS
from tests.test_methods import Counting
from workloads import catalog
from workloads.adversarial.attacks import attack_from, clamp_to_box, gradient_misalignment, sample_ball
from workloads.runtime import distributed
from workloads.schema import SpecError
from workloads.spec import Attack, check_spec, from_dict, resolve_attack
from workloads.training.engine import train_step, wrap_ddp

pytestmark = pytest.mark.usefixtures("one_thread")
LAMBDA = catalog.METHODS["gradalign"].align


def smooth_cnn(seed: int = 0) -> nn.Module:
    """Softplus, not ReLU: the input gradient's weight derivative is then smooth (gradcheck) and never zero."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Softplus(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def test_catalog_entry_is_fgsm_from_zero_with_alpha_eps() -> None:
    info = catalog.method_info("gradalign")
    assert (info.steps, info.norm, info.start_factor, info.project, info.step, info.align) == (
        1, "linf", 0.0, True, "gradalign", 0.2,
    )  # fmt: skip
    a = resolve_attack("gradalign", Attack(norm="l2", eps=0.1))  # Linf forced, as the paper defines it
    assert (a.norm, a.steps, a.alpha, a.start_factor, a.step) == ("linf", 1, pytest.approx(0.1), 0.0, "gradalign")
    model = linear_model(18, 4, seed=70)
    x, y = box_images(16, seed=71).view(16, -1)[:, :18], torch.randint(0, 4, (16,), generator=gen(72))
    grads: list[Tensor] = []
    delta = attack_from(model, x, y, a, generator=gen(73), input_grads=grads)
    expected = (0.1 * ce_input_grad(model, x.double(), y).sign()).clamp(-x.double(), 1 - x.double())
    torch.testing.assert_close(delta.double(), expected, atol=1e-7, rtol=0)  # FGSM from 0, box-clamped
    (g,) = grads  # the one step's gradient, at x itself (zero start): GradAlign's clean gradient
    torch.testing.assert_close(g.double(), ce_input_grad(model, x.double(), y), atol=1e-6, rtol=1e-5)
    assert from_dict({"method": "gradalign", "attack": {"eps": 0.03}}).method == "gradalign"  # a grid method
    assert (a.align, resolve_attack("gradalign", Attack(eps=0.1, align=0.5)).align) == (0.2, 0.5)  # attack.align


def test_align_is_refused_for_methods_without_the_regulariser() -> None:
    assert check_spec(from_dict({"method": "gradalign", "attack": {"align": 1.0}})) == []
    with pytest.raises(SpecError, match=r"^attack\.align: only the gradalign method has an align weight"):
        from_dict({"method": "fast", "attack": {"align": 1.0}})


def test_misalignment_closed_form_and_zero_gradients_left_out() -> None:
    """1 - mean cos(g(x), g(x + eta)) with g the linear model's per-example input gradient, eta the generator's
    U(-eps, eps) clamped into the box; an example with a zero first gradient does not count; all zero: 0."""
    model = linear_model(18, 4, seed=74)
    x, y = box_images(32, seed=75).view(32, -1)[:, :18], torch.randint(0, 4, (32,), generator=gen(76))
    eta = clamp_to_box(sample_ball(x.shape, 0.2, "linf", gen(77)), x)
    g1, g2 = ce_input_grad(model, x.double(), y), ce_input_grad(model, (x + eta).double(), y)
    cos = F.cosine_similarity(g1, g2, dim=1)
    value = gradient_misalignment(model, x, y, g1.float(), 0.2, gen(77))
    assert value.item() == pytest.approx(1 - cos.mean().item(), abs=1e-6) and 0 < value.item() < 2
    g1[:5] = 0  # left out: the mean runs over the other 27 examples
    value = gradient_misalignment(model, x, y, g1.float(), 0.2, gen(77))
    assert value.item() == pytest.approx(1 - cos[5:].mean().item(), abs=1e-6)
    zero = gradient_misalignment(model, x, y, torch.zeros_like(x), 0.2, gen(77))
    zero.backward()
    assert zero.item() == 0 and all(p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)) for p in
                                    model.parameters())  # fmt: skip


def test_misalignment_weight_gradient_is_the_true_derivative() -> None:
    """gradcheck (float64, finite differences) of the regulariser as a function of the weights: the double
    backprop through the create_graph input gradient is exact."""
    model = smooth_cnn(78).double()
    x = box_images(4, seed=79).double()
    y, grad = torch.randint(0, 4, (4,), generator=gen(80)), torch.randn(4, 1, 8, 8, generator=gen(81)).double()
    names = [n for n, _ in model.named_parameters()]

    def reg(*weights: Tensor) -> Tensor:
        call = lambda z: functional_call(model, dict(zip(names, weights, strict=True)), (z,))  # noqa: E731
        return gradient_misalignment(Call(call), x, y, grad, 0.1, gen(82))

    weights = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert torch.autograd.gradcheck(reg, weights, eps=1e-6, atol=1e-5)


class Call(nn.Module):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, z: Tensor) -> Tensor:
        return self.fn(z)


@pytest.mark.parametrize("align", [None, 0.7])
def test_train_step_passes_and_weight_gradient(monkeypatch: pytest.MonkeyPatch, align: float | None) -> None:
    """3 forwards (attack, regulariser, weight step: the clean gradient is the attack's own), autograd.grad w.r.t.
    inputs only (the second with create_graph), one backward; the step's weight gradient is that of
    cross-entropy(x + delta) + lambda x misalignment, and the returned loss is the cross-entropy."""
    model = Counting(smooth_cnn(83))
    twin = smooth_cnn(83)
    x, y = box_images(16, seed=84), torch.randint(0, 4, (16,), generator=gen(85))
    attack = resolve_attack("gradalign", Attack(eps=0.1, align=align))
    calls: list[tuple[int, bool]] = []
    real_grad = torch.autograd.grad

    def spy(outputs: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        inputs = list(inputs)
        assert len(inputs) == 1 and inputs[0].shape == x.shape  # an input, never a parameter
        calls.append((len(inputs), bool(kwargs.get("create_graph", False))))
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss, _ = train_step(model, model, opt, x, y, attack, gen(86))
    assert model.forwards == 3 and calls == [(1, False), (1, True)]
    # by hand on the twin: the same draws (the zero start's, then eta's) from the same generator
    g = gen(86)
    grads: list[Tensor] = []
    delta = attack_from(twin.eval(), x, y, attack, generator=g, input_grads=grads)
    misaligned = gradient_misalignment(twin, x, y, grads[0], 0.1, g)
    ce = F.cross_entropy(twin.train()(x + delta), y)
    (ce + (LAMBDA if align is None else align) * misaligned).backward()
    assert loss.item() == pytest.approx(ce.item(), rel=1e-6) and misaligned.item() > 0
    for p, after in zip(twin.parameters(), model.parameters(), strict=True):  # lr 1, no momentum: w - grad
        assert p.grad is not None
        torch.testing.assert_close(after.detach(), p.detach() - p.grad, atol=1e-6, rtol=1e-5)


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    dist = distributed.setup(from_dict({"threads": 1}))
    try:
        model = smooth_cnn(87)
        ddp = wrap_ddp(model, dist)
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        x, y = ddp_batches()
        g = gen(90 + rank)
        for step in range(2):
            shard = slice(8 * rank, 8 * rank + 8)
            train_step(model, ddp, opt, x[step][shard], y[step][shard], resolve_attack("gradalign", Attack(eps=0.1)), g)
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        distributed.cleanup()


def ddp_batches() -> tuple[list[Tensor], list[Tensor]]:
    return [box_images(16, seed=88 + s) for s in range(2)], [torch.randint(0, 4, (16,), generator=gen(89 + s))
                                                            for s in range(2)]  # fmt: skip


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_two_gloo_ranks_match_one_process_averaging_the_ranks_losses(tmp_path: Path) -> None:
    """DDP: the regulariser's graph is on the unwrapped model, added to the DDP forward's loss, one backward: each
    parameter's gradient (cross-entropy + lambda x misalignment) is all-reduced once, no static_graph needed."""
    out = str(tmp_path / "ddp.pt")
    saved = {k: os.environ.pop(k) for k in TORCHRUN_VARS if k in os.environ}
    try:
        mp.spawn(_ddp_worker, args=(free_port(), out), nprocs=2)
    finally:
        os.environ.update(saved)
    model = smooth_cnn(87)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    attack, (x, y) = resolve_attack("gradalign", Attack(eps=0.1)), ddp_batches()
    gens = [gen(90), gen(91)]
    for step in range(2):
        total = torch.zeros(())
        for rank, g in enumerate(gens):
            xs, ys = x[step][8 * rank : 8 * rank + 8], y[step][8 * rank : 8 * rank + 8]
            grads: list[Tensor] = []
            delta = attack_from(model.eval(), xs, ys, attack, generator=g, input_grads=grads)
            align = gradient_misalignment(model, xs, ys, grads[0], 0.1, g)
            total = total + (F.cross_entropy(model.train()(xs + delta), ys) + LAMBDA * align) / 2
        opt.zero_grad()
        total.backward()
        opt.step()
    two = torch.load(out)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(two[name], value, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_a_compiled_gradalign_step_matches_eager() -> None:
    """compile: the attack on the compiled model (frozen weights), the regulariser's double backprop on the eager
    module under it (compiled graphs have no double backward): the weights equal the eager steps' (aot_eager)."""
    eager = smooth_cnn(92)
    model = smooth_cnn(92)
    compiled = torch.compile(model, backend="aot_eager")
    x, y = box_images(16, seed=93), torch.randint(0, 4, (16,), generator=gen(94))
    attack = resolve_attack("gradalign", Attack(eps=0.1))
    for m, run, freeze in ((eager, eager, False), (model, compiled, True)):
        opt, g = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9), gen(95)
        for _ in range(2):
            train_step(run, run, opt, x, y, attack, g, freeze=freeze)
    for a, b in zip(eager.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_the_trainer_runs_gradalign(tmp_path: Path) -> None:
    from tests.test_train import tiny_spec
    from workloads.kinds.train import train

    result = train(tiny_spec(method="gradalign", epochs=1, train_subset=128, attack={"eps": 0.1}), tmp_path)
    assert result["epochs"] == 1 and 0 < result["last_train_loss"] < 10
