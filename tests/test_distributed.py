"""DDP: 2 gloo ranks give the weights of one process on the same global batches; exact eval counts; setup()."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tests import fixtures
from tests.fixtures import free_port
from workloads import layout
from workloads.assets import checkpoint
from workloads.assets.data import build_datasets
from workloads.assets.models import build_model
from workloads.runtime import distributed
from workloads.spec import ResolvedAttack, RunSpec, from_dict
from workloads.training.accuracy import dataset_accuracy

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def clean_env() -> dict[str, str]:
    """This process's environment minus anything that would make a child think it is in a job."""
    skip = ("SLURM_", "SUBMITIT_", "GLOO_SOCKET_IFNAME")
    return {k: v for k, v in os.environ.items() if not k.startswith(skip) and k not in TORCHRUN_VARS}


def write_spec(run_dir: Path, **overrides: Any) -> tuple[Path, RunSpec]:
    data = {
        "run_id": run_dir.name,
        "dataset": "fashion_mnist",
        "train_subset": 256,
        "val_subset": 101,  # odd: the 2 shards differ in size
        "augment": False,
        "model": "small_cnn",
        "global_batch_size": 64,
        "epochs": 2,
        "threads": 1,
        "optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "eval": {"every": 1, "steps": 3},
        "shape": {"nodes": 1, "gpus_per_node": 2},
        **overrides,
    }
    spec = from_dict(data)
    run_dir.mkdir(parents=True, exist_ok=True)
    layout.write_json_atomic(run_dir / layout.SPEC, spec.to_dict())
    return run_dir / layout.SPEC, spec


def torchrun_entry(spec_path: Path, world: int = 2) -> list[subprocess.CompletedProcess[str]]:
    """Start `world` ranks of `python -m workloads.entry` with torchrun-style variables, as torchrun would."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = clean_env() | {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        cmd = [sys.executable, "-m", "workloads.entry", str(spec_path)]
        procs.append(
            subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    for d in done:
        assert d.returncode == 0, d.stderr[-3000:]
    return done


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_two_gloo_ranks_match_one_process_on_the_same_global_batches(tmp_path: Path) -> None:
    spec_path, spec = write_spec(tmp_path / "ddp-std", method="standard")
    assert spec.batch_per_rank == 32 and len(build_datasets(spec).train) % spec.global_batch_size == 0
    torchrun_entry(spec_path)
    run_dir = spec_path.parent
    state = checkpoint.load(run_dir / layout.CKPT_LAST)
    assert state["epoch"] == 2 and len(state["rng"]) == 2  # RNG states of both ranks
    expected = fixtures.manual_sgd_training(spec)
    assert state["model"].keys() == expected.keys()  # unwrapped: no "module." prefix
    for name, value in expected.items():
        torch.testing.assert_close(state["model"][name], value, atol=1e-5, rtol=1e-4, msg=name)
    # ... and training moved the weights (a no-op trainer would not pass the comparison by accident)
    torch.manual_seed(spec.seed)
    init = build_model(spec.model, 10, 1, (0.286,), (0.353,)).state_dict()
    assert not torch.allclose(init["head.weight"], expected["head.weight"], atol=1e-3)

    env = layout.read_json(run_dir / layout.ENV)
    assert env["world_size"] == 2 and [r["rank"] for r in env["ranks"]] == [0, 1]
    assert env["rank_source"] == "torchrun" and env["backend"] == "gloo"
    rows = layout.read_csv(run_dir / layout.EPOCHS)
    assert [r["world_size"] for r in rows] == ["2", "2"] and rows[0]["batch_per_rank"] == "32"
    assert (run_dir / layout.RESULT).exists()
    assert not list(run_dir.glob("error*.txt"))


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_fast_method_runs_under_ddp(tmp_path: Path) -> None:
    spec_path, _ = write_spec(tmp_path / "ddp-fast", method="fast", epochs=1, augment=True)
    procs = torchrun_entry(spec_path)
    run_dir = spec_path.parent
    result = layout.read_json(run_dir / layout.RESULT)
    assert result["world_size"] == 2 and result["epochs"] == 1 and result["best_epoch"] == 1
    rows = layout.read_csv(run_dir / layout.EPOCHS)
    assert len(rows) == 1 and 0 <= float(rows[0]["adv_acc"]) <= float(rows[0]["clean_acc"]) + 0.05
    assert '"event": "epoch"' in procs[0].stdout and procs[1].stdout == ""  # only rank 0 logs


# ---------------------------------------------------------------------------------------------
# Evaluation: the counts of 2 ranks (shards of 51 + 50 examples) equal those of one process.


def _eval_worker(rank: int, world: int, port: int, ckpt: str, spec_dict: dict[str, Any], out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    spec = from_dict(spec_dict)
    dist = distributed.setup(spec)
    try:
        model, _ = checkpoint.load_model(ckpt, "last")
        attack = ResolvedAttack("l2", 1.0, 3, 0.8, random_start=False)  # deterministic: comparable across layouts
        result = dataset_accuracy(model, build_datasets(spec).val, dist, attack, batch_size=16)
        if dist.is_main:
            torch.save(result, out)
    finally:
        distributed.cleanup()


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_eval_counts_are_exact_across_ranks(tmp_path: Path) -> None:
    spec_path, spec = write_spec(tmp_path / "eval", epochs=1, shape={"nodes": 1, "gpus_per_node": 1})
    from workloads.kinds.train import train

    train(spec, spec_path.parent)
    ckpt = str(spec_path.parent / layout.CKPT_LAST)
    model, _ = checkpoint.load_model(ckpt, "last")
    attack = ResolvedAttack("l2", 1.0, 3, 0.8, random_start=False)
    single = dataset_accuracy(model, build_datasets(spec).val, distributed.Dist(), attack, batch_size=16)
    out = str(tmp_path / "two.pt")
    spec2 = spec.to_dict() | {"shape": {"nodes": 1, "gpus_per_node": 2}}
    saved = {k: os.environ.pop(k) for k in TORCHRUN_VARS if k in os.environ}
    try:
        mp.spawn(_eval_worker, args=(2, free_port(), ckpt, spec2, out), nprocs=2)
    finally:
        os.environ.update(saved)
        for k in TORCHRUN_VARS:
            if k not in saved:
                os.environ.pop(k, None)
    two = torch.load(out)
    assert single[2] == two[2] == 101
    assert single == pytest.approx(two, abs=0.5 / 101)  # same correct counts
    assert single[1] < single[0]  # the attack did something


# ---------------------------------------------------------------------------------------------
# setup(): where rank/world come from.


@pytest.fixture
def restore_threads() -> Any:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_setup_single_process_without_job_env(monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    for k in [*TORCHRUN_VARS, "SUBMITIT_EXECUTOR", "SLURM_PROCID", "SLURM_CPUS_PER_TASK"]:
        monkeypatch.delenv(k, raising=False)
    dist = distributed.setup(from_dict({"threads": 1}))
    assert (dist.rank, dist.world_size, dist.backend, dist.source) == (0, 1, None, "single")
    assert dist.is_main and torch.get_num_threads() == 1
    assert distributed.all_reduce_sum(dist, [1.0, 2.0]) == [1.0, 2.0]


def test_setup_reads_a_submitit_local_job(monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    for k in [*TORCHRUN_VARS, "SLURM_PROCID", "SLURM_CPUS_PER_TASK"]:
        monkeypatch.delenv(k, raising=False)
    job = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
        "SUBMITIT_LOCAL_NTASKS": "1",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "0",
        "SUBMITIT_LOCAL_LOCALID": "0",
    }
    for k, v in job.items():
        monkeypatch.setenv(k, v)
    dist = distributed.setup(from_dict({"resources": {"cpus_per_task": 1}}))
    assert (dist.rank, dist.world_size, dist.source) == (0, 1, "submitit")
    assert os.environ["RANK"] == "0" and os.environ["WORLD_SIZE"] == "1" and os.environ["MASTER_PORT"]
    assert torch.get_num_threads() == 1  # the local executor's cpus_per_task

    from workloads.runtime import runinfo

    info = runinfo.collect_env(dist)
    assert info["job_id"] == "4242" and info["submitit_job_id"] == "4242"
