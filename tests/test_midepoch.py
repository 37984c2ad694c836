"""Within-epoch checkpoints (checkpoint_every_min, SIGUSR2 through workloads.runtime.preempt): a run stopped mid-epoch
and
resumed ends bit-identical to the uninterrupted one (1 process: fast, free with its carried delta, onecycle's
per-iteration lr; 2 gloo ranks); SIGUSR2 saves at the next step boundary and stops with Preempted (exit 75) or
through the previous Python handler (submitit's); outside the step loop, and in other kinds, it stops at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tests.fixtures import free_port, needs_fmnist
from tests.test_distributed import TORCHRUN_VARS, write_spec
from tests.test_train import TIMING, tiny_spec
from workloads import entry, layout
from workloads.assets import checkpoint
from workloads.kinds import evaluate
from workloads.kinds import train as train_kind
from workloads.kinds.train import train
from workloads.runtime import distributed, preempt
from workloads.spec import Evaluate, RunSpec, from_dict
from workloads.training.free_step import Stepper

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_fmnist]

STEPS = 6  # tiny_spec: 384 examples in global batches of 64
EVERY_STEP = 1e-9  # checkpoint_every_min: a checkpoint at every step boundary
CASES = {
    "fast": {},
    "free": {"method": "free"},  # delta carried from mini-batch to mini-batch
    "onecycle": {"optimizer": {"lr": 0.05, "schedule": "onecycle"}},  # the lr moves every iteration
}


def at_step(monkeypatch: pytest.MonkeyPatch, at: int | None, action: Callable[[], None]) -> list[int]:
    """Make the trainer call `action` just before its `at`-th optimizer step (1-based, counted over the epochs
    of one attempt); returns the list that counts this attempt's steps."""
    calls: list[int] = []

    class Hooked(Stepper):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == at:
                action()
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(train_kind, "Stepper", Hooked)
    return calls


def usr2() -> None:
    os.kill(os.getpid(), signal.SIGUSR2)


class Crash(RuntimeError):
    """A failure no handler sees (a node lost, an OOM): nothing is saved at it."""


def crash() -> None:
    raise Crash("node lost")


def checkpoint_events(out: str) -> list[tuple[int, int, str]]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"event": "checkpoint"')]
    return [(e["epoch"], e["step"], e["reason"]) for e in lines]


def strip(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_run(straight: Path, resumed: Path) -> None:
    """epochs.csv equal but for timing columns; weights and optimizer state bit-identical."""
    assert strip(layout.read_csv(straight / layout.EPOCHS)) == strip(layout.read_csv(resumed / layout.EPOCHS))
    a, b = (checkpoint.load(d / layout.CKPT_LAST) for d in (straight, resumed))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "weights differ"
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(s[k], t[k]) for k in s), "momentum differs"
    assert a["scheduler"] == b["scheduler"] and "step" not in b


def after_stop(previous: Any) -> Any:
    """The SIGUSR2 handler entry.run leaves after a stop: the previous one, or SIG_IGN for the default (a late
    second signal must not kill a process that is exiting 75)."""
    return previous if callable(previous) else signal.SIG_IGN


@pytest.fixture
def usr2_handler() -> Iterator[Any]:
    """The test process's SIGUSR2 handler, put back afterwards (a test may install its own)."""
    before = signal.getsignal(signal.SIGUSR2)
    yield before
    signal.signal(signal.SIGUSR2, before)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_preempted_mid_epoch_then_resumed_is_bit_identical(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], usr2_handler: Any
) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_spec(epochs=2, **CASES[case]), straight)
    spec = tiny_spec(epochs=2, checkpoint_every_min=EVERY_STEP, **CASES[case])
    capsys.readouterr()
    at_step(monkeypatch, STEPS + 3, usr2)  # the signal arrives during step 3 of epoch 2
    with pytest.raises(preempt.Preempted) as stopped:
        train(spec, resumed)
    assert stopped.value.code == preempt.EXIT_PREEMPTED == 75
    state = checkpoint.load(resumed / layout.CKPT_LAST)
    assert (state["epoch"], state["step"]) == (1, 3)  # saved at the boundary after the step in flight
    if case == "free":
        (delta,) = state["partial"]["delta"]
        assert delta is not None and delta.shape == (64, 1, 28, 28) and delta.abs().sum() > 0
    assert [r["epoch"] for r in layout.read_csv(resumed / layout.EPOCHS)] == ["1"]  # no row for a partial epoch
    assert not (resumed / layout.ERROR).exists() and not (resumed / layout.RESULT).exists()
    interval = [(1, s, "interval") for s in range(1, STEPS)] + [(2, 1, "interval"), (2, 2, "interval")]
    assert checkpoint_events(capsys.readouterr().out) == [*interval, (2, 3, "preempt")]
    assert signal.getsignal(signal.SIGUSR2) == after_stop(usr2_handler)

    steps = at_step(monkeypatch, None, usr2)
    train(spec, resumed)
    assert len(steps) == STEPS - 3  # the second attempt trains only the rest of epoch 2
    assert '{"event": "resume", "completed": 1, "step": 3}' in capsys.readouterr().out
    assert_same_run(straight, resumed)
    assert len(layout.read_json(resumed / layout.ENV)["attempts"]) == 2


@pytest.mark.parametrize("every", [EVERY_STEP, 0.0])
@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_a_crash_loses_the_steps_since_the_last_checkpoint(
    every: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is saved at a crash; the next attempt redoes the steps since the last checkpoint: none with a
    checkpoint every step, the epoch's 3 steps so far with epoch-end checkpoints only. Both end identical."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_spec(epochs=2), straight)
    spec = tiny_spec(epochs=2, checkpoint_every_min=every)
    at_step(monkeypatch, STEPS + 4, crash)  # dies before step 4 of epoch 2
    with pytest.raises(Crash):
        train(spec, resumed)
    assert (resumed / layout.ERROR).read_text().startswith("Crash: node lost")
    state = checkpoint.load(resumed / layout.CKPT_LAST)
    assert (state["epoch"], state.get("step", 0)) == ((1, 3) if every else (1, 0))
    steps = at_step(monkeypatch, None, crash)
    train(spec, resumed)
    redone = len(steps) - (STEPS - 3)
    print(f"\ncheckpoint_every_min={every}: {redone} steps redone after a crash in step 4 of a {STEPS}-step epoch")
    assert redone == (0 if every else 3)
    assert_same_run(straight, resumed)


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_preempted_at_an_epochs_last_step_leaves_its_evaluation_to_the_next_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], usr2_handler: Any
) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_spec(epochs=2), straight)
    capsys.readouterr()
    at_step(monkeypatch, STEPS, usr2)  # checkpoint_every_min off: SIGUSR2 alone saves
    with pytest.raises(preempt.Preempted):
        train(tiny_spec(epochs=2), resumed)
    state = checkpoint.load(resumed / layout.CKPT_LAST)
    assert (state["epoch"], state["step"]) == (0, STEPS) and not (resumed / layout.EPOCHS).exists()
    assert checkpoint_events(capsys.readouterr().out) == [(1, STEPS, "preempt")]
    steps = at_step(monkeypatch, None, usr2)
    train(tiny_spec(epochs=2), resumed)
    assert len(steps) == STEPS  # epoch 1 evaluated without a step, then epoch 2
    assert_same_run(straight, resumed)


@pytest.mark.parametrize("returns", [False, True])
def test_sigusr2_calls_the_previous_python_handler_after_the_save(
    returns: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, usr2_handler: Any
) -> None:
    """submitit's handler (rank 0: requeue, then exit) runs after the mid-epoch checkpoint; one that returns (its
    behaviour on other ranks) is followed by Preempted, so the rank never trains on alone."""
    calls: list[int] = []

    def submitit_like(signum: int, frame: Any) -> None:
        calls.append(signum)
        if not returns:
            raise SystemExit(-1)

    signal.signal(signal.SIGUSR2, submitit_like)
    at_step(monkeypatch, 2, usr2)
    with pytest.raises(SystemExit) as exited:
        train(tiny_spec(epochs=1), tmp_path)
    assert exited.value.code == (preempt.EXIT_PREEMPTED if returns else -1)
    assert calls == [signal.SIGUSR2]
    state = checkpoint.load(tmp_path / layout.CKPT_LAST)
    assert (state["epoch"], state["step"]) == (0, 2)
    assert not (tmp_path / layout.ERROR).exists()
    assert signal.getsignal(signal.SIGUSR2) is submitit_like


def test_sigusr2_outside_the_step_loop_stops_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, usr2_handler: Any
) -> None:
    """During an epoch's evaluation the loop would not poll before the epoch's checkpoint: stop now (as before
    mid-epoch checkpoints existed), resuming from the last checkpoint."""
    original, calls = train_kind.dataset_accuracy, []

    def evaluated(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            usr2()
            raise AssertionError("not stopped at once")
        return original(*args, **kwargs)

    monkeypatch.setattr(train_kind, "dataset_accuracy", evaluated)
    with pytest.raises(preempt.Preempted):
        train(tiny_spec(epochs=2), tmp_path)
    state = checkpoint.load(tmp_path / layout.CKPT_LAST)
    assert (state["epoch"], state.get("step", 0)) == (1, 0)
    assert len(layout.read_csv(tmp_path / layout.EPOCHS)) == 1 and not (tmp_path / layout.ERROR).exists()


def test_a_non_cooperative_kind_stops_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, usr2_handler: Any
) -> None:
    source = tmp_path / "source"
    train(tiny_spec(epochs=1), source)
    ev = Evaluate(source_run="tiny", source_dir=str(source), eps_list=[0.0, 1.0], steps=2, restarts=1,
                  batch_size=32, max_examples=64)  # fmt: skip
    spec = RunSpec(experiment="mid", run_id="eval", kind="evaluate", threads=1, evaluate=ev)
    path = tmp_path / "eval" / layout.SPEC
    layout.write_json_atomic(path, spec.to_dict())
    original, calls = evaluate.batch_counts, []

    def attacked(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        usr2()
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluate, "batch_counts", attacked)
    with pytest.raises(preempt.Preempted):
        entry.run(path, dist=distributed.single(spec))
    assert calls == [1] and not (path.parent / layout.ERROR).exists()
    assert signal.getsignal(signal.SIGUSR2) == after_stop(usr2_handler)


# ---------------------------------------------------------------------------------------------
# 2 gloo ranks: rank 0 gets the signal, both save their RNG streams and stop together, the resume is exact.


def _rank(rank: int, world: int, port: int, spec_path: str, stop_at: int | None, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    if stop_at is not None and rank == 0:
        with pytest.MonkeyPatch.context() as m:
            at_step(m, stop_at, usr2)
            code = _run(spec_path)
    else:
        code = _run(spec_path)
    Path(out, f"rank{rank}.txt").write_text(str(code))


def _run(spec_path: str) -> int | str | None:
    try:
        entry.run(spec_path)
    except SystemExit as exc:
        return exc.code
    return 0


def two_ranks(spec_path: Path, stop_at: int | None = None) -> list[str]:
    """Both ranks in spawned processes; returns their exit codes."""
    out = spec_path.parent / "codes"
    out.mkdir(exist_ok=True)
    saved = {k: os.environ.pop(k) for k in TORCHRUN_VARS if k in os.environ}
    try:
        mp.spawn(_rank, args=(2, free_port(), str(spec_path), stop_at, str(out)), nprocs=2)
    finally:
        os.environ.update(saved)
    return [(out / f"rank{r}.txt").read_text() for r in range(2)]


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_two_gloo_ranks_preempted_mid_epoch_match_the_uninterrupted_run(tmp_path: Path) -> None:
    kw = {"method": "fast", "augment": True, "epochs": 2}  # 256 examples, global batch 64: 4 steps an epoch
    straight, _ = write_spec(tmp_path / "straight" / "ddp", **kw)
    resumed, _ = write_spec(tmp_path / "resumed" / "ddp", checkpoint_every_min=EVERY_STEP, **kw)
    assert two_ranks(straight) == ["0", "0"]
    assert two_ranks(resumed, stop_at=4 + 2) == [str(preempt.EXIT_PREEMPTED)] * 2  # during step 2 of epoch 2
    state = checkpoint.load(resumed.parent / layout.CKPT_LAST)
    assert (state["epoch"], state["step"]) == (1, 2)
    assert len(state["rng"]) == 2 and len(state["partial"]["stats"]) == 2
    assert not list(resumed.parent.glob("error*.txt"))
    assert two_ranks(resumed) == ["0", "0"]
    assert_same_run(straight.parent, resumed.parent)


# ---------------------------------------------------------------------------------------------
# The real local Slurm cluster: `scancel --signal=USR2` mid-epoch -> a mid-epoch checkpoint, a requeue, every epoch
# once, and the weights of an uninterrupted in-process run.

SLURM_EPOCHS = 3


@pytest.mark.slurm
def test_scancel_usr2_mid_epoch_requeues_and_ends_as_the_uninterrupted_run(tmp_path: Path, results: Path) -> None:
    from orchestrator.monitor import manifest
    from orchestrator.monitor import status as cell_state
    from orchestrator.submit import launch
    from tests.test_slurm import assert_epochs_once, quiet, wait_terminal, wait_until, write_grid

    # 6144 examples: ~3-8 s an epoch on the 2-core test machine (96 steps), so a signal 1 s in lands mid-epoch
    grid = write_grid(tmp_path, "usr2", [(1, 1)], epochs=SLURM_EPOCHS, train_subset=6144, timeout_min=5)
    text = grid.read_text().replace("grid:\n", "  threads: 1\ngrid:\n")  # the in-process reference's threads too
    grid.write_text(text)
    launch.submit(grid, results, log=quiet)
    exp_dir = results / "usr2"
    (run_id,) = manifest.load(exp_dir)
    run_dir = manifest.run_dir(exp_dir, run_id)
    job_id = str(manifest.load(exp_dir)[run_id].job_id)
    log = exp_dir / layout.SUBMITIT / job_id / f"{job_id}_0_log.out"

    def in_epoch_2() -> bool:
        return (run_dir / layout.CKPT_LAST).exists() and log.exists() and '"event": "epoch"' in log.read_text()

    wait_until(in_epoch_2, 180, "the end of epoch 1", interval=0.1)
    time.sleep(1.0)
    assert not (run_dir / layout.RESULT).exists(), "finished before the signal: make the epochs longer"
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)

    cells = wait_terminal(exp_dir, timeout=300)
    assert cells[run_id].state == "finished", cell_state.format_table(list(cells.values()))
    assert_epochs_once(run_dir, SLURM_EPOCHS)
    text = log.read_text()
    events = checkpoint_events(text)
    assert any(step > 0 and reason == "preempt" for _, step, reason in events), text[-3000:]
    (epoch, step, _) = events[-1]
    resume = [json.loads(line) for line in text.splitlines() if line.startswith('{"event": "resume"')]
    assert resume == [{"event": "resume", "completed": epoch - 1, "step": step}]  # no step trained twice
    assert text.count('"epoch": 1,') == 1  # epoch 1 trained once over both attempts
    env = layout.read_json(run_dir / layout.ENV)
    assert len(env["attempts"]) == 2, env["attempts"]
    print(f"\nUSR2 -> checkpoint events {events}; attempts {len(env['attempts'])}")

    reference = tmp_path / "reference" / run_dir.name
    train(from_dict(layout.read_json(run_dir / layout.SPEC)), reference)
    assert_same_run(reference, run_dir)
