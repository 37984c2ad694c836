"""Ctrl-C during `orchestrate submit --wait` on the local executor: a real SIGINT to the process group of a real
`orchestrate` process (as a terminal sends it). The running cell keeps running to its end, as the message says;
the cells still waiting are named as not submitted, `status EXPERIMENT` lists them, and a plain resubmission
submits exactly them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.monitor import manifest, scheduler
from orchestrator.monitor import status as cell_state
from orchestrator.submit import launch, local_queue
from tests.fixtures import quiet, wait_until
from tests.slurm_stub import StubCell
from workloads import layout

REPO = Path(__file__).resolve().parents[1]
GRID = "name: ctrlc\nkind: train\nexecutor: local\ngrid:\n  seed: [0, 1]\n"
FIRST, SECOND = "standard-n1g1-b128-s0", "standard-n1g1-b128-s1"
# the real CLI, its cells running the stub job (no torch): the one thing a test replaces
ORCHESTRATE = (
    "import sys; from orchestrator import cli; from orchestrator.submit import launch; "
    "from tests.slurm_stub import StubCell; "
    "launch.CellJob = StubCell; sys.exit(cli.main(sys.argv[1:]))"
)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str] | int]]:
    """What the test started or caused: the orchestrate process and the local controllers (each a session, so a
    process group, of its own); every group still alive is killed at the end (a controller checked by its pid's
    command line, so a recycled pid is never signalled)."""
    started: list[subprocess.Popen[str] | int] = []
    yield started
    for item in started:
        alive = item.poll() is None if isinstance(item, subprocess.Popen) else scheduler._local_alive(str(item))
        pid = item.pid if isinstance(item, subprocess.Popen) else item
        if alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if isinstance(item, subprocess.Popen):
            item.wait()


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_ctrl_c_leaves_the_running_local_cell_running(
    tmp_path: Path, results: Path, processes: list[subprocess.Popen[str] | int], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    grid = tmp_path / "ctrlc.yaml"
    grid.write_text(GRID)
    exp_dir = results / "ctrlc"
    env = {**os.environ, "STUB_SLEEP_S": "4", "PYTHONPATH": str(REPO)}
    argv = ["submit", str(grid), "--results", str(results), "--wait", "--poll", "0.2"]
    proc = subprocess.Popen([sys.executable, "-c", ORCHESTRATE, *argv], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    processes.append(proc)

    def first_running() -> str | None:
        entry = manifest.load(exp_dir).get(FIRST)
        return entry.job_id if entry and entry.job_id and scheduler._local_alive(entry.job_id) else None

    controller = wait_until(first_running, 60, "the first cell to run")
    processes.append(int(controller))  # its own session: a group of its own, ended by the finaliser too
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("orchestrate: interrupted: 1 local cell(s) keep running in their own process group: "
                           f"ctrlc/{FIRST} "), line  # fmt: skip
    assert f"1 cell(s) not submitted: ctrlc/{SECOND}" in line, line

    # the cell lived through the Ctrl-C and finishes; the one never submitted is listed, as missing
    wait_until(lambda: cell_state.poll(exp_dir, [FIRST])[0].state == "finished", 60, "the first cell to finish")
    assert cli.main(["status", "ctrlc", "--results", str(results)]) == 0
    table = capsys.readouterr().out
    assert f"{FIRST}  finished" in table and f"{SECOND}  missing" in table, table

    # a plain resubmission submits exactly the cell that was not submitted
    monkeypatch.setenv("STUB_SLEEP_S", "0")
    result = launch.submit(grid, results, log=quiet, job=StubCell())
    assert list(result.job_ids) == [f"ctrlc/{SECOND}"]
    processes.extend(int(j) for j in result.job_ids.values())
    assert result.local is not None and result.local.wait(poll_s=0.2)


# -- submit without --wait: the local queue runs in the background -------------------------------------------------

TINY = """\
name: {name}
kind: train
executor: local
defaults:
  model: small_cnn
  dataset: fashion_mnist
  epochs: 1
  train_subset: 128
  val_subset: 64
  global_batch_size: 64
  eval: {{every: 1, steps: 1, restarts: 1}}
  resources: {{timeout_min: 5}}
grid:
  seed: [0, 1]
"""
TINY_IDS = ["standard-n1g1-b64-s0", "standard-n1g1-b64-s1"]


def _submit_in_background(tmp_path: Path, results: Path, name: str) -> tuple[Path, int]:
    """`orchestrate submit GRID` (no --wait) as a real process: it returns at once; (experiment, runner pid)."""
    grid = tmp_path / f"{name}.yaml"
    grid.write_text(TINY.format(name=name))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", str(grid), "--results", str(results),
                          "--poll", "0.5"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out
    exp_dir = results / name
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("2 local cell(s) queued: a background runner (pid "), out.stdout
    assert f"log: {exp_dir / '.submitit' / 'queue.log'}" in line and f"stop: orchestrate cancel {name}" in line
    record = layout.read_json(exp_dir / "queue.json")
    return exp_dir, int(record["pid"])


def _cleanup_queue(exp_dir: Path, runner: int) -> None:
    """End the runner and any controller of the experiment still alive (checked by command line)."""
    if local_queue._alive(runner):
        os.killpg(runner, signal.SIGKILL)
    for entry in manifest.load(exp_dir).values():
        if entry.job_id and scheduler._local_alive(entry.job_id):
            os.killpg(int(entry.job_id), signal.SIGKILL)


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_submit_without_wait_runs_the_local_queue_in_the_background(
    tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp_dir, runner = _submit_in_background(tmp_path, results, "bg")
    try:
        assert cli.main(["status", "bg", "--results", str(results)]) == 0
        table = capsys.readouterr().out
        if local_queue._alive(runner):  # it may have ended on a fast machine: then the cells say it all
            assert f"local queue: running as pid {runner} since " in table, table
        cells = wait_until(lambda: (c := cell_state.poll(exp_dir)) and all(x.state in cell_state.TERMINAL for x in c)
                           and c, 600, "both cells to end")  # fmt: skip
        assert [(c.run_id, c.state) for c in cells] == [(r, "finished") for r in TINY_IDS], cells
        wait_until(lambda: not local_queue._alive(runner), 60, "the runner to exit")
        log = (exp_dir / ".submitit" / "queue.log").read_text()
        assert all(f": {r} as local job" in log for r in TINY_IDS), log
        assert cli.main(["status", "bg", "--results", str(results)]) == 0
        assert "local queue" not in capsys.readouterr().out
    finally:
        _cleanup_queue(exp_dir, runner)


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_cancel_stops_the_local_queue_first(tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp_dir, runner = _submit_in_background(tmp_path, results, "stopq")
    try:
        wait_until(lambda: cell_state.poll(exp_dir, [TINY_IDS[0]])[0].state == "running", 120, "the first cell")
        assert cli.main(["cancel", "stopq", "--results", str(results)]) == 0
        out = capsys.readouterr().out
        assert f"stopped the local queue (pid {runner}): its waiting cells stay unsubmitted" in out, out
        assert not local_queue._alive(runner)
        second = cell_state.poll(exp_dir, [TINY_IDS[1]])[0]
        wait_until(lambda: cell_state.poll(exp_dir, [TINY_IDS[0]])[0].state != "running", 60, "the cancel")
        assert second.state == "missing" and not manifest.load(exp_dir)[TINY_IDS[1]].job_ids, second
        assert "interrupted: " in (exp_dir / ".submitit" / "queue.log").read_text()
    finally:
        _cleanup_queue(exp_dir, runner)
