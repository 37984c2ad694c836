"""`orchestrate logs`: a cell's job output found from the manifest (submitted on submitit's local executor with a
trivial job, and on the real local Slurm cluster), following a running job, and one line when there is none."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli
from orchestrator.monitor import manifest
from orchestrator.submit import launch
from tests.slurm_stub import StubCell
from workloads import layout

GRID = "name: {name}\nkind: train\nexecutor: {executor}\nprofile: {profile}\ngrid:\n  seed: [0]\n"
RUN_ID = "standard-n1g1-b128-s0"


class EchoCell(StubCell):
    """StubCell that says something on stdout and stderr first, `ECHO_LINES` lines `ECHO_GAP_S` apart."""

    def __call__(self, spec_path: str) -> dict[str, Any]:
        for i in range(int(os.environ.get("ECHO_LINES", "1"))):
            print(f"echo stdout {i}", flush=True)
            time.sleep(float(os.environ.get("ECHO_GAP_S", "0")))
        print("echo stderr", file=sys.stderr, flush=True)
        return super().__call__(spec_path)


def _grid(tmp_path: Path, name: str, executor: str = "local", profile: str = "generic") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(GRID.format(name=name, executor=executor, profile=profile))
    return path


def _submit_local(tmp_path: Path, results: Path, name: str) -> launch.SubmitResult:
    result = launch.submit(_grid(tmp_path, name), results, log=lambda _: None, job=EchoCell())
    assert result.local is not None
    return result


def test_logs_of_a_finished_local_cell(tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _submit_local(tmp_path, results, "logsdone")
    assert result.local is not None and result.local.wait(poll_s=0.2)
    capsys.readouterr()
    assert cli.main(["logs", RUN_ID, "--results", str(results)]) == 0
    out = capsys.readouterr().out
    job_id = manifest.load(results / "logsdone")[RUN_ID].job_id
    stdout = results / "logsdone" / layout.SUBMITIT / f"{job_id}" / f"{job_id}_0_log.out"
    assert f"==> {stdout} <==" in out and "echo stdout 0" in out
    assert out.index("echo stdout 0") < out.index("echo stderr")  # stdout first, then stderr
    # EXPERIMENT/RUN_ID names the same cell; --attempt 1 is the only submission
    assert cli.main(["logs", f"logsdone/{RUN_ID}", "--attempt", "1", "--results", str(results)]) == 0
    assert "echo stdout 0" in capsys.readouterr().out
    # -f on an ended job prints what there is and returns
    assert cli.main(["logs", RUN_ID, "-f", "--results", str(results)]) == 0
    assert "echo stderr" in capsys.readouterr().out
    for bad in (["--attempt", "2"], ["--rank", "1"]):
        assert cli.main(["logs", RUN_ID, *bad, "--results", str(results)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("orchestrate: error: "), err


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_follow_a_running_local_cell(
    tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """-f prints lines as the job writes them and returns once the job has ended."""
    monkeypatch.setenv("ECHO_LINES", "4")
    monkeypatch.setenv("ECHO_GAP_S", "0.5")
    result = _submit_local(tmp_path, results, "logsfollow")
    assert cli.main(["logs", RUN_ID, "-f", "--results", str(results)]) == 0
    captured = capsys.readouterr()
    assert all(f"echo stdout {i}" in captured.out for i in range(4)), captured.out
    assert "echo stderr" in captured.out and "following until it ends" in captured.err
    assert (manifest.run_dir(results / "logsfollow", RUN_ID) / layout.RESULT).exists()
    assert result.local is not None and result.local.wait(poll_s=0.1)


def test_never_submitted_or_no_log_yet_is_one_line(
    tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # no such cell anywhere
    assert cli.main(["logs", RUN_ID, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never submitted" in err, err
    # spec.json written (a submission that sbatch then rejected) but no manifest entry
    exp_dir = results / "logsnever"
    layout.write_json_atomic(manifest.run_dir(exp_dir, RUN_ID) / layout.SPEC, {"shape": {"nodes": 1}})
    assert cli.main(["logs", RUN_ID, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "logsnever/standard-n1g1-b128-s0: never submitted" in err, err
    # submitted, but the job has not written anything yet (pending)
    entries = manifest.load(exp_dir)
    manifest.record(entries, RUN_ID, "424242", "424242", "slurm", "train", 1)
    manifest.save(exp_dir, entries)
    assert cli.main(["logs", RUN_ID, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "job 424242 (rank 0) has no log yet" in err, err


@pytest.mark.slurm
def test_logs_of_a_slurm_cell(tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On the real cluster: follow the cell from submission (pending, no file yet) to its end."""
    launch.submit(_grid(tmp_path, "logsslurm", "slurm", "local-cluster"), results, log=lambda _: None, job=EchoCell())
    t0 = time.monotonic()
    assert cli.main(["logs", RUN_ID, "-f", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    print(f"followed a Slurm cell to its end in {time.monotonic() - t0:.1f} s")
    job_id = manifest.load(results / "logsslurm")[RUN_ID].job_id
    assert f"{job_id}_0_log.out <==" in out and "echo stdout 0" in out and "echo stderr" in out
    assert (manifest.run_dir(results / "logsslurm", RUN_ID) / layout.RESULT).exists()
