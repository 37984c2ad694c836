"""The cluster's limits, on the real local Slurm cluster (scripts/slurm/slurm.conf sets a small MaxArraySize):
arrays split at MaxArraySize, the %N throttle from resources.array_parallelism, an array sbatch rejects as one
line with the cells submitted before it kept, and `status --watch` following a running cell."""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import submitit

from orchestrator.monitor import manifest, progress, scheduler
from orchestrator.submit import launch, plan
from tests.slurm_stub import StubCell
from workloads import layout

pytestmark = pytest.mark.slurm
MANY = "name: {name}\nkind: train\nprofile: local-cluster\nexecutor: slurm\n"
MANY += "defaults: {{resources: {{timeout_min: 2, array_parallelism: 2}}}}\ngrid:\n  seed: {seeds}\n"


def quiet(_: str) -> None:
    return None


def scancel(*job_ids: str) -> None:
    subprocess.run(["scancel", *{j.split("_")[0] for j in job_ids}], check=False, timeout=60)


def test_arrays_split_at_max_array_size_with_the_throttle(tmp_path: Path, results: Path) -> None:
    limit = scheduler.max_array_size()
    assert limit is not None, "scontrol show config gave no MaxArraySize"
    if limit > 64:
        pytest.skip(f"MaxArraySize {limit}: restart the cluster with scripts/slurm/slurm.conf's small value (--fresh)")
    grid = tmp_path / "split.yaml"
    grid.write_text(MANY.format(name="split", seeds=list(range(limit + 2))))
    dry = launch.dry_run(grid, results)  # shows the split too
    assert re.findall(r"^#SBATCH --array=(.*)$", dry, re.M) == [f"0-{limit - 1}%2", "0-1%2"], dry
    result = launch.submit(grid, results, log=quiet, job=StubCell())
    try:
        assert len(result.job_ids) == limit + 2
        assert [re.sub(r"job \d+", "job N", a) for a in result.arrays] == [
            f"split [train] n1g1 (part 1 of 2): {limit} cell(s) as slurm job N",
            "split [train] n1g1 (part 2 of 2): 2 cell(s) as slurm job N",
        ]
        entries = manifest.load(results / "split")
        arrays = sorted({e.array for e in entries.values()}, key=int)
        assert len(entries) == limit + 2 and len(arrays) == 2
        for array in arrays:  # the %N throttle reached Slurm
            out = subprocess.run(["scontrol", "show", "job", array], capture_output=True, text=True, timeout=60)
            throttles = set(re.findall(r"ArrayTaskThrottle=(\d+)", out.stdout))
            assert throttles <= {"2"} and (throttles or "JobState=COMPLETED" in out.stdout), out.stdout[:2000]
        script = next((results / "split" / layout.SUBMITIT).rglob("*_submission.sh")).read_text()
        assert re.search(r"#SBATCH --array=0-\d+%2", script), script
    finally:
        scancel(*result.job_ids.values())


BAD_PROFILE = "partition: {partition}\ngpu_request: gpus_per_node\nenv: {{GLOO_SOCKET_IFNAME: lo}}\n"
TWO_DOCUMENTS = """\
name: rejected
kind: train
profile: local-cluster
executor: slurm
defaults: {{resources: {{timeout_min: 2}}}}
grid:
  seed: [0]
---
name: rejected
kind: train
profile: {profile}
executor: slurm
defaults: {{resources: {{timeout_min: 2}}}}
grid:
  seed: [1, 2]
"""


def test_a_rejected_array_is_one_line_and_earlier_cells_stay(
    tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "nope-site.yaml"
    profile.write_text(BAD_PROFILE.format(partition="nope"))
    grid = tmp_path / "rejected.yaml"
    grid.write_text(TWO_DOCUMENTS.format(profile=profile))
    exp_dir = results / "rejected"
    submitted: list[str] = []
    try:
        with pytest.raises(plan.LaunchError) as info:
            launch.submit(grid, results, log=quiet, job=StubCell())
        (line,) = info.value.problems
        assert "\n" not in line and "sbatch rejected rejected [train] array n1g1 (2 cell(s)" in line
        assert "invalid partition" in line.lower()  # sbatch's own words
        assert "the 1 cell(s) submitted before it are in the manifest" in line and "--retry-failed" in line
        assert capsys.readouterr().err == ""  # submitit's echo of sbatch's stderr is folded into that line
        print(f"\n{line}")
        entries = manifest.load(exp_dir)
        assert list(entries) == ["standard-n1g1-b128-s0"]
        submitted += [str(e.job_id) for e in entries.values()]

        # the retry after fixing the profile submits the two missing cells only, nothing twice
        profile.write_text(BAD_PROFILE.format(partition="debug"))
        result = launch.submit(grid, results, only_missing=True, log=quiet, job=StubCell())
        submitted += list(result.job_ids.values())
        assert sorted(result.job_ids) == ["rejected/standard-n1g1-b128-s1", "rejected/standard-n1g1-b128-s2"]
        assert manifest.load(exp_dir)["standard-n1g1-b128-s0"].job_ids == submitted[:1]
    finally:
        scancel(*submitted)


class TwoEpochCell(submitit.helpers.Checkpointable):
    """Two epochs.csv rows WATCH_GAP_S apart, then result.json (rank 0): a cell that is seen running."""

    def __call__(self, spec_path: str) -> dict[str, Any]:
        run_dir = Path(spec_path).parent
        spec = layout.read_json(spec_path)
        for epoch in (1, 2):
            time.sleep(float(os.environ.get("WATCH_GAP_S", "3")))
            row = {"run_id": spec["run_id"], "epoch": epoch, "train_s": 1.0, "eval_s": 0.0, "elapsed_s": 3.0 * epoch,
                   "lr": 0.1, "train_loss": 1.0 / epoch, "train_acc": 0.5, "clean_acc": 0.5, "adv_acc": 0.25,
                   "batch_per_rank": 128, "world_size": 1}  # fmt: skip
            layout.append_csv_row_atomic(run_dir / layout.EPOCHS, layout.EPOCH_COLUMNS, row)
        result = {"run_id": spec["run_id"], "kind": spec["kind"]}
        layout.write_json_atomic(run_dir / layout.RESULT, result)
        return result


def test_watch_follows_a_running_cell(tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCH_GAP_S", "4")
    grid = tmp_path / "watched.yaml"
    grid.write_text(MANY.format(name="watched", seeds=[0]).replace("seed: [0]", "epochs: [2]"))
    result = launch.submit(grid, results, log=quiet, job=TwoEpochCell())
    deadline = time.monotonic() + 90

    def sleep(seconds: float) -> None:
        assert time.monotonic() < deadline, "the cell did not end within 90 s"
        time.sleep(seconds)

    out = io.StringIO()  # not a terminal: every refresh appended
    try:
        progress.watch({results / "watched": None}, 1.0, out=out, sleep=sleep)
    finally:
        scancel(*result.job_ids.values())
    blocks = re.split(r"^\d\d:\d\d:\d\d  refresh ", out.getvalue(), flags=re.M)[1:]
    rows = [next(line for line in b.splitlines() if line.startswith("standard-")).split() for b in blocks]
    print(f"\n{len(blocks)} refreshes; states seen: {[r[1] for r in rows]}")
    running = [r for r in rows if r[1] == "running" and r[4] == "1/2"]
    assert running, out.getvalue()[-3000:]
    assert running[0][5] == "1.0000" and running[0][-1] == "3s"  # loss of epoch 1; ETA: 3 s an epoch, 1 left
    assert rows[-1][1] == "finished" and rows[-1][4] == "2/2" and "(no cell running or pending)" in blocks[-1]
