"""Failures that are one line and no surprises: an unusable results root, report arguments, YAML 1.2 floats,
subsets larger than their split, plain resubmission after a failure, `orchestrate clean`, and `status` of a
folder that is not an experiment. Each test reproduces what a user hit (it failed before the fix)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.grid.files import GridError, load_grids
from orchestrator.grid.profiles import load_profile
from orchestrator.monitor import manifest, scheduler
from orchestrator.submit import launch, plan
from tests.fixtures import quiet, wait_until
from tests.slurm_stub import StubCell
from workloads import layout
from workloads.runtime import runlock

GRID = """\
name: fail
kind: train
executor: local
defaults:
  epochs: 1
  train_subset: 256
grid:
  seed: [0, 1, 2]
"""
IDS = [f"standard-n1g1-b128-s{i}" for i in range(3)]


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The single error line of a CLI call that must exit 2 without a traceback."""
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrate: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def finished_experiment(tmp_path: Path, root: Path, seeds: int = 3) -> Path:
    """The grid file of an experiment whose cells all finished (the stub job: no torch)."""
    grid = tmp_path / "fail.yaml"
    grid.write_text(GRID.replace("[0, 1, 2]", str(list(range(seeds)))))
    result = launch.submit(grid, root, log=quiet, job=StubCell())
    assert result.local is not None and result.local.wait(poll_s=0.2)
    # the controllers close their log files as they exit: a remount read-only needs none open for writing
    pids = list(result.job_ids.values())
    wait_until(lambda: not any(scheduler._local_alive(p) for p in pids), 30, "the local controllers to exit", 0.1)
    return grid


# -- an unusable results root -------------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of this test's own (tests run as root), unmounted at the end; make_read_only() remounts it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "fastrobust-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def make_read_only(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    with pytest.raises(OSError):
        (mnt / "probe").write_text("x")  # really read-only, even for root


def submit_variants(grid: Path) -> list[list[str]]:
    return [["submit", str(grid)], ["submit", str(grid), "--wait", "--poll", "0.2"], ["submit", str(grid), "--dry-run"]]


def test_results_root_under_a_regular_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = tmp_path / "fail.yaml"
    grid.write_text(GRID)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file where a folder was meant")
    root = blocker / "results"
    for argv in submit_variants(grid):
        line = one_line_error(capsys, [*argv, "--results", str(root)])
        assert f"results root (--results) {root}: {blocker} is a regular file" in line, line
    monkeypatch.setenv("FASTROBUST_RESULTS", str(root))
    for argv in submit_variants(grid):
        line = one_line_error(capsys, argv)
        assert f"results root ($FASTROBUST_RESULTS) {root}: {blocker} is a regular file" in line, line
    for argv in (["report", "fail"], ["collect", "fail"], ["status", "fail"]):
        line = one_line_error(capsys, argv)
        assert "unknown experiment 'fail'" in line, line


def test_read_only_results_root(tmp_path: Path, tmpfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished experiment on a file system remounted read-only: every writing command is one line, before
    anything runs (and `status`, which only reads, still works)."""
    grid = finished_experiment(tmp_path, tmp_path / "results", seeds=1)
    root = tmpfs / "results"
    shutil.copytree(tmp_path / "results", root, symlinks=True)
    capsys.readouterr()
    make_read_only(tmpfs)
    for argv in submit_variants(grid):
        line = one_line_error(capsys, [*argv, "--results", str(root)])
        assert f"results root (--results) {root}: {root} is on a read-only file system" in line, line
    exp_dir = root / "fail"
    for argv in (["report", "fail"], ["collect", "fail"], ["clean", "fail", IDS[0]]):
        line = one_line_error(capsys, [*argv, "--results", str(root)])
        assert f"experiment folder {exp_dir}: {exp_dir} is on a read-only file system" in line, line
    assert cli.main(["status", "fail", "--results", str(root)]) == 0
    assert f"{IDS[0]}  finished" in capsys.readouterr().out


def test_read_only_experiment_under_a_writable_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The experiment folder itself read-only (a bind mount of it): submit checks each experiment it writes."""
    root = tmp_path / "results"
    grid = finished_experiment(tmp_path, root, seeds=1)
    capsys.readouterr()
    exp_dir = root / "fail"
    subprocess.run(["mount", "--bind", str(exp_dir), str(exp_dir)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(exp_dir)], check=True)
        for argv in submit_variants(grid):
            line = one_line_error(capsys, [*argv, "--results", str(root)])
            assert f"experiment folder {exp_dir}: {exp_dir} is on a read-only file system" in line, line
    finally:
        subprocess.run(["umount", "-l", str(exp_dir)], check=True)


# -- report arguments -----------------------------------------------------------------------------------------------


def test_report_checks_its_arguments_before_collecting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "results"
    finished_experiment(tmp_path, root, seeds=1)
    capsys.readouterr()
    runs_csv = root / "fail" / "runs.csv"
    for option, value in (("--target-adv-acc", "1.5"), ("--baseline", "fastt"), ("--baseline", "fast@0")):
        line = one_line_error(capsys, ["report", "fail", "--results", str(root), option, value])
        assert option in line, line
        assert not runs_csv.exists(), f"{option} {value}: runs.csv was written before the argument was checked"
    line = one_line_error(capsys, ["report", "fail", "--results", str(root), "--baseline", "fast"])
    assert "--baseline fast: no train run of the experiment is that recipe; its runs: standard@1" in line, line
    assert not (root / "fail" / "report").exists()
    assert cli.main(["report", "fail", "--results", str(root), "--baseline", "standard@1"]) == 0


# -- YAML 1.2 floats ------------------------------------------------------------------------------------------------


def test_exponent_floats_are_numbers_in_grids_and_profiles(tmp_path: Path) -> None:
    grid = tmp_path / "lr.yaml"
    grid.write_text(
        "name: lr\nkind: train\nexecutor: local\ndefaults:\n"
        "  optimizer: {lr: 1e-1, weight_decay: 5e-4, momentum: 9E-1}\n"
        "  attack: {eps: 5e-1}\n"
        "grid:\n  optimizer.lr: [1e-1, 2E-2, .5e-1]\n"
    )
    cells = load_grids(grid)[0].cells
    assert [c.optimizer.lr for c in cells] == [0.1, 0.02, 0.05]
    assert {(c.optimizer.weight_decay, c.optimizer.momentum, c.attack.eps) for c in cells} == {(5e-4, 0.9, 0.5)}
    profile = tmp_path / "site.yaml"
    profile.write_text("partition: gpu\nadditional: {mem_per_gpu_fraction: 5e-1}\n")
    assert load_profile(str(profile)).additional == {"mem_per_gpu_fraction": 0.5}
    grid.write_text("name: lr\nkind: train\ndefaults:\n  name_like: 1e-1x\n  epochs: 1e400\n")
    with pytest.raises(GridError) as info:
        load_grids(grid)  # a string stays a string; an absurd number is still refused
    assert any("defaults.epochs" in p for p in info.value.problems), info.value.problems


# -- subsets larger than their split --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "dotted", "size", "split"),
    [("train_subset: 100000", "train_subset", 60000, "train"), ("val_subset: 20000", "val_subset", 10000, "val"),
     ("guard: {examples: 70000}", "guard.examples", 60000, "train"),
     ("evaluate: {max_examples: 10001}", "evaluate.max_examples", 10000, "val")],
)  # fmt: skip
def test_a_subset_larger_than_its_split_is_refused(
    tmp_path: Path, setting: str, dotted: str, size: int, split: str
) -> None:
    grid = tmp_path / "big.yaml"
    grid.write_text(f"name: big\nkind: train\ndefaults:\n  dataset: fashion_mnist\n  {setting}\n")
    with pytest.raises(GridError) as info:
        load_grids(grid)
    (problem,) = info.value.problems
    assert problem.startswith(f"{grid}:5: defaults.{dotted}: expected at most {size} "), problem
    assert f"fashion_mnist's {split} split has {size} images" in problem, problem
    grid.write_text("name: big\nkind: train\ndefaults:\n  dataset: cifar10\n  train_subset: 50000\n")
    assert load_grids(grid)[0].cells[0].train_subset == 50000  # the whole split is fine


def test_a_held_out_split_shrinks_the_training_split(tmp_path: Path) -> None:
    grid = tmp_path / "held.yaml"
    grid.write_text("name: held\nkind: train\ndefaults:\n  val_split: 10000\n  train_subset: 50001\n")
    with pytest.raises(GridError) as info:
        load_grids(grid)
    (problem,) = info.value.problems
    assert problem.startswith(f"{grid}:5: defaults.train_subset: expected at most 50000 "), problem
    assert "once val_split holds out 10000" in problem, problem
    grid.write_text("name: held\nkind: train\ndefaults:\n  val_split: 60000\n")
    with pytest.raises(GridError) as info:
        load_grids(grid)
    (problem,) = info.value.problems
    assert problem.startswith(f"{grid}:4: defaults.val_split: expected fewer than the 60000 images"), problem


# -- plain resubmission after a failure ---------------------------------------------------------------------------


def test_plain_resubmit_submits_missing_cells_and_names_the_retry_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "results"
    grid = tmp_path / "fail.yaml"
    grid.write_text(GRID)
    exp_dir = root / "fail"
    layout.write_text_atomic(manifest.run_dir(exp_dir, IDS[0]) / layout.ERROR, "RuntimeError: boom\n")
    entries = manifest.load(exp_dir)
    manifest.record(entries, IDS[0], "999999999", "999999999", "local", "train", 1)  # no such pid: ended
    manifest.save(exp_dir, entries)
    (decided,) = plan.decide(load_grids(grid), root, only_missing=False)
    assert [c.run_id for c in decided.submit] == IDS[1:]
    assert decided.skipped == {IDS[0]: "failed earlier; not resubmitted without --retry-failed"}
    assert cli.main(["submit", str(grid), "--results", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"# skip fail/{IDS[0]}: failed earlier; not resubmitted without --retry-failed" in out
    assert f"2 cell(s): {IDS[1]}, {IDS[2]}" in out
    for flag in ("--retry-failed", "--only-missing"):  # the old name stays an alias
        assert cli.main(["submit", str(grid), "--results", str(root), "--dry-run", flag]) == 0
        assert f"3 cell(s): {', '.join(IDS)}" in capsys.readouterr().out


# -- orchestrate clean --------------------------------------------------------------------------------------------


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_clean_removes_run_directories_but_never_a_live_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "results"
    grid = finished_experiment(tmp_path, root)
    exp_dir = root / "fail"
    held = runlock.acquire(manifest.run_dir(exp_dir, IDS[1]), wait=0)  # a job still writing (its lock)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])  # a live local job
    try:
        entries = manifest.load(exp_dir)
        manifest.record(entries, "standard-n1g1-b128-s9", str(proc.pid), str(proc.pid), "local", "train", 1)
        manifest.save(exp_dir, entries)
        capsys.readouterr()
        argv = ["clean", "fail", *IDS, "standard-n1g1-b128-s9", "nosuch", "--results", str(root)]
        assert cli.main([*argv, "--dry-run"]) == 2
        captured = capsys.readouterr()
        assert f"would remove {manifest.run_dir(exp_dir, IDS[0])} (finished)" in captured.out
        assert all(manifest.run_dir(exp_dir, r).is_dir() for r in IDS), "a dry run removed something"
        assert cli.main(argv) == 2
        captured = capsys.readouterr()
        refusals = captured.err.strip().splitlines()
        assert len(refusals) == 3 and "Traceback" not in captured.err, captured.err
        assert f"fail/{IDS[1]}: {manifest.run_dir(exp_dir, IDS[1])} is held by job pid {os.getpid()}" in refusals[0]
        assert f"fail/standard-n1g1-b128-s9: running as job {proc.pid}; not removed" in refusals[1]
        assert "fail/nosuch: no such cell" in refusals[2]
        assert "removed 2 run directories" in captured.out
        assert not manifest.run_dir(exp_dir, IDS[0]).exists() and manifest.run_dir(exp_dir, IDS[1]).is_dir()
        assert IDS[0] not in manifest.load(exp_dir)
    finally:
        runlock.release(held)
        proc.kill()
        proc.wait()
    # the removed cells are missing again: a plain resubmission submits exactly them
    (decided,) = plan.decide(load_grids(grid), root, only_missing=False)
    assert [c.run_id for c in decided.submit] == [IDS[0], IDS[2]]
    line = one_line_error(capsys, ["clean", "fail", "--results", str(root)])
    assert "name the RUN_IDs to remove, or pass --failed" in line


# -- status of a folder that is not an experiment -----------------------------------------------------------------


def test_status_of_a_folder_that_is_not_an_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "results"
    finished_experiment(tmp_path, root, seeds=1)
    capsys.readouterr()
    runs = root / "fail" / "runs"
    line = one_line_error(capsys, ["status", str(runs), "--results", str(root)])
    assert f"{runs} is not an experiment folder" in line and f"did you mean {root / 'fail'}?" in line, line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty} is not an experiment folder" in one_line_error(capsys, ["status", str(empty)])
    assert cli.main(["status", str(root / "fail")]) == 0


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_a_resubmission_waits_for_a_local_cell_still_running(tmp_path: Path) -> None:
    """After a Ctrl-C the interrupted submission's cell still runs: --retry-failed starts the next one only after
    it ended (local cells run one at a time, whoever submitted them)."""
    root = tmp_path / "results"
    grid = tmp_path / "fail.yaml"
    grid.write_text(GRID.replace("[0, 1, 2]", "[0, 1]"))
    exp_dir = root / "fail"
    ended = tmp_path / "ended"
    code = f"import time, pathlib; time.sleep(2); pathlib.Path({str(ended)!r}).write_text(repr(time.time()))"
    proc = subprocess.Popen([sys.executable, "-c", code, "submitit"])  # stands in for the earlier local cell
    try:
        entries = manifest.load(exp_dir)
        manifest.record(entries, IDS[0], str(proc.pid), str(proc.pid), "local", "train", 1)
        manifest.save(exp_dir, entries)
        result = launch.submit(grid, root, only_missing=True, log=quiet, job=StubCell())
        assert list(result.job_ids) == [f"fail/{IDS[1]}"]
        assert result.local is not None and result.local.wait(poll_s=0.2)
        started = layout.read_json(manifest.run_dir(exp_dir, IDS[1]) / layout.RESULT)["started"]
        assert started >= float(ended.read_text()), "the next cell started while the earlier one still ran"
    finally:
        proc.kill()
        proc.wait()
