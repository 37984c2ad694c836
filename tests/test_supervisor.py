"""The rank supervisor on plain child processes (no torch, no Slurm): how a child ended -> its error file, its
ranks/ record and the one-line exception (workloads.runtime.supervisor), and a survivor's first line
(workloads.runtime.ranks).
tests/test_rank_faults.py kills and stops real ranks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.monitor import status as cell_state
from workloads import layout
from workloads.runtime import ranks, supervisor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run directory with a spec.json (collective_timeout_s 1) and the environment of Slurm task 1 on node7."""
    for key in ("SUBMITIT_EXECUTOR", "RANK", "SLURM_PROCID", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURMD_NODENAME", "node7")
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    folder = tmp_path / "run"
    folder.mkdir()
    layout.write_json_atomic(folder / layout.SPEC, {"kind": "train", "collective_timeout_s": 1})
    return folder


def child(code: str) -> list[str]:
    """A child process running `code` (with os, sys, json, signal, time imported)."""
    return [sys.executable, "-c", "import os, sys, json, signal, time\n" + textwrap.dedent(code)]


def first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]


def test_result_round_trip(run_dir: Path) -> None:
    code = """
    assert os.environ["FASTROBUST_SUPERVISED"] == "1"
    with open(os.environ["FASTROBUST_CHILD_REPORT"], "w") as f:
        json.dump({"result": {"adv_acc": 0.5, "epochs": [1, 2]}}, f)
    """
    assert supervisor.run_supervised(run_dir / layout.SPEC, child(code)) == {"adv_acc": 0.5, "epochs": [1, 2]}
    assert not list(run_dir.glob("error*.txt"))


def test_killed_by_a_signal_names_rank_host_pid_and_signal(run_dir: Path) -> None:
    with pytest.raises(supervisor.RankFailed) as info:
        supervisor.run_supervised(run_dir / layout.SPEC, child("os.kill(os.getpid(), signal.SIGKILL)"))
    line = first_line(run_dir / "error-rank1.txt")
    assert str(info.value) == line
    assert line.startswith("rank 1 on node7 (pid ") and "was killed by signal 9 (SIGKILL)" in line, line
    assert "sacct -j 4711" in line and "\n" not in str(info.value)
    record = layout.read_json(run_dir / "ranks" / "rank-1.json")
    assert record["rank"] == 1 and record["host"] == "node7" and "SIGKILL" in record["ended"]


def test_a_stopped_child_is_killed_after_collective_timeout_s(run_dir: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(supervisor.RankFailed, match=r"was stopped \(SIGSTOP\) for \d+ s > collective_timeout_s"):
        supervisor.run_supervised(run_dir / layout.SPEC, child("os.kill(os.getpid(), signal.SIGSTOP)"))
    assert time.monotonic() - t0 >= 1.0  # not before the timeout; the message checks the reason, not the speed
    assert "collective_timeout_s; killed" in first_line(run_dir / "error-rank1.txt")


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_a_continued_child_is_not_taken_for_a_hung_one(run_dir: Path) -> None:
    """Stopped briefly, then running for longer than collective_timeout_s: not killed. The helper that continues it
    waits until the kernel shows it stopped (no timing guess), and the timeout is long enough that a busy machine
    delaying that helper by seconds does not make the stop look like a hang."""
    layout.write_json_atomic(run_dir / layout.SPEC, {"kind": "train", "collective_timeout_s": 5})
    code = """
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        while open(f"/proc/{parent}/stat").read().rsplit(")", 1)[1].split()[0] not in "Tt":
            time.sleep(0.01)
        os.kill(parent, signal.SIGCONT); os._exit(0)
    os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(6)  # longer than collective_timeout_s, but running
    with open(os.environ["FASTROBUST_CHILD_REPORT"], "w") as f:
        json.dump({"result": {"ok": True}}, f)
    """
    assert supervisor.run_supervised(run_dir / layout.SPEC, child(code)) == {"ok": True}


def test_a_failing_child_is_reported_in_its_own_words(run_dir: Path) -> None:
    code = """
    with open(os.environ["FASTROBUST_CHILD_REPORT"], "w") as f:
        json.dump({"error": "RunDirBusy: run directory is held by job 12 on node1"}, f)
    sys.exit(1)
    """
    with pytest.raises(supervisor.RankFailed, match=r"^RunDirBusy: run directory is held by job 12 on node1$"):
        supervisor.run_supervised(run_dir / layout.SPEC, child(code))
    assert not list(run_dir.glob("error*.txt")), "the supervisor writes nothing for a child that said why"
    assert not (run_dir / "ranks").exists(), "nor for one that never held the run directory"


def test_a_failed_rank_is_named_by_its_peers(run_dir: Path) -> None:
    """A child that held the run directory (announced itself) and failed: its record says so, for a survivor."""
    code = f"""
    from pathlib import Path
    from workloads.runtime import ranks
    ranks.announce(Path({str(run_dir)!r}), 1)
    with open(os.environ["FASTROBUST_CHILD_REPORT"], "w") as f:
        json.dump({{"error": "OutOfMemoryError: CUDA out of memory"}}, f)
    sys.exit(1)
    """
    with pytest.raises(supervisor.RankFailed, match=r"^OutOfMemoryError: CUDA out of memory$"):
        supervisor.run_supervised(run_dir / layout.SPEC, child(code))
    record = layout.read_json(run_dir / "ranks" / "rank-1.json")
    assert (
        record["ended"] == f"rank 1 on node7 (pid {record['child_pid']}) failed: OutOfMemoryError: CUDA out of memory"
    )
    exc = RuntimeError("Connection closed by peer (gloo)")
    summary = ranks.peer_summary(run_dir, 0, exc, "RuntimeError: x", wait_s=0)
    assert summary is not None and summary.startswith(record["ended"] + "; rank 0 stopped: its collective failed")


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_exit_preempted_runs_the_requeue_handler(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        result = supervisor.run_supervised(run_dir / layout.SPEC, child("sys.exit(75)"))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [signal.SIGUSR2] and result == {"rank": 1}
    assert not list(run_dir.glob("error*.txt"))
    # without a handler (not under submitit) the supervisor exits 75 itself
    with pytest.raises(SystemExit) as info:
        supervisor.run_supervised(run_dir / layout.SPEC, child("sys.exit(75)"))
    assert info.value.code == 75


def _signal_me_later(signum: int, after_s: float) -> None:
    threading.Timer(after_s, os.kill, (os.getpid(), signum)).start()


def test_sigusr2_through_checkpoint_reaches_the_child_once(run_dir: Path, tmp_path: Path) -> None:
    """submitit's handler calls CellJob.checkpoint -> on_preemption: the child gets SIGUSR2 and ends (here: it
    exits 75 as workloads.runtime.preempt does); the requeue handler is not run a second time for that exit."""
    ready = tmp_path / "ready"
    code = f"""
    signal.signal(signal.SIGUSR2, lambda *a: sys.exit(75))
    open({str(ready)!r}, "w").close()
    time.sleep(30)
    """
    calls: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        calls.append(signum)
        supervisor.on_preemption()

    def send_when_ready() -> None:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        threading.Thread(target=send_when_ready, daemon=True).start()
        t0 = time.monotonic()
        result = supervisor.run_supervised(run_dir / layout.SPEC, child(code))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [signal.SIGUSR2] and result == {"rank": 1} and time.monotonic() - t0 < 120  # no hang


def test_sigterm_is_forwarded_and_records_no_error(run_dir: Path) -> None:
    _signal_me_later(signal.SIGTERM, 1.0)
    with pytest.raises(supervisor.RankFailed, match=r"ended by SIGTERM sent to the whole job step"):
        supervisor.run_supervised(run_dir / layout.SPEC, child("time.sleep(30)"))
    assert not list(run_dir.glob("error*.txt"))


def test_the_child_dies_with_its_supervisor(run_dir: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    body = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    script = (
        "import sys; from workloads.runtime import supervisor\n"
        f"supervisor.run_supervised({str(run_dir / layout.SPEC)!r}, [sys.executable, '-c', {body!r}])\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child_pid), "the workload outlived its supervisor"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# A survivor's first line


def _record_peer(run_dir: Path, rank: int, ended: str) -> None:
    record = {"rank": rank, "host": "node2", "ended": ended, "ended_at": time.time()}
    layout.write_json_atomic(run_dir / "ranks" / f"rank-{rank}.json", record)


class DistBackendError(RuntimeError):
    """Named as torch.distributed's (the supervisor matches type names: it is torch-free)."""


def test_a_survivor_names_the_dead_peer(run_dir: Path) -> None:
    line = "rank 1 on node2 (pid 4242) was killed by signal 9 (SIGKILL) (out of memory? `sacct -j 1` tell)"
    _record_peer(run_dir, 1, line)
    exc = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:33139")
    summary = ranks.peer_summary(run_dir, 0, exc, f"RuntimeError: {exc}")
    assert summary == (
        "rank 1 on node2 (pid 4242) was killed by signal 9 (SIGKILL); rank 0 stopped: its collective failed "
        "(RuntimeError: Connection closed by peer [127.0.0.1]:33139)"  # without torch's source location
    )


def test_a_survivor_of_a_timeout_names_the_setting(run_dir: Path) -> None:
    exc = DistBackendError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1000ms for recv operation")
    t0 = time.monotonic()
    summary = ranks.peer_summary(run_dir, 0, exc, f"DistBackendError: {exc}", wait_s=0.3)
    assert summary is not None and time.monotonic() - t0 >= 0.3
    assert summary.startswith("rank 0 stopped: its collective failed: a collective timed out after 1 s "
                              "(collective_timeout_s): a peer rank is hung")  # fmt: skip
    assert "a peer rank died or hung: see error-rank*.txt" in summary


def test_other_failures_keep_their_own_line(run_dir: Path) -> None:
    assert ranks.peer_summary(run_dir, 0, ValueError("bad"), "ValueError: bad") is None
    assert ranks.peer_summary(run_dir, 0, RuntimeError("CUDA out of memory"), "x") is None


def test_other_survivors_are_not_the_culprit(run_dir: Path) -> None:
    _record_peer(
        run_dir,
        2,
        "rank 1 on node2 (pid 4) was killed by signal 9 (SIGKILL); rank 2 stopped: its collective failed (x)",
    )
    _record_peer(run_dir, 1, "rank 1 on node2 (pid 4) was killed by signal 9 (SIGKILL) (out of memory? ...)")
    summary = ranks.peer_summary(
        run_dir, 0, RuntimeError("Connection reset by peer (gloo)"), "RuntimeError: y", wait_s=0
    )
    killed = "rank 1 on node2 (pid 4) was killed by signal 9 (SIGKILL)"
    assert summary == f"{killed}; rank 0 stopped: its collective failed (RuntimeError: y)"


def test_stale_records_are_ignored(run_dir: Path) -> None:
    record = {"rank": 1, "host": "node2", "ended": "rank 1 was killed", "ended_at": 1.0}  # an earlier attempt
    layout.write_json_atomic(run_dir / "ranks" / "rank-1.json", record)
    exc = RuntimeError("Connection reset by peer (gloo)")
    summary = ranks.peer_summary(run_dir, 0, exc, "RuntimeError: x", wait_s=0.1)
    assert summary is not None and summary.startswith("rank 0 stopped")


def test_announce_records_the_rank_and_forgets_its_old_error(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (run_dir / "error-rank1.txt").write_text("an earlier attempt")
    monkeypatch.setenv("FASTROBUST_SUPERVISED", "1")
    ranks.announce(run_dir, 1)
    assert not (run_dir / "error-rank1.txt").exists()
    record = json.loads((run_dir / "ranks" / "rank-1.json").read_text())
    assert record["child_pid"] == os.getpid() and record["pid"] == os.getppid() and record["host"] == "node7"
    assert record["job_id"] == "4711"


def test_status_falls_back_to_another_ranks_error_file(tmp_path: Path) -> None:
    """The survivor may be killed (srun --kill-on-bad-exit) before it writes error.txt: the dead rank's file is
    what `orchestrate status` and `submit --wait` then show."""
    run_dir = tmp_path / "exp" / "runs" / "r"
    run_dir.mkdir(parents=True)
    line = "rank 1 on node2 (pid 7) was killed by signal 9 (SIGKILL) (out of memory? ...)"
    (run_dir / "error-rank10.txt").write_text("rank 10 stopped: its collective failed\n")
    (run_dir / "error-rank2.txt").write_text(f"{line}\n\ndetails\n")
    assert (  # the lowest rank's file first (2 before 10, not by name)
        cell_state.failure_line(run_dir, tmp_path / "exp", None) == f"{line} (traceback: {run_dir / 'error-rank2.txt'})"
    )
    (run_dir / layout.ERROR).write_text("rank 1 on node2 (pid 7) was killed ...; rank 0 stopped: ...\n")
    assert cell_state.failure_line(run_dir, tmp_path / "exp", None).startswith(
        "rank 1 on node2 (pid 7) was killed ...; rank 0"
    )
