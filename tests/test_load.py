"""Load: many cells finishing at once leave their experiment's shared files whole, and `orchestrate
status` on 10^4 cells asks the scheduler once.

- Locally: the run directories of 256 planned and recorded cells written by 256 processes released at the same
  instant (the StubCell job of the 64-cell Slurm test, run under submitit's local job environment), while two
  collector processes rewrite runs.csv and epochs.csv in a loop and check every version they read back.
- Real cluster (marked slurm): 64 such cells submitted by `orchestrate submit` (2 arrays: MaxArraySize is 33) that
  each finish on a whole multiple of FINISH_EVERY_S of wall-clock time, so every cell running at that instant (8 at
  a time: one fake GPU each, 4 nodes x 2) writes its run directory in the same second; the same collectors run,
  the test polls `status`, and a second `submit --only-missing` of the same grid must submit nothing. (256 cells
  there took 126 s on 2 loaded cores, in waves of 8: the 256-at-once case is the local one.)
- 10^4 cells: the synthetic experiment of benchmarks/status_speed.py (the on-disk formats of submit and the jobs)
  and its stand-in sacct: one scheduler call and the right count per state (the benchmark measures the time).
Checked at the end of each: manifest.json parses and lists every cell once with one job id, runs.csv has one row
per cell (pandas), each epochs.csv is complete, the collected epochs.csv has each (run_id, epoch) once, no temp
file is left.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli, collect
from orchestrator.monitor import manifest
from orchestrator.monitor import status as cell_state
from orchestrator.submit import launch
from tests.fixtures import quiet, wait_terminal
from tests.slurm_stub import StubCell
from workloads import layout

REPO = Path(__file__).resolve().parents[1]
CELLS = 256  # locally
CLUSTER_CELLS = 64  # on the cluster
FINISH_EVERY_S = 2.0
LOCAL_IDS = 900_000_000  # above any pid_max
GRID = (
    "name: load\nkind: train\nprofile: local-cluster\nexecutor: slurm\n"
    "defaults: {{epochs: 1, train_subset: 64, val_subset: 64, global_batch_size: 32}}\n"
    "grid:\n  seed: {seeds}\n  resources: [{{timeout_min: 5, cpus_per_task: 1}}]\n"
)
# Rewrites runs.csv / epochs.csv until STOP exists and checks every version it reads back; prints its rounds.
COLLECTOR = """
import csv, sys, time
from pathlib import Path
from orchestrator import collect
exp_dir, stop = Path(sys.argv[1]), Path(sys.argv[2])
rounds = 0
while not stop.exists() or rounds == 0:
    paths = collect.collect(exp_dir)
    with open(paths["runs"], newline="") as f:
        reader = csv.DictReader(f)
        ids = [r["run_id"] for r in reader]
        head = tuple(reader.fieldnames or ())[: len(collect.RUN_COLUMNS)]  # then the recipe columns (recipe_key)
        assert head == collect.RUN_COLUMNS, reader.fieldnames
    assert len(ids) == len(set(ids)), "runs.csv: a run_id twice"
    with open(paths["epochs"], newline="") as f:
        keys = [(r["run_id"], r["epoch"]) for r in csv.DictReader(f)]
    assert len(keys) == len(set(keys)), "epochs.csv: a (run_id, epoch) twice"
    rounds += 1
    time.sleep(0.1)  # two of these on 2 cores: leave the jobs some CPU
print(rounds)
"""


class TogetherCell(StubCell):
    """StubCell finishing on a whole multiple of FINISH_EVERY_S: every cell running then writes in the same second."""

    def __call__(self, spec_path: str) -> dict[str, Any]:
        time.sleep(FINISH_EVERY_S - time.time() % FINISH_EVERY_S)
        return super().__call__(spec_path)


def _grid(folder: Path, cells: int) -> Path:
    path = folder / "load.yaml"
    path.write_text(GRID.format(seeds=list(range(cells))))
    return path


def _collectors(exp_dir: Path, stop: Path, n: int = 2) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", COLLECTOR, str(exp_dir), str(stop)]
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]


def _stop(collectors: list[subprocess.Popen[str]], stop: Path) -> list[int]:
    stop.touch()
    rounds = []
    for p in collectors:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        rounds.append(int(out.split()[-1]))
    return rounds


def assert_whole(exp_dir: Path, n: int) -> None:
    """The shared files of an experiment of n finished one-epoch cells: complete, parseable, nothing twice."""
    import pandas as pd

    entries = manifest.load(exp_dir)  # parses
    assert len(entries) == n and all(len(e.job_ids) == 1 for e in entries.values()), "a cell submitted twice"
    assert len({e.job_id for e in entries.values()}) == n
    for run_id in entries:
        rows = layout.read_csv(manifest.run_dir(exp_dir, run_id) / layout.EPOCHS)
        assert [r["epoch"] for r in rows] == ["1"], (run_id, rows)
        assert layout.read_json(manifest.run_dir(exp_dir, run_id) / layout.RESULT)["run_id"] == run_id
    paths = collect.collect(exp_dir)
    runs = pd.read_csv(paths["runs"])
    assert len(runs) == n and runs["run_id"].is_unique and set(runs["run_id"]) == set(entries)
    assert set(runs["state"]) == {"finished"}
    epochs = pd.read_csv(paths["epochs"])
    assert len(epochs) == n and not epochs.duplicated(["run_id", "epoch"]).any()
    assert not [p for p in exp_dir.rglob("*") if p.name.endswith(".tmp")], "temporary files left behind"


# -- the real cluster ---------------------------------------------------------------------------------------------


@pytest.mark.slurm
def test_64_cells_finishing_together_on_the_cluster(tmp_path: Path, results: Path) -> None:
    t0 = time.monotonic()
    grid = _grid(tmp_path, CLUSTER_CELLS)
    result = launch.submit(grid, results, log=quiet, job=TogetherCell())
    assert len(result.job_ids) == CLUSTER_CELLS and len(result.arrays) == 2, result.arrays
    exp_dir, stop = results / "load", tmp_path / "stop"
    collectors = _collectors(exp_dir, stop)
    again = launch.submit(grid, results, only_missing=True, log=quiet, job=TogetherCell())
    assert again.job_ids == {}, f"cells submitted twice: {sorted(again.job_ids)[:5]}"
    done = wait_terminal(exp_dir, timeout=400)
    rounds = _stop(collectors, stop)
    print(f"\n{CLUSTER_CELLS} cells on the cluster: {time.monotonic() - t0:.0f} s; collector rounds {rounds}")
    assert {c.state for c in done.values()} == {"finished"}, cell_state.counts(done.values())
    ended = sorted(layout.read_json(manifest.run_dir(exp_dir, r) / layout.RESULT)["ended"] for r in done)
    together = max(sum(1 for e in ended if int(e) == int(s)) for s in ended)
    print(f"at most {together} cells finished within one second")
    assert together >= 4, f"cells did not finish together (at most {together} in one second)"  # 8 when idle
    assert_whole(exp_dir, CLUSTER_CELLS)


# -- locally: 256 at the same instant ------------------------------------------------------------------------------


def _finish_at(spec_path: str, job_id: str, at: float) -> None:
    """One cell's job in a forked process: StubCell under submitit's local job environment, released at `at`."""
    os.environ.update({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": job_id, "SUBMITIT_LOCAL_NTASKS": "1",
                       "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                       "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0"})  # fmt: skip
    time.sleep(max(0.0, at - time.time()))
    StubCell()(spec_path)


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_256_run_directories_written_at_the_same_instant(tmp_path: Path, results: Path) -> None:
    """The planner writes 256 spec.json files and the manifest (as `submit` does, under the experiment's lock);
    then 256 forked processes write their cells' files at one instant while two collectors run."""
    from orchestrator.grid.files import load_grids
    from orchestrator.submit.plan import decide

    (plan,) = decide(load_grids(_grid(tmp_path, CELLS), "local"), results, only_missing=False)
    exp_dir, stop = plan.exp_dir, tmp_path / "stop"
    entries: dict[str, manifest.Entry] = {}
    with manifest.locked(exp_dir):
        for i, cell in enumerate(plan.submit):
            layout.write_json_atomic(manifest.run_dir(exp_dir, cell.run_id) / layout.SPEC, cell.to_dict())
            job_id = str(LOCAL_IDS + i)  # as the local executor records a job: a pid (here one no process has)
            manifest.record(entries, cell.run_id, job_id, job_id, "local", "train", plan.grid.document)
        manifest.save(exp_dir, entries)
    collectors = _collectors(exp_dir, stop)
    ctx = multiprocessing.get_context("fork")
    at = time.time() + 3.0
    procs = [
        ctx.Process(target=_finish_at, args=(str(manifest.run_dir(exp_dir, c.run_id) / layout.SPEC), str(i), at))
        for i, c in enumerate(plan.submit)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rounds = _stop(collectors, stop)
    ended = [layout.read_json(manifest.run_dir(exp_dir, c.run_id) / layout.RESULT)["ended"] for c in plan.submit]
    print(f"\n{CELLS} cells written in {max(ended) - min(ended):.2f} s; collector rounds {rounds}")
    assert len(ended) == CELLS
    assert_whole(exp_dir, CELLS)


# -- status of 10^4 cells ------------------------------------------------------------------------------------------


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_status_of_10000_cells_asks_the_scheduler_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import status_speed

    cells = 10_000
    exp_dir, answer = status_speed.build(tmp_path / "results", cells)
    bin_dir, calls = status_speed.fake_scheduler(tmp_path, answer)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    try:
        assert cli.main(["status", str(exp_dir)]) == 0
    finally:
        shutil.rmtree(tmp_path / "results")  # 7 * 10^4 files: not kept among pytest's last three tmp folders
    out = capsys.readouterr().out.splitlines()
    made = calls.read_text().splitlines()
    assert len(made) == 1 and made[0].startswith("sacct -X -n -P -j 1000,1001,"), made  # ONE batched call
    table = out[1 : cells + 1]
    states = {line.split()[0]: line.split()[1] for line in table}
    assert len(states) == cells
    assert all(s == status_speed.state_of(int(r.split("-")[1])) for r, s in states.items())
    want = status_speed.expected_counts(cells)
    summary = ", ".join(f"{want[s]} {s}" for s in cell_state.STATES if s in want)
    assert out[cells + 1] == f"{cells} cells: {summary} (3 with an unreadable checkpoint)"
    notes = out[cells + 2 :]
    assert len(notes) == want["failed"] + 3
    assert all(" failed: RuntimeError: CUDA out of memory (traceback: " in n for n in notes[: want["failed"]])
    torn = notes[want["failed"] :]
    said = "finished, checkpoint unreadable:"
    expected = [f"cell-00120 {said} checkpoint-best.pt (truncated: ",
                f"cell-00240 {said} checkpoint-last.pt (not a torch.save file (a plain pickle))",
                f"cell-00360 {said} checkpoint-best.pt (missing)"]  # fmt: skip
    assert all(line.startswith(start) for line, start in zip(torn, expected, strict=True)), torn
    assert all(line.endswith("resubmit with --retry-failed to train it again") for line in torn), torn
