"""Cell states without a cluster: sacct parsing, the classification rules, one scheduler query per poll."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator import manifest, scheduler
from orchestrator import status as cell_state
from orchestrator.scheduler import JobRecord, parse_sacct
from orchestrator.status import classify
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
