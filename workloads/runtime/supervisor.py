"""Every submitted rank runs as two processes: this supervisor (in submitit's task process) and the workload child.

Why: a rank that dies by a signal (the OOM killer's SIGKILL, a segfault) cannot say so itself, and a rank that is
stopped (SIGSTOP) cannot fail at all. The supervisor starts `python -m workloads.entry SPEC_JSON` with the same
environment, stdout and stderr (the logs stay where submitit puts them), waits for it and records how it ended:

- killed by a signal: it writes that rank's error file (error.txt for rank 0, error-rank{r}.txt else) whose first
  line names the rank, its host, the pid and the signal, plus a hint, then raises a one-line RankFailed;
- stopped for longer than the spec's collective_timeout_s: it kills the child and says so the same way (a peer
  waiting for it fails its collective after that same time, workloads.runtime.distributed);
- exit EXIT_PREEMPTED (workloads.runtime.preempt: it saved and wants a requeue): it runs submitit's requeue path by
sending
  itself SIGUSR2, unless submitit's handler already ran (CellJob.checkpoint calls `on_preemption`);
- any other failure: the child wrote its error file itself (workloads.entry) and reported its summary line, which
  the supervisor raises, so the submitit log and result pickle say what the child said.
SIGUSR2 (through CellJob.checkpoint) and SIGTERM are forwarded to the child. The child dies with its parent
(PR_SET_PDEATHSIG), so no workload outlives its job step. Torch-free: the child imports torch, never this side.

The supervisor adds how its rank ended to RUN_DIR/ranks/rank-{r}.json (workloads.runtime.ranks, which the child starts
once the run directory is held), so that a survivor whose collective failed names the peer that died or hung.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from workloads import layout
from workloads.runtime import ranks
from workloads.runtime.preempt import EXIT_PREEMPTED
from workloads.runtime.ranks import Identity

FORWARD_WAIT_S = 60.0  # how long a forwarded SIGUSR2 may take to end the child (below Slurm's usual 90 s warning)
TICK_S = 0.2  # the supervisor's polling period
PR_SET_PDEATHSIG = 1
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # what scancel, a time limit or a user sends


class RankFailed(RuntimeError):
    """A rank's workload ended badly; the message is one line (the error file holds the details)."""


@dataclass
class Ending:
    """How the child ended: its exit code, or the signal that killed it; `stopped_s` when the supervisor killed it
    after it had been stopped (by `stop_signal`) that long."""

    code: int | None = None
    signal: int | None = None
    stopped_s: float | None = None
    stop_signal: int | None = None


@dataclass
class Supervisor:
    """One running child and what is known about it (one per process: see `_active`)."""

    pid: int
    me: Identity
    run_dir: Path
    stop_limit_s: float
    ending: Ending | None = None
    received: set[int] = field(default_factory=set)  # signals the supervisor got (and forwarded)
    requeue_handled: bool = False  # submitit's requeue handler already ran (CellJob.checkpoint)
    _stopped_at: float | None = None
    _stop_signal: int | None = None

    def poll(self) -> Ending | None:
        """Reap the child if it ended; track whether it is stopped."""
        if self.ending is not None:
            return self.ending
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG | os.WUNTRACED | os.WCONTINUED)
        except ChildProcessError:  # reaped elsewhere: cannot happen unless someone else waits for it
            self.ending = Ending(code=-1)
            return self.ending
        if pid == 0:
            return None
        if os.WIFSTOPPED(status):
            self._stopped_at, self._stop_signal = time.monotonic(), os.WSTOPSIG(status)
        elif os.WIFCONTINUED(status):
            self._stopped_at = None
        elif os.WIFSIGNALED(status):
            self.ending = Ending(signal=os.WTERMSIG(status))
        elif os.WIFEXITED(status):
            self.ending = Ending(code=os.WEXITSTATUS(status))
        return self.ending

    def wait(self, limit_s: float | None = None) -> Ending | None:
        """Until the child ends (None when `limit_s` passes first); a child stopped longer than stop_limit_s is
        killed. A gap in this loop (the supervisor itself was suspended, e.g. `scontrol suspend`) restarts the
        stop clock, so a job resumed as a whole is not taken for a hung rank."""
        deadline = None if limit_s is None else time.monotonic() + limit_s
        last = time.monotonic()
        while (ending := self.poll()) is None:
            now = time.monotonic()
            if now - last > 5 * TICK_S + 2.0 and self._stopped_at is not None:
                self._stopped_at = now
            last = now
            if self._stopped_at is not None and now - self._stopped_at > self.stop_limit_s:
                return self._kill_stopped(now - self._stopped_at)
            if deadline is not None and now >= deadline:
                return None
            time.sleep(TICK_S)
        return ending

    def _kill_stopped(self, stopped_s: float) -> Ending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.ending = Ending(signal=signal.SIGKILL, stopped_s=stopped_s, stop_signal=self._stop_signal)
        return self.ending

    def forward(self, signum: int) -> None:
        self.received.add(signum)
        if self.ending is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL and reap (the supervisor is leaving while the child still runs)."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.ending = Ending(signal=signal.SIGKILL)


_active: Supervisor | None = None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ---------------------------------------------------------------------------------------------------------------
# The supervisor side (submitit's task process)


def _die_with(parent: int) -> Callable[[], None]:
    """preexec_fn of the child: die with the parent (a SIGKILLed supervisor must not leave a workload behind).
    libc is loaded before the fork; a parent gone before prctl took effect ends the child at once."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        return lambda: None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def workload_command(spec_path: Path) -> list[str]:
    """The child: unbuffered like submitit's task (`python -u`), so a killed child's last lines reach the log."""
    return [sys.executable, "-u", "-m", "workloads.entry", str(spec_path)]


def run_supervised(spec_path: str | Path, command: list[str] | None = None) -> dict[str, Any]:
    """Run the workload of RUN_DIR/spec.json as a child (`command`: tests replace it) and return its result dict;
    raises RankFailed (one line) when it fails. See the module docstring for what each ending does."""
    global _active
    spec_path = Path(spec_path).resolve()
    me = Identity.here()
    fd, report_name = tempfile.mkstemp(prefix="fastrobust-child-", suffix=".json")
    os.close(fd)
    report = Path(report_name)
    env = {**os.environ, ranks.SUPERVISED_ENV: "1", ranks.REPORT_ENV: str(report)}
    previous_term = signal.getsignal(signal.SIGTERM)
    try:
        child = subprocess.Popen(command or workload_command(spec_path), env=env, preexec_fn=_die_with(os.getpid()))
        sup = _active = Supervisor(child.pid, me, spec_path.parent, ranks.collective_timeout_s(spec_path))
        with _forwarding_sigterm(sup, previous_term):
            ending = sup.wait()
        assert ending is not None
        child.returncode = ending.code if ending.code is not None else -(ending.signal or 0)  # reaped by us
        return _finish(sup, ending, report)
    finally:
        if _active is not None:
            _active.kill()
        _active = None
        report.unlink(missing_ok=True)


@contextlib.contextmanager
def _forwarding_sigterm(sup: Supervisor, previous: Any) -> Iterator[None]:
    """SIGTERM goes to the child too; then to what handled it before (submitit logs and ignores it)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        sup.forward(signum)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def on_preemption() -> None:
    """submitit's SIGUSR2 handler is requeueing (CellJob.checkpoint): the child gets SIGUSR2 (train saves a
    mid-epoch checkpoint) and up to FORWARD_WAIT_S to end, then SIGKILL. A later SIGUSR2 is ignored."""
    sup = _active
    if sup is None:  # not supervising (a direct call): nothing to forward
        return
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    sup.requeue_handled = True
    sup.forward(signal.SIGUSR2)
    if sup.wait(FORWARD_WAIT_S) is None:
        sup.kill()


def _finish(sup: Supervisor, ending: Ending, report: Path) -> dict[str, Any]:
    said = _read_report(report)
    if ending.code == 0 and "result" in said:
        result: dict[str, Any] = said["result"]
        _record_end(sup, None, announced_only=True)
        return result
    if ending.code == EXIT_PREEMPTED or ending.signal == signal.SIGUSR2:  # SIGUSR2 before preempt's handler
        _record_end(sup, f"{sup.me.who(sup.pid)} stopped for a requeue (preemption or time limit)")
        return _requeue(sup)
    if ending.signal in ENDING_SIGNALS and not sup.received:
        time.sleep(0.5)  # Slurm signals the child and this process one after the other: let ours arrive
    if ending.signal is not None and ending.stopped_s is None and sup.received & {ending.signal, signal.SIGTERM}:
        raise RankFailed(  # the step is being ended from outside: nothing to record for this rank
            f"{sup.me.who(sup.pid)} was ended by {signal_name(ending.signal)} sent to the whole job step "
            "(scancel, a requeue, the time limit, or another task failed)"
        )
    if ending.signal is not None:
        line = died_line(sup.me, sup.pid, ending)
        _write_error(sup, line, ending)
        raise RankFailed(line)
    said_line = _fresh_first_line(ranks.error_path(sup.run_dir, sup.me.rank)) or said.get("error")
    if said_line:  # a survivor names it; a job refused by the run lock (never announced) writes nothing
        _record_end(sup, f"{sup.me.who(sup.pid)} failed: {said_line}", announced_only=True)
        raise RankFailed(str(said_line))
    raise RankFailed(
        f"{sup.me.who(sup.pid)} exited with code {ending.code} before reporting a result; see its submitit log"
    )


def died_line(me: Identity, pid: int, ending: Ending) -> str:
    """The error file's first line for a child the supervisor saw die (or killed after a stop)."""
    who = me.who(pid)
    if ending.stopped_s is not None:
        stop = signal_name(ending.stop_signal or signal.SIGSTOP)
        return (
            f"{who} was stopped ({stop}) for {ending.stopped_s:.0f} s > collective_timeout_s; killed (a hung rank: "
            "its peers' collectives fail after the same time)"
        )
    sig = ending.signal or 0
    return f"{who} was killed by signal {sig} ({signal_name(sig)}) {_hint(me, sig)}"


def _hint(me: Identity, sig: int) -> str:
    if sig == signal.SIGKILL:
        return (
            f"(out of memory? `sacct -j {me.job_id} -o JobID,State,ExitCode,MaxRSS` and `dmesg` on {me.host} "
            "tell; or someone ran kill -9)"
        )
    if sig == signal.SIGABRT:
        return "(an abort: NCCL's watchdog aborts a rank whose collective outlived collective_timeout_s; see its log)"
    if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
        return "(a crash in native code; its submitit log has what it printed)"
    return "(see its submitit log)"


def _write_error(sup: Supervisor, line: str, ending: Ending) -> None:
    details = {**asdict(sup.me), "child_pid": sup.pid, "supervisor_pid": os.getpid(), **asdict(ending)}
    text = (
        f"{line}\n\nwritten by the rank's supervisor (workloads.runtime.supervisor):\n{json.dumps(details, indent=2)}\n"
    )
    try:
        layout.write_text_atomic(ranks.error_path(sup.run_dir, sup.me.rank), text)
    except OSError as exc:
        print(f"error: {line} ({ranks.error_path(sup.run_dir, sup.me.rank).name} not written: {exc})", file=sys.stderr)
    _record_end(sup, line)


def _record_end(sup: Supervisor, ended: str | None, announced_only: bool = False) -> None:
    """Add how the rank ended to its ranks/rank-{r}.json (`ended`: the line a survivor's peer_summary shows; None
    for a success). `announced_only`: only when the child recorded itself there (it held the run directory)."""
    path = ranks.rank_record_path(sup.run_dir, sup.me.rank)
    record = ranks.read_json_dict(path) or {}
    if record.get("child_pid") != sup.pid:  # the child never announced itself (it died before the lock)
        if announced_only:
            return
        record = {**asdict(sup.me), "child_pid": sup.pid, "pid": os.getpid()}
    record.update(ended=ended, ended_at=time.time())
    with contextlib.suppress(OSError):
        layout.write_json_atomic(path, record)


def _requeue(sup: Supervisor) -> dict[str, Any]:
    """The child saved and asked for a requeue: run submitit's handler (requeue + exit on rank 0), unless it ran."""
    time.sleep(1.0)  # a SIGUSR2 of Slurm's on its way runs the handler during this sleep (it exits)
    handler = signal.getsignal(signal.SIGUSR2)
    if not sup.requeue_handled:
        if not callable(handler):
            raise SystemExit(EXIT_PREEMPTED)  # not under submitit: say the same to whoever started us
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.5)  # the handler runs here; on rank 0 it requeues and exits
    return {"rank": sup.me.rank}


def _fresh_first_line(path: Path) -> str | None:
    """The first line of an error file the child wrote in this attempt (None: none, or an older one)."""
    try:
        if path.stat().st_mtime < ranks.STARTED:
            return None
        with open(path, errors="replace") as f:
            return " ".join(f.readline(2000).split()) or None
    except OSError:
        return None


def _read_report(report: Path) -> dict[str, Any]:
    return ranks.read_json_dict(report) or {}
