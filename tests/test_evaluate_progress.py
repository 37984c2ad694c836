"""A running evaluation says what it is doing: each PGD eps and each AutoAttack attack of each batch is a step
(workloads.stage) that the job logs and writes to stage.json, and `status` shows it (and, once finished, the
evaluation's time) where a train cell shows its epoch and elapsed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.monitor import status
from workloads import layout, stage
from workloads.assets.external import autoattack
from workloads.kinds import evaluate


def test_every_pgd_eps_and_autoattack_attack_is_a_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    s = evaluate.Settings(norm="l2", eps_list=(0.5, 1.0), steps=1, restarts=1, alpha_factor=2.5, generator_seed=0,
                          batch_size=4, autoattack=True, autoattack_steps=1, autoattack_queries=5)  # fmt: skip
    steps: list[tuple[str, dict[str, Any]]] = []
    with stage.reporting(lambda step, details: steps.append((step, details))):
        evaluate.batch_counts(model, x, y, 0, s)
    names = [name for name, _ in steps]
    per_eps = ["pgd eps {:g}", *(f"autoattack {a}" for a in autoattack.ATTACKS)]
    assert names == [n.format(e) for e in (0.5, 1.0) for n in per_eps], names
    assert steps[0][1] == {"examples": 4}
    stage.report("nobody listens")  # without a hook: nothing happens


def _run(tmp_path: Path, **files: dict[str, Any]) -> status.RunFiles:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    layout.write_json_atomic(run / layout.SPEC, {"kind": "evaluate", "epochs": 1})
    for name, data in files.items():
        layout.write_json_atomic(run / name, data)
    return status.read_run(run)


def test_status_shows_the_evaluation_stage_then_its_time(tmp_path: Path) -> None:
    files = _run(tmp_path, **{layout.STAGE: {"step": "autoattack apgd-t", "batch": 2, "batches": 4,
                                             "elapsed_s": 12.5}})  # fmt: skip
    assert (files.stage, files.elapsed_s, files.epochs) == ("batch 2/4 autoattack apgd-t", 12.5, None)
    cell = status.CellStatus(run_id="eval-x", state="running", stage=files.stage, elapsed_s=files.elapsed_s)
    assert "batch 2/4 autoattack apgd-t  12.5s" in status.format_table([cell])
    (tmp_path / "run" / layout.STAGE).unlink()
    files = _run(tmp_path, **{layout.RESULT: {"eval_s": 48.25, "n": 32}})
    assert (files.stage, files.elapsed_s) == ("done", 48.25)
