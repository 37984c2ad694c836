"""Process-group setup for one job: torchrun env, a submitit/Slurm job, or a single process.

One process ("rank") per GPU, or per CPU slot on CPU-only nodes. Rank 0 is the only writer of files.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as tdist

from workloads.spec import RunSpec

MAX_COLLECTIVE_TIMEOUT_S = 30 * 86400.0  # a longer spec value means "never" (and would overflow torch's timedelta)


def collective_timeout(seconds: float) -> datetime.timedelta:
    """A process group's timeout from the spec's collective_timeout_s (capped: see MAX_COLLECTIVE_TIMEOUT_S)."""
    return datetime.timedelta(seconds=min(seconds, MAX_COLLECTIVE_TIMEOUT_S))


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: no process group (single process)
    source: str = "single"  # torchrun | submitit | single: where rank/world came from

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _in_scheduler_job() -> bool:
    """Inside a submitit job (local or Slurm) or a Slurm task launched by srun."""
    return os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local") or "SLURM_PROCID" in os.environ


def _threads(spec: RunSpec) -> int | None:
    """Torch intra-op threads: spec.threads, else the Slurm allocation, else the spec's cpus_per_task in a
    submitit-local job (which sets no CPU variable), else torch's default."""
    if spec.threads:
        return spec.threads
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        return spec.resources.cpus_per_task
    return None


def _export_submitit_env() -> None:
    """MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from the job (submitit's own helper)."""
    import submitit

    if "SUBMITIT_EXECUTOR" not in os.environ:  # plain `srun python -m workloads.entry`: let submitit read Slurm
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"
    # overwrite: a requeued or nested job may have inherited stale values
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def setup(spec: RunSpec) -> Dist:
    """Detect rank/world, set threads, pick the device and init the process group when world > 1."""
    threads = _threads(spec)
    if threads:
        torch.set_num_threads(threads)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        source = "torchrun"
    elif _in_scheduler_job():
        _export_submitit_env()
        source = "submitit"
    else:
        return single(spec, threads_set=True)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if world == 1:
        return Dist(rank, 1, local_rank, device, None, source)
    master = os.environ.get("MASTER_ADDR", "")
    if backend == "gloo" and (master == "localhost" or master.startswith("127.")):
        # gloo otherwise picks the interface of the hostname, which may not reach a loopback master
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if not tdist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        # A hung or vanished peer fails every collective after this long (gloo raises, NCCL's watchdog aborts),
        # instead of holding the job until its time limit; a rank's error file then names the setting.
        timeout = collective_timeout(spec.collective_timeout_s)
        tdist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout, **kwargs)
    return Dist(rank, world, local_rank, device, backend, source)


def single(spec: RunSpec, threads_set: bool = False) -> Dist:
    """One process, no process group; cuda:0 when available."""
    if not threads_set and (threads := _threads(spec)):
        torch.set_num_threads(threads)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return Dist(0, 1, 0, device, None, "single")


def cleanup() -> None:
    if tdist.is_available() and tdist.is_initialized():
        # A DDP wrapper left in a reference cycle keeps the process group alive past destroy_process_group;
        # freed only at interpreter exit, gloo's threads then abort the process ("terminate called without
        # an active exception", seen on a 2-rank bench). Collect such wrappers while the group still exists.
        gc.collect()
        _CPU_GROUPS.clear()  # they belong to the group destroyed here (a later group may reuse its id)
        tdist.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.distributed:
        tdist.barrier()


def all_reduce_sum(dist: Dist, values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64, so integer counts stay exact)."""
    if not dist.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t.tolist()


def all_gather_object(dist: Dist, obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...]; [obj] for a single process."""
    if not dist.distributed:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, obj)
    return out


_CPU_GROUPS: dict[int, Any] = {}  # id(default group) -> a gloo group over the same ranks (under nccl)


def broadcast_int(dist: Dist, value: int, timeout_s: float | None = None) -> int:
    """Rank 0's `value` on every rank (the training loop's per-step decision). A one-element CPU tensor over gloo
    (under nccl a gloo group beside it, made on first use by every rank at the same step, with the spec's
    collective_timeout_s as `timeout_s`): no device sync."""
    if not dist.distributed:
        return value
    group = None
    if dist.backend != "gloo":
        key = id(tdist.group.WORLD)
        if key not in _CPU_GROUPS:
            limit = collective_timeout(timeout_s) if timeout_s else None
            _CPU_GROUPS[key] = tdist.new_group(backend="gloo", timeout=limit)
        group = _CPU_GROUPS[key]
    t = torch.tensor([value], dtype=torch.int64)
    tdist.broadcast(t, src=0, group=group)
    return int(t.item())
