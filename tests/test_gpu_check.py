"""benchmarks/gpu_check.py on CPU: one line and exit 0 without a CUDA device, and the whole script end to end
with `--quick --device cpu` (every stage, every output file, the summary table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
OUTPUTS = ("env.json", "stages.json", "cuda_tests.xml", "cuda_tests.json", "step_cost.csv", "bench.csv",
           "estimate_paper.txt", "estimate_1gpu.txt", "estimate.csv", "train_epoch.json", "summary.md")  # fmt: skip


def run_script(*args: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env={**os.environ, "PYTHONPATH": path,
                          **env}, capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_without_cuda_one_line_and_exit_0(tmp_path: Path) -> None:
    """CUDA_VISIBLE_DEVICES="" hides any GPU, so the test means the same on a machine that has one."""
    out = tmp_path / "out"
    done = run_script(str(out), timeout=120, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], done.stdout
    assert not out.exists()


@pytest.mark.slow
def test_quick_cpu_run_writes_every_result(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    done = run_script(str(out), "--quick", "--device", "cpu", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    missing = [name for name in OUTPUTS if not (out / name).exists()]
    assert not missing, missing
    stages = json.loads((out / "stages.json").read_text())
    assert [s["stage"] for s in stages] == ["env", "cuda_tests", "step_cost", "bench", "train_epoch"]
    assert all(s["status"] == "ok" for s in stages), stages
    tests = json.loads((out / "cuda_tests.json").read_text())
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0  # skipped on CPU, by design
    summary = (out / "summary.md").read_text()
    assert "| device | precision |" in summary and "2 x V100" in summary and "fast-n1g2-b256-s0" in summary
    epoch = json.loads((out / "train_epoch.json").read_text())
    assert epoch["images_per_s"] > 0 and epoch["projected_150_epoch_hours"] > 0
    assert "random" in epoch["inputs"]
    assert "random" in (out / "bench.csv").read_text()


def test_missing_modules_import_from_carried_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """How the GPU machine gets submitit: a pure-Python wheel on sys.path (zip import) and PYTHONPATH."""
    import zipfile

    wheels = tmp_path / "whl"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "gpu_check_probe-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("gpu_check_probe/__init__.py", "VALUE = 42\n")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "elsewhere")
    import gpu_check

    assert gpu_check.add_wheels(wheels, ("json",)) == []  # importable: nothing added
    (added,) = gpu_check.add_wheels(wheels, ("gpu_check_probe",))
    import gpu_check_probe

    assert gpu_check_probe.VALUE == 42
    assert os.environ["PYTHONPATH"] == os.pathsep.join([added, "elsewhere"])
    sys.modules.pop("gpu_check_probe")


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_a_failing_stage_is_recorded_and_the_others_run(tmp_path: Path) -> None:
    """A CIFAR root that does not exist: train_epoch fails (one line in stages.json), env still runs, exit 1."""
    out = tmp_path / "gpu"
    done = run_script(str(out), "--quick", "--device", "cpu", "--only", "train_epoch,env", "--cifar-root",
                      str(tmp_path / "no-cifar"), timeout=180)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    stages = {s["stage"]: s for s in json.loads((out / "stages.json").read_text())}
    assert list(stages) == ["env", "train_epoch"]
    assert stages["env"]["status"] == "ok" and stages["train_epoch"]["status"] == "failed"
    assert "no-cifar" in stages["train_epoch"]["error"]
    assert "train_epoch | failed" in (out / "summary.md").read_text()
