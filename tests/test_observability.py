"""Following a grid nobody watches: `orchestrate status --watch` (1000 cells, one scheduler call per refresh; in
place on a terminal, appended otherwise), the estimate as a guard at submit time, and the demo's first run on a
fresh clone (every cell submitted; a second run skips them and says so)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli
from orchestrator.grid.files import GridError, load_grids
from orchestrator.monitor import manifest, progress, scheduler
from orchestrator.submit import launch, plan
from tests import fixtures
from tests.slurm_stub import StubCell
from workloads import layout

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "demo.yaml"


class FakeSacct:
    """scheduler.subprocess.run standing in for sacct: every asked job in `state`; counts the calls."""

    def __init__(self, state: str = "RUNNING") -> None:
        self.state, self.calls = state, 0

    def __call__(self, cmd: list[str], *args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        assert cmd[0] == "sacct", cmd
        bases = cmd[cmd.index("-j") + 1].split(",")
        lines = [f"{b}_[0-99999]|{self.state}|00:01:00|node1|cpu=1" for b in bases]
        return subprocess.CompletedProcess(cmd, 0, "\n".join(lines) + "\n", "")


@pytest.fixture
def sacct(monkeypatch: pytest.MonkeyPatch) -> FakeSacct:
    fake = FakeSacct()
    monkeypatch.setattr(scheduler.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(scheduler.subprocess, "run", fake)
    return fake


def _epoch_row(run_id: str, epoch: int, **extra: object) -> dict[str, object]:
    evaluated = epoch % 3 == 0
    return {"run_id": run_id, "epoch": epoch, "train_s": 9.0, "eval_s": 1.0, "elapsed_s": 10.0 * epoch, "lr": 0.1,
            "train_loss": 2.0 / epoch, "train_acc": 0.5, "clean_acc": 0.8 if evaluated else "",
            "adv_acc": 0.4 if evaluated else "", "batch_per_rank": 64, "world_size": 1, **extra}  # fmt: skip


def _make_cell(exp_dir: Path, run_id: str, job_id: str, epochs_done: int, co: bool | None = None) -> None:
    """A train run directory as a job leaves it after `epochs_done` epochs (plain writes: 1000 fsyncs are slow)."""
    run_dir = manifest.run_dir(exp_dir, run_id)
    run_dir.mkdir(parents=True)
    (run_dir / layout.SPEC).write_text(json.dumps({"kind": "train", "epochs": 9, "run_id": run_id}))
    columns = layout.EPOCH_COLUMNS if "co_flag" in layout.EPOCH_COLUMNS else (*layout.EPOCH_COLUMNS, "co_flag")
    rows = [_epoch_row(run_id, e, **({"co_flag": int(co and e == 3)} if co is not None else {}))
            for e in range(1, epochs_done + 1)]  # fmt: skip
    if rows:
        with open(run_dir / layout.EPOCHS, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    (run_dir / layout.ENV).write_text(json.dumps({"attempts": [{"job_id": job_id}], "job_ids": [job_id]}))


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_refresh_of_1000_cells_is_one_scheduler_call(results: Path, sacct: FakeSacct) -> None:
    exp_dir = results / "thousand"
    entries: dict[str, manifest.Entry] = {}
    for i in range(1000):
        run_id = f"cell-{i:04d}"
        _make_cell(exp_dir, run_id, f"{100 + i // 500}_{i % 500}", epochs_done=3)
        manifest.record(entries, run_id, f"{100 + i // 500}_{i % 500}", str(100 + i // 500), "slurm", "train", 1)
    manifest.save(exp_dir, entries)
    predictions = progress.Predictions()
    t0 = time.perf_counter()
    text, active = progress.refresh({exp_dir: None}, predictions)
    seconds = time.perf_counter() - t0
    print(f"\none --watch refresh of 1000 cells: {seconds:.3f} s, {sacct.calls} scheduler call(s)")
    assert sacct.calls == 1  # one batched sacct for two arrays of 500
    assert active
    lines = text.splitlines()
    assert len(lines) == 1 + 1000 + 1 and lines[-1] == "1000 cells: 1000 running"
    # epoch 3 of 9 after 30 s: 10 s an epoch, 6 epochs left -> ETA 60 s
    assert lines[1].split() == ["cell-0000", "running", "100_0", "1", "3/9", "0.6667", "80.0%", "40.0%", "30s", "60s"]


def test_watch_in_place_on_a_terminal_and_appended_otherwise(results: Path, sacct: FakeSacct) -> None:
    exp_dir = results / "watched"
    _make_cell(exp_dir, "a", "7_0", epochs_done=3, co=True)
    _make_cell(exp_dir, "b", "7_1", epochs_done=0)
    entries: dict[str, manifest.Entry] = {}
    for run_id, job_id in (("a", "7_0"), ("b", "7_1")):
        manifest.record(entries, run_id, job_id, "7", "slurm", "train", 1)
    manifest.save(exp_dir, entries)

    def finish(_seconds: float) -> None:  # the second refresh sees both cells ended
        sacct.state = "COMPLETED"
        for run_id in ("a", "b"):
            layout.write_json_atomic(manifest.run_dir(exp_dir, run_id) / layout.RESULT, {})

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = io.StringIO()
    progress.watch({exp_dir: None}, 5.0, out=out, sleep=finish)
    text = out.getvalue()
    assert "\x1b" not in text and sacct.calls == 2
    first, second = re.split(r"^\d\d:\d\d:\d\d  refresh ", text, flags=re.M)[1:]  # one block per refresh
    a_row = next(line for line in first.splitlines() if line.startswith("a "))
    assert a_row.split()[-3:] == ["CO", "30s", "60s"]  # co flag from epochs.csv, ETA from its own epochs
    assert "2 running" in first and "2 finished" in second and "(no cell running or pending)" in second

    for run_id in ("a", "b"):
        (manifest.run_dir(exp_dir, run_id) / layout.RESULT).unlink()
    sacct.state = "RUNNING"
    term = Terminal()
    progress.watch({exp_dir: None}, 5.0, out=term, sleep=finish)
    frames = term.getvalue().split(progress.CLEAR)
    assert frames[0] == "" and len(frames) == 3  # every refresh redraws from the top of the screen


def test_watch_eta_from_the_estimate_before_the_first_epoch(results: Path, tmp_path: Path, sacct: FakeSacct) -> None:
    grid = tmp_path / "eta.yaml"
    grid.write_text(GUARD_GRID.format(name="eta", epochs=3, timeout_min=60))
    (cell,) = load_grids(grid)[0].cells
    exp_dir = results / "eta"
    layout.write_json_atomic(manifest.run_dir(exp_dir, cell.run_id) / layout.SPEC, cell.to_dict())
    entries: dict[str, manifest.Entry] = {}
    manifest.record(entries, cell.run_id, "9", "9", "slurm", "train", 1)
    manifest.save(exp_dir, entries)
    bench = _write_bench(tmp_path)
    sacct.state = "PENDING"
    text, _ = progress.refresh({exp_dir: None}, progress.Predictions(bench))
    row = text.splitlines()[1].split()
    assert row[1] == "pending" and row[4] == "0/3" and row[-1] != "-"
    text, _ = progress.refresh({exp_dir: None}, progress.Predictions())  # no bench at hand: no ETA
    assert text.splitlines()[1].split()[-1] == "-"


# ---------------------------------------------------------------------------------------------------------------
# The estimate as a guard

GUARD_GRID = """\
name: {name}
kind: train
executor: local
defaults:
  dataset: cifar10
  model: small_cnn
  method: fast
  epochs: {epochs}
  train_subset: 2000
  val_subset: 400
  global_batch_size: 64
  eval: {{every: 2, steps: 20}}
  resources: {{timeout_min: {timeout_min}, max_requeues: 1}}
grid:
  seed: [0]
"""
COSTS = {("pgd", "fast", 1): 1.0, ("forward", "standard", 0): 0.35, ("eval", "eval", 20): 20.7,
         ("train_step", "fast", 1): 2.1}  # fmt: skip


def _write_bench(folder: Path) -> Path:
    rows = fixtures.bench_rows(COSTS, lambda b: 0.01 + 0.002 * b, (16, 32, 64, 128), dataset="cifar10",
                               extra={"precision": "fp32", "channels_last": False})  # fmt: skip
    layout.write_csv_atomic(folder / layout.BENCH, list(rows[0]), rows)
    return folder / layout.BENCH


def test_guard_warns_and_strict_refuses(tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """~30 s an epoch (32 fast steps of 0.29 s + evaluations): 10 epochs outlast 2 attempts x 1 minute."""
    grid = tmp_path / "guard.yaml"
    grid.write_text(GUARD_GRID.format(name="guard", epochs=10, timeout_min=1))
    bench = _write_bench(tmp_path)
    assert cli.main(["submit", str(grid), "--results", str(results), "--bench", str(bench), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "guard/fast-n1g1-b64-s0: predicted " in err and "2 attempt(s) x timeout_min 1 = 2.0 min" in err
    assert "--strict: nothing submitted" in err and not manifest.load(results / "guard")

    # without --strict: a warning with the numbers, then the cell is submitted; the experiment's own bench.csv
    # serves when --bench is not given
    _write_bench(results / "guard")
    lines: list[str] = []
    result = launch.submit(grid, results, log=lines.append, job=StubCell())
    assert result.local is not None and result.local.wait(poll_s=0.2)
    (warning,) = [line for line in lines if line.startswith("warning: ")]
    assert f"(bench {results / 'guard' / 'bench.csv'})" in warning and "raise resources.timeout_min" in warning
    assert len(result.job_ids) == 1

    # a budget the prediction fits: no warning
    grid.write_text(GUARD_GRID.format(name="guard2", epochs=1, timeout_min=60))
    assert launch.submit(grid, results, log=lines.append, job=StubCell(), bench=bench, strict=True).job_ids


# ---------------------------------------------------------------------------------------------------------------
# The demo on a fresh clone


def test_demo_plans_every_cell_on_a_fresh_clone_and_skips_them_the_second_time(results: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "results/demo"], cwd=REPO, capture_output=True, text=True)
    assert tracked.returncode == 0 and not tracked.stdout, "results/demo is the demo's own output: never commit it"
    grids = load_grids(DEMO, "local")
    plans = plan.decide(grids, results, only_missing=False)
    assert all(not p.skipped for p in plans)
    submitted = sorted(c.run_id for p in plans for c in p.submit)
    assert submitted == sorted(c.run_id for g in grids for c in g.cells) and len(submitted) == 12
    assert {p.exp_dir for p in plans} == {results / "demo"}

    for p in plans:  # as the demo leaves them: spec.json as submitted, result.json last
        for cell in p.submit:
            run_dir = manifest.run_dir(p.exp_dir, cell.run_id)
            layout.write_json_atomic(run_dir / layout.SPEC, cell.to_dict())
            layout.write_json_atomic(run_dir / layout.RESULT, {"run_id": cell.run_id})
    lines: list[str] = []
    result = launch.submit(DEMO, results, "local", log=lines.append)
    assert not result.job_ids and not result.arrays
    assert sorted(lines) == sorted(f"skip demo/{run_id}: finished" for run_id in submitted)


# ---------------------------------------------------------------------------------------------------------------
# Cluster limits without a cluster (tests/test_cluster_limits.py submits them to the real one)


def test_array_parallelism_is_the_throttle_and_at_least_one(tmp_path: Path, results: Path) -> None:
    grid = tmp_path / "throttle.yaml"
    text = "name: throttle\nkind: train\nprofile: local-cluster\nexecutor: slurm\n"
    text += "defaults: {{resources: {{array_parallelism: {n}}}}}\ngrid:\n  seed: [0, 1, 2, 3, 4]\n"
    grid.write_text(text.format(n=3))
    assert "#SBATCH --array=0-4%3\n" in launch.dry_run(grid, results)
    grid.write_text(text.format(n=0))
    with pytest.raises(GridError, match=r"resources\.array_parallelism: expected a value >= 1; got 0"):
        load_grids(grid)
    cells = load_grids(_five(tmp_path))[0].cells
    assert [len(part) for part in launch.split(cells, 2)] == [2, 2, 1]
    assert launch.split(cells, 5) == [cells] and launch.split(cells, None) == [cells]


def _five(folder: Path) -> Path:
    path = folder / "five.yaml"
    path.write_text("name: five\nkind: train\nexecutor: local\ngrid:\n  seed: [0, 1, 2, 3, 4]\n")
    return path
