"""AutoAttack as the judge: the package's own loop, stronger than PGD-20x10, eps 0 = clean, 1 vs 2 gloo
ranks, resume, and a model with masked gradients caught by Square and flagged by the report.

Budgets are cut (version "custom": 5-20 iterations, 20-300 Square queries) so each test stays well under a minute
on 2 shared cores; the standard budgets (100 / 5000) cost ~1 min per 100 images of the small CNN on one thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from orchestrator.report import time_to_target as ttt
from orchestrator.report.tables import Tables
from tests import fixtures
from tests.fixtures import free_port
from workloads import entry, layout
from workloads.assets.checkpoint import load_model
from workloads.assets.data import build_split
from workloads.assets.external import autoattack
from workloads.assets.models import RobustModel
from workloads.kinds import evaluate
from workloads.runtime import distributed
from workloads.schema import SpecError
from workloads.spec import Evaluate, RunSpec, from_dict

EXP = "fm"
EPS = 1.0
REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,  # the module trains its models: not in the quick lane
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not autoattack.available(), reason="pyautoattack not installed (extra [strong])"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/fm/runs/{standard,fast} (fixtures.train_standard_and_fast)."""
    return fixtures.train_standard_and_fast(tmp_path_factory.mktemp("autoattack") / "results", EXP, EPS)


def model_of(results: Path, method: str) -> RobustModel:
    return load_model(results / EXP / "runs" / method, "best")[0]


def val(n: int) -> tuple[Tensor, Tensor]:
    data = build_split(RunSpec(dataset="fashion_mnist"), train=False)
    xs, ys = zip(*(data[i] for i in range(n)), strict=True)
    return torch.stack(xs), torch.tensor(ys)


class Masked(nn.Module):
    """Shattered gradients: the logits are detached (plus 0 * x, so autograd still runs), so every input gradient
    is exactly 0 while the function, and so its true robustness, is the wrapped model's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).detach() + 0 * x.flatten(1).sum(1, keepdim=True)


def test_spec_settings_are_validated_and_off_by_default() -> None:
    ev = RunSpec().evaluate
    assert (ev.autoattack, ev.autoattack_steps, ev.autoattack_queries) == (False, 100, 5000)
    with pytest.raises(SpecError, match=r"evaluate\.autoattack_queries"):
        from_dict({"evaluate": {"autoattack_queries": 0}})
    with pytest.raises(SpecError, match=r"evaluate\.autoattack"):
        from_dict({"evaluate": {"autoattack": "standard"}})
    assert autoattack.version_name(100, 5000) == "standard" and autoattack.version_name(10, 5000) == "custom"
    assert [autoattack.n_targets(c) for c in (10, 100, 9, 2)] == [9, 9, 8, 1]  # 9 targets need 10 classes


def test_our_loop_is_the_packages_run_standard_evaluation(results: Path) -> None:
    """robust_masks runs the package's attacks one by one (to record each one's accuracy): its final mask is
    exactly what AutoAttack.run_standard_evaluation returns for the same seed and budgets."""
    model = model_of(results, "standard").eval()
    x, y = val(48)
    with evaluate.frozen(model):
        masks = autoattack.robust_masks(model, x, y, norm="l2", eps=EPS, seed=5, steps=10, queries=100)
        adversary = autoattack.build(model, norm="l2", eps=EPS, seed=5, num_classes=10, device=x.device, steps=10,
                                     queries=100)  # fmt: skip
        with torch.random.fork_rng():
            _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    assert torch.equal(masks["square"], y_adv == y)
    with torch.no_grad():
        assert masks["square"].sum() < (model(x).argmax(1) == y).sum()  # not vacuous


def test_autoattack_is_not_weaker_than_pgd_20x10_and_eps0_is_clean(results: Path) -> None:
    model = model_of(results, "fast")
    x, y = val(64)
    pgd = evaluate.evaluate_model(model, (x, y), norm="l2", eps_list=[EPS], steps=20, restarts=10, batch_size=64)
    rows = evaluate.evaluate_model(model, (x, y), norm="l2", eps_list=[0.0, EPS], steps=1, restarts=1, batch_size=64,
                                   autoattack=True, autoattack_steps=20, autoattack_queries=300)  # fmt: skip
    zero, at = rows
    print(f"PGD-20x10 {pgd[0]['adv_acc']:.3f}, AutoAttack (custom 20 it / 300 queries) {at['aa_acc']:.3f}")
    assert at["aa_acc"] <= pgd[0]["adv_acc"] + 0.005
    assert at["aa_acc"] < at["clean_acc"] - 0.05  # not vacuous
    assert {zero[c] for c in ("adv_acc", *evaluate.STRONG_COLUMNS)} == {zero["clean_acc"]}
    with torch.no_grad():
        assert zero["clean_acc"] == pytest.approx((model(x).argmax(1) == y).float().mean().item())


def eval_spec(run_id: str, results: Path, **kw: Any) -> RunSpec:
    ev = Evaluate(source_run="fast", source_dir=str(layout.run_dir(results, EXP, "fast")), eps_list=[0.0, EPS],
                  steps=3, restarts=1, batch_size=16, max_examples=48, autoattack=True, autoattack_steps=5,
                  autoattack_queries=40, **kw)  # fmt: skip
    return RunSpec(experiment=EXP, run_id=run_id, kind="evaluate", seed=7, threads=1, evaluate=ev)


def write_spec(results: Path, spec: RunSpec) -> Path:
    path = layout.run_dir(results, EXP, spec.run_id) / layout.SPEC
    layout.write_json_atomic(path, spec.to_dict())
    return path


COUNTS = ("eps", "n", "clean_acc", "adv_acc", *evaluate.STRONG_COLUMNS, "aa_version", "aa_package_version")


def test_one_and_two_gloo_ranks_give_identical_counts(results: Path) -> None:
    one = write_spec(results, eval_spec("aa-w1", results))
    entry.run(one, dist=distributed.single(RunSpec(threads=1)))
    rows = layout.read_csv(one.parent / layout.ROBUSTNESS)
    assert list(rows[0]) == list(evaluate.CSV_COLUMNS)
    assert rows[1]["aa_package"] == "pyautoattack" and rows[1]["aa_package_version"] == autoattack.package_version()
    assert float(rows[1]["aa_acc"]) < float(rows[1]["clean_acc"])

    two = write_spec(results, eval_spec("aa-w2", results))  # 3 batches of 16: rank 0 runs 2, rank 1 runs 1
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    for key in ("SLURM_PROCID", "SUBMITIT_EXECUTOR"):
        env.pop(key, None)
    procs = [
        subprocess.Popen([sys.executable, "-m", "workloads.entry", str(two)], env={**env, "RANK": str(r),
                         "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows2 = layout.read_csv(two.parent / layout.ROBUSTNESS)
    assert [[r[c] for c in COUNTS] for r in rows2] == [[r[c] for c in COUNTS] for r in rows]


def test_resume_skips_finished_batches(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = eval_spec("aa-resume", results)
    run_dir = write_spec(results, spec).parent
    calls = fixtures.evaluate_interrupted_then_resumed(spec, run_dir, monkeypatch, die_at=3)  # dies in batch 3
    assert calls == [0, 16, 32, 32]  # batches 0 and 1 were recorded before the interruption
    resumed = layout.read_csv(run_dir / layout.ROBUSTNESS)
    fresh = write_spec(results, eval_spec("aa-fresh", results)).parent
    evaluate.main(eval_spec("aa-fresh", results), fresh, distributed.single(spec))
    assert layout.read_csv(fresh / layout.ROBUSTNESS) == resumed


def test_masked_gradients_are_caught_by_square_and_flagged(results: Path, tmp_path: Path) -> None:
    """PGD (and the gradient attacks) see zero gradients and call the model robust; Square, gradient-free, does
    not; the time-to-target table flags the PGD - AutoAttack gap."""
    model = Masked(model_of(results, "standard"))
    x, y = val(64)
    (row,) = evaluate.evaluate_model(model, (x, y), norm="l2", eps_list=[EPS], steps=20, restarts=2, batch_size=64,
                                     autoattack=True, autoattack_steps=10, autoattack_queries=300)  # fmt: skip
    print({k: row[k] for k in ("clean_acc", "adv_acc", *evaluate.STRONG_COLUMNS)})
    assert row["adv_acc"] >= row["clean_acc"] - 0.05  # PGD: "robust"
    assert row["aa_fab_t_acc"] >= row["clean_acc"] - 0.05  # so are the gradient-based attacks
    assert row["aa_acc"] <= row["aa_fab_t_acc"] - 0.05  # Square is not fooled
    gap = (row["adv_acc"] - row["aa_acc"]) * 100
    assert gap > ttt.MASKING_POINTS

    runs = pd.DataFrame([{"run_id": "masked", "kind": "train", "dataset": "fashion_mnist", "method": "fast",
                          "world_size": 1, "attack_eps": EPS, "eval_every": 1, "state": "finished"}])  # fmt: skip
    pd.DataFrame([{"run_id": "masked", "epoch": 1, "elapsed_s": 10.0, "adv_acc": row["adv_acc"]}]).to_csv(
        tmp_path / "epochs.csv", index=False
    )
    rob = pd.DataFrame([{**row, "run_id": "masked", "method": "fast", "checkpoint": "last"}])
    (reach,) = ttt.time_to_target(Tables(tmp_path, runs, None, rob))
    assert reach.masked and reach.gap_points == pytest.approx(gap)
    assert "‡" in ttt.ttt_markdown([reach]) and ttt.ttt_rows([reach])[0]["masking_flag"] == "yes"
