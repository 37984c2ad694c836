"""The judge on the real local Slurm cluster: it starts beside the training (--dependency=after:) and has judged
the first snapshots before the training ends; it ends, within a bound, when the run it follows is scancel'ed; a
judge stopped by `scancel --signal=USR2` is requeued and judges no snapshot twice."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.monitor import manifest
from orchestrator.monitor import status as cell_state
from orchestrator.submit import launch
from tests.fixtures import quiet, wait_terminal, wait_until, write_grid
from workloads import layout

pytestmark = pytest.mark.slurm

JUDGE = (
    "  snapshot_every: 1\n  judge: {{examples: 40, steps: 2, batch_size: 20, poll_s: 1, idle_timeout_min: {idle}}}\n"
)


def submit(folder: Path, results: Path, name: str, epochs: int, idle: float = 5.0) -> tuple[Path, str, str]:
    """A 1-GPU training cell without on-clock validation and its judge; (experiment dir, train id, judge id)."""
    grid = write_grid(folder, name, [(1, 1)], epochs=epochs, train_subset=2048, eval_every=0,
                      extra=JUDGE.format(idle=idle))  # fmt: skip
    launch.submit(grid, results, log=quiet)
    exp_dir = results / name
    ids = sorted(manifest.load(exp_dir))
    (train,) = [r for r in ids if not r.startswith("judge-")]
    return exp_dir, train, "judge-n1g1"


def judged(exp_dir: Path, judge: str) -> list[dict[str, str]]:
    path = manifest.run_dir(exp_dir, judge) / layout.JUDGED
    return layout.read_csv(path) if path.exists() else []


def test_the_judge_follows_a_run_while_it_trains(tmp_path: Path, results: Path) -> None:
    exp_dir, train, judge = submit(tmp_path, results, "judgelive", epochs=10)
    wait_until(lambda: judged(exp_dir, judge), 300, "the judge's first row", interval=0.5)
    assert not (manifest.run_dir(exp_dir, train) / layout.RESULT).exists(), "trained before the judge judged"
    cells = wait_terminal(exp_dir, timeout=600)
    assert {r: c.state for r, c in cells.items()} == {train: "finished", judge: "finished"}, cells
    rows = judged(exp_dir, judge)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))  # each snapshot once, in order
    index = layout.read_csv(layout.snapshot_index(manifest.run_dir(exp_dir, train)))
    assert [r["train_s"] for r in rows] == [r["train_s"] for r in index]


def test_the_judge_ends_when_its_run_is_cancelled(tmp_path: Path, results: Path) -> None:
    exp_dir, train, judge = submit(tmp_path, results, "judgecancel", epochs=60, idle=0.1)
    wait_until(lambda: judged(exp_dir, judge), 300, "the judge's first row", interval=0.5)
    subprocess.run(["scancel", str(manifest.load(exp_dir)[train].job_id)], check=True)
    t0 = time.monotonic()
    cells = wait_terminal(exp_dir, timeout=240)  # idle 6 s + a poll + Slurm's KillWait (30 s): well inside
    assert cells[train].state == "cancelled" and cells[judge].state == "finished", cells
    result = layout.read_json(manifest.run_dir(exp_dir, judge) / layout.RESULT)
    assert result["runs"] == {train: "gone"}
    print(f"\nthe judge ended {time.monotonic() - t0:.0f} s after the scancel of its run")


def test_a_judge_stopped_by_usr2_resumes_without_rejudging(tmp_path: Path, results: Path) -> None:
    exp_dir, train, judge = submit(tmp_path, results, "judgeusr2", epochs=12)
    wait_until(lambda: len(judged(exp_dir, judge)) >= 2, 300, "two judged snapshots", interval=0.5)
    job = str(manifest.load(exp_dir)[judge].job_id)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    cells = wait_terminal(exp_dir, timeout=600)
    assert {r: c.state for r, c in cells.items()} == {train: "finished", judge: "finished"}, cell_state.format_table(
        list(cells.values())
    )
    rows = judged(exp_dir, judge)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))  # none lost, none twice
    assert len(layout.read_json(manifest.run_dir(exp_dir, judge) / layout.ENV)["attempts"]) == 2
