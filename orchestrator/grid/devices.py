"""The device a cell will run on, as far as the orchestrator can tell without torch, and the settings that need a GPU.

Rule: a cell runs on CPU when its executor is `local` and this machine shows no NVIDIA GPU (no /dev/nvidiactl and
no nvidia-smi on PATH, or CUDA_VISIBLE_DEVICES empty or -1), or when its executor is `slurm` with a profile whose
gpu_request is `none` (a CPU-only cluster). Such a cell may not ask for fp16 (`precision` or `attack.precision`):
fp16 autocast with loss scaling is the CUDA lever (the paper's V100s have no bf16); on CPU the reduced precision is
bf16. A profile that requests GPUs is taken at its word; a job that lands on a CPU anyway (the test cluster's
emulated GPUs) refuses fp16 at its start (workloads.training.engine.check_device), before any training.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from orchestrator.grid.profiles import Profile
from workloads.spec import KIND_SECTIONS, RunSpec


def local_has_gpu() -> bool:
    """An NVIDIA GPU visible to processes started here (what the local executor's jobs would see)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def runs_on_cpu(executor: str | None, profile: Profile | None) -> bool:
    if executor == "local":
        return not local_has_gpu()
    return executor == "slurm" and profile is not None and profile.gpu_request == "none"


def gpu_only_problems(spec: RunSpec, executor: str | None, profile: Profile | None) -> list[tuple[str, str]]:
    """(key path, message) for each setting of `spec` that cannot work on the cell's device."""
    if "precision" not in KIND_SECTIONS[spec.kind] or not runs_on_cpu(executor, profile):
        return []
    if executor == "local":
        where = "executor local on a machine without an NVIDIA GPU"
    else:
        where = f"profile {profile.name if profile else '?'} has gpu_request none"
    problems = []
    for key, value in (("precision", spec.precision), ("attack.precision", spec.attack.precision)):
        if value == "fp16":
            problems.append((key, f"fp16 needs a CUDA device; this cell runs on CPU ({where}): use bf16 or fp32"))
    return problems
