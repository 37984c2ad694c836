"""Shared test set-up.

Tests marked `slurm` need the real local cluster (`bash scripts/slurm-cluster.sh start`). When it does not
answer they are skipped, unless FASTROBUST_REQUIRE_SLURM=1 (set by scripts/test.sh, i.e. CI): then they fail,
so a CI run can never pass with its Slurm tests silently skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Jobs run `python -m submitit.core._submit` and import their callable by reference: test job callables live in
# the `tests` package, so the repository must be on the jobs' path (sbatch exports this environment).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
# Every test-cluster node is 127.0.0.1: gloo must use the loopback interface.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def _shorten_submitit_polling() -> None:
    """submitit polls sacct at most every 600 s and waits 15 s for a missing result pickle: too slow for tests."""
    from submitit.core.core import Job
    from submitit.slurm.slurm import SlurmJob

    SlurmJob.watcher._delay_s = 2
    Job._results_timeout_s = 3


_shorten_submitit_polling()


@cache
def slurm_problem() -> str | None:
    """None when the cluster answers `sinfo` with at least one node; otherwise why not."""
    if shutil.which("sinfo") is None:
        return "sinfo is not on PATH (Slurm client not installed)"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out (slurmctld not running?)"
    if out.returncode != 0 or not out.stdout.strip():
        return f"sinfo failed: {(out.stderr or out.stdout).strip()[:200]}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slurm") is None:
        return
    problem = slurm_problem()
    if problem is None:
        return
    message = f"local Slurm cluster unavailable ({problem}); start it with: bash scripts/slurm-cluster.sh start"
    if os.environ.get("FASTROBUST_REQUIRE_SLURM") == "1":
        pytest.fail(f"FASTROBUST_REQUIRE_SLURM=1 but the {message}", pytrace=False)
    pytest.skip(message)


LONG_MARKERS = ("slurm", "slow", "cuda")  # what the quick lane leaves out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test without a long marker is `quick`: `bash scripts/test.sh --quick` (pytest -m quick) runs them
    without the cluster, for the edit-test loop; CI runs everything."""
    for item in items:
        if not any(item.get_closest_marker(m) for m in LONG_MARKERS):
            item.add_marker(pytest.mark.quick)


@pytest.fixture
def one_thread() -> None:
    """One torch thread: the machine is shared and the test tensors and models are tiny.

    Modules whose tests run torch use it with `pytestmark = pytest.mark.usefixtures("one_thread")`; torch is
    imported here, not at the top, so orchestrator-only test modules never load it.
    """
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A fresh results root per test (job ids restart at 1 on a fresh cluster: never reuse folders)."""
    root = tmp_path / "results"
    root.mkdir()
    return root


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """FASTROBUST_NO_SKIP=1 (scripts/test.sh, i.e. CI): a skipped test fails. A skip there means something the
    set-up should have provided (Slurm, the Fashion-MNIST package, a test dependency) is missing. Tests marked
    `cuda` are exempt: they skip without a CUDA device by design (CI has none; benchmarks/gpu_check.py runs them)."""
    outcome = yield
    report = outcome.get_result()
    forbidden = report.skipped and item.get_closest_marker("cuda") is None and not hasattr(report, "wasxfail")
    if os.environ.get("FASTROBUST_NO_SKIP") == "1" and forbidden:
        report.outcome = "failed"
        report.longrepr = f"skipped, but FASTROBUST_NO_SKIP=1 forbids skips: {report.longrepr}"
