"""Submission without a cluster: the golden sbatch script, dry runs, bad grids through the CLI, resubmission rules,
environment scrubbing, and a real (tiny) grid on submitit's local executor."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.grid.files import load_grids
from orchestrator.monitor import manifest
from orchestrator.monitor import status as cell_state
from orchestrator.submit import launch, plan, submitit_compat
from tests.fixtures import normalise
from tests.slurm_stub import StubCell
from workloads import layout

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "local-cluster-one-cell.sbatch"
BAD_GRIDS = sorted((REPO / "tests" / "grids" / "bad").glob("*.yaml"))

ONE_CELL = """\
name: golden
kind: train
profile: local-cluster
executor: slurm
defaults:
  model: small_cnn
  dataset: fashion_mnist
  epochs: 3
  global_batch_size: 64
  resources: {timeout_min: 7, cpus_per_task: 2, mem_gb: 1.5, max_requeues: 2}
grid:
  method: [fast]
  shape:
    - {nodes: 2, gpus_per_node: 2}
"""

LOCAL_GRID = """\
name: tinylocal
kind: train
executor: local
defaults:
  model: small_cnn
  dataset: fashion_mnist
  method: fast
  epochs: 1
  train_subset: 256
  val_subset: 128
  global_batch_size: 64
  eval: {every: 1, steps: 2}
  resources: {timeout_min: 5}
grid:
  shape:
    - {nodes: 1, gpus_per_node: 2}
"""


def test_golden_sbatch_script(tmp_path: Path, results: Path) -> None:
    grid = tmp_path / "golden.yaml"
    grid.write_text(ONE_CELL)
    script = normalise(launch.dry_run(grid, results), results)
    if os.environ.get("FASTROBUST_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text(), "sbatch script changed; FASTROBUST_UPDATE_GOLDEN=1 rewrites the golden file"
    assert not any(results.iterdir()), "a dry run writes nothing"


def test_dry_run_array_and_dependency(tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "multi.yaml"
    grid.write_text(
        ONE_CELL.replace("method: [fast]", "method: [fast, standard]")
        + "---\nname: golden\nkind: evaluate\nprofile: local-cluster\nexecutor: slurm\n"
        "grid:\n  evaluate:\n    - {source_run: fast-n2g2-b64-s0}\n"
    )
    assert cli.main(["submit", str(grid), "--dry-run", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 2
    assert "#SBATCH --array=0-1%2" in out  # one array for the two cells of the shape
    assert "#SBATCH --dependency='afterany:<job ids of documents 1-1>'" in out  # evaluate waits for training
    assert "--output=<RESULTS>" not in out and f"--output={results}/golden/.submitit/%A_%a/%A_%a_0_log.out" in out
    assert not any(results.iterdir())


@pytest.mark.parametrize("grid", BAD_GRIDS, ids=[p.stem for p in BAD_GRIDS])
def test_bad_grid_exits_2_one_line_each(grid: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["submit", str(grid), "--results", str(results)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("orchestrate: error: ") for line in lines), err
    assert "Traceback" not in err
    expect = re.search(r"^# expect: (\S+)", grid.read_text(), re.M)
    if expect:
        assert expect.group(1) in err, f"{grid.name}: expected the key path {expect.group(1)!r} in: {err}"
    assert not any(results.iterdir()), "a rejected grid must write nothing"


def test_unknown_experiment_is_a_user_error(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "nope", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown experiment 'nope'" in err


def test_results_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FASTROBUST_RESULTS", str(tmp_path / "env"))
    assert layout.results_root(tmp_path / "cli") == tmp_path / "cli"
    assert layout.results_root(None) == tmp_path / "env"
    monkeypatch.delenv("FASTROBUST_RESULTS")
    monkeypatch.chdir(tmp_path)
    assert layout.results_root(None) == tmp_path / "results"


def test_clean_submission_env_hides_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    leaked = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "MASTER_PORT": "1234", "RANK": "3", "SUBMITIT_FOLDER": "/x"}
    for k, v in {**leaked, "SLURM_CONF": "/etc/slurm/other.conf"}.items():
        monkeypatch.setenv(k, v)
    with launch.clean_submission_env():
        assert not set(leaked) & set(os.environ)
        assert os.environ["SLURM_CONF"] == "/etc/slurm/other.conf"  # a user setting, kept
    assert all(os.environ[k] == v for k, v in leaked.items())


def test_submitit_private_names_still_exist() -> None:
    """orchestrator.submit.submitit_compat relies on names submitit does not document (pyproject bounds the version);
    a submitit release that drops one must fail here, by name, not in a dry run on a cluster."""
    missing = submitit_compat.missing_private_names()
    assert not missing, (
        f"the installed submitit lacks {', '.join(missing)}: update orchestrator/submit/submitit_compat.py"
    )


def test_dry_run_leaves_submitit_as_it_was() -> None:
    from submitit.slurm.slurm import SlurmExecutor

    before = SlurmExecutor.__dict__["affinity"]
    with submitit_compat.slurm_without_srun():
        assert SlurmExecutor.affinity() == 2
    assert SlurmExecutor.__dict__["affinity"] is before


def test_production_code_has_no_mock_and_no_torch() -> None:
    """unittest.mock only under tests/; the orchestrator never imports torch (a job imports it, not a submission)."""
    sources = sorted((REPO / "orchestrator").rglob("*.py"))
    assert sources
    for path in sources:
        text = path.read_text()
        assert "unittest" not in text and "mock" not in text.replace("mocks", ""), path
    code = (
        "import sys, orchestrator.cli, orchestrator.submit.launch, orchestrator.report, orchestrator.estimate.model; "
    )
    code += "import orchestrator.report.plots, orchestrator.submit.job; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0, "the orchestrator imported torch"


def test_finished_cell_names_the_settings_its_spec_differs_in(tmp_path: Path, results: Path) -> None:
    """Only what the cell's kind reads is compared (a bench setting is no news to a train run)."""
    grid = tmp_path / "differs.yaml"
    grid.write_text(LOCAL_GRID.replace("tinylocal", "differs"))
    (cell,) = load_grids(grid)[0].cells
    run_dir = manifest.run_dir(results / "differs", cell.run_id)
    recorded = cell.to_dict()
    recorded["bench"] = {**recorded["bench"], "repeats": 99}  # not read by a train cell
    layout.write_json_atomic(run_dir / layout.SPEC, recorded)
    layout.write_json_atomic(run_dir / layout.RESULT, {})
    (decided,) = plan.decide(load_grids(grid), results, only_missing=False)
    assert decided.skipped == {cell.run_id: "finished"}
    recorded["epochs"], recorded["optimizer"] = 99, {**recorded["optimizer"], "lr": 9.0}
    del recorded["precision"]  # written before the setting existed: the run had its default (fp32), as the grid
    layout.write_json_atomic(run_dir / layout.SPEC, recorded)
    (decided,) = plan.decide(load_grids(grid), results, only_missing=False)
    assert decided.skipped[cell.run_id] == (
        "finished (its spec.json differs from the grid in epochs, optimizer.lr: `orchestrate clean differs "
        f"{cell.run_id}` removes its run directory, then resubmit to rerun it)"
    )
    grid.write_text(
        LOCAL_GRID.replace("tinylocal", "differs").replace("  epochs: 1\n", "  epochs: 1\n  precision: bf16\n")
    )
    (decided,) = plan.decide(load_grids(grid), results, only_missing=False)  # the file lacks it; the grid wants bf16
    assert decided.skipped[cell.run_id] == (
        "finished (its spec.json differs from the grid in epochs, precision, optimizer.lr: `orchestrate clean "
        f"differs {cell.run_id}` removes its run directory, then resubmit to rerun it)"
    )


def test_source_runs_are_resolved_at_submit_time(tmp_path: Path, results: Path) -> None:
    """An evaluate/visualize cell's spec names its source run directories (absolute); the grid's cells do not."""
    grid = tmp_path / "sources.yaml"
    grid.write_text(
        "name: sources\nkind: evaluate\nexecutor: local\ngrid:\n  evaluate:\n"
        "    - {source_run: fast-n1g1-b64-s0}\n    - {source_run: x, source_experiment: other}\n"
        "---\nname: sources\nkind: visualize\nexecutor: local\n"
        "defaults:\n  visualize: {source_runs: [a, b]}\n"
    )
    grids = load_grids(grid)
    assert all(c.evaluate.source_dir is None and not c.visualize.source_dirs for g in grids for c in g.cells)
    evaluate, visualize = plan.decide(grids, results, only_missing=False)
    assert [c.evaluate.source_dir for c in evaluate.submit] == [
        str(results / "sources" / "runs" / "fast-n1g1-b64-s0"),
        str(results / "other" / "runs" / "x"),
    ]
    (vis,) = visualize.submit
    assert vis.visualize.source_dirs == [str(results / "sources" / "runs" / r) for r in ("a", "b")]
    assert [c.run_id for _, cells in evaluate.arrays() for c in cells] == [c.run_id for c in evaluate.submit]


def _fake_submission(exp_dir: Path, run_id: str, job_id: str, executor: str = "local") -> None:
    entries = manifest.load(exp_dir)
    manifest.record(entries, run_id, job_id, job_id, executor, "train", 1)
    manifest.save(exp_dir, entries)


def test_resubmission_rules(tmp_path: Path, results: Path) -> None:
    grid = tmp_path / "rules.yaml"
    grid.write_text(
        LOCAL_GRID.replace("tinylocal", "rules").replace("grid:\n", "grid:\n  method: [fast, standard, pgd2]\n")
    )
    grids = load_grids(grid)
    exp_dir = results / "rules"
    ids = sorted(c.run_id for c in grids[0].cells)
    finished, failed, running = ids
    for run_id in ids:
        layout.write_json_atomic(manifest.run_dir(exp_dir, run_id) / layout.SPEC, {})
    layout.write_json_atomic(manifest.run_dir(exp_dir, finished) / layout.RESULT, {})
    layout.write_text_atomic(manifest.run_dir(exp_dir, failed) / layout.ERROR, "boom")
    _fake_submission(exp_dir, failed, "999999999")  # no such process: ended without result -> failed
    # a live "submitit" process stands in for a running local job
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    try:
        _fake_submission(exp_dir, running, str(proc.pid))
        states = {c.run_id: c.state for c in cell_state.poll(exp_dir)}
        assert states == {finished: "finished", failed: "failed", running: "running"}
        with pytest.raises(plan.LaunchError) as info:
            plan.decide(grids, results, only_missing=False)
        text = str(info.value)
        assert "already running or pending" in text and running in text
        assert "--retry-failed" in text and failed not in text  # failed cells are skipped, not refused
        (decided,) = plan.decide(grids, results, only_missing=True)
        assert [c.run_id for c in decided.submit] == [failed]
        assert decided.skipped[finished].startswith("finished") and decided.skipped[running] == "running"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_local_executor_runs_a_tiny_grid(tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One process per "GPU" (tasks_per_node = gpus_per_node) on this machine; a second submit skips it."""
    grid = tmp_path / "tiny.yaml"
    grid.write_text(LOCAL_GRID)
    code = cli.main(["submit", str(grid), "--results", str(results), "--wait", "--poll", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    # not a terminal: plain lines, one per submitted and per ended cell, and no bar redraws
    assert "submitted tinylocal [train] n1g2: fast-n1g2-b64-s0 as local job" in out
    plan = "to submit: tinylocal document 1 (train): 1 cell(s) in 1 array(s) (n1g2), run here one at a time"
    assert out.index(plan) < out.index("submitted tinylocal")  # said before the cell runs
    assert "submitted 1 cell(s) in 1 array(s)" in out
    assert re.search(
        r"^fast-n1g2-b64-s0 finished in \d+ s \(elapsed_s [\d.]+ s: training and evaluation; the rest is "
        r"process start and data loading\)$",
        out,
        re.M,
    ), out
    assert "\r" not in out
    run_dir = results / "tinylocal" / "runs" / "fast-n1g2-b64-s0"
    assert layout.read_json(run_dir / layout.RESULT)["world_size"] == 2
    assert layout.read_json(run_dir / layout.ENV)["world_size"] == 2
    entry = manifest.load(results / "tinylocal")["fast-n1g2-b64-s0"]
    assert entry.executor == "local" and entry.job_ids
    assert cli.main(["submit", str(grid), "--results", str(results)]) == 0
    assert "skip tinylocal/fast-n1g2-b64-s0: finished" in capsys.readouterr().out
    assert manifest.load(results / "tinylocal")["fast-n1g2-b64-s0"].job_ids == entry.job_ids


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_local_executor_runs_cells_one_at_a_time(
    tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cells sharing this machine would distort each other's timings: each starts when the previous ended."""
    grid = tmp_path / "seq.yaml"
    grid.write_text("name: seq\nkind: train\nexecutor: local\ngrid:\n  seed: [0, 1, 2]\n")
    monkeypatch.setenv("STUB_SLEEP_S", "0.5")
    lines: list[str] = []
    result = launch.submit(grid, results, log=lines.append, job=StubCell())
    assert len(result.job_ids) == 3 and len(set(result.job_ids.values())) == 3
    assert result.local is not None and result.local.wait(poll_s=0.2)  # the last cell
    ended = [line.split()[0] for line in lines if " finished in " in line]
    assert ended == [f"standard-n1g1-b128-s{i}" for i in range(3)], lines
    runs = sorted((layout.read_json(p) for p in (results / "seq" / "runs").glob("*/result.json")),
                  key=lambda r: r["started"])  # fmt: skip
    assert len(runs) == 3
    assert all(a["ended"] <= b["started"] for a, b in itertools.pairwise(runs)), runs
