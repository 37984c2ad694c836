"""End-to-end tests against the real local Slurm cluster (4 nodes x 4 CPUs x 2 fake GPUs, slurmdbd).

Every test trains the real small CNN on a Fashion-MNIST subset through `orchestrate`, except the 64-cell test,
whose cells run a trivial job (tests/slurm_stub.py): 64 torch imports would cost minutes on 2 cores.
The time-limit run is submitted at the start of the module and checked last, so its Slurm waits (30 s ticks,
requeue gaps) overlap the other tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli, collect
from orchestrator.monitor import manifest, scheduler
from orchestrator.monitor import status as cell_state
from orchestrator.submit import launch
from tests.fixtures import TRAIN_GRID, assert_epochs_once, quiet, sacct, wait_terminal, wait_until, write_grid
from tests.slurm_stub import StubCell
from workloads import layout

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# Submitted first, checked last: a 1-minute limit on a longer run -> USR2, checkpoint, requeue, finish.

TIME_LIMIT_PROFILE = """\
partition: debug
gpu_request: gpus_per_node
signal_delay_s: 5   # USR2 25-55 s into each 1-minute attempt (Slurm's 30 s tick); the kill never before 60 s
env: {GLOO_SOCKET_IFNAME: lo}
"""
# ~90 s of work on an idle 2-core machine (1536 examples: 0.8 s an epoch measured idle, ~2 s under load), so the
# run always outlives its first attempt's USR2; under load it takes more attempts (max_requeues 24).
TIME_LIMIT_EPOCHS = 110


@pytest.fixture(scope="module")
def time_limit_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    folder = tmp_path_factory.mktemp("time_limit")
    (folder / "tl-profile.yaml").write_text(TIME_LIMIT_PROFILE)
    grid = write_grid(
        folder, "timelimit", [(1, 1)], profile=str(folder / "tl-profile.yaml"), epochs=TIME_LIMIT_EPOCHS,
        train_subset=1536, timeout_min=1, eval_every=10, max_requeues=24,
    )  # fmt: skip
    launch.submit(grid, folder / "results", log=quiet)
    return folder / "results" / "timelimit", time.monotonic()


def test_time_limit_submitted(time_limit_run: tuple[Path, float]) -> None:
    exp_dir, _ = time_limit_run
    assert len(manifest.load(exp_dir)) == 1


# ---------------------------------------------------------------------------------------------------------------


def test_bad_grid_via_console_script(results: Path) -> None:
    """The installed `orchestrate` itself: exit 2, one line per problem, and squeue shows nothing new."""
    grid = REPO / "tests" / "grids" / "bad" / "unknown_method_pgdx.yaml"
    orchestrate = Path(sys.executable).parent / "orchestrate"
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    out = subprocess.run([str(orchestrate), "submit", str(grid), "--results", str(results)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    assert out.returncode == 2, out
    assert out.stderr.startswith("orchestrate: error: ") and "Traceback" not in out.stderr
    assert set(after.split()) <= set(before.split()), "nothing may be submitted"


def test_two_shapes_ddp_across_nodes(tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = write_grid(tmp_path, "shapes", [(1, 2), (2, 2)])
    with monkeypatch.context() as m:  # as if submitted from inside another job: none of this may leak
        for k, v in {"SLURM_JOB_ID": "424242", "SLURM_NTASKS": "99", "SLURM_JOB_NODELIST": "node9",
                     "MASTER_PORT": "1", "RANK": "3", "WORLD_SIZE": "7"}.items():  # fmt: skip
            m.setenv(k, v)
        result = launch.submit(grid, results, log=quiet)
    assert len(result.arrays) == 2
    exp_dir = results / "shapes"
    cells = wait_terminal(exp_dir, timeout=150)
    assert {c.state for c in cells.values()} == {"finished"}, cell_state.format_table(list(cells.values()))

    runs = {r["run_id"]: r for r in layout.read_csv(collect.collect(exp_dir)["runs"])}
    assert {r["world_size"] for r in runs.values()} == {"2", "4"}
    assert runs["fast-n2g2-b64-s0"]["batch_per_rank"] == "16"
    assert all(r["state"] == "finished" for r in runs.values())

    two = "fast-n2g2-b64-s0"
    job_id = cells[two].job_id
    assert job_id
    env = layout.read_json(manifest.run_dir(exp_dir, two) / layout.ENV)
    assert env["world_size"] == 4
    node_list = sacct(job_id, "NodeList")
    names = subprocess.run(["scontrol", "show", "hostnames", node_list], capture_output=True, text=True).stdout
    assert len(set(names.split())) == 2, node_list
    assert env["slurm"]["node_list"] == node_list
    per_rank = {r.get("node") for r in env["ranks"]} - {None}
    if per_rank:  # SLURMD_NODENAME of every rank, when the workload records it
        assert len(per_rank) == 2, env["ranks"]
    # submitit's own log of each task: ranks 0-1 on node index 0, ranks 2-3 on node index 1
    logs = [(exp_dir / ".submitit" / job_id / f"{job_id}_{t}_log.out").read_text() for t in range(4)]
    node_ids = {re.search(r"node=(\d)\(2\)", text).group(1) for text in logs}  # type: ignore[union-attr]
    assert node_ids == {"0", "1"}

    # the GPU request reached Slurm
    assert "gres/gpu=4" in sacct(job_id, "AllocTRES")
    assert "gres/gpu=2" in sacct(str(cells["fast-n1g2-b64-s0"].job_id), "AllocTRES")


BENCH_GRID = """\
name: bench2
kind: bench
profile: local-cluster
executor: slurm
defaults:
  model: small_cnn
  dataset: fashion_mnist
  train_subset: 512
  eval: {steps: 2}
  bench: {batch_sizes: [16, 32], methods: [standard, fast], repeats: 2, warmup: 1, prime_steps: 3}
  resources: {timeout_min: 5}
grid:
  shape:
    - {nodes: 2, gpus_per_node: 1}
"""


def test_bench_across_two_nodes_feeds_the_estimate(tmp_path: Path, results: Path) -> None:
    """A 2-node bench cell: both ranks measure at once (DDP steps, a gradient all-reduce between the nodes) and a
    2-GPU train cell is then estimated from those rows."""
    grid = tmp_path / "bench2.yaml"
    grid.write_text(BENCH_GRID)
    launch.submit(grid, results, log=quiet)
    exp_dir = results / "bench2"
    cells = wait_terminal(exp_dir, timeout=150)
    assert {c.state for c in cells.values()} == {"finished"}, cell_state.format_table(list(cells.values()))
    run_dir = manifest.run_dir(exp_dir, "bench-small_cnn-n2g1")
    env = layout.read_json(run_dir / layout.ENV)
    assert env["world_size"] == 2
    names = subprocess.run(["scontrol", "show", "hostnames", env["slurm"]["node_list"]], capture_output=True,
                           text=True).stdout  # fmt: skip
    assert len(set(names.split())) == 2  # the all-reduce crossed the (emulated) nodes
    rows = layout.read_csv(collect.collect(exp_dir)["bench"])
    assert {r["world_size"] for r in rows} == {"2"} and {r["inputs"] for r in rows} == {"data"}
    assert {int(r["batch_size"]) for r in rows if r["what"] == "allreduce"} == {16, 32}
    train = tmp_path / "train2.yaml"
    train.write_text(TRAIN_GRID.format(name="bench2", profile="local-cluster", epochs=1, train_subset=512,
                                       eval_every=1, timeout_min=5, max_requeues=0, extra="",
                                       shapes="    - {nodes: 2, gpus_per_node: 1}"))  # fmt: skip
    from orchestrator.estimate.model import estimate_grid

    (row,) = estimate_grid(train, exp_dir).itertuples()
    assert (row.gpus, row.batch_per_gpu, row.bench_world_size, row.basis) == (2, 32, 2, "train_step")
    assert row.predicted_s > 0 and not row.extrapolated


def test_requeue_resumes_from_checkpoint(tmp_path: Path, results: Path) -> None:
    # long enough (8 epochs of 3072 examples) that the requeue always lands while the job still trains
    grid = write_grid(tmp_path, "requeue", [(1, 2)], epochs=8, train_subset=3072)
    launch.submit(grid, results, log=quiet)
    exp_dir = results / "requeue"
    run_dir = manifest.run_dir(exp_dir, "fast-n1g2-b64-s0")
    job_id = manifest.load(exp_dir)["fast-n1g2-b64-s0"].job_id
    assert job_id
    wait_until(lambda: (run_dir / layout.CKPT_LAST).exists(), 120, "the first epoch's checkpoint", interval=0.2)
    assert not (run_dir / layout.RESULT).exists(), "finished before the requeue: make the run longer"
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    # while it waits to restart, the requeued cell is pending, never failed
    states = [cell_state.poll(exp_dir)[0].state for _ in range(3)]
    assert "failed" not in states, states

    cells = wait_terminal(exp_dir, timeout=180)
    cell = cells["fast-n1g2-b64-s0"]
    assert cell.state == "finished", cell_state.format_table([cell])
    assert_epochs_once(run_dir, 8)
    env = layout.read_json(run_dir / layout.ENV)
    assert len(env["attempts"]) == 2 and env["attempts"][1]["restart_count"] == "1", env["attempts"]
    assert cell.attempts == 2
    # a Slurm requeue keeps its job id: both attempts ran as the job the manifest lists
    assert manifest.load(exp_dir)["fast-n1g2-b64-s0"].job_ids == [job_id]
    assert [a["job_id"] for a in env["attempts"]] == [job_id, job_id]
    # resumed, not restarted: epoch 1 ran once over both attempts (requeued jobs append to the same log)
    log = (exp_dir / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
    assert log.count('"epoch": 1,') == 1, log


def test_cancel_then_retry_failed(tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # long enough (4 epochs of 2048 examples) that scancel always lands while the job still trains
    grid = write_grid(tmp_path, "cancel", [(1, 1)], epochs=4, train_subset=2048)
    launch.submit(grid, results, log=quiet)
    exp_dir = results / "cancel"
    first = manifest.load(exp_dir)["fast-n1g1-b64-s0"].job_id
    assert first
    wait_until(lambda: cell_state.poll(exp_dir)[0].state == "running", 60, "the job to run")

    # a second submission must not double-submit the running cell
    capsys.readouterr()
    assert cli.main(["submit", str(grid), "--results", str(results)]) == 2
    assert "already running or pending" in capsys.readouterr().err

    assert not (manifest.run_dir(exp_dir, "fast-n1g1-b64-s0") / layout.RESULT).exists(), "finished too soon"
    subprocess.run(["scancel", first], check=True)
    wait_until(lambda: cell_state.poll(exp_dir)[0].state == "cancelled", 60, "state cancelled")
    assert cli.main(["status", "cancel", "--results", str(results)]) == 0
    table = capsys.readouterr().out
    assert re.search(rf"fast-n1g1-b64-s0\s+cancelled\s+{first}\b", table), table

    # without --retry-failed a cancelled cell is skipped, and the note names the flag; with its old name,
    # --only-missing, it is resubmitted and runs to the end
    assert cli.main(["submit", str(grid), "--results", str(results)]) == 0
    assert "skip cancel/fast-n1g1-b64-s0: cancelled earlier; not resubmitted without --retry-failed" in (
        capsys.readouterr().out
    )
    assert manifest.load(exp_dir)["fast-n1g1-b64-s0"].job_ids == [first]
    code = cli.main(["submit", str(grid), "--results", str(results), "--only-missing", "--wait", "--poll", "1"])
    assert code == 0, capsys.readouterr()
    entry = manifest.load(exp_dir)["fast-n1g1-b64-s0"]
    assert len(entry.job_ids) == 2 and entry.job_ids[0] == first
    assert cell_state.poll(exp_dir)[0].state == "finished"
    assert_epochs_once(manifest.run_dir(exp_dir, "fast-n1g1-b64-s0"), 4)


def test_64_cells_as_arrays(tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = tmp_path / "many.yaml"
    grid.write_text(
        "name: many\nkind: train\nprofile: local-cluster\nexecutor: slurm\n"
        "defaults: {epochs: 1, train_subset: 64, val_subset: 64, global_batch_size: 32}\n"
        f"grid:\n  seed: {list(range(32))}\n"
        "  resources: [{timeout_min: 2, cpus_per_task: 1}, {timeout_min: 3, cpus_per_task: 1}]\n"
    )
    result = launch.submit(grid, results, log=quiet, job=StubCell())
    print(f"\n64-cell submit: {result.seconds:.2f} s in {len(result.arrays)} arrays")
    assert len(result.job_ids) == 64 and len(result.arrays) == 2
    # the speed is a benchmark (printed above); the test bounds only a hang: two sbatch calls, minutes at most
    assert result.seconds <= 300.0, f"submitting 64 cells took {result.seconds:.1f} s"
    exp_dir = results / "many"
    entries = manifest.load(exp_dir)
    assert len(entries) == 64 and len({e.array for e in entries.values()}) == 2

    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(scheduler.subprocess, "run", counting_run)
    cells = cell_state.poll(exp_dir)
    print(f"one status poll of 64 cells: {len(calls)} scheduler call(s): {[c[0] for c in calls]}")
    assert len(cells) == 64
    assert [c[0] for c in calls] == ["sacct"], calls

    done = wait_terminal(exp_dir, timeout=240)
    assert {c.state for c in done.values()} == {"finished"}, cell_state.counts(done.values())
    for run_id in done:  # every result complete and parseable; no temp file left behind
        assert layout.read_json(manifest.run_dir(exp_dir, run_id) / layout.RESULT)["run_id"] == run_id
    assert not list(exp_dir.rglob("*.tmp"))
    paths = collect.collect(exp_dir)
    first = paths["runs"].read_bytes()
    rows = layout.read_csv(paths["runs"])
    assert len(rows) == 64 and {r["state"] for r in rows} == {"finished"}
    assert len(layout.read_csv(paths["epochs"])) == 64
    assert collect.collect(exp_dir)["runs"].read_bytes() == first


def test_time_limit_checkpoints_requeues_and_finishes(time_limit_run: tuple[Path, float]) -> None:
    exp_dir, started = time_limit_run
    # its speed is the machine's (~90 s of epochs idle, several times that under load, plus one start per
    # attempt): wait while it makes progress, up to a cap far above the worst seen under load (~9 min)
    cells = wait_terminal(exp_dir, timeout=max(60.0, 1800 - (time.monotonic() - started)), stall_s=240)
    cell = cells["fast-n1g1-b64-s0"]
    assert cell.state == "finished", cell_state.format_table([cell])
    run_dir = manifest.run_dir(exp_dir, cell.run_id)
    assert_epochs_once(run_dir, TIME_LIMIT_EPOCHS)
    env = layout.read_json(run_dir / layout.ENV)
    assert len(env["attempts"]) >= 2, env["attempts"]
    job_id = str(cell.job_id)
    log = (exp_dir / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()  # submitit logs INFO to stdout
    assert "Calling checkpoint method" in log and f"Requeued job {job_id}" in log, log[-3000:]
