"""Read (and, for tests and exports, write) checkpoints in the layout of MadryLab's `robustness` library.

Their `train_model` saves `{"model": AttackerModel state_dict, "optimizer", "schedule", "epoch", "amp", ...}`
with `torch.save(..., pickle_module=dill)`, usually from a DataParallel wrapper, so the state-dict keys are
  module.normalizer.new_mean / new_std      InputNormalize buffers, shaped [C, 1, 1]
  module.model.<classifier keys>            the classifier
  module.attacker.normalize.*, module.attacker.model.*   the same tensors again, for the attacker (dropped)
("module." is absent when the wrapper was not used; very old checkpoints call "model" "state_dict").

Classifier key names (robustness/cifar_models/resnet.py, robustness/imagenet_models/resnet.py) differ from our
RobustModel (Normalize -> body -> head): the CIFAR ResNets are a flat `nn.Sequential` body here, so the
mapping is an explicit prefix table (`key_table`) derived from the block counts; the ImageNet ResNet-50 is
torchvision's naming, which our "resnet50" body keeps verbatim. Block internals (conv1/bn1/.../shortcut.0,
downsample.0) are named identically on both sides.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workloads.assets.models import RobustModel, build_model

# Our model name -> (architecture family, blocks per stage). Only the ResNets exist in the robustness library.
ARCHES: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18_cifar": ("cifar", (2, 2, 2, 2)),
    "resnet50_cifar": ("cifar", (3, 4, 6, 3)),
    "resnet50": ("imagenet", (3, 4, 6, 3)),
}
_CIFAR_STEM = 3  # our CIFAR body: [conv, bn, relu, blocks..., pool, flatten]


class MadryFormatError(ValueError):
    """The file is not a robustness-library checkpoint we can map onto one of our models."""


@dataclass(frozen=True)
class MadryInfo:
    arch: str  # our model name
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    epoch: int | None


def key_table(arch: str) -> list[tuple[str, str]]:
    """(robustness-library classifier prefix, our RobustModel prefix), most specific first."""
    family, blocks = ARCHES[arch]
    if family == "imagenet":  # torchvision naming on both sides; fc is our separate head
        return [("fc.", "head."), ("", "body.")]
    table = [("conv1.", "body.0."), ("bn1.", "body.1."), ("linear.", "head.")]
    index = _CIFAR_STEM
    for stage, n in enumerate(blocks, start=1):
        for i in range(n):
            table.append((f"layer{stage}.{i}.", f"body.{index}."))
            index += 1
    return table


def _rename(key: str, table: list[tuple[str, str]], arch: str) -> str:
    for src, dst in table:
        if key.startswith(src):
            return dst + key[len(src) :]
    raise MadryFormatError(f"{arch}: no mapping for state-dict key {key!r}")


def split_state_dict(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """An AttackerModel state dict -> (classifier state dict, mean [C], std [C]); attacker copies are dropped."""
    prefix = "module." if any(k.startswith("module.") for k in sd) else ""
    classifier: dict[str, Tensor] = {}
    mean = std = None
    for key, value in sd.items():
        if not key.startswith(prefix):
            raise MadryFormatError(f"mixed key prefixes: {key!r} lacks {prefix!r}")
        key = key[len(prefix) :]
        if key.startswith("model."):
            classifier[key[len("model.") :]] = value
        elif key == "normalizer.new_mean":
            mean = value
        elif key == "normalizer.new_std":
            std = value
        elif not key.startswith("attacker."):  # attacker.*: a second reference to the same classifier
            raise MadryFormatError(f"unexpected key {prefix + key!r}")
    if not classifier or mean is None or std is None:
        raise MadryFormatError("expected keys model.*, normalizer.new_mean and normalizer.new_std (after 'module.')")
    return classifier, mean.reshape(-1), std.reshape(-1)


def infer_arch(classifier: Mapping[str, Tensor]) -> tuple[str, int, int]:
    """(our model name, num_classes, in_channels) from the classifier's weights alone."""
    if "linear.weight" in classifier:
        family = "cifar"
        head = classifier["linear.weight"]
    elif "fc.weight" in classifier:
        family = "imagenet"
        head = classifier["fc.weight"]
    else:
        raise MadryFormatError("no classifier head (linear.weight or fc.weight): not a ResNet we support")
    blocks = tuple(
        len({k.split(".")[1] for k in classifier if k.startswith(f"layer{stage}.")}) for stage in range(1, 5)
    )
    bottleneck = any(k.endswith(".conv3.weight") for k in classifier)
    for name, (fam, counts) in ARCHES.items():
        if fam == family and counts == blocks and bottleneck == (name != "resnet18_cifar"):
            return name, int(head.shape[0]), int(classifier["conv1.weight"].shape[1])
    raise MadryFormatError(f"unsupported {family} ResNet with blocks {blocks} (bottleneck: {bottleneck})")


def to_ours(classifier: Mapping[str, Tensor], arch: str) -> dict[str, Tensor]:
    """Classifier keys in robustness-library naming -> our body./head. keys (normaliser not included)."""
    table = key_table(arch)
    return {_rename(k, table, arch): v for k, v in classifier.items()}


def from_ours(model: RobustModel, arch: str) -> dict[str, Tensor]:
    """Our model's state dict -> an AttackerModel state dict as the library saves it (with 'module.')."""
    # Prefixes end in ".", so "body.1." never catches "body.10."; "" (ImageNet body) comes last.
    inverse = [(dst, src) for src, dst in key_table(arch)]
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("normalize."):
            continue
        name = _rename(key, inverse, arch)
        out[f"module.model.{name}"] = value.clone()
        out[f"module.attacker.model.{name}"] = value.clone()
    # InputNormalize stores mean[..., None, None]: shape [C, 1, 1]
    for side in ("module.normalizer", "module.attacker.normalize"):
        out[f"{side}.new_mean"] = model.normalize.mean.reshape(-1, 1, 1).clone()
        out[f"{side}.new_std"] = model.normalize.std.reshape(-1, 1, 1).clone()
    return out


def is_madry_checkpoint(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or obj.get("format") is not None:
        return False
    sd = obj.get("model", obj.get("state_dict"))
    return isinstance(sd, Mapping) and any(
        isinstance(k, str) and k.removeprefix("module.").startswith("normalizer.") for k in sd
    )


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", allow_pickle: bool = False) -> Any:
    """torch.load with weights_only=True (tensors, numbers, strings, containers: all a robustness checkpoint
    normally holds). Some files carry arbitrary pickled objects (they are written with dill); those need
    allow_pickle=True, which executes code from the file: only for files you trust."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise MadryFormatError(
                f"{path}: holds objects beyond tensors and plain containers, so it cannot be read with "
                f"weights_only=True ({exc}); set evaluate.allow_pickle: true if you trust the file"
            ) from exc
    return torch.load(path, map_location=map_location, weights_only=False)


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> tuple[RobustModel, MadryInfo]:
    """A loaded robustness-library checkpoint dict -> (our model in eval mode, what was inferred)."""
    sd = ckpt.get("model", ckpt.get("state_dict"))
    if not isinstance(sd, Mapping):
        raise MadryFormatError("expected a 'model' (or legacy 'state_dict') entry holding a state dict")
    classifier, mean, std = split_state_dict(sd)
    arch, num_classes, in_channels = infer_arch(classifier)
    info = MadryInfo(
        arch=arch,
        num_classes=num_classes,
        in_channels=in_channels,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        epoch=int(ckpt["epoch"]) if isinstance(ckpt.get("epoch"), int) else None,
    )
    model = build_model(arch, num_classes, in_channels, info.mean, info.std)
    ours = to_ours(classifier, arch)
    ours["normalize.mean"] = mean.reshape(model.normalize.mean.shape).float()
    ours["normalize.std"] = std.reshape(model.normalize.std.shape).float()
    model.load_state_dict(ours, strict=True)  # every key of both sides accounted for
    return model.eval(), info


def load_madry_checkpoint(
    path: str | os.PathLike[str], map_location: Any = "cpu", allow_pickle: bool = False
) -> tuple[RobustModel, MadryInfo]:
    ckpt = read_checkpoint(path, map_location, allow_pickle)
    if not is_madry_checkpoint(ckpt):
        raise MadryFormatError(f"{path}: not a robustness-library checkpoint (no normalizer.* keys in 'model')")
    return model_from_checkpoint(ckpt)


def save_madry_checkpoint(model: RobustModel, arch: str, path: str | os.PathLike[str], epoch: int = 1) -> None:
    """Write our model in the robustness library's layout (for tests, and to hand models to that library)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": from_ours(model, arch), "optimizer": {}, "schedule": None, "epoch": epoch, "amp": None}, path)
