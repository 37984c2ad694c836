"""A rank dies (kill -9) or hangs (SIGSTOP) in a real job: the job ends in bounded time, its error file names the
rank, its host and the signal, and `--only-missing` resumes it with each epoch once (workloads.runtime.supervisor).

The `slurm` tests kill or stop the workload child of rank 1 of 1 x 2 and 2 x 1 train jobs on the local cluster;
the others run the same under submitit's local executor. tests/test_supervisor.py has the unit tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli
from orchestrator.monitor import manifest
from orchestrator.monitor import status as cell_state
from orchestrator.submit import launch
from tests import fixtures
from workloads import layout


def first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]


EPOCHS = 6


def _rank_record(run_dir: Path, rank: int, job_id: str) -> dict[str, Any] | None:
    path = run_dir / "ranks" / f"rank-{rank}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("job_id") == job_id and "ended" not in record else None


def _start_and_wait_mid_run(
    tmp_path: Path, results: Path, name: str, shape: tuple[int, int], extra: str = ""
) -> tuple[Path, Path, Path, str, dict[str, Any]]:
    """Submit a train cell, wait for its first epochs.csv row; (grid, exp_dir, run_dir, job id, rank 1's record)."""
    grid = fixtures.write_grid(tmp_path, name, [shape], epochs=EPOCHS, train_subset=1024, eval_every=3,
                               max_requeues=0, extra=extra)  # fmt: skip
    launch.submit(grid, results, log=fixtures.quiet)
    exp_dir = results / name
    (run_id,) = manifest.load(exp_dir)
    run_dir = manifest.run_dir(exp_dir, run_id)
    job_id = str(manifest.load(exp_dir)[run_id].job_id)
    fixtures.wait_until(lambda: (run_dir / layout.EPOCHS).exists() or _ended(exp_dir), 240, "the first epoch", 0.2)
    assert not _ended(exp_dir), f"ended before the fault: {cell_state.poll(exp_dir)[0]}"
    record = fixtures.wait_until(lambda: _rank_record(run_dir, 1, job_id), 30, "rank 1's record")
    return grid, exp_dir, run_dir, job_id, record


def _ended(exp_dir: Path) -> bool:
    return any(c.state in cell_state.TERMINAL for c in cell_state.poll(exp_dir))


def _gone_after(job_id: str, t0: float, limit_s: float) -> float:
    fixtures.wait_until(lambda: not fixtures.in_squeue(job_id), limit_s, f"job {job_id} to leave squeue", 0.2)
    return time.monotonic() - t0


def _failed_line(exp_dir: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> str:
    cells = fixtures.wait_terminal(exp_dir, 60)
    (cell,) = cells.values()
    assert cell.state == "failed", cell
    capsys.readouterr()
    assert cli.main(["status", exp_dir.name, "--results", str(results)]) == 0
    table = capsys.readouterr().out
    (line,) = [x for x in table.splitlines() if x.startswith(f"{cell.run_id} failed: ")]
    return line


def _resume_to_the_end(grid: Path, results: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["submit", str(grid), "--results", str(results), "--only-missing", "--wait", "--poll", "1"])
    assert code == 0, capsys.readouterr()
    fixtures.assert_epochs_once(run_dir, EPOCHS)  # rows lost: 0, none doubled
    assert not list(run_dir.glob("error*.txt")), "a finished run keeps no error file of an earlier attempt"


@pytest.mark.slurm
@fixtures.needs_fmnist
@pytest.mark.parametrize(("shape", "victim"), [((1, 2), 1), ((2, 1), 1), ((1, 2), 0)], ids=["1x2", "2x1", "1x2-rank0"])
def test_kill_9_of_one_rank(
    shape: tuple[int, int], victim: int, tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"kill{shape[0]}x{shape[1]}r{victim}"
    grid, exp_dir, run_dir, job_id, rank1 = _start_and_wait_mid_run(tmp_path, results, name, shape)
    rank0 = json.loads((run_dir / "ranks" / "rank-0.json").read_text())
    nodes = subprocess.run(["scontrol", "show", "hostnames", fixtures.sacct(job_id, "NodeList")],
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    assert rank1["host"] in nodes and (rank1["host"] != rank0["host"]) == (shape[0] == 2), (rank0, rank1)
    dead = (rank0, rank1)[victim]
    t0 = time.monotonic()
    os.kill(dead["child_pid"], signal.SIGKILL)
    gone_s = _gone_after(job_id, t0, 60)
    with capsys.disabled():  # measurements, shown with -s
        print(f"\n{name}: kill -9 of rank {victim} -> job {job_id} gone from squeue in {gone_s:.1f} s")

    expected = f"rank {victim} on {dead['host']} (pid {dead['child_pid']}) was killed by signal 9 (SIGKILL)"
    assert first_line(run_dir / ("error-rank1.txt" if victim else layout.ERROR)).startswith(expected)
    line = _failed_line(exp_dir, results, capsys)
    assert expected in line, line
    with capsys.disabled():  # measurements, shown with -s
        print(f"{name}: status says: {line}")
    _resume_to_the_end(grid, results, run_dir, capsys)


@pytest.mark.slurm
@fixtures.needs_fmnist
def test_a_hung_rank_is_detected_after_collective_timeout_s(
    tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    timeout_s = 20
    grid, exp_dir, run_dir, job_id, rank1 = _start_and_wait_mid_run(
        tmp_path, results, "hung", (1, 2), extra=f"  collective_timeout_s: {timeout_s}\n"
    )
    t0 = time.monotonic()
    os.kill(rank1["child_pid"], signal.SIGSTOP)
    gone_s = _gone_after(job_id, t0, timeout_s + 60)
    with capsys.disabled():  # measurements, shown with -s
        print(f"\nhung: SIGSTOP of rank 1 -> job {job_id} gone from squeue in {gone_s:.1f} s (timeout {timeout_s} s)")
    assert gone_s >= timeout_s - 1
    line = _failed_line(exp_dir, results, capsys)
    assert "collective_timeout_s" in line and "rank 1" in line, line
    with capsys.disabled():  # measurements, shown with -s
        print(f"hung: status says: {line}")
    _resume_to_the_end(grid, results, run_dir, capsys)


def _local_job_in_its_first_epoch(
    tmp_path: Path, results: Path, name: str, shape: tuple[int, int], max_requeues: int
) -> tuple[launch.SubmitResult, Path, Path, str]:
    """A one-cell local-executor job of `shape`, once its first epochs.csv row exists: (submission, experiment
    dir, run dir, job id)."""
    grid = fixtures.write_grid(tmp_path, name, [shape], epochs=EPOCHS, train_subset=1024, eval_every=3,
                               max_requeues=max_requeues)  # fmt: skip
    submitted = launch.submit(grid, results, executor="local", log=fixtures.quiet)
    exp_dir = results / name
    (run_id,) = manifest.load(exp_dir)
    run_dir = manifest.run_dir(exp_dir, run_id)
    job_id = str(manifest.load(exp_dir)[run_id].job_id)
    fixtures.wait_until(lambda: (run_dir / layout.EPOCHS).exists(), 240, "the first epoch", interval=0.2)
    return submitted, exp_dir, run_dir, job_id


@fixtures.needs_fmnist
@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_kill_9_of_one_rank_under_the_local_executor(
    tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """submitit's local controller waits for every task (it kills none when one dies): the survivor ends on its
    own (its collective fails at once on a closed connection, or after collective_timeout_s)."""
    submitted, exp_dir, run_dir, job_id = _local_job_in_its_first_epoch(tmp_path, results, "localkill", (1, 2), 0)
    rank1 = fixtures.wait_until(lambda: _rank_record(run_dir, 1, job_id), 30, "rank 1's record")
    t0 = time.monotonic()
    os.kill(rank1["child_pid"], signal.SIGKILL)
    assert submitted.local is not None
    submitted.local.wait()
    with capsys.disabled():  # measurements, shown with -s
        print(f"\nlocal executor: kill -9 of rank 1 -> job ended in {time.monotonic() - t0:.1f} s")
    expected = f"rank 1 on {rank1['host']} (pid {rank1['child_pid']}) was killed by signal 9 (SIGKILL)"
    line = _failed_line(exp_dir, results, capsys)
    assert expected in line and time.monotonic() - t0 < 60, line


@fixtures.needs_fmnist
@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_sigusr2_requeues_a_local_job_through_the_supervisor(tmp_path: Path, results: Path) -> None:
    """What submitit's local controller sends before the time limit: SIGUSR2 to the task (the supervisor), whose
    handler forwards it to the workload (it saves and exits 75) and requeues; the requeued attempt finishes."""
    submitted, exp_dir, run_dir, job_id = _local_job_in_its_first_epoch(tmp_path, results, "localusr2", (1, 1), 3)
    rank0 = fixtures.wait_until(lambda: _rank_record(run_dir, 0, job_id), 30, "rank 0's record")
    os.kill(rank0["pid"], signal.SIGUSR2)
    assert submitted.local is not None
    assert submitted.local.wait(), cell_state.poll(exp_dir)[0]
    fixtures.assert_epochs_once(run_dir, EPOCHS)
    env = layout.read_json(run_dir / layout.ENV)
    assert len(env["attempts"]) == 2, env["attempts"]
