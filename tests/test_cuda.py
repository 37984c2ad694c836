"""The CUDA paths: training steps under autocast + channels_last, attacks with a CPU generator,
NCCL, the bench's CUDA-event timing and the evaluators' counts against CPU.

Every test is marked `cuda` and skipped without a CUDA device; tests/conftest.py exempts the marker from
FASTROBUST_NO_SKIP (CI has no GPU). `benchmarks/gpu_check.py` runs them on a GPU machine (`pytest -m cuda`).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from workloads import entry, layout
from workloads.adversarial.attacks import attack_from, pgd, sample_ball
from workloads.assets.models import build_model
from workloads.catalog import dataset_info
from workloads.runtime.distributed import Dist
from workloads.spec import Attack, ResolvedAttack, from_dict, resolve_attack
from workloads.training.accuracy import batch_accuracy, dataset_accuracy
from workloads.training.engine import train_step

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda", 0)
CIFAR = dataset_info("cifar10")


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """TF32 off (cuDNN uses it for fp32 convolutions by default): CPU/CUDA comparisons are then within fp32
    rounding; restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def cifar_model(name: str = "small_cnn", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, CIFAR.num_classes, CIFAR.in_channels, CIFAR.mean, CIFAR.std)


def cifar_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, CIFAR.in_channels, CIFAR.image_size, CIFAR.image_size), generator=gen)
    return x, torch.randint(0, CIFAR.num_classes, (n,), generator=gen)


# ---------------------------------------------------------------------------------------------------------------
# Training steps


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method", ["fast", "pgd7"])
def test_training_step_on_cuda(method: str, precision: str) -> None:
    """resnet18_cifar in channels_last: loss finite, every weight moves, and each weight's gradient is
    computed once per step (the training backward): the attack's passes take input gradients only."""
    torch.backends.cudnn.benchmark = True
    model = cifar_model("resnet18_cifar").to(CUDA, memory_format=torch.channels_last).train()
    x, y = cifar_batch(32)
    x, y = x.to(CUDA).contiguous(memory_format=torch.channels_last), y.to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    attack = resolve_attack(method, Attack(eps=1.0))
    amp = torch.bfloat16 if precision == "bf16" else None
    before = [p.detach().clone() for p in model.parameters()]
    grad_calls = [0] * len(before)
    for i, p in enumerate(model.parameters()):
        p.register_hook(lambda g, i=i: grad_calls.__setitem__(i, grad_calls[i] + 1))
    gen = torch.Generator().manual_seed(0)  # CPU generator, as a run whose attack stream is on the CPU
    loss, correct = train_step(model, model, opt, x, y, attack, gen, mode="eval", amp=amp)
    torch.cuda.synchronize()
    assert loss.device == x.device == CUDA and torch.isfinite(loss) and 0 <= int(correct) <= len(y)
    assert grad_calls == [1] * len(before), "a weight gradient was computed outside the training backward"
    moved = [not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(moved)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("method", ["fast", "pgd7"])
def test_fp16_training_steps_with_grad_scaler(method: str) -> None:
    """fp16 autocast + torch.amp.GradScaler (precision fp16), where train_step takes a scaler:
    three steps, finite losses, every weight moves, weights stay fp32, the scale stays finite."""
    if "scaler" not in inspect.signature(train_step).parameters:
        pytest.skip("train_step has no fp16 GradScaler path yet")
    model = cifar_model("resnet18_cifar").to(CUDA, memory_format=torch.channels_last).train()
    x, y = cifar_batch(32)
    x, y = x.to(CUDA).contiguous(memory_format=torch.channels_last), y.to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    before = [p.detach().clone() for p in model.parameters()]
    attack, gen = resolve_attack(method, Attack(eps=1.0)), torch.Generator(CUDA).manual_seed(0)
    losses = [train_step(model, model, opt, x, y, attack, gen, amp=torch.float16, scaler=scaler)[0] for _ in range(3)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert all(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters(), strict=True))
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert 0 < scaler.get_scale() < float("inf")


def test_train_kind_one_epoch_on_cuda(tmp_path: Path) -> None:
    """The train kind end to end on CUDA (loader workers, pinned memory, bf16, channels_last, checkpoint)."""
    from tests.fixtures import make_cifar10

    root = make_cifar10(tmp_path / "cifar", n_train=64, n_test=32)
    spec = from_dict({"experiment": "t", "run_id": "r", "kind": "train", "dataset": "cifar10", "data_root": str(root),
                      "model": "small_cnn", "method": "fast", "epochs": 1, "global_batch_size": 16,
                      "precision": "bf16", "channels_last": True, "eval": {"every": 1, "steps": 2}})  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = importlib.import_module(entry.KIND_MODULES["train"]).main(spec, run_dir, Dist(device=CUDA))
    (row,) = layout.read_csv(run_dir / layout.EPOCHS)
    assert result["epochs"] == 1 and float(row["train_s"]) > 0 and row["adv_acc"] != ""
    assert torch.isfinite(torch.tensor(float(row["train_loss"])))
    assert (run_dir / layout.CKPT_LAST).exists()


# ---------------------------------------------------------------------------------------------------------------
# Attacks: a CPU generator gives the same delta on either device


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_sample_ball_with_a_cpu_generator_is_device_independent(norm: str) -> None:
    shape = (16, 3, 32, 32)
    on_cpu = sample_ball(shape, 1.0, norm, torch.Generator().manual_seed(3), device="cpu")
    on_cuda = sample_ball(shape, 1.0, norm, torch.Generator().manual_seed(3), device=CUDA)
    assert on_cuda.device == CUDA
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=0)


def test_pgd_on_cuda_matches_cpu(exact_fp32: None) -> None:
    model = cifar_model().eval()
    x, y = cifar_batch(32)
    kwargs: dict[str, Any] = {"norm": "l2", "eps": 0.5, "alpha": 2.5 * 0.5 / 7, "steps": 7, "restarts": 2}
    on_cpu = pgd(model, x, y, generator=torch.Generator().manual_seed(1), **kwargs)
    model_cuda = copy.deepcopy(model).to(CUDA)
    on_cuda = pgd(model_cuda, x.to(CUDA), y.to(CUDA), generator=torch.Generator().manual_seed(1), **kwargs)
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=1e-4, atol=1e-4)
    assert float(on_cpu.flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5


# ---------------------------------------------------------------------------------------------------------------
# NCCL: one rank, one all-reduce, through the project's helpers (in a child process: a hang cannot block pytest)


def nccl_child(port: int) -> None:
    """Child side: the env torchrun gives a single rank, NCCL init on 127.0.0.1, all_reduce_sum and a barrier."""
    import torch.distributed as tdist

    from workloads.runtime import distributed

    os.environ |= {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    spec = from_dict({"experiment": "t", "run_id": "r"})
    dist = distributed.setup(spec)
    assert dist.device == CUDA and dist.source == "torchrun", dist
    tdist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, device_id=CUDA)
    dist = Dist(0, 1, 0, CUDA, "nccl", "torchrun")
    assert distributed.all_reduce_sum(dist, [1.0, 2.5]) == [1.0, 2.5]
    t = torch.full((1 << 20,), 3.0, device=CUDA)
    tdist.all_reduce(t)
    distributed.barrier(dist)
    assert float(t.sum()) == 3.0 * (1 << 20) and tdist.get_backend() == "nccl"
    distributed.cleanup()
    assert not tdist.is_initialized()
    print("nccl ok", torch.cuda.nccl.version())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nccl_single_rank_all_reduce() -> None:
    code = f"from tests.test_cuda import nccl_child; nccl_child({free_port()})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "nccl ok" in done.stdout, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------------------------
# Bench: CUDA-event timing counts queued work; a bench row on CUDA


def bench_module() -> ModuleType:
    return importlib.import_module(entry.KIND_MODULES["bench"])


def test_time_calls_counts_queued_gpu_work() -> None:
    """torch.cuda._sleep returns at once on the host; CUDA events still time the >= 10 ms the GPU spins (2e7
    cycles at <= 2 GHz)."""

    def sleep() -> None:
        torch.cuda._sleep(20_000_000)

    times = bench_module().time_calls(sleep, CUDA, repeats=3, warmup=1)
    assert len(times) == 3 and min(times) > 0.002, times


def test_bench_rows_on_cuda(tmp_path: Path) -> None:
    spec = from_dict({"experiment": "t", "run_id": "bench", "kind": "bench", "dataset": "cifar10",
                      "data_root": str(tmp_path / "none"), "model": "small_cnn", "precision": "bf16",
                      "channels_last": True, "eval": {"steps": 2},
                      "bench": {"batch_sizes": [16], "methods": ["standard", "fast"], "repeats": 3, "warmup": 1,
                                "prime_steps": 0}})  # fmt: skip
    result = bench_module().main(spec, tmp_path, Dist(device=CUDA))
    rows = layout.read_csv(tmp_path / layout.BENCH)
    assert result["rows"] == len(rows) > 0
    assert {r["what"] for r in rows} >= {"pgd", "forward", "eval", "train_step"}
    assert all(r["device"] == torch.cuda.get_device_name(0) and r["inputs"] == "random" for r in rows)
    assert all(float(r["median_s"]) > 0 for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# Evaluators: the same counts on CUDA as on CPU for the same model and seeds


def test_validation_counts_on_cuda_equal_cpu(exact_fp32: None) -> None:
    model = cifar_model().eval()
    x, y = cifar_batch(96, seed=1)
    attack = ResolvedAttack("l2", 0.25, 5, 2.5 * 0.25 / 5, True)
    cpu, cuda = (dataset_accuracy(copy.deepcopy(model).to(d), TensorDataset(x, y), Dist(device=d), attack,
                                  batch_size=32, generator=torch.Generator().manual_seed(0))
                 for d in (torch.device("cpu"), CUDA))  # fmt: skip
    assert cuda == cpu


@pytest.mark.parametrize("worst_case", [False, True])
def test_batch_accuracy_on_cuda_equals_cpu(exact_fp32: None, worst_case: bool) -> None:
    """batch_accuracy serves validation, the bench, ranking and (worst_case) the evaluate kind."""
    model = cifar_model(seed=2).eval()
    x, y = cifar_batch(64, seed=3)
    attack = ResolvedAttack("l2", 0.25, 5, 2.5 * 0.25 / 5, True)
    masks = []
    for device in (torch.device("cpu"), CUDA):
        m = copy.deepcopy(model).to(device)
        clean, robust = batch_accuracy(m, x.to(device), y.to(device), attack, restarts=2, worst_case=worst_case,
                                       zero_start=True, generator=torch.Generator().manual_seed(0))  # fmt: skip
        masks.append((clean.cpu().tolist(), robust.cpu().tolist()))
    assert masks[1] == masks[0]


def test_evaluate_kind_counts_on_cuda_equal_cpu(exact_fp32: None) -> None:
    """The evaluate kind's evaluate_model (Fig. 2) with the same model and generator seed on both devices."""
    evaluate = importlib.import_module(entry.KIND_MODULES["evaluate"])
    model = cifar_model(seed=4).eval()
    x, y = cifar_batch(64, seed=5)
    kwargs = {"norm": "l2", "eps_list": [0.0, 0.25, 0.5], "steps": 5, "restarts": 2, "generator_seed": 7,
              "batch_size": 32}  # fmt: skip
    cpu, cuda = (evaluate.evaluate_model(copy.deepcopy(model).to(d), (x, y), device=d, **kwargs)
                 for d in (torch.device("cpu"), CUDA))  # fmt: skip
    assert cuda == cpu


def test_attack_from_fast_on_cuda_matches_cpu(exact_fp32: None) -> None:
    """The training attack (fast: one step from a random start) with a CPU generator: same delta on CUDA."""
    model = cifar_model(seed=6).eval()
    x, y = cifar_batch(32, seed=7)
    attack = resolve_attack("fast", Attack(eps=1.0))
    on_cpu = attack_from(model, x, y, attack, generator=torch.Generator().manual_seed(5))
    on_cuda = attack_from(copy.deepcopy(model).to(CUDA), x.to(CUDA), y.to(CUDA), attack,
                          generator=torch.Generator().manual_seed(5))  # fmt: skip
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=1e-4, atol=1e-4)
