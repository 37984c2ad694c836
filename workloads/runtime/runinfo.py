"""env.json: where and with what a run executed (hosts, devices, versions, scheduler ids), one entry per attempt."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from workloads import layout
from workloads.runtime import allocator
from workloads.runtime.distributed import Dist, all_gather_object


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def device_name(dist: Dist) -> str:
    """The device as env.json (hence runs.csv's device column) and bench.csv name it."""
    if dist.device.type == "cuda":
        return torch.cuda.get_device_name(dist.device)
    try:  # the CPU model, e.g. "AMD EPYC 9R14 96-Core Processor"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _submitit_job_id() -> str | None:
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return None
    import submitit

    try:
        return str(submitit.JobEnvironment().job_id)
    except (RuntimeError, KeyError):  # not actually inside a job (stale SUBMITIT_EXECUTOR)
        return None


def _slurm() -> dict[str, str | None]:
    names = {
        "job_id": "SLURM_JOB_ID",
        "array_job_id": "SLURM_ARRAY_JOB_ID",
        "array_task_id": "SLURM_ARRAY_TASK_ID",
        "node_list": "SLURM_JOB_NODELIST",
        "restart_count": "SLURM_RESTART_COUNT",
        "partition": "SLURM_JOB_PARTITION",
        "cpus_per_task": "SLURM_CPUS_PER_TASK",
    }
    return {key: os.environ.get(var) for key, var in names.items()}


def collect_env(dist: Dist) -> dict[str, Any]:
    """Facts about this attempt. Collective: every rank must call it (hostnames/devices are gathered)."""
    ranks = all_gather_object(dist, {"rank": dist.rank, "hostname": socket.gethostname(), "device": device_name(dist)})
    import submitit

    slurm = _slurm()
    submitit_id = _submitit_job_id()
    if slurm["array_job_id"] and slurm["array_task_id"]:
        slurm_id: str | None = f"{slurm['array_job_id']}_{slurm['array_task_id']}"
    else:
        slurm_id = slurm["job_id"]
    return {
        "job_id": submitit_id or slurm_id,
        "hostnames": sorted({r["hostname"] for r in ranks}),
        "ranks": ranks,
        "world_size": dist.world_size,
        "backend": dist.backend,
        "rank_source": dist.source,
        "device": ranks[0]["device"],
        "device_type": dist.device.type,
        "torch_threads": torch.get_num_threads(),
        "malloc": allocator.applied(),  # glibc thresholds fixed by workloads.runtime.allocator (None: glibc defaults)
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "submitit": submitit.__version__,
        },
        "git_commit": _git_commit(),
        "slurm": slurm,
        "submitit_job_id": submitit_id,
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def update_env_json(run_dir: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """Merge this attempt into run_dir/env.json: top-level keys describe the latest attempt, `attempts` lists
    every attempt (job id, start time, hosts), `job_ids` every distinct scheduler id in order (a Slurm requeue
    keeps its id; a resubmission adds one)."""
    path = Path(run_dir) / layout.ENV
    old = layout.read_json(path) if path.exists() else {}
    attempts = [*old.get("attempts", []), {k: info.get(k) for k in ("job_id", "start_time", "hostnames")}]
    attempts[-1]["restart_count"] = info.get("slurm", {}).get("restart_count")
    job_ids = list(old.get("job_ids", []))
    if info.get("job_id") is not None and info["job_id"] not in job_ids:
        job_ids.append(info["job_id"])
    env = {**info, "job_ids": job_ids, "attempts": attempts}
    layout.write_json_atomic(path, env)
    return env
