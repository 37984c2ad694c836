"""Checkpoints: `checkpoint-last.pt` (every epoch) and `checkpoint-best.pt`, written atomically.

Format "fastrobust-v1", a dict loadable with `torch.load(weights_only=True)` (only tensors and plain types):
  format, model (state_dict of the unwrapped model), arch {name, num_classes, in_channels, mean, std},
  optimizer, scheduler (state_dicts; the scheduler's is workloads.schedules' per-iteration state), scaler (the
  fp16 GradScaler's state_dict, None without one; absent in older checkpoints), epoch (completed epochs),
  elapsed_s (cumulative training wall-clock), best {epoch, metric} (None before the first evaluation), rng (list
  indexed by rank of {torch, cuda, numpy, python, attack} states), spec (RunSpec as a dict).
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workloads import layout
from workloads.models import RobustModel, build_model
from workloads.spec import RunSpec, from_dict

FORMAT = "fastrobust-v1"


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
) -> None:
    """Write a checkpoint atomically (temp file + os.replace). `model` must be the unwrapped module."""
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
    buf = io.BytesIO()
    torch.save(state, buf)
    layout.write_bytes_atomic(path, buf.getvalue())


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    return state


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
