"""Cell states without a cluster: sacct parsing, the classification rules, one scheduler query per poll."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.monitor import manifest, scheduler
from orchestrator.monitor import status as cell_state
from orchestrator.monitor.scheduler import JobRecord, parse_sacct
from orchestrator.monitor.status import classify
from workloads import layout


def test_parse_sacct_expands_pending_array_ranges() -> None:
    text = (
        "12_0|RUNNING|00:00:05|node1|billing=1,cpu=1,gres/gpu=2,node=1\n"
        "12_[2-4%2]|PENDING|00:00:00|None assigned|\n"
        "12_1|CANCELLED by 0|00:00:03|node2|cpu=1\n"
        "13|COMPLETED|00:01:00|node[1-2]|cpu=4,gres/gpu=4\n"
    )
    records = parse_sacct(text)
    assert sorted(records) == ["12_0", "12_1", "12_2", "12_3", "12_4", "13"]
    assert records["12_3"].state == "PENDING"
    assert records["12_1"].state == "CANCELLED"
    assert records["13"].tres == "cpu=4,gres/gpu=4"


def _run(tmp_path: Path, *files: str) -> Path:
    rd = tmp_path / "runs" / "r"
    rd.mkdir(parents=True, exist_ok=True)
    for name in files:
        (rd / name).write_text("{}")
    return rd


def _entry(age_s: float = 1000.0) -> manifest.Entry:
    return manifest.Entry(job_ids=["5"], executor="slurm", submitted_ts=time.time() - age_s)


@pytest.mark.parametrize(
    ("files", "slurm_state", "expected"),
    [
        ((layout.RESULT,), "RUNNING", "finished"),  # result.json is written last: the run is done
        ((layout.ERROR,), "REQUEUED", "pending"),  # a requeue is never a failure, whatever error.txt says
        ((layout.ERROR,), "PENDING", "pending"),
        ((layout.ERROR,), "RUNNING", "running"),
        ((), "COMPLETING", "running"),
        ((), "CANCELLED", "cancelled"),
        ((), "COMPLETED", "failed"),  # ended without result.json
        ((), "TIMEOUT", "failed"),
        ((layout.ERROR,), "FAILED", "failed"),
    ],
)
def test_classify(tmp_path: Path, files: tuple[str, ...], slurm_state: str, expected: str) -> None:
    rd = _run(tmp_path, *files)
    assert classify(rd, _entry(), JobRecord(slurm_state), time.time()) == expected


def test_classify_without_scheduler_record(tmp_path: Path) -> None:
    rd = _run(tmp_path)
    now = time.time()
    assert classify(rd, None, None, now) == "missing"  # never submitted
    assert classify(rd, _entry(age_s=5), None, now) == "pending"  # accounting has not caught up yet
    assert classify(rd, _entry(), None, now) == "missing"  # unknown to the scheduler (e.g. a wiped cluster)
    assert classify(rd, _entry(), None, now, asked=False) == "unknown"
    (rd / layout.ERROR).write_text("boom")
    assert classify(rd, _entry(), None, now) == "failed"


def test_poll_asks_the_scheduler_once_for_all_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries: dict[str, manifest.Entry] = {}
    for i in range(20):
        run_id = f"cell{i:02d}"
        layout.write_json_atomic(manifest.run_dir(tmp_path, run_id) / layout.SPEC, {"kind": "train", "epochs": 3})
        manifest.record(entries, run_id, f"40_{i}", "40", "slurm", "train", 1)
    manifest.save(tmp_path, entries)
    layout.write_csv_atomic(
        manifest.run_dir(tmp_path, "cell03") / layout.EPOCHS, layout.EPOCH_COLUMNS,
        [{"run_id": "cell03", "epoch": 1, "elapsed_s": 2.5}, {"run_id": "cell03", "epoch": 2, "elapsed_s": 5.25}],
    )  # fmt: skip
    calls: list[list[str]] = []

    def fake_query(job_ids: list[str]) -> dict[str, JobRecord]:
        calls.append(list(job_ids))
        return {j: JobRecord("RUNNING", elapsed="00:00:09") for j in job_ids}

    monkeypatch.setattr(cell_state, "query_slurm", fake_query)
    cells = cell_state.poll(tmp_path)
    assert len(calls) == 1 and len(calls[0]) == 20
    assert {c.state for c in cells} == {"running"}
    table = cell_state.format_table(cells)
    assert "cell03  running  40_3    0         2/3    5.2s" in table
    assert table.endswith("20 cells: 20 running")


def test_sacct_command_is_one_batched_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    class Done:
        returncode, stdout = 0, "7_1|RUNNING|00:00:01|node1|cpu=1\n"

    def fake_run(cmd: list[str], **_: object) -> Done:
        calls.append(cmd)
        return Done()

    monkeypatch.setattr(scheduler.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(scheduler.subprocess, "run", fake_run)
    records = scheduler.query_slurm(["7_0", "7_1", "9", "7_2"])
    assert len(calls) == 1
    assert calls[0][:6] == ["sacct", "-X", "-n", "-P", "-j", "7,9"]  # array ids once each
    assert records["7_1"].state == "RUNNING"


# -- a finished run whose checkpoint is unreadable ---------------------------------------------------------


def _finished_train_run(results: Path) -> tuple[Path, Path]:
    """A finished train cell as a job leaves it: spec.json, checkpoint-best/last.pt written by checkpoint.save
    (which records them in checkpoints.json), result.json; and its manifest entry. (experiment dir, run dir)"""
    import torch

    from tests.test_train import tiny_spec
    from workloads.assets import checkpoint
    from workloads.assets.models import build_model
    from workloads.catalog import dataset_info
    from workloads.training.schedules import Schedule

    exp_dir = results / "ckpt"
    spec = tiny_spec(experiment="ckpt", epochs=1)
    run_dir = manifest.run_dir(exp_dir, spec.run_id)
    layout.write_json_atomic(run_dir / layout.SPEC, spec.to_dict())
    info = dataset_info(spec.dataset)
    model = build_model(spec.model, info.num_classes, info.in_channels, info.mean, info.std)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = Schedule(opt, spec.optimizer, spec.epochs, 1)
    state = dict(model=model, optimizer=opt, scheduler=sched, epoch=1, elapsed_s=1.0, best={"epoch": 1, "metric": 0.5},
                 rng=[checkpoint.capture_rng(None)], spec=spec)  # fmt: skip
    checkpoint.save(run_dir / layout.CKPT_BEST, **state)
    checkpoint.save(run_dir / layout.CKPT_LAST, **state)
    layout.write_json_atomic(run_dir / layout.RESULT, {"run_id": spec.run_id, "kind": "train"})
    manifest.save(exp_dir, {spec.run_id: manifest.Entry(job_ids=["5"], executor="slurm")})
    return exp_dir, run_dir


def _poll_one(exp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> cell_state.CellStatus:
    monkeypatch.setattr(cell_state, "query_slurm", lambda ids: {j: JobRecord("COMPLETED") for j in ids})
    (cell,) = cell_state.poll(exp_dir)
    return cell


def test_checkpoint_save_records_size_and_sha256(results: Path) -> None:
    import hashlib

    from workloads import checkpoint_record

    _, run_dir = _finished_train_run(results)
    record = checkpoint_record.load(run_dir)
    for name in (layout.CKPT_BEST, layout.CKPT_LAST):
        data = (run_dir / name).read_bytes()
        assert record[name]["size"] == len(data)
        assert record[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert checkpoint_record.problem(run_dir / name, record[name]) == ""


@pytest.mark.parametrize(
    ("how", "name", "why"),
    [
        ("truncated", layout.CKPT_BEST, "truncated: {half} of {size} bytes"),
        ("foreign", layout.CKPT_LAST, "not a torch.save file (a plain pickle)"),
        ("missing", layout.CKPT_BEST, "missing"),
        ("replaced", layout.CKPT_LAST, "replaced: {other} bytes, {size} written"),
    ],
)
def test_finished_run_with_an_unreadable_checkpoint_says_so(
    results: Path, monkeypatch: pytest.MonkeyPatch, how: str, name: str, why: str
) -> None:
    """Status stays finished (the run's results are complete) and says, in one line, which checkpoint cannot be
    read, why, and what to do; what it calls truncated or foreign torch cannot load (checked: a replaced one loads,
    but it is not what this run wrote), the intact one still loads."""
    import pickle

    import torch

    from workloads.assets import checkpoint

    exp_dir, run_dir = _finished_train_run(results)
    assert _poll_one(exp_dir, monkeypatch).checkpoint == ""
    path = run_dir / name
    size = path.stat().st_size
    other = b""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: size // 2])  # a write torn half-way
    elif how == "foreign":
        path.write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "model": {}}, protocol=2))
    elif how == "missing":
        path.unlink()
    else:  # another torch.save file in its place (someone copied another run's checkpoint over it)
        torch.save({"format": checkpoint.FORMAT, "model": {"w": torch.zeros(3)}}, path)
        other = path.read_bytes()
    cell = _poll_one(exp_dir, monkeypatch)
    assert cell.state == "finished"
    expected = f"{name} ({why.format(half=size // 2, size=size, other=len(other))})"
    assert cell.checkpoint == (
        f"finished, checkpoint unreadable: {expected}; evaluate cells reading it would fail: remove {run_dir} and "
        "resubmit with --retry-failed to train it again"
    )
    table = cell_state.format_table([cell])
    assert "1 cells: 1 finished (1 with an unreadable checkpoint)" in table
    assert table.splitlines()[-1] == f"tiny {cell.checkpoint}"
    if how in ("truncated", "foreign"):
        with pytest.raises(Exception):  # noqa: B017 (torch's own error types: whatever torch.load raises)
            checkpoint.load(path)
    intact = layout.CKPT_LAST if name == layout.CKPT_BEST else layout.CKPT_BEST
    assert checkpoint.load(run_dir / intact)["epoch"] == 1


def test_checkpoint_check_without_a_record(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs written before checkpoints.json existed: checkpoint-last.pt must be there and a zip; best when present."""
    from workloads import checkpoint_record

    exp_dir, run_dir = _finished_train_run(results)
    (run_dir / checkpoint_record.RECORD).unlink()
    assert _poll_one(exp_dir, monkeypatch).checkpoint == ""
    last = run_dir / layout.CKPT_LAST
    last.write_bytes(last.read_bytes()[:-100])
    assert (
        "checkpoint unreadable: checkpoint-last.pt (truncated: no zip end in "
        in _poll_one(exp_dir, monkeypatch).checkpoint
    )
    last.unlink()
    assert "checkpoint unreadable: checkpoint-last.pt (missing)" in _poll_one(exp_dir, monkeypatch).checkpoint


def test_a_long_settled_failure_costs_no_second_scheduler_call() -> None:
    """sacct's End (a Unix time) decides whether squeue must confirm an ended attempt: within SETTLE_S a requeue
    may not be in accounting yet (squeue asked), after it sacct's word is final (one call per poll)."""
    now = 1_000_000.0
    asked: list[int] = []

    def queue() -> dict[str, JobRecord]:
        asked.append(1)
        return {"5": JobRecord("PENDING")}

    old = {"5": JobRecord("FAILED", end=now - scheduler.SETTLE_S - 1), "6": JobRecord("COMPLETED", end=now - 5)}
    assert scheduler.requeued_view(old, queue, now) == old and not asked
    recent = {"5": JobRecord("NODE_FAIL", end=now - 5)}
    assert scheduler.requeued_view(recent, queue, now)["5"].state == "PENDING" and len(asked) == 1
    unknown = {"5": JobRecord("TIMEOUT")}  # End not given (another SLURM_TIME_FORMAT): asked, as before
    assert scheduler.requeued_view(unknown, queue, now)["5"].ended_attempt == "TIMEOUT" and len(asked) == 2
    records = parse_sacct(
        "7_1|FAILED|00:01:00|node1|cpu=1|1700000000\n7_[2-3]|PENDING|00:00:00|None assigned||Unknown\n"
    )
    assert records["7_1"].end == 1_700_000_000.0 and records["7_2"].end is None


@pytest.mark.parametrize("indent", [2, None, 4])
def test_spec_fields_read_by_pattern_or_decoded(indent: int | None) -> None:
    """status reads kind/epochs of spec.json by pattern in the layout write_json_atomic writes, else decodes it."""
    import json

    spec = {"epochs": 7, "kind": "train", "optimizer": {"epochs": 99, "kind": "sgd"}, "run_id": "r"}
    data = json.dumps(spec, indent=indent, sort_keys=True).encode()
    assert cell_state._spec_fields(data) == ("train", 7)
    assert cell_state._spec_fields(b"") == ("", None) and cell_state._spec_fields(b"{torn") == ("", None)
