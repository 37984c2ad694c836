"""Trainer: resume reproduces the uninterrupted run, run-directory contents, entry bookkeeping, and that fast
L2 training buys robustness on real data."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from workloads import entry, layout
from workloads.assets import checkpoint
from workloads.kinds.train import cli, train
from workloads.runtime import distributed, runinfo
from workloads.spec import ResolvedAttack, RunSpec, from_dict
from workloads.training.engine import train_step

TIMING = ("train_s", "eval_s", "elapsed_s")


def tiny_spec(**overrides: Any) -> RunSpec:
    data = {
        "run_id": "tiny",
        "dataset": "fashion_mnist",
        "train_subset": 384,
        "val_subset": 64,
        "model": "small_cnn",
        "method": "fast",
        "global_batch_size": 64,
        "epochs": 3,
        "optimizer": {"lr": 0.05, "step_epochs": 2, "gamma": 0.1},
        "attack": {"eps": 1.0},
        "eval": {"every": 1, "steps": 2},
        **overrides,
    }
    return from_dict(data)


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / (layout.CKPT_LAST if which == "last" else layout.CKPT_BEST))["model"]


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    """3 epochs straight == 2 epochs + a stale row (a crash between row and checkpoint) + resume to 3.
    fast + augmentation: the attack generator, the global RNG, optimizer momentum and the lr schedule
    (decay after epoch 2) must all come back for the weights to be identical."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_spec(), straight)
    train(tiny_spec(epochs=2), resumed)
    first_elapsed = [float(r["elapsed_s"]) for r in layout.read_csv(resumed / layout.EPOCHS)]
    rows = layout.read_csv(resumed / layout.EPOCHS)
    stale = {**rows[-1], "epoch": "3", "train_loss": "123"}
    layout.append_csv_row_atomic(resumed / layout.EPOCHS, layout.EPOCH_COLUMNS, stale)
    result = train(tiny_spec(), resumed)

    a, b = layout.read_csv(straight / layout.EPOCHS), layout.read_csv(resumed / layout.EPOCHS)
    assert [r["epoch"] for r in b] == ["1", "2", "3"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    assert [r["lr"] for r in b] == ["0.05", "0.05", str(0.05 * 0.1)]
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    elapsed = [float(r["elapsed_s"]) for r in b]
    assert elapsed[:2] == first_elapsed and elapsed[0] < elapsed[1] < elapsed[2]
    assert result["epochs"] == 3 and layout.read_json(resumed / layout.RESULT)["epochs"] == 3
    assert len(layout.read_json(resumed / layout.ENV)["attempts"]) == 2
    with pytest.raises(ValueError, match="other settings"):  # a different method cannot silently continue
        train(tiny_spec(method="pgd2", epochs=4), resumed)


def test_run_directory_contents(tmp_path: Path) -> None:
    spec = tiny_spec(method="standard", epochs=3, eval={"every": 2, "steps": 2})
    result = train(spec, tmp_path)
    rows = layout.read_csv(tmp_path / layout.EPOCHS)
    assert tuple(rows[0]) == layout.EPOCH_COLUMNS
    assert [(r["clean_acc"] != "", r["adv_acc"] != "") for r in rows] == [(False, False), (True, True), (True, True)]
    assert rows[0]["eval_s"] == "0.0" and float(rows[1]["eval_s"]) > 0
    for r in rows:
        assert r["run_id"] == "tiny" and r["batch_per_rank"] == "64" and r["world_size"] == "1"
        assert 0 <= float(r["train_acc"]) <= 1 and float(r["train_loss"]) > 0
    elapsed = [float(r["elapsed_s"]) for r in rows]
    busy = sum(float(r["train_s"]) + float(r["eval_s"]) for r in rows)
    assert elapsed == sorted(elapsed) and elapsed[-1] >= busy * 0.999

    # best = highest clean accuracy for standard training (earliest of equals)
    evaluated = [r for r in rows if r["clean_acc"]]
    best_row = max(evaluated, key=lambda r: float(r["clean_acc"]))
    best = checkpoint.load(tmp_path / layout.CKPT_BEST)
    assert best["best"] == {"epoch": int(best_row["epoch"]), "metric": float(best_row["clean_acc"])}
    assert best["epoch"] == int(best_row["epoch"])
    assert result["best_epoch"] == best["epoch"] and result["best_metric"] == "clean_acc"

    last = checkpoint.load(tmp_path / layout.CKPT_LAST)  # weights_only=True inside: plain types and tensors
    assert last["format"] == "fastrobust-v1" and last["epoch"] == 3
    assert set(last) >= {"model", "optimizer", "scheduler", "epoch", "elapsed_s", "best", "rng", "spec", "arch"}
    assert last["elapsed_s"] == float(rows[-1]["elapsed_s"]) and last["spec"] == spec.to_dict()
    assert set(last["rng"][0]) == {"torch", "cuda", "numpy", "python", "attack"}

    model, loaded_spec = checkpoint.load_model(tmp_path, "last")
    assert not model.training and loaded_spec == spec
    assert all(torch.equal(v, last["model"][k]) for k, v in model.state_dict().items())

    assert layout.read_json(tmp_path / layout.RESULT)["run_id"] == "tiny"
    env = layout.read_json(tmp_path / layout.ENV)
    assert env["world_size"] == 1 and env["hostnames"] and env["versions"]["torch"] == torch.__version__
    assert env["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", env["git_commit"])


def test_entry_writes_error_txt_and_no_result_on_failure(tmp_path: Path) -> None:
    spec = tiny_spec(data_root=str(tmp_path / "no-such-data"))
    layout.write_json_atomic(tmp_path / layout.SPEC, spec.to_dict())
    layout.write_json_atomic(tmp_path / layout.RESULT, {"stale": True})  # from an earlier attempt
    with pytest.raises(ValueError, match="no-such-data"):
        entry.run(tmp_path / layout.SPEC, dist=distributed.single(spec))
    error = (tmp_path / layout.ERROR).read_text()
    assert "Traceback" in error and "no-such-data" in error
    assert not (tmp_path / layout.RESULT).exists() and (tmp_path / layout.ENV).exists()


def test_env_json_appends_each_attempts_job_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("SUBMITIT_EXECUTOR", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(k, raising=False)
    for job_id in ("101", "101", "102"):  # a Slurm requeue keeps its id; a resubmission brings a new one
        monkeypatch.setenv("SLURM_JOB_ID", job_id)
        env = runinfo.update_env_json(tmp_path, runinfo.collect_env(distributed.Dist()))
    assert env["job_ids"] == ["101", "102"] and env["job_id"] == "102"
    assert [a["job_id"] for a in env["attempts"]] == ["101", "101", "102"]
    assert layout.read_json(tmp_path / layout.ENV) == env
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert runinfo.collect_env(distributed.Dist())["job_id"] == "7_3"


def test_cli_copies_the_spec_and_runs(tmp_path: Path) -> None:
    spec = tiny_spec(epochs=1, train_subset=128, method="pgd2")
    src = tmp_path / "cell.json"
    layout.write_json_atomic(src, spec.to_dict())
    cli(["--spec", str(src), "--out", str(tmp_path / "run")])
    assert layout.read_json(tmp_path / "run" / layout.SPEC) == spec.to_dict()
    assert layout.read_json(tmp_path / "run" / layout.RESULT)["epochs"] == 1


# ---------------------------------------------------------------------------------------------
# train_step


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize(("mode", "bn_updates"), [("eval", 1), ("train", 2)])
def test_train_step_attacks_in_the_requested_mode(mode: str, bn_updates: int) -> None:
    """BatchNorm running stats move once per step when attacking in eval mode (the training forward only),
    twice in train mode (the 1-step attack forward too); params' grads come only from the training step."""
    torch.manual_seed(0)
    model = TinyBN().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))
    fast = ResolvedAttack("l2", 0.5, 1, 0.75, True)
    loss, correct = train_step(model, model, opt, x, y, fast, torch.Generator().manual_seed(0), mode=mode)
    bn = model.net[2]
    assert isinstance(bn, nn.BatchNorm1d) and int(bn.num_batches_tracked) == bn_updates
    assert model.training and bn.training and loss.ndim == 0 and 0 <= int(correct) <= 16


def test_standard_train_step_is_a_plain_sgd_step() -> None:
    torch.manual_seed(0)
    model = TinyBN().train()
    bare = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bare_opt = torch.optim.SGD(bare.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))
    standard = ResolvedAttack("l2", 1.0, 0, 0.0, True)
    for _ in range(2):
        train_step(model, model, opt, x, y, standard, None)
        bare_opt.zero_grad()
        nn.functional.cross_entropy(bare(x), y).backward()
        bare_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), bare.state_dict().values(), strict=True))


# ---------------------------------------------------------------------------------------------
# Real data: fast L2 adversarial training keeps accuracy under a 20-step L2 PGD; standard training does not.

EPS = 1.5  # L2 on 28x28 [0, 1] images: ~5% of the norm of a typical image (~9-10), the MNIST-style budget


@pytest.mark.slow
def test_fast_training_is_robust_on_fashion_mnist(tmp_path: Path) -> None:
    results = {}
    for method in ("standard", "fast"):
        spec = from_dict(
            {
                "run_id": method,
                "dataset": "fashion_mnist",
                "train_subset": 3000,
                "val_subset": 300,
                "model": "small_cnn",
                "method": method,
                "epochs": 4,
                "global_batch_size": 128,
                "optimizer": {"lr": 0.1, "step_epochs": 100},
                "attack": {"eps": EPS},
                "eval": {"every": 100, "steps": 20, "restarts": 1},  # evaluated at the last epoch only
            }
        )
        results[method] = train(spec, tmp_path / method)
    std, fast = results["standard"], results["fast"]
    assert std["last_clean_acc"] > 0.7 and fast["last_clean_acc"] > 0.65  # both learned the task
    assert fast["last_adv_acc"] >= std["last_adv_acc"] + 0.15, results


def test_bf16_autocast_and_channels_last_train_on_cpu(tmp_path: Path) -> None:
    """The GPU levers run on CPU too (this CPU has bf16 kernels): training moves the weights, stays finite,
    and the checkpoint keeps fp32 weights (autocast only changes the compute dtype)."""
    spec = tiny_spec(epochs=1, precision="bf16", channels_last=True, method="pgd2")
    train(spec, tmp_path)
    rows = layout.read_csv(tmp_path / layout.EPOCHS)
    assert len(rows) == 1 and torch.isfinite(torch.tensor(float(rows[0]["train_loss"])))
    assert 0.0 <= float(rows[0]["adv_acc"]) <= float(rows[0]["clean_acc"]) <= 1.0
    saved = weights(tmp_path)
    assert all(t.dtype == torch.float32 for t in saved.values())
    assert any(not torch.equal(saved[k], v) for k, v in fresh_weights(spec).items())


def fresh_weights(spec: RunSpec) -> dict[str, torch.Tensor]:
    from workloads.assets.models import build_model
    from workloads.catalog import dataset_info

    info = dataset_info(spec.dataset)
    torch.manual_seed(spec.seed)
    return build_model(spec.model, info.num_classes, info.in_channels, info.mean, info.std).state_dict()
