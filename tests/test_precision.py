"""Precision and compile levers: fp16 refused for CPU cells at validation (and at job start), the GradScaler's
state through the checkpoint, attack passes in their own precision, frozen weights during a compiled model's
attack, and the levers in readable run_ids."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import orchestrator.grid.devices
import workloads.training.engine as engine
from orchestrator.grid.files import GridError, load_grids
from orchestrator.grid.run_ids import derive_run_ids
from tests.test_train import TinyBN, tiny_spec, weights
from workloads import layout
from workloads.assets import checkpoint
from workloads.assets.models import build_model
from workloads.catalog import dataset_info
from workloads.kinds.train import train
from workloads.spec import ResolvedAttack, from_dict
from workloads.training.engine import attack_amp_dtype, frozen, train_step
from workloads.training.schedules import Schedule

PGD2 = ResolvedAttack("l2", 0.5, 2, 0.6, True)


def grid_file(tmp_path: Path, executor: str, profile: str = "generic", **defaults: Any) -> Path:
    path = tmp_path / "levers.yaml"
    settings = ", ".join(f"{k}: {v}" for k, v in defaults.items())
    path.write_text(f"name: levers\nexecutor: {executor}\nprofile: {profile}\ndefaults: {{{settings}}}\n")
    return path


@pytest.mark.parametrize("setting", [{"precision": "fp16"}, {"attack": "{precision: fp16}"}])
def test_fp16_is_refused_for_a_cpu_cell_when_the_grid_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: dict[str, str]
) -> None:
    monkeypatch.setattr(orchestrator.grid.devices, "local_has_gpu", lambda: False)
    key = "defaults.precision" if "precision" in setting else "defaults.attack.precision"
    with pytest.raises(GridError) as info:
        load_grids(grid_file(tmp_path, "local", **setting))
    (problem,) = info.value.problems
    assert f"levers.yaml:4: {key}: fp16 needs a CUDA device; this cell runs on CPU (executor local" in problem
    monkeypatch.setattr(orchestrator.grid.devices, "local_has_gpu", lambda: True)  # a GPU here: accepted
    assert load_grids(grid_file(tmp_path, "local", **setting))[0].cells[0].run_id
    (tmp_path / "cpu.yaml").write_text("gpu_request: none\n")  # a CPU-only Slurm site: refused
    with pytest.raises(GridError, match=r"\(profile cpu has gpu_request none\): use bf16 or fp32"):
        load_grids(grid_file(tmp_path, "slurm", profile="cpu.yaml", **setting))
    assert load_grids(grid_file(tmp_path, "slurm", **setting))[0].cells  # generic requests GPUs: accepted


def test_local_has_gpu_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not orchestrator.grid.devices.local_has_gpu()


def test_fp16_on_cpu_fails_at_job_start_in_one_line(tmp_path: Path) -> None:
    """A hand-made spec.json that reaches a CPU job: refused before any training (no checkpoint, no row)."""
    with pytest.raises(ValueError, match=r"^precision: fp16 needs a CUDA device; this job runs on cpu") as info:
        train(tiny_spec(precision="fp16"), tmp_path)
    assert "\n" not in str(info.value) and not (tmp_path / layout.CKPT_LAST).exists()


def test_attack_precision_defaults_to_the_runs() -> None:
    assert attack_amp_dtype(from_dict({"precision": "bf16"})) == torch.bfloat16
    assert attack_amp_dtype(from_dict({"precision": "bf16", "attack": {"precision": "fp32"}})) is None
    assert attack_amp_dtype(from_dict({"attack": {"precision": "fp16"}})) == torch.float16
    with pytest.raises(ValueError, match=r"attack.precision: expected one of fp32, bf16, fp16; got 'fp8'"):
        from_dict({"attack": {"precision": "fp8"}})


class Recording(TinyBN):
    """TinyBN that records the autocast state of every forward: (enabled, dtype) on CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[torch.dtype | None] = []

    def forward(self, x: Tensor) -> Tensor:
        enabled = torch.is_autocast_enabled("cpu")
        self.calls.append(torch.get_autocast_dtype("cpu") if enabled else None)
        return super().forward(x)


@pytest.mark.parametrize(
    ("amp", "attack_amp", "expected"),
    [
        (None, torch.bfloat16, [torch.bfloat16, torch.bfloat16, None]),  # attack in bf16, weight step fp32
        (torch.bfloat16, None, [None, None, torch.bfloat16]),
        (torch.bfloat16, "same", [torch.bfloat16] * 3),
    ],
)
def test_attack_passes_run_in_their_own_precision(amp: Any, attack_amp: Any, expected: list[Any]) -> None:
    torch.manual_seed(0)
    model = Recording().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))
    train_step(model, model, opt, x, y, PGD2, torch.Generator().manual_seed(0), amp=amp, attack_amp=attack_amp)
    assert model.calls == expected  # 2 attack steps, then the training forward
    assert all(p.dtype == torch.float32 for p in model.parameters())


def small_model() -> nn.Module:
    info = dataset_info("fashion_mnist")
    torch.manual_seed(0)
    return build_model("small_cnn", info.num_classes, info.in_channels, info.mean, info.std).train()


def fp16_steps(model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, n: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for i in range(n):
        x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(i))
        y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(i))
        train_step(model, model, opt, x, y, PGD2, gen, amp=torch.float16, scaler=scaler)


def test_grad_scaler_state_round_trips_through_the_checkpoint(tmp_path: Path) -> None:
    """fp16 steps with a scale that overflows (so the scaler backs off and skips steps): the scaler's state is
    saved, loaded with weights_only, restored, and the restored run continues exactly as the original."""
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, growth_interval=3)
    fp16_steps(model, opt, scaler, 4)
    assert scaler.get_scale() < 2.0**40  # overflowed at least once: not the default state any more
    spec = tiny_spec()
    sched = Schedule(opt, spec.optimizer, spec.epochs, 6)
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, model=model, optimizer=opt, scheduler=sched, epoch=1, elapsed_s=1.0, best=None,
                    rng=[checkpoint.capture_rng(None)], spec=spec, scaler=scaler)  # fmt: skip
    state = checkpoint.load(path)
    assert state["scaler"] == scaler.state_dict()

    restored_model = small_model()
    restored_model.load_state_dict(state["model"])
    restored_opt = torch.optim.SGD(restored_model.parameters(), lr=0.05, momentum=0.9)
    restored_opt.load_state_dict(state["optimizer"])
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(state["scaler"])
    fp16_steps(model, opt, scaler, 3)
    fp16_steps(restored_model, restored_opt, restored, 3)
    assert restored.state_dict() == scaler.state_dict()
    pairs = zip(model.state_dict().values(), restored_model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_checkpoints_without_a_scaler_say_none(tmp_path: Path) -> None:
    train(tiny_spec(epochs=1, train_subset=128, method="standard"), tmp_path)
    assert checkpoint.load(tmp_path / layout.CKPT_LAST)["scaler"] is None


def test_weights_are_frozen_during_the_attack_when_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """freeze=True (what compile: true sets): requires_grad False inside the attack, restored for the weight
    step; the step itself is unchanged (bit-identical to an unfrozen step)."""
    seen: list[bool] = []
    real = engine.attack_from

    def recording(model: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
        seen.extend(p.requires_grad for p in model.parameters())
        return real(model, *args, **kwargs)

    monkeypatch.setattr(engine, "attack_from", recording)
    torch.manual_seed(0)
    model = TinyBN().train()
    twin = copy.deepcopy(model)
    x, y = torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))
    for m, freeze in ((model, True), (twin, False)):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        train_step(m, m, opt, x, y, PGD2, torch.Generator().manual_seed(0), freeze=freeze)
    n = len(list(model.parameters()))
    assert seen[:n] == [False] * n and seen[n:] == [True] * n
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True))
    with frozen(model), pytest.raises(RuntimeError):  # restored even when the body raises
        raise RuntimeError
    assert all(p.requires_grad for p in model.parameters())


def test_a_compiled_train_step_matches_eager() -> None:
    """torch.compile (aot_eager: AOTAutograd's traced backward without code generation, quick on CPU) with frozen
    attack weights gives the eager step's weights."""
    torch.manual_seed(0)
    eager = TinyBN().train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend="aot_eager")
    x, y = torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))
    for m, run, freeze in ((eager, eager, False), (model, compiled, True)):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            train_step(run, run, opt, x, y, PGD2, torch.Generator().manual_seed(0), freeze=freeze)
    for a, b in zip(eager.state_dict().values(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compile_true_trains_like_eager(tmp_path: Path) -> None:
    """compile: true end to end (inductor on CPU: about a minute of compile on 2 cores): close to the eager run."""
    base = {"epochs": 1, "train_subset": 128, "method": "fast", "eval": {"every": 1, "steps": 1}}
    train(tiny_spec(**base), tmp_path / "eager")
    train(tiny_spec(**base, compile=True), tmp_path / "compiled")
    wa, wb = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    assert wa.keys() == wb.keys()  # the plain module is saved: no _orig_mod. prefix
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-3, msg=k)


def test_levers_appear_in_readable_run_ids() -> None:
    base = {"method": "fast"}
    cells = [
        from_dict({**base, "optimizer": {"schedule": "onecycle"}, "precision": "bf16"}),
        from_dict({**base, "optimizer": {"schedule": "step"}, "attack": {"precision": "bf16"}, "compile": True}),
    ]
    assert derive_run_ids("train", cells) == [
        "fast-n1g1-b128-s0-precisionbf16-compilefalse-scheduleonecycle-attack_precisionnone",
        "fast-n1g1-b128-s0-precisionfp32-compiletrue-schedulestep-attack_precisionbf16",
    ]
    only_attack = [from_dict({**base, "attack": {"precision": p}}) for p in ("bf16", "fp32")]
    assert derive_run_ids("train", only_attack)[0] == "fast-n1g1-b128-s0-attack_precisionbf16"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_training_on_cuda_saves_the_scaler(tmp_path: Path) -> None:
    train(tiny_spec(epochs=1, precision="fp16", method="fast"), tmp_path)
    rows = layout.read_csv(tmp_path / layout.EPOCHS)
    assert torch.isfinite(torch.tensor(float(rows[0]["train_loss"])))
    state = checkpoint.load(tmp_path / layout.CKPT_LAST)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    assert all(t.dtype == torch.float32 for t in weights(tmp_path).values())
