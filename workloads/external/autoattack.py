"""Optional AutoAttack-style check beyond the paper: APGD-CE + APGD-T (Croce & Hein 2020) via torchattacks.

torchattacks is an optional dependency (extra `[strong]`); it is imported only when this check runs.
Both attacks use the model as is (inputs in [0, 1], normalisation inside). torchattacks reseeds the global
torch RNG (`torch.random.manual_seed(seed)` inside APGD), so each call runs inside `torch.random.fork_rng`
and leaves the caller's random state untouched; the seed is ours, per batch, so results do not depend on
how batches are spread over ranks.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

ATTACKS = ("apgd_ce", "apgd_t")
_NORMS = {"l2": "L2", "linf": "Linf"}
MAX_TARGETS = 9  # AutoAttack's standard APGD-T: the 9 highest-scoring wrong classes


def available() -> bool:
    return importlib.util.find_spec("torchattacks") is not None


def require() -> None:
    if not available():
        raise ImportError("evaluate.autoattack needs torchattacks: pip install 'fastrobust[strong]'")


def robust_masks(
    model: nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float, steps: int, seed: int
) -> dict[str, Tensor]:
    """Per example, True where the prediction stays correct under the attack (and was correct clean).

    The model must already be in eval mode; its parameters' .grad are not touched (torchattacks takes input
    gradients with torch.autograd.grad)."""
    require()
    import torchattacks

    devices = [x.device] if x.device.type == "cuda" else []
    with torch.no_grad():
        logits = model(x)
    clean, num_classes = logits.argmax(1) == y, logits.shape[1]
    out: dict[str, Tensor] = {}
    for name in ATTACKS:
        with torch.random.fork_rng(devices=devices):
            if name == "apgd_ce":
                attack = torchattacks.APGD(
                    model, norm=_NORMS[norm], eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce"
                )
            else:
                # n_classes - 1 targets are tried: cap at AutoAttack's 9 (its n_target_classes)
                attack = torchattacks.APGDT(
                    model,
                    norm=_NORMS[norm],
                    eps=eps,
                    steps=steps,
                    n_restarts=1,
                    seed=seed,
                    n_classes=min(num_classes, MAX_TARGETS + 1),
                )
            adv = attack(x, y)
        with torch.no_grad():
            out[name] = clean & (model(adv).argmax(1) == y)
    return out
