"""The domain tables: datasets, models and training methods — one entry each, torch-free.

Every other module (spec validation, data loading, the trainer, collect, estimate, report) reads its facts
here, so adding a dataset, model or method is one entry in this file plus the code that implements it.
Nothing here imports torch: the orchestrator reads it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# Datasets


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset (no file access)."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int  # model input side length after the eval transform
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    label: str  # the name tables and figures print (paper: "CIFAR", "Restricted ImageNet")
    train_size: int  # standard split sizes (paper Section IV; Fashion-MNIST as distributed)
    val_size: int


# Inclusive ImageNet class-index ranges of the 9 super-classes (robustness library, RestrictedImageNet);
# the label of a super-class is its position in this dict.
RESTRICTED_IMAGENET_RANGES: dict[str, tuple[int, int]] = {
    "dog": (151, 268),
    "cat": (281, 285),
    "frog": (30, 32),
    "turtle": (33, 37),
    "bird": (80, 100),
    "primate": (365, 382),
    "fish": (389, 397),
    "crab": (118, 121),
    "insect": (300, 319),
}

# Order matters: tables list datasets in this order.
DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "Fashion-MNIST", 60000, 10000,
    ),
    # mean/std as in the robustness library, so its checkpoints and ours normalise alike.
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        "CIFAR", 50000, 10000,
    ),
    "restricted_imagenet": DatasetInfo(
        "restricted_imagenet", len(RESTRICTED_IMAGENET_RANGES), 3, 224,
        (0.4717, 0.4499, 0.3837), (0.2600, 0.2516, 0.2575), tuple(RESTRICTED_IMAGENET_RANGES),
        "Restricted ImageNet", 257735, 10150,
    ),
}  # fmt: skip


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_order(name: str) -> tuple[int, str]:
    """Table order: catalog order, unknown names last."""
    names = list(DATASETS)
    return (names.index(name) if name in names else len(names), name)


# ---------------------------------------------------------------------------------------------
# Models (built by workloads.assets.models; the builder is looked up by the same name)

MODELS: dict[str, str] = {
    "small_cnn": "4-conv CNN for CPU-scale runs (Fashion-MNIST demo)",
    "resnet18_cifar": "ResNet-18, CIFAR stem (3x3 conv, no max-pool)",
    "resnet50_cifar": "ResNet-50, CIFAR stem (the paper's CIFAR-10 model)",
    "resnet50": "torchvision ResNet-50, ImageNet stem (the paper's Restricted ImageNet model)",
}


# ---------------------------------------------------------------------------------------------
# Training methods


@dataclass(frozen=True)
class MethodInfo:
    """What a method name means. alpha = alpha_factor * eps (/ steps when alpha_per_step)."""

    name: str
    steps: int  # attack steps per training step; 0: no attack (standard training)
    norm: str | None  # norm forced by the method (None: attack.norm)
    alpha_factor: float
    alpha_per_step: bool
    label: str  # paper name in tables and figures
    order: int  # among methods with the same number of steps: lower first (tables: most steps first)
    # How a training step uses the attack: "pgd" (attack passes on frozen weights, then one weight step) or
    # "free" (each mini-batch replayed, one backward per replay gives the weight and the input gradient) or
    # "gradalign" (pgd's, plus align x GradAlign's gradient-misalignment regulariser in the weight step's loss).
    step: str = "pgd"
    start_factor: float = 1.0  # the random start's radius / eps (attack.noise_factor overrides)
    project: bool = True  # False: no projection back onto the eps-ball after a step (only the [0, 1] box)
    replays: int = 1  # "free": replays m of each mini-batch (attack.replays overrides)
    align: float = 0.0  # "gradalign": lambda, the regulariser's weight
    # (workloads.adversarial.attacks.gradient_misalignment)

    @property
    def best_metric(self) -> str:
        """Table I's best epoch: highest adversarial validation accuracy; clean accuracy without an attack."""
        return "clean_acc" if self.steps == 0 else "adv_acc"

    def alpha(self, eps: float, steps: int) -> float:
        return self.alpha_factor * eps / steps if self.alpha_per_step else self.alpha_factor * eps


# Fixed names; "pgdK" (K >= 1) is a family, built by method_info.
METHODS: dict[str, MethodInfo] = {
    "standard": MethodInfo("standard", 0, None, 0.0, False, "No PGD", 3),
    "fast": MethodInfo("fast", 1, "l2", 1.5, False, "1-Step PGD", 1),  # paper: alpha = 1.5 eps
    "fgsm_rs": MethodInfo("fgsm_rs", 1, "linf", 1.25, False, "FGSM-RS", 2),  # Wong et al.: alpha = 1.25 eps
    # de Jorge et al. 2022: noise from the 2-eps ball, alpha = eps, no projection (x + delta only in the box)
    "nfgsm": MethodInfo("nfgsm", 1, None, 1.0, False, "N-FGSM", 3, start_factor=2.0, project=False),
    # Shafahi et al. 2019: m = 4 replays, delta += eps * sign(g) (L2: eps * g / ||g||) then projected
    "free": MethodInfo("free", 1, None, 1.0, False, "Free AT", 4, step="free", replays=4),
    # Andriushchenko & Flammarion 2020: FGSM from delta = 0 (start radius 0), alpha = eps, + lambda (1 - cos) of
    # the input gradients at x and at x + U(-eps, eps); lambda 0.2 is theirs for CIFAR-10 at eps = 8/255
    "gradalign": MethodInfo(
        "gradalign", 1, "linf", 1.0, False, "GradAlign", 5, step="gradalign", start_factor=0.0, align=0.2
    ),
}
_PGD_RE = re.compile(r"^pgd([1-9][0-9]*)$")
METHOD_RE = re.compile(r"^(" + "|".join(map(re.escape, METHODS)) + r"|pgd[1-9][0-9]*)$")
METHOD_HELP = ", ".join(METHODS) + " or pgdK (K a positive integer, e.g. pgd7)"


def method_info(name: str) -> MethodInfo:
    """The catalog entry of a method name; raises ValueError listing the valid names."""
    if name in METHODS:
        return METHODS[name]
    m = _PGD_RE.match(name)
    if not m:
        raise ValueError(f"unknown method {name!r}; expected {METHOD_HELP}")
    steps = int(m.group(1))
    # pgd1 (alpha 2.5 eps) would otherwise share its name with the paper's fast 1-step method
    label = f"{steps}-Step PGD" + (" (pgd1)" if steps == 1 else "")
    return MethodInfo(name, steps, None, 2.5, True, label, 0)  # robustness library: alpha = 2.5 eps / K


def method_order(name: str) -> tuple[int, int, str]:
    """Most attack steps first (as the paper), then catalog order; unknown names last."""
    try:
        info = method_info(name)
    except ValueError:
        return (1, 0, name)
    return (-info.steps, info.order, name)
