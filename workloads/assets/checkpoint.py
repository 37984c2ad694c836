"""Checkpoints: `checkpoint-last.pt` (every epoch) and `checkpoint-best.pt`, written atomically.

Format "fastrobust-v1", a dict loadable with `torch.load(weights_only=True)` (only tensors and plain types):
  format, model (state_dict of the unwrapped model), arch {name, num_classes, in_channels, mean, std},
  optimizer, scheduler (state_dicts; the scheduler's is workloads.training.schedules' per-iteration state), scaler (the
  fp16 GradScaler's state_dict, None without one; absent in older checkpoints), epoch (completed epochs),
  elapsed_s (cumulative training wall-clock), best {epoch, metric} (None before the first evaluation), rng (list
  indexed by rank of {torch, cuda, numpy, python, attack} states), spec (RunSpec as a dict); a mid-epoch
  checkpoint-last.pt also has step (optimizer steps done in epoch `epoch + 1`; 0 or absent: an epoch boundary)
  and partial (that epoch's lr, train_s and per-rank stats and free delta: workloads.training.resume_point).

One generation is kept back: saving checkpoint-last.pt writes the new file completely (temp file, fsync), links
the current one as checkpoint-prev.pt, then renames the new one over it, so at every instant a complete last (and
prev) exists; a torn write (a job killed mid-write, a full disk) leaves the previous files as they were.
A resume (load_latest) takes the newest checkpoint that loads: last, else the newer of prev and best, with a
warning naming what it skipped and why; when none loads it fails with ONE line naming the file and what to do.
"""

from __future__ import annotations

import errno
import io
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workloads import checkpoint_record, layout
from workloads.assets.models import RobustModel, build_model
from workloads.spec import RunSpec, from_dict

FORMAT = "fastrobust-v1"
CKPT_PREV = "checkpoint-prev.pt"  # the generation before checkpoint-last.pt
RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "elapsed_s", "best", "rng", "spec")


class CheckpointError(RuntimeError):
    """No checkpoint of a run directory can be resumed from (one line: the file and what to do)."""


def derive_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integer keys (numpy SeedSequence): independent, reproducible streams
    per (seed, rank, purpose, ...) for training, evaluation and visualisation."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def capture_rng(attack_generator: torch.Generator | None) -> dict[str, Any]:
    """This process's RNG states, as tensors/plain types (numpy's key array becomes a tensor)."""
    legacy = np.random.get_state(legacy=True)  # the default; spelled out because numpy's stubs assume a dict
    assert isinstance(legacy, tuple), "numpy's global generator is an MT19937 (its state is a 5-tuple)"
    kind, keys, pos, has_gauss, gauss = legacy
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
        "attack": attack_generator.get_state() if attack_generator is not None else None,
    }


def restore_rng(state: dict[str, Any], attack_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if attack_generator is not None and state["attack"] is not None:
        attack_generator.set_state(state["attack"])


def arch_of(model: RobustModel, name: str) -> dict[str, Any]:
    mean = model.normalize.mean.flatten().tolist()
    return {
        "name": name,
        "num_classes": model.head.out_features,
        "in_channels": len(mean),
        "mean": mean,
        "std": model.normalize.std.flatten().tolist(),
    }


@checkpoint_record.recorded  # size + sha256 in checkpoints.json: `orchestrate status` checks them
def save(
    path: str | Path,
    *,
    model: RobustModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    elapsed_s: float,
    best: dict[str, Any] | None,
    rng: list[dict[str, Any]],
    spec: RunSpec,
    scaler: torch.amp.GradScaler | None = None,
    step: int = 0,
    partial: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temp file + os.replace). `model` must be the unwrapped module; `step` and
    `partial` (workloads.training.resume_point) make it a mid-epoch one."""
    assert not isinstance(model, nn.parallel.DistributedDataParallel), "save the unwrapped model"
    state = {
        "format": FORMAT,
        "model": model.state_dict(),
        "arch": arch_of(model, spec.model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "elapsed_s": elapsed_s,
        "best": best,
        "rng": rng,
        "spec": spec.to_dict(),
    }
    if step:
        state |= {"step": step, "partial": partial}
    buf = io.BytesIO()
    torch.save(state, buf)
    path = Path(path)
    if path.name != layout.CKPT_LAST or not path.exists():
        layout.write_bytes_atomic(path, buf.getvalue())
        return
    # keep one generation back: the new file is complete before the old one moves to checkpoint-prev.pt
    new = path.with_name(f".{path.name}.new")
    try:
        layout.write_bytes_atomic(new, buf.getvalue())
    except OSError as exc:  # name the checkpoint, not its temporary name (a full disk says which file)
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    link = path.with_name(f".{CKPT_PREV}.link")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)  # a second name for the current last: no copy, no space
        os.replace(link, path.with_name(CKPT_PREV))
    except OSError as exc:  # a file system without hard links: no generation kept back, the write stays atomic
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    os.replace(new, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable (a crash after save returns keeps them)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    return state


def _resumable(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(state, "") when `path` loads as a complete checkpoint; (None, why not) otherwise."""
    try:
        state = load(path)
    except Exception as exc:  # torn (EOF, bad zip), pickled (weights_only refuses it), foreign: not this one
        return None, " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    missing = [k for k in RESUME_KEYS if k not in state]
    return (None, f"lacks {', '.join(missing)}") if missing else (state, "")


def position(state: dict[str, Any]) -> tuple[int, int]:
    """(completed epochs, optimizer steps done in the next one) of a checkpoint."""
    return int(state["epoch"]), int(state.get("step") or 0)


def load_latest(run_dir: str | Path, warn: bool = True) -> tuple[dict[str, Any], Path] | None:
    """The newest complete checkpoint of a run directory to resume from, and its path; None when it has none.

    checkpoint-last.pt when it loads; else the newer (by epoch, then step) of checkpoint-prev.pt and
    checkpoint-best.pt, with a warning on stderr (when `warn`). Raises CheckpointError (one line) when
    checkpoints exist but none loads."""
    run_dir = Path(run_dir)
    names = (layout.CKPT_LAST, CKPT_PREV, layout.CKPT_BEST)
    present = [run_dir / n for n in names if (run_dir / n).exists()]
    if not present:
        return None
    skipped: list[str] = []
    found: list[tuple[dict[str, Any], Path]] = []
    for path in present:
        state, why = _resumable(path)
        if state is None:
            skipped.append(f"{path.name} ({why})")
        else:
            found.append((state, path))
            if path.name == layout.CKPT_LAST:
                break
    if not found:
        raise CheckpointError(
            f"{present[0]}: no checkpoint of this run loads ({'; '.join(skipped)}); the run cannot resume: move "
            "the checkpoint-*.pt files aside (or delete the run directory) to restart it from epoch 1"
        )
    state, path = max(found, key=lambda f: position(f[0]))
    if skipped and warn:
        print(f"warning: {run_dir}: resuming from {path.name} (epoch {state['epoch']}); skipped "
              f"{'; '.join(skipped)}", file=sys.stderr, flush=True)  # fmt: skip
    return state, path


def checkpoint_path(path_or_run_dir: str | Path, which: str = "best") -> Path:
    """A .pt file as is; a run directory -> its checkpoint-best.pt / checkpoint-last.pt."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        if which not in ("best", "last"):
            raise ValueError(f"which: expected best or last; got {which!r}")
        path = path / (layout.CKPT_BEST if which == "best" else layout.CKPT_LAST)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return path


def load_model(
    path_or_run_dir: str | Path, which: str = "best", map_location: str | torch.device = "cpu"
) -> tuple[RobustModel, RunSpec]:
    """The trained model (eval mode, on map_location) and the spec it was trained with."""
    state = load(checkpoint_path(path_or_run_dir, which), map_location)
    arch = state["arch"]
    model = build_model(arch["name"], arch["num_classes"], arch["in_channels"], arch["mean"], arch["std"])
    model.load_state_dict(state["model"])
    return model.to(map_location).eval(), from_dict(state["spec"])
