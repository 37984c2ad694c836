"""LR schedules (workloads.training.schedules): values per iteration against torch's own schedulers, step identical to
the
per-epoch StepLR it replaced, strict validation, resume exactness (2 + resume + 1 == 3 epochs with onecycle) and
the per-iteration schedule under 2 gloo ranks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler

from tests import fixtures
from tests.test_distributed import torchrun_entry, write_spec
from tests.test_train import TIMING, tiny_spec, weights
from workloads import layout
from workloads.assets import checkpoint
from workloads.kinds.train import train
from workloads.schema import SpecError
from workloads.spec import Optimizer, RunSpec, from_dict
from workloads.training.schedules import Schedule


def sgd(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def lrs(scheduler: Any, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    """The lr of each of `steps` optimizer steps (read before the step, as the trainer uses it)."""
    values = []
    for _ in range(steps):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return values


def ours(epochs: int, steps_per_epoch: int, **optimizer: Any) -> list[float]:
    opt = sgd(optimizer.get("lr", 0.1))
    return lrs(Schedule(opt, Optimizer(**optimizer), epochs, steps_per_epoch), opt, epochs * steps_per_epoch)


@pytest.mark.parametrize(
    ("step_epochs", "gamma", "epochs", "per_epoch"), [(2, 0.1, 7, 3), (1, 0.5, 5, 1), (3, 0.2, 9, 4)]
)
def test_step_per_iteration_is_bit_identical_to_the_per_epoch_steplr(
    step_epochs: int, gamma: float, epochs: int, per_epoch: int
) -> None:
    """Every iteration's lr == the per-epoch StepLR's lr of its epoch (==, not close): the paper grids, golden
    files and the committed reference run keep their lr values."""
    opt = sgd(0.1)
    old = lr_scheduler.StepLR(opt, step_size=step_epochs, gamma=gamma)
    per_epoch_lrs = lrs(old, opt, epochs)
    expected = [lr for lr in per_epoch_lrs for _ in range(per_epoch)]
    assert ours(epochs, per_epoch, lr=0.1, step_epochs=step_epochs, gamma=gamma) == expected


def test_onecycle_and_cosine_match_torch_stepped_per_iteration() -> None:
    total = 4 * 5
    opt = sgd()
    onecycle = lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=total, pct_start=0.3, cycle_momentum=False)
    assert ours(4, 5, schedule="onecycle", max_lr=0.4, peak_fraction=0.3) == lrs(onecycle, opt, total)
    opt = sgd()
    assert ours(4, 5, schedule="cosine") == lrs(lr_scheduler.CosineAnnealingLR(opt, T_max=total), opt, total)
    values = ours(4, 5, schedule="onecycle")  # max_lr None: lr is the peak
    assert max(values) == pytest.approx(0.1) and values[0] == pytest.approx(0.1 / 25)


def test_cyclic_is_wong_et_als_triangle() -> None:
    """fast_adversarial: lr_schedule(t) = interp(t, [0, 2/5 E, E], [0, max_lr, 0]) at t = epoch + (i + 1) / n."""
    epochs, n = 5, 4
    values = ours(epochs, n, schedule="cyclic", max_lr=0.2, peak_fraction=0.4)
    for it, value in enumerate(values):
        t = (it + 1) / n
        expected = 0.2 * t / 2 if t <= 2 else 0.2 * (epochs - t) / (epochs - 2)
        assert value == pytest.approx(expected, abs=1e-12), it
    assert max(values) == pytest.approx(0.2) and values[-1] == pytest.approx(0.0)


def test_warmup_then_schedule() -> None:
    """Linear warm-up over round(W x n) iterations from lr / (w + 1) to lr, then the schedule over the rest."""
    epochs, n = 4, 5
    cosine = ours(epochs, n, schedule="cosine", warmup_epochs=0.6)  # w = 3 iterations
    w, total = 3, epochs * n
    assert cosine[:w] == pytest.approx([0.1 * (i + 1) / (w + 1) for i in range(w)])
    rest = [0.1 * (1 + math.cos(math.pi * i / (total - w))) / 2 for i in range(total - w)]
    assert cosine[w:] == pytest.approx(rest)
    step = ours(epochs, n, step_epochs=1, gamma=0.5, warmup_epochs=1)  # step_epochs count after the warm-up
    assert step[:n] == pytest.approx([0.1 * (i + 1) / (n + 1) for i in range(n)])
    assert step[n:] == pytest.approx([0.1 * 0.5 ** (i // n) for i in range(total - n)])


def test_onecycle_warmup_is_a_linear_rise_then_onecycles_decay() -> None:
    """Against torch's own schedulers built by hand: the w warm-up iterations are LinearLR from max_lr / 25 (the
    start of OneCycleLR) on an lr of max_lr, the peak is iteration w, and from there every value is OneCycleLR's
    (pct_start = (w + 1) / total puts its peak at iteration w too), down to its max_lr / 25e4 at the last one."""
    epochs, n, w = 4, 5, 3  # warmup_epochs 0.6 x 5 iterations per epoch
    total = epochs * n
    values = ours(epochs, n, schedule="onecycle", max_lr=0.4, warmup_epochs=0.6)
    opt = sgd(0.4)
    rise = lrs(lr_scheduler.LinearLR(opt, start_factor=1 / 25, total_iters=w), opt, w)
    opt = sgd()
    onecycle = lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=total, pct_start=(w + 1) / total,
                                       cycle_momentum=False)  # fmt: skip
    reference = lrs(onecycle, opt, total)
    assert values[:w] == pytest.approx(rise, rel=1e-12) and values[0] == pytest.approx(0.4 / 25)
    assert values[w] == 0.4 and values[w:] == pytest.approx(reference[w:], rel=1e-9)
    assert values[-1] == pytest.approx(0.4 / 25e4, rel=1e-9) and reference[-1] == pytest.approx(0.4 / 25e4)
    assert values[1:w] != pytest.approx(reference[1:w])  # the warm-up replaced OneCycleLR's cosine rise


def test_cyclic_warmup_moves_the_triangles_peak_to_the_warmups_end() -> None:
    """fast_adversarial's triangle with its peak at the warm-up's end (t = (w + 1) / n epochs), not at
    peak_fraction: the rise is the very ramp of step's and cosine's warm-up (LinearLR from lr / (w + 1))."""
    epochs, n, w = 5, 4, 6  # warmup_epochs 1.5
    values = ours(epochs, n, schedule="cyclic", max_lr=0.2, warmup_epochs=1.5)
    peak_t = (w + 1) / n
    for it, value in enumerate(values):
        t = (it + 1) / n
        expected = 0.2 * t / peak_t if t <= peak_t else 0.2 * (epochs - t) / (epochs - peak_t)
        assert value == pytest.approx(expected, abs=1e-12), it
    opt = sgd(0.2)
    ramp = lrs(lr_scheduler.LinearLR(opt, start_factor=1 / (w + 1), total_iters=w), opt, w + 1)
    assert values[: w + 1] == pytest.approx(ramp, rel=1e-12) and values[w] == max(values) == 0.2
    assert values[-1] == 0.0 and values == ours(epochs, n, schedule="cyclic", max_lr=0.2, peak_fraction=0.35)


@pytest.mark.parametrize("schedule", ["onecycle", "cyclic", "cosine", "step"])
def test_a_resume_mid_warmup_continues_the_schedule_exactly(schedule: str) -> None:
    """Saved and loaded at iteration 5 of a 9-iteration warm-up (and at 10, just after it): the values go on ==."""
    optimizer = {"schedule": schedule, "warmup_epochs": 3, **({"max_lr": 0.3} if schedule != "step" else {})}
    straight = ours(5, 3, **optimizer)
    for head_steps in (5, 10):
        opt = sgd()
        first = Schedule(opt, Optimizer(**optimizer), 5, 3)
        head = lrs(first, opt, head_steps)
        opt2 = sgd()
        second = Schedule(opt2, Optimizer(**optimizer), 5, 3)
        opt2.load_state_dict(opt.state_dict())
        second.load_state_dict(first.state_dict())
        assert head + lrs(second, opt2, 15 - head_steps) == straight, (schedule, head_steps)


@pytest.mark.parametrize(
    "optimizer",
    [
        {"schedule": "onecycle", "warmup_epochs": 1},
        {"schedule": "cyclic", "warmup_epochs": 2.5, "max_lr": 0.2},
        {"schedule": "onecycle", "warmup_epochs": 0.5, "peak_fraction": 0.4},  # the default, written out
    ],
)
def test_warmup_is_accepted_for_onecycle_and_cyclic(optimizer: dict[str, Any]) -> None:
    assert from_dict({"epochs": 3, "optimizer": optimizer}).optimizer.warmup_epochs == optimizer["warmup_epochs"]


def test_schedule_state_round_trip_and_legacy_steplr_checkpoints() -> None:
    for optimizer in ({"schedule": "onecycle"}, {"schedule": "cosine", "warmup_epochs": 1.5}, {"step_epochs": 2}):
        straight = ours(5, 3, **optimizer)
        opt = sgd()
        first = Schedule(opt, Optimizer(**optimizer), 5, 3)
        head = lrs(first, opt, 7)
        opt2 = sgd()
        second = Schedule(opt2, Optimizer(**optimizer), 5, 3)  # the trainer's order: build, then load both states
        opt2.load_state_dict(opt.state_dict())
        second.load_state_dict(first.state_dict())
        assert head + lrs(second, opt2, 8) == straight, optimizer
    # a checkpoint of the per-epoch StepLR (before schedules): converted, then continues bit-identically
    opt = sgd()
    legacy = lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    lrs(legacy, opt, 3)
    resumed = Schedule(opt, Optimizer(step_epochs=2), 6, 4)
    resumed.load_state_dict(legacy.state_dict())
    assert lrs(resumed, opt, 12) == ours(6, 4, step_epochs=2)[12:]
    with pytest.raises(ValueError, match="counted 4 iterations per epoch, this run 5"):
        Schedule(sgd(), Optimizer(), 6, 5).load_state_dict(resumed.state_dict())


@pytest.mark.parametrize(
    ("optimizer", "epochs", "message"),
    [
        (
            {"schedule": "triangle"},
            3,
            "optimizer.schedule: expected one of step, onecycle, cyclic, cosine; got 'triangle'",
        ),
        ({"max_lr": 0.2}, 3, "optimizer.max_lr: only read by schedule onecycle or cyclic; got step"),
        ({"schedule": "cyclic", "max_lr": 0}, 3, "optimizer.max_lr: expected a value > 0"),
        ({"schedule": "cyclic", "peak_fraction": 1.0}, 3, "optimizer.peak_fraction: expected a value < 1; got 1.0"),
        (
            {"schedule": "onecycle", "warmup_epochs": 1, "peak_fraction": 0.3},
            3,
            "optimizer.peak_fraction: not read with warmup_epochs (the peak of onecycle is at the warm-up's end): "
            "give one of them",
        ),
        ({"schedule": "cyclic", "warmup_epochs": 3}, 3, "optimizer.warmup_epochs: expected less than epochs (3)"),
        ({"schedule": "onecycle", "warmup_epochs": 4.5}, 3, "optimizer.warmup_epochs: expected less than epochs (3)"),
        ({"schedule": "cosine", "warmup_epochs": 3}, 3, "optimizer.warmup_epochs: expected less than epochs (3)"),
        ({"warmup_epochs": -1}, 3, "optimizer.warmup_epochs: expected a value >= 0"),
    ],
)
def test_schedule_settings_are_validated(optimizer: dict[str, Any], epochs: int, message: str) -> None:
    with pytest.raises(SpecError) as info:
        from_dict({"epochs": epochs, "optimizer": optimizer})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_onecycle_resume_reproduces_the_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 epochs + resume + 1 == 3 epochs: weights bit-identical, the per-iteration schedule continued exactly;
    epochs.csv lr = the value at each epoch's start; a onecycle run cannot change its epochs on resume."""
    onecycle = {"lr": 0.05, "schedule": "onecycle", "max_lr": 0.1}
    spec = tiny_spec(optimizer=onecycle, eval={"every": 2, "steps": 1})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(spec, straight)
    interrupted_after_two_epochs(spec, resumed, monkeypatch)
    train(spec, resumed)
    a, b = layout.read_csv(straight / layout.EPOCHS), layout.read_csv(resumed / layout.EPOCHS)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert [r["epoch"] for r in b] == ["1", "2", "3"] and strip(a) == strip(b)
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    opt = sgd(0.1)
    reference = lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=18, pct_start=0.4, cycle_momentum=False)
    values = lrs(reference, opt, 18)
    assert [float(r["lr"]) for r in a] == [values[0], values[6], values[12]]
    with pytest.raises(ValueError, match="epochs: 3 -> 4"):  # onecycle spans the run: epochs is a resume key
        train(tiny_spec(optimizer=onecycle, eval={"every": 2, "steps": 1}, epochs=4), resumed)


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_cosine_warmup_with_bf16_attacks_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other levers through a preemption mid-schedule: warm-up + cosine, attack passes in bf16 (step fp32)."""
    levers = {"optimizer": {"lr": 0.05, "schedule": "cosine", "warmup_epochs": 1.5}, "attack": {"precision": "bf16"}}
    spec = tiny_spec(**levers, eval={"every": 3, "steps": 1})
    train(spec, tmp_path / "straight")
    interrupted_after_two_epochs(spec, tmp_path / "resumed", monkeypatch)
    train(spec, tmp_path / "resumed")
    wa, wb = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert layout.read_json(tmp_path / "resumed" / layout.SPEC)["attack"]["precision"] == "bf16"  # recorded


@pytest.mark.parametrize("schedule", ["onecycle", "cyclic"])
@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_a_run_preempted_mid_warmup_resumes_exactly(
    schedule: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """warmup_epochs 2.5 of 3 (15 of 18 iterations): preempted after epoch 2, inside the warm-up; the resumed run's
    weights and epochs.csv equal the uninterrupted run's, and its lr column is the warm-up's ramp."""
    optimizer = {"lr": 0.05, "schedule": schedule, "max_lr": 0.1, "warmup_epochs": 2.5}
    spec = tiny_spec(optimizer=optimizer, eval={"every": 3, "steps": 1})
    train(spec, tmp_path / "straight")
    interrupted_after_two_epochs(spec, tmp_path / "resumed", monkeypatch)
    train(spec, tmp_path / "resumed")
    wa, wb = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    a, b = (layout.read_csv(tmp_path / d / layout.EPOCHS) for d in ("straight", "resumed"))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    start = 0.1 / 25 if schedule == "onecycle" else 0.1 / 16
    step = (0.1 - start) / 15 if schedule == "onecycle" else 0.1 / 16
    assert [float(r["lr"]) for r in b] == pytest.approx([start + step * i for i in (0, 6, 12)], rel=1e-9)


def interrupted_after_two_epochs(spec: RunSpec, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train `spec` in run_dir until the first step of epoch 3 raises (a preemption after epoch 2's checkpoint)."""
    import workloads.kinds.train as trainer

    real, calls = trainer.to_device, {"n": 0}  # called once per training batch

    def interrupting(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 1:  # 384 examples / batch 64 = 6 steps per epoch
            raise KeyboardInterrupt("preempted")
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "to_device", interrupting)
        with pytest.raises(KeyboardInterrupt):
            train(spec, run_dir)
    assert checkpoint.load(run_dir / layout.CKPT_LAST)["epoch"] == 2


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_onecycle_under_two_gloo_ranks_matches_one_process(tmp_path: Path) -> None:
    """The per-iteration schedule under DDP: 2 ranks == one process stepping torch's OneCycleLR per global batch."""
    onecycle = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle", "peak_fraction": 0.3}
    spec_path, spec = write_spec(tmp_path / "ddp-onecycle", method="standard", optimizer=onecycle)
    torchrun_entry(spec_path)
    state = checkpoint.load(spec_path.parent / layout.CKPT_LAST)
    o = spec.optimizer

    def onecycle_per_step(opt: torch.optim.Optimizer, per_epoch: int) -> lr_scheduler.OneCycleLR:
        total = spec.epochs * per_epoch
        return lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=total, pct_start=o.peak_fraction,
                                       cycle_momentum=False)  # fmt: skip

    expected = fixtures.manual_sgd_training(spec, onecycle_per_step)
    for name, value in expected.items():
        torch.testing.assert_close(state["model"][name], value, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_a_checkpoint_from_before_schedules_resumes_exactly(tmp_path: Path) -> None:
    """A checkpoint written by the per-epoch StepLR trainer (its scheduler state, a spec.json without the new keys,
    no scaler entry) resumes into the per-iteration schedule and ends bit-identical to an uninterrupted run."""
    straight, old = tmp_path / "straight", tmp_path / "old"
    train(tiny_spec(), straight)  # step_epochs 2, gamma 0.1: the decay falls inside the resumed part
    train(tiny_spec(epochs=2), old)
    state = checkpoint.load(old / layout.CKPT_LAST)
    legacy_opt = sgd(0.05)
    legacy = lr_scheduler.StepLR(legacy_opt, step_size=2, gamma=0.1)
    lrs(legacy, legacy_opt, 2)
    state["scheduler"] = legacy.state_dict()
    del state["scaler"]
    for key in ("schedule", "warmup_epochs", "max_lr", "peak_fraction"):
        del state["spec"]["optimizer"][key]
    del state["spec"]["attack"]["precision"], state["spec"]["compile"]
    torch.save(state, old / layout.CKPT_LAST)
    train(tiny_spec(), old)
    assert [r["lr"] for r in layout.read_csv(old / layout.EPOCHS)] == ["0.05", "0.05", str(0.05 * 0.1)]
    wa, wb = weights(straight), weights(old)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
