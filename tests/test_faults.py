"""Faults: what Slurm states mean, concurrent submissions, one writer per run directory, torn or
foreign checkpoints, a full disk. The cluster cases run on the real local Slurm (marked `slurm`) with the trivial
StubCell job (tests/slurm_stub.py) where the workload itself does not matter."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli
from orchestrator.monitor import manifest, scheduler
from orchestrator.monitor import status as cell_state
from orchestrator.monitor.scheduler import JobRecord
from orchestrator.submit import launch
from tests.slurm_stub import StubCell
from workloads import layout

REPO = Path(__file__).resolve().parents[1]

# -- scheduler states ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ended", ["NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "FAILED", "TIMEOUT", "OUT_OF_MEMORY"])
@pytest.mark.parametrize(("queued", "expected"), [("PENDING", "pending"), ("REQUEUED", "pending"),
                                                  ("RUNNING", "running"), (None, "failed")])  # fmt: skip
def test_an_ended_attempt_of_a_requeued_job_is_not_a_failure(
    tmp_path: Path, ended: str, queued: str | None, expected: str
) -> None:
    """sacct reports the attempt that ended; squeue still lists a job Slurm (or submitit) requeued."""
    calls: list[int] = []

    def queue() -> dict[str, JobRecord]:
        calls.append(1)
        return {} if queued is None else {"5": JobRecord(queued, nodes="node2")}

    records = scheduler.requeued_view({"5": JobRecord(ended, nodes="node1", tres="cpu=1")}, queue)
    assert calls == [1]
    rd = tmp_path / "runs" / "r"
    rd.mkdir(parents=True)
    (rd / layout.ERROR).write_text("an earlier attempt's error")
    entry = cell_state.Entry(job_ids=["5"], executor="slurm", submitted_ts=time.time() - 1000)
    assert cell_state.classify(rd, entry, records["5"], time.time()) == expected
    if queued is not None:
        assert records["5"].ended_attempt == ended and records["5"].tres == "cpu=1"


def test_final_states_need_no_second_call() -> None:
    def queue() -> dict[str, JobRecord]:
        raise AssertionError("squeue asked although no record may be requeued")

    records = {"1": JobRecord("RUNNING"), "2": JobRecord("COMPLETED"), "3": JobRecord("CANCELLED"),
               "4": JobRecord("PENDING"), "5": JobRecord("REQUEUED")}  # fmt: skip
    assert scheduler.requeued_view(records, queue) == records


def test_no_answer_from_squeue_keeps_sacct_word() -> None:
    records = {"1": JobRecord("NODE_FAIL")}
    assert scheduler.requeued_view(records, lambda: None) == records


# -- on the real cluster: a node set down mid-run ------------------------------------------------------------------


def _scontrol_node(node: str, state: str) -> None:
    subprocess.run(["scontrol", "update", f"nodename={node}", f"state={state}", "reason=fastrobust-test"],
                   check=True, capture_output=True, timeout=30)  # fmt: skip


def _own_nodes_profile(folder: Path, n: int) -> Path:
    """A local-cluster profile pinning the job to n idle nodes, exclusively: setting them down must not hit the
    jobs of other tests sharing the cluster."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=30).stdout
    rows = sorted({tuple(line.split()) for line in out.splitlines()})
    idle = [name for name, state in rows if state == "idle"]
    chosen = idle[-n:] if len(idle) >= n else [name for name, _ in rows][-n:]
    path = folder / "own-nodes.yaml"
    path.write_text(
        (REPO / "slurm_templates" / "local-cluster.yaml").read_text()
        + f"additional: {{nodelist: '{','.join(chosen)}', exclusive: true}}\n"
    )
    return path


def _squeue_running(job_id: str) -> str:
    """The job's node list once squeue says RUNNING (sacct may lag by seconds), else ''."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %N"], capture_output=True, text=True, timeout=30)
    state, _, nodes = out.stdout.strip().partition(" ")
    return nodes if state == "RUNNING" else ""


def _sacct(job_id: str, *options: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", *options, "-j", job_id, "-o", "JobID,State,NodeList"],
                         capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    return [line.split("|") for line in out.splitlines() if line]


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


STUB_GRID = """\
name: {name}
executor: slurm
profile: {profile}
defaults:
  global_batch_size: 64
  resources: {{timeout_min: 3, max_requeues: 3}}
grid:
  shape:
    - {{nodes: {nodes}, gpus_per_node: 1}}
"""


@pytest.mark.slurm
@pytest.mark.parametrize(("nodes", "down_index"), [(1, 0), (2, 1)], ids=["1x1-its-node", "2x1-second-node"])
def test_node_down_mid_run_is_pending_then_finished(
    tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch, nodes: int, down_index: int
) -> None:
    """Slurm marks the attempt NODE_FAIL and requeues the job itself: status never says failed, and what
    `submit --wait` runs (cli._wait) exits 0 once the requeued attempt finishes."""
    monkeypatch.setenv("STUB_SLEEP_S", "15")
    grid = tmp_path / "nf.yaml"
    grid.write_text(STUB_GRID.format(name="nodefail", nodes=nodes, profile=_own_nodes_profile(tmp_path, nodes)))
    result = launch.submit(grid, results, log=lambda _: None, job=StubCell())
    (job_id,) = result.job_ids.values()
    exit_code: list[int] = []
    waiter = threading.Thread(target=lambda: exit_code.append(cli._wait(result, 0.5)), daemon=True)
    waiter.start()
    nodelist = _wait_for(lambda: _squeue_running(job_id), 60, "the job to run")
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True).stdout
    node = hosts.split()[down_index]
    seen: set[str] = set()
    _scontrol_node(node, "down")
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6:  # the NODE_FAIL window: sacct says NODE_FAIL, squeue PENDING
            (cell,) = cell_state.poll(results / "nodefail")
            seen.add(cell.state)
            time.sleep(0.2)
    finally:
        _scontrol_node(node, "resume")
    waiter.join(timeout=120)
    assert exit_code == [0], (exit_code, seen)
    assert "failed" not in seen and seen <= {"pending", "running"}, seen
    attempts = _wait_for(lambda: (a := _sacct(job_id, "-D")) and a[-1][1] == "COMPLETED" and a, 30, "COMPLETED")
    assert attempts[0][1] == "NODE_FAIL" and attempts[-1][1] == "COMPLETED", attempts
    (cell,) = cell_state.poll(results / "nodefail")
    assert cell.state == "finished"
    assert len(layout.read_csv(layout.run_dir(results, "nodefail", cell.run_id) / layout.EPOCHS)) == 1  # rows lost 0


# -- two submissions of one grid at once -------------------------------------------------------------------------

RACER = """\
import json, sys, time
from pathlib import Path
from orchestrator.submit import launch
from orchestrator.errors import UserError
from tests.slurm_stub import StubCell
folder, root, me, reps = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
(folder / f"ready-{me}").touch()
for rep in range(reps):
    deadline = time.monotonic() + 600  # a racer never outlives a test that stopped releasing it
    while not (folder / f"go{rep}").exists():
        if time.monotonic() > deadline:
            sys.exit(f"racer {me}: no go{rep} within 600 s")
        time.sleep(0.002)
    lines = []
    try:
        result = launch.submit(folder / f"race{rep}.yaml", root, log=lines.append, job=StubCell())
        answer = {"submitted": sorted(result.job_ids), "log": lines}
    except UserError as exc:
        answer = {"refused": exc.problems, "log": lines}
    (folder / f"answer{rep}-{me}.json").write_text(json.dumps(answer))
"""
REPS = 20
CELLS = ("standard-n1g1-b128-s0", "standard-n1g1-b128-s1")


def _refusal_accounts_for_every_cell(rep: int, refused: dict[str, Any]) -> bool:
    """The refused submission names each cell: as running/pending at its plan ("already"), as submitted by the other
    one meanwhile (the count it gives is the number it names), or as finished in a skip line of its log (the other
    submission's first cell can finish before the second plans, when the machine is slow)."""
    text = " ".join(refused["refused"])
    skipped = [c for c in CELLS if any(line.startswith(f"skip race{rep}/{c}: finished") for line in refused["log"])]
    named = [c for c in CELLS if f"race{rep}/{c}" in text]
    if "another submission submitted" in text:
        assert f"submitted {len(named)} of these cell(s)" in text, text
    else:
        assert "already running or pending" in text, text
    return sorted(named + skipped) == sorted(CELLS)


@pytest.mark.slow
def test_concurrent_submissions_submit_each_cell_once(tmp_path: Path, results: Path) -> None:
    """Two submissions of one new grid started together, REPS times (two processes, started once, submitting at
    the same instant each time): one submits, the other says what the first submitted; one job per cell."""
    for rep in range(REPS):
        (tmp_path / f"race{rep}.yaml").write_text(f"name: race{rep}\nexecutor: local\ngrid:\n  seed: [0, 1]\n")
    logs = [open(tmp_path / f"racer-{me}.err", "w") for me in "ab"]  # noqa: SIM115 (closed in the finaliser)
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(results), me, str(REPS)], cwd=REPO,
                         stderr=log, text=True)
        for me, log in zip("ab", logs, strict=True)
    ]  # fmt: skip
    under_lock = 0
    try:
        _wait_for(lambda: all((tmp_path / f"ready-{me}").exists() for me in "ab"), 120, "both submitters")
        for rep in range(REPS):
            (tmp_path / f"go{rep}").touch()
            paths = [tmp_path / f"answer{rep}-{me}.json" for me in "ab"]
            _wait_for(lambda: all(p.exists() for p in paths), 120, f"race {rep}")  # noqa: B023
            answers = [layout.read_json(p) for p in paths]
            submitted = [a for a in answers if "submitted" in a]
            refused = [a for a in answers if "refused" in a]
            assert len(submitted) == 1 and len(refused) == 1, (rep, answers)
            assert _refusal_accounts_for_every_cell(rep, refused[0]), (rep, refused[0])
            under_lock += "another submission" in " ".join(refused[0]["refused"])
            entries = manifest.load(results / f"race{rep}")
            assert sorted(entries) == sorted(CELLS)
            assert all(len(e.job_ids) == 1 for e in entries.values()), entries
    finally:
        for p in procs:  # a failed race must not leave racers waiting for go-files that never come
            p.kill()
            p.wait(timeout=30)
        for log in logs:
            log.close()
    print(f"{REPS} races: one job per cell in each; {under_lock} decided under the lock")


def test_a_submission_refused_under_the_lock_names_every_cell_the_other_submitted(results: Path) -> None:
    """The cells of the other submission count as taken by the manifest, not by their state: one that already
    failed was still submitted meanwhile (replan neither miscounts it nor submits it again with --only-missing)."""
    from orchestrator.grid.files import load_grids
    from orchestrator.submit import plan

    grid_path = results / "late.yaml"
    grid_path.write_text("name: late\nexecutor: local\ngrid:\n  seed: [0, 1]\n")
    (p,) = plan.decide(load_grids(grid_path, None), results, only_missing=False)
    assert [c.run_id for c in p.submit] == list(CELLS) and p.seen_jobs == dict.fromkeys(CELLS)
    entries = manifest.load(p.exp_dir)
    for job_id, run_id in enumerate(CELLS, start=1):  # the other submission: two jobs, both ended already
        manifest.record(entries, run_id, str(999_000 + job_id), str(999_000 + job_id), "local", "train", 0)
    manifest.save(p.exp_dir, entries)
    layout.write_json_atomic(layout.run_dir(results, "late", CELLS[0]) / layout.RESULT, {})  # finished; s1 failed
    with pytest.raises(launch.LaunchError, match="submitted 2 of these cell") as info:
        plan.replan(p, only_missing=False)
    assert all(f"late/{c}" in str(info.value) for c in CELLS)
    assert plan.replan(p, only_missing=True).submit == []


# -- one job per run directory ------------------------------------------------------------------------------------

HOLDER = """\
import os, sys, time
from pathlib import Path
from workloads.runtime import runlock
lock = runlock.acquire(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def _hold_elsewhere(run_dir: Path, job_id: str) -> subprocess.Popen[str]:
    """Another process (as job `job_id`) holding the run directory, until killed."""
    env = {**os.environ, "SLURM_JOB_ID": job_id}
    env.pop("SLURM_ARRAY_JOB_ID", None)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env=env)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_refuses_a_second_job_and_a_dead_one_does_not(tmp_path: Path) -> None:
    from workloads.runtime import runlock

    holder = _hold_elsewhere(tmp_path, "4242")
    try:
        t0 = time.monotonic()
        with pytest.raises(runlock.RunDirBusy) as info:
            runlock.acquire(tmp_path, wait=1.0)  # a holder on its way out gets that long
        assert time.monotonic() - t0 >= 1.0  # it waited for the holder (no upper bound: the machine may be busy)
        message = str(info.value)
        assert "\n" not in message and "job 4242 on " in message and socket.gethostname() in message, message
        assert f"pid {holder.pid}" in message and "orchestrate cancel" in message
    finally:
        holder.kill()  # kill -9: the kernel releases the lock with the process
        holder.wait()
    lock = runlock.acquire(tmp_path)  # the next attempt (a requeue) gets in
    assert layout.read_json(tmp_path / runlock.LOCK)["pid"] == os.getpid()
    runlock.release(lock)


def test_entry_refuses_a_held_run_dir_and_writes_nothing_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workloads import entry
    from workloads.runtime import distributed, runlock
    from workloads.spec import from_dict

    monkeypatch.setenv(runlock.WAIT_ENV, "0.5")

    spec = from_dict({"run_id": "busy", "epochs": 1})
    layout.write_json_atomic(tmp_path / layout.SPEC, spec.to_dict())
    layout.write_json_atomic(tmp_path / layout.RESULT, {"written by": "the live job"})
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    holder = _hold_elsewhere(tmp_path, "777_3")
    try:
        with pytest.raises(runlock.RunDirBusy, match=r"held by job 777_3 .* \(still after 0.5 s\)"):
            entry.run(tmp_path / layout.SPEC, dist=distributed.single(spec))
        after = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir() if p.name != runlock.LOCK)
        assert after == before, "the refused job touched the run directory"
    finally:
        holder.kill()
        holder.wait()


TRAIN_GRID = """\
name: onewriter
executor: slurm
profile: local-cluster
defaults:
  model: small_cnn
  dataset: fashion_mnist
  method: fast
  epochs: 25
  train_subset: 1024
  val_subset: 128
  global_batch_size: 64
  eval: {every: 1, steps: 2}
  resources: {timeout_min: 5}
"""


@pytest.mark.slurm
def test_a_second_job_in_a_live_run_dir_refuses_to_start(
    tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `--only-missing` on a cell that looked failed once did: a second job for a run directory whose job
    runs. It stops on its own, naming the holder; the first one finishes with each epoch once."""
    import submitit

    from orchestrator.grid.files import load_grid
    from orchestrator.submit.job import CellJob

    grid_path = tmp_path / "onewriter.yaml"
    grid_path.write_text(TRAIN_GRID)
    first = launch.submit(grid_path, results, log=lambda _: None)
    (first_id,) = first.job_ids.values()
    exp_dir = results / "onewriter"
    run_dir = layout.run_dir(results, "onewriter", "fast-n1g1-b64-s0")
    _wait_for(lambda: (run_dir / layout.ENV).exists(), 180, "the first job to hold its run directory")
    grid = load_grid(grid_path)
    monkeypatch.setenv("FASTROBUST_LOCK_WAIT_S", "1")  # exported to the second job by sbatch
    params, ctor = launch.array_parameters(grid, "n1g1", grid.cells)
    second = launch.make_executor("slurm", launch.submitit_folder(exp_dir), params, ctor).submit(
        CellJob(), str(run_dir / layout.SPEC)
    )
    with pytest.raises(submitit.core.utils.FailedJobError) as info:
        second.result()
    assert f"is held by job {first_id} on " in str(info.value), str(info.value)[-2000:]
    (cell,) = _wait_for(lambda: [c for c in cell_state.poll(exp_dir) if c.state in cell_state.TERMINAL], 300, "end")
    assert cell.state == "finished", cell
    assert [int(r["epoch"]) for r in layout.read_csv(run_dir / layout.EPOCHS)] == list(range(1, 26))  # 0 lost
