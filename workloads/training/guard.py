"""The catastrophic-overfitting guard (fast_adversarial's early stop, generalised; spec section `guard`).

Single-step training can collapse within an epoch: the model becomes robust to its own one-step attack and
PGD accuracy falls to ~0 (Wong et al. 2020). Each epoch (guard.action flag | stop) the trainer measures clean
and PGD accuracy on a FIXED training subset: guard.examples indices drawn with spec.seed alone (the same on
every epoch, attempt and rank count), without augmentation, sharded across ranks by dataset_accuracy. The PGD
is the training threat model at its full eps (no warm-up), guard.steps (default eval.steps) steps of
2.5 eps / steps, one random restart, its generator seeded by (seed, rank, epoch). An epoch is flagged (co_flag 1)
when its PGD accuracy is more than guard.drop below the best of the epochs so far; action stop ends the run
after the first flagged epoch (its row and checkpoints are written as usual, so checkpoint-best.pt keeps the
best validated model), as finished, with the reason in result.json.

The history (best so far, first flagged epoch) is re-read from epochs.csv on resume, so a resumed run decides
as the uninterrupted one and a stopped run stays stopped. Every rank decides alike (all-reduced accuracies).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from workloads.assets.checkpoint import derive_seed
from workloads.assets.data import ImageDataset, make_transform
from workloads.catalog import method_info
from workloads.runtime.distributed import Dist
from workloads.spec import ResolvedAttack, RunSpec, resolve_attack
from workloads.training.accuracy import dataset_accuracy

STREAM_GUARD = 4  # after kinds.train's STREAM_GLOBAL, STREAM_ATTACK, STREAM_EVAL, STREAM_LOADER (0-3)
COLUMNS = ("guard_clean_acc", "guard_adv_acc", "co_flag", "guard_s")  # epochs.csv (layout.EPOCH_COLUMNS)


def guard_indices(spec: RunSpec, n_train: int) -> torch.Tensor:
    """The fixed subset (sorted indices): a function of spec.seed and the training set size only."""
    g = torch.Generator().manual_seed(derive_seed(spec.seed, STREAM_GUARD))
    return torch.randperm(n_train, generator=g)[: spec.guard.examples].sort().values


def guard_dataset(spec: RunSpec, train: Dataset[Any]) -> Dataset[Any]:
    """The subset of the training set, with the eval (non-augmenting) transform when the set is ours."""
    idx = guard_indices(spec, len(train))  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours are map-style
    if isinstance(train, ImageDataset):
        keep = idx.numpy()
        return ImageDataset(train.items[keep], train.targets[idx], train.load, make_transform(spec.dataset, False))
    return Subset(train, idx.tolist())


def guard_attack(spec: RunSpec) -> ResolvedAttack:
    """PGD in the training threat model (the run's method's norm, full eps), guard.steps or eval.steps steps."""
    train_attack = resolve_attack(spec.method, spec.attack)
    steps = spec.guard.steps or spec.eval.steps
    alpha = method_info(f"pgd{steps}").alpha(train_attack.eps, steps)
    return ResolvedAttack(train_attack.norm, train_attack.eps, steps, alpha, True)


def _number(row: dict[str, str], key: str) -> float | None:
    value = row.get(key)
    return float(value) if value not in (None, "") else None


@dataclasses.dataclass
class History:
    """What the guard remembers across epochs: derived from epochs.csv rows on resume."""

    best: float | None = None  # highest guard_adv_acc so far
    best_epoch: int | None = None
    flagged: int | None = None  # first flagged epoch
    flagged_acc: float | None = None

    @classmethod
    def from_rows(cls, rows: list[dict[str, str]], completed: int) -> History:
        history = cls()
        for row in sorted(rows, key=lambda r: int(r["epoch"])):
            adv, epoch = _number(row, "guard_adv_acc"), int(row["epoch"])
            if epoch <= completed and adv is not None:
                history.update(epoch, adv, row.get("co_flag") == "1")
        return history

    def update(self, epoch: int, adv: float, flag: bool) -> None:
        if flag and self.flagged is None:
            self.flagged, self.flagged_acc = epoch, adv
        if self.best is None or adv > self.best:
            self.best, self.best_epoch = adv, epoch


class Guard:
    """Per-epoch measurement and decision; inactive (no columns, no result keys) when guard.action is none."""

    def __init__(self, spec: RunSpec, train: Dataset[Any], dist: Dist, batch_size: int, history: History) -> None:
        self.spec, self.dist, self.batch_size, self.history = spec, dist, batch_size, history
        self.active = spec.guard.action != "none"
        self.dataset = guard_dataset(spec, train) if self.active else None
        self.attack = guard_attack(spec) if self.active else None

    @property
    def stopped(self) -> bool:
        """True once action stop has flagged an epoch: no further epoch trains."""
        return self.spec.guard.action == "stop" and self.history.flagged is not None

    def measure(self, model: torch.nn.Module, epoch: int, amp: torch.dtype | None, clock: Any) -> dict[str, Any]:
        """The epoch's guard columns (empty when inactive); updates the history (collective when active)."""
        if not self.active:
            return {}
        assert self.dataset is not None and self.attack is not None
        t0 = clock(self.dist)
        gen = torch.Generator(self.dist.device).manual_seed(
            derive_seed(self.spec.seed, self.dist.rank, STREAM_GUARD, epoch)
        )
        clean, adv, _ = dataset_accuracy(
            model, self.dataset, self.dist, self.attack, batch_size=self.batch_size, restarts=1, generator=gen,
            amp=amp, channels_last=self.spec.channels_last,
        )  # fmt: skip
        best = self.history.best
        flag = best is not None and best - adv > self.spec.guard.drop
        self.history.update(epoch, adv, flag)
        return {"guard_clean_acc": clean, "guard_adv_acc": adv, "co_flag": int(flag),
                "guard_s": round(clock(self.dist) - t0, 4)}  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """result.json keys: co_flag (the run was flagged), co_epoch, and stop_reason when action stop ended it."""
        if not self.active:
            return {}
        h, g = self.history, self.spec.guard
        reason = None
        if self.stopped:
            reason = (
                f"catastrophic overfitting: guard PGD accuracy {h.flagged_acc:.4f} at epoch {h.flagged}, more than "
                f"{g.drop:g} below its best {h.best:.4f} (epoch {h.best_epoch}); stopped (guard.action stop)"
            )
        return {"co_flag": h.flagged is not None, "co_epoch": h.flagged, "stop_reason": reason}
