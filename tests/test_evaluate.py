"""PGD evaluation (Fig. 2): strength against an independent implementation, monotonicity, fast vs standard,
1 vs 2 ranks, no side effects on the model, robustness-library checkpoints, robustness.csv."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from tests import fixtures
from tests.fixtures import free_port, make_cifar10
from workloads import entry, layout
from workloads.assets.checkpoint import load_model
from workloads.assets.data import build_split
from workloads.assets.external import autoattack, madry
from workloads.assets.models import RobustModel, build_model
from workloads.kinds import evaluate, evaluate_source
from workloads.runtime import distributed
from workloads.spec import Attack, Evaluate, RunSpec

EXP = "fm"
TRAIN_EPS = 1.0
REPO = Path(__file__).resolve().parents[1]


# the machine is shared (small_cnn on a few hundred images); slow: the module trains its models (not in the quick lane)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def trained_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/fm/runs/{standard,fast} (fixtures.train_standard_and_fast), once."""
    return fixtures.train_standard_and_fast(tmp_path_factory.mktemp("evaluate") / "results", EXP, TRAIN_EPS)


def trained(trained_results: Path, method: str) -> tuple[RobustModel, RunSpec]:
    return load_model(trained_results / EXP / "runs" / method, "best")


def val_tensors(spec: RunSpec, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n examples of the full Fashion-MNIST test split, as tensors."""
    data = build_split(RunSpec(dataset=spec.dataset, data_root=spec.data_root), train=False)
    xs, ys = zip(*(data[i] for i in range(n)), strict=True)
    return torch.stack(xs), torch.tensor(ys)


def acc_at(rows: list[dict[str, Any]], eps: float) -> float:
    (row,) = [r for r in rows if r["eps"] == eps]
    return row["adv_acc"]


@pytest.fixture(scope="module")
def pgd10(trained_results: Path) -> dict[str, float]:
    """Robust accuracy at the training eps: 10-step PGD, 1 random restart + the zero start, 500 test images."""
    torch.set_num_threads(1)
    out = {}
    for method in ("standard", "fast"):
        model, spec = trained(trained_results, method)
        rows = evaluate.evaluate_model(
            model, val_tensors(spec, 500), norm="l2", eps_list=[TRAIN_EPS], steps=10, restarts=1, batch_size=250
        )
        out[method] = acc_at(rows, TRAIN_EPS)
    return out


# ------------------------------------------------------------------------------------------------
# Strength and monotonicity


def test_at_least_as_strong_as_torchattacks_pgdl2(trained_results: Path, pgd10: dict[str, float]) -> None:
    """Same eps, steps, alpha and number of runs: ours (1 random start + the zero start) against torchattacks'
    PGDL2 with 2 random starts, per example the worst case."""
    torchattacks = pytest.importorskip("torchattacks")
    model, spec = trained(trained_results, "fast")
    x, y = val_tensors(spec, 500)
    alpha = 2.5 * TRAIN_EPS / 10
    attack = torchattacks.PGDL2(model, eps=TRAIN_EPS, alpha=alpha, steps=10, random_start=True)
    torch.manual_seed(0)  # torchattacks draws its random starts from the global RNG

    def survives() -> torch.Tensor:
        adv = torch.cat([attack(x[i : i + 250], y[i : i + 250]) for i in (0, 250)])  # our batches
        with torch.no_grad():
            return model(adv).argmax(1) == y

    with torch.no_grad():
        clean = model(x).argmax(1) == y
    first = clean & survives()
    theirs_1, theirs_2 = first.float().mean().item(), (first & survives()).float().mean().item()
    ours = pgd10["fast"]
    ours_random_only = acc_at(
        evaluate.evaluate_model(model, (x, y), norm="l2", eps_list=[TRAIN_EPS], steps=10, restarts=1, batch_size=250,
                                zero_start=False),
        TRAIN_EPS,
    )  # fmt: skip
    print(f"robust accuracy at eps {TRAIN_EPS}, 10 steps: ours {ours:.3f} (random start only: {ours_random_only:.3f})"
          f", torchattacks PGDL2 {theirs_2:.3f} (1 random start: {theirs_1:.3f})")  # fmt: skip
    assert 0.2 < theirs_2 < clean.float().mean().item() - 0.05  # the comparison is not vacuous
    assert ours <= theirs_2 + 0.01
    # Without the zero start, the start on the sphere costs ~1 point against torchattacks' start inside the ball.
    assert ours_random_only <= theirs_1 + 0.02


def test_more_steps_and_restarts_never_help_and_eps0_is_clean(trained_results: Path) -> None:
    model, spec = trained(trained_results, "fast")
    x, y = val_tensors(spec, 300)
    kwargs: dict[str, Any] = {"norm": "l2", "eps_list": [0.0, TRAIN_EPS], "batch_size": 150, "generator_seed": 3}
    by_steps = [evaluate.evaluate_model(model, (x, y), steps=k, restarts=1, **kwargs) for k in (1, 3, 10)]
    by_restarts = [evaluate.evaluate_model(model, (x, y), steps=3, restarts=r, **kwargs) for r in (1, 3)]
    steps_acc = [acc_at(rows, TRAIN_EPS) for rows in by_steps]
    restarts_acc = [acc_at(rows, TRAIN_EPS) for rows in by_restarts]
    print("steps 1/3/10:", steps_acc, "restarts 1/3:", restarts_acc)
    assert steps_acc[0] > steps_acc[1] >= steps_acc[2]
    assert restarts_acc[1] <= restarts_acc[0]
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    for rows in by_steps + by_restarts:
        assert acc_at(rows, 0.0) == rows[0]["clean_acc"] == pytest.approx(clean)
        assert rows[0]["n"] == 300


def test_fast_model_is_clearly_more_robust_than_standard(pgd10: dict[str, float]) -> None:
    print(f"robust accuracy at the training eps {TRAIN_EPS}: {pgd10}")
    assert pgd10["fast"] >= pgd10["standard"] + 0.08


# ------------------------------------------------------------------------------------------------
# No side effects


def test_evaluation_leaves_the_model_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
    )  # fmt: skip
    model.train()  # a caller in the middle of training: BN would update its statistics in this mode
    x, y = torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    rows = evaluate.evaluate_model(model, (x, y), norm="l2", eps_list=[0.0, 0.5], steps=3, restarts=2, batch_size=16)
    assert rows[0]["n"] == 40
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)  # per-batch generators only


# ------------------------------------------------------------------------------------------------
# The workload: robustness.csv, 1 vs 2 ranks


def eval_spec(run_id: str, results: Path, **evaluate_kw: Any) -> RunSpec:
    """An evaluate cell of run "fast", its source_dir resolved as the orchestrator does at submit time."""
    source_dir = layout.run_dir(results, evaluate_kw.get("source_experiment") or EXP, "fast")
    ev = Evaluate(source_run="fast", source_dir=str(source_dir), eps_list=[0.0, 0.5, TRAIN_EPS], steps=5, restarts=2,
                  batch_size=32, **evaluate_kw)  # fmt: skip
    return RunSpec(experiment=EXP, run_id=run_id, kind="evaluate", seed=7, threads=1, evaluate=ev)


def write_spec(trained_results: Path, spec: RunSpec) -> Path:
    path = trained_results / spec.experiment / "runs" / spec.run_id / layout.SPEC
    layout.write_json_atomic(path, spec.to_dict())
    return path


def test_main_writes_robustness_csv_and_two_ranks_match_one(trained_results: Path) -> None:
    one = write_spec(trained_results, eval_spec("eval-w1", trained_results, max_examples=150))
    result = entry.run(one, dist=distributed.single(RunSpec(threads=1)))
    rows = layout.read_csv(one.parent / layout.ROBUSTNESS)
    assert list(rows[0]) == list(evaluate.CSV_COLUMNS)
    contract = ["run_id", "method", "eps", "steps", "restarts", "n", "clean_acc", "adv_acc"]
    assert set(contract) <= set(rows[0])
    assert [r["eps"] for r in rows] == ["0.0", "0.5", "1.0"]
    assert {(r["run_id"], r["method"], r["n"], r["steps"], r["restarts"], r["norm"]) for r in rows} == {
        ("fast", "fast", "150", "5", "2", "l2")
    }
    assert rows[0]["adv_acc"] == rows[0]["clean_acc"]
    assert float(rows[2]["adv_acc"]) < float(rows[1]["adv_acc"]) < float(rows[0]["adv_acc"])
    assert rows[0]["source_experiment"] == EXP and rows[0]["attack_eps"] == str(TRAIN_EPS)
    assert rows[0]["checkpoint"] == "best" and rows[0]["checkpoint_epoch"] == "3"
    assert result["n"] == 150 and (one.parent / layout.RESULT).exists()
    assert not list(one.parent.glob("evaluate-progress-*"))

    # 150 examples in batches of 32: 5 batches, so rank 0 runs 3 and rank 1 runs 2 (the last one short)
    two = write_spec(trained_results, eval_spec("eval-w2", trained_results, max_examples=150))
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    for key in ("SLURM_PROCID", "SUBMITIT_EXECUTOR"):
        env.pop(key, None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "workloads.entry", str(two)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows2 = layout.read_csv(two.parent / layout.ROBUSTNESS)
    counts = lambda rs: [(r["eps"], r["n"], r["clean_acc"], r["adv_acc"]) for r in rs]  # noqa: E731
    assert counts(rows2) == counts(rows)
    assert layout.read_json(two.parent / layout.RESULT)["world_size"] == 2


def test_resume_skips_recorded_batches(trained_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted evaluation resumes from evaluate-progress-rank*.json and ends with the same counts."""
    spec = eval_spec("eval-resume", trained_results, max_examples=96)
    run_dir = write_spec(trained_results, spec).parent
    calls = fixtures.evaluate_interrupted_then_resumed(spec, run_dir, monkeypatch, die_at=2)  # dies in batch 2
    assert calls == [0, 32, 32, 64]  # batch 0 was recorded before the interruption
    resumed = layout.read_csv(run_dir / layout.ROBUSTNESS)
    fresh_dir = write_spec(trained_results, eval_spec("eval-fresh", trained_results, max_examples=96)).parent
    evaluate.main(eval_spec("eval-fresh", trained_results, max_examples=96), fresh_dir, distributed.single(spec))
    assert layout.read_csv(fresh_dir / layout.ROBUSTNESS) == resumed


def test_source_resolution_errors(trained_results: Path) -> None:
    run_dir = trained_results / EXP / "runs" / "eval-x"
    with pytest.raises(ValueError, match=r"source_dir.*source_run"):
        evaluate_source.checkpoint_file(RunSpec(experiment=EXP, kind="evaluate"), run_dir)
    with pytest.raises(FileNotFoundError, match="nope"):
        evaluate_source.checkpoint_file(eval_spec("eval-x", trained_results, source_experiment="nope"), run_dir)
    path, experiment = evaluate_source.checkpoint_file(eval_spec("eval-x", trained_results, checkpoint="last"), run_dir)
    assert path == trained_results / EXP / "runs" / "fast" / layout.CKPT_LAST and experiment == EXP
    with pytest.raises(ValueError, match="run directory"):
        evaluate_source.checkpoint_file(
            eval_spec("eval-x", trained_results, checkpoint="x.pt"), trained_results / "elsewhere"
        )


# ------------------------------------------------------------------------------------------------
# Robustness-library checkpoints


def test_checkpoints_with_pickled_objects_need_allow_pickle(tmp_path: Path) -> None:
    path = tmp_path / "with_args.pt"
    torch.save({"model": {"module.normalizer.new_mean": torch.zeros(3, 1, 1)}, "args": argparse.Namespace()}, path)
    with pytest.raises(madry.MadryFormatError, match="allow_pickle"):
        madry.read_checkpoint(path)
    assert isinstance(madry.read_checkpoint(path, allow_pickle=True)["args"], argparse.Namespace)


def randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def test_madry_layout_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    model = build_model("resnet18_cifar", 10, 3, mean, std).eval()
    randomize_bn(model)
    path = tmp_path / "checkpoint.pt.best"
    madry.save_madry_checkpoint(model, "resnet18_cifar", path, epoch=42)
    raw = torch.load(path, weights_only=True)
    sd = raw["model"]
    assert {"model", "optimizer", "schedule", "epoch"} <= set(raw)
    assert sd["module.normalizer.new_mean"].shape == (3, 1, 1)
    assert "module.model.linear.weight" in sd and "module.attacker.model.linear.weight" in sd
    assert "module.model.layer2.0.shortcut.0.weight" in sd and "module.model.conv1.weight" in sd
    assert not any(".body." in k or ".head." in k for k in sd)  # their naming, not ours

    loaded, info = madry.load_madry_checkpoint(path)
    assert (info.arch, info.num_classes, info.in_channels, info.epoch) == ("resnet18_cifar", 10, 3, 42)
    assert info.mean == pytest.approx(mean) and info.std == pytest.approx(std)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the attacker's duplicate is dropped, not required to agree; a wrong key is an error, not ignored
    bad = dict(sd, **{"module.model.extra.weight": torch.zeros(1)})
    with pytest.raises(madry.MadryFormatError):
        madry.model_from_checkpoint({"model": bad, "epoch": 1})


@pytest.mark.parametrize("arch", ["resnet50_cifar", "resnet50"])
def test_madry_key_tables_cover_every_key(arch: str) -> None:
    model = build_model(arch, 9, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    classifier, _, _ = madry.split_state_dict(madry.from_ours(model, arch))
    assert madry.infer_arch(classifier) == (arch, 9, 3)
    head = "linear" if arch.endswith("cifar") else "fc"
    assert f"{head}.weight" in classifier and "layer4.2.conv3.weight" in classifier
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    mapped = madry.to_ours(classifier, arch)
    assert mapped.keys() == ours.keys() and all(torch.equal(mapped[k], ours[k]) for k in ours)


def test_main_evaluates_a_madry_checkpoint(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "data", n_train=10, n_test=12)
    torch.manual_seed(1)
    model = build_model("resnet18_cifar", 10, 3, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)).eval()
    ckpt = tmp_path / "external" / "rimagenet_l2_3_0.pt"
    madry.save_madry_checkpoint(model, "resnet18_cifar", ckpt)
    ev = Evaluate(checkpoint=str(ckpt), eps_list=[0.0, 0.5], steps=1, restarts=1, batch_size=8, max_examples=8)
    spec = RunSpec(experiment="ext", run_id="madry-pgd7", kind="evaluate", dataset="cifar10",
                   data_root=str(tmp_path / "data"), method="pgd7", attack=Attack(eps=3.0), evaluate=ev)  # fmt: skip
    run_dir = tmp_path / "results" / "ext" / "runs" / spec.run_id
    evaluate.main(spec, run_dir, distributed.single(spec))
    rows = layout.read_csv(run_dir / layout.ROBUSTNESS)
    assert [(r["run_id"], r["method"], r["model"], r["dataset"], r["n"]) for r in rows] == [
        ("rimagenet_l2_3_0", "pgd7", "resnet18_cifar", "cifar10", "8")
    ] * 2
    x = torch.stack([build_split(spec, train=False)[i][0] for i in range(8)])
    y = torch.tensor([build_split(spec, train=False)[i][1] for i in range(8)])
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert float(rows[0]["clean_acc"]) == pytest.approx(clean) and rows[0]["attack_eps"] == "3.0"


# ------------------------------------------------------------------------------------------------
# AutoAttack columns (the judge itself: tests/test_autoattack.py)


@pytest.mark.skipif(not autoattack.available(), reason="pyautoattack not installed (extra [strong])")
def test_autoattack_columns_side_by_side(trained_results: Path) -> None:
    model, spec = trained(trained_results, "fast")
    x, y = val_tensors(spec, 64)
    rows = evaluate.evaluate_model(model, (x, y), norm="l2", eps_list=[0.0, TRAIN_EPS], steps=5, restarts=1,
                                   batch_size=64, autoattack=True, autoattack_steps=5,
                                   autoattack_queries=20)  # fmt: skip
    zero, at = rows
    assert {zero[c] for c in evaluate.STRONG_COLUMNS} == {zero["clean_acc"]}
    print({k: at[k] for k in ("adv_acc", *evaluate.STRONG_COLUMNS)})
    cumulative = [at[c] for c in ("aa_apgd_ce_acc", "aa_apgd_t_acc", "aa_fab_t_acc", "aa_acc")]
    assert cumulative == sorted(cumulative, reverse=True)  # each attack runs on what the ones before left
    assert at["worst_acc"] <= min(at["aa_acc"], at["adv_acc"])
    assert at["aa_acc"] < at["clean_acc"]  # the attacks do something
    assert (at["aa_version"], at["aa_steps"], at["aa_queries"], at["aa_targets"]) == ("custom", 5, 20, 9)
    assert at["aa_package"] == "pyautoattack" and at["aa_package_version"]


def test_subset_dataset_input_matches_tensors(trained_results: Path) -> None:
    """A Dataset (as main passes it) and the same examples as tensors give the same rows."""
    model, spec = trained(trained_results, "fast")
    data = Subset(build_split(RunSpec(dataset="fashion_mnist"), train=False), range(40))
    x, y = val_tensors(spec, 40)
    kwargs: dict[str, Any] = {"norm": "linf", "eps_list": [0.05], "steps": 2, "restarts": 2, "batch_size": 16}
    assert evaluate.evaluate_model(model, data, **kwargs) == evaluate.evaluate_model(model, (x, y), **kwargs)
