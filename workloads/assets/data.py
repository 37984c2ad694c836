"""Datasets: Fashion-MNIST, CIFAR-10 and Restricted ImageNet, read from their on-disk formats.

One path serves all three: a table entry per dataset gives its reader (files -> items + int labels), how an
item becomes an image, and its augmentation; subsetting and transforms are shared. Outputs are float
tensors in [0, 1] (normalisation lives in the model) and int labels. Nothing is ever downloaded.

On-disk layouts (`data_root`, `~` expanded):
- fashion_mnist: <root>/FashionMNIST/raw/ (torchvision) or <root>/ itself holding
  {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; data_root None: ~/data/FashionMNIST/raw/, else the
  Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist/).
- cifar10: <root>/cifar-10-batches-py/{data_batch_1..5,test_batch} (python pickles); data_root None: ~/data.
- restricted_imagenet: <root>/{train,val}/<wnid>/*.JPEG; data_root None: ~/data/imagenet. A class's ImageNet
  index is the position of its WordNet id in <root>/wnids.txt or <root>/LOC_synset_mapping.txt (first word per
  line, 1000 lines, standard order) if present, else in the sorted list of the folders in <root>/train, which
  then must hold all 1000 classes (a partial copy would silently shift the indices).

Augmentation (train split, spec.augment): per sample, inside __getitem__, so each image draws its own crop.
- fashion_mnist: random crop 28 with 2-pixel zero padding, no flip (the shoes all face left in both splits,
  so a flip teaches an invariance the test set never asks for).
- cifar10: random crop 32 with 4-pixel zero padding + horizontal flip (as the robustness library, minus
  its colour jitter and rotation).
- restricted_imagenet: RandomResizedCrop 224 + horizontal flip; eval (and train without augment):
  Resize 256 + CenterCrop 224.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from workloads.catalog import RESTRICTED_IMAGENET_RANGES, DatasetInfo, dataset_info
from workloads.spec import RunSpec


class DataError(ValueError):
    """A missing or malformed data root; the message is one line naming the path and the expected layout."""


# ---------------------------------------------------------------------------------------------
# The dataset: items (uint8 [N, C, H, W] array, or image paths as a bytes array) + labels + a per-sample
# transform. Numpy arrays, not Python lists: DataLoader workers share them without copy-on-read.


def _array_image(item: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(item)


def _file_image(item: bytes) -> Image.Image:
    with Image.open(os.fsdecode(item)) as img:
        return img.convert("RGB")


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """items[i] -> load -> transform -> float [C, H, W] in [0, 1]; `targets` holds all labels (int64)."""

    def __init__(
        self,
        items: np.ndarray,
        targets: torch.Tensor,
        load: Callable[[Any], torch.Tensor | Image.Image],
        transform: Callable[[Any], torch.Tensor],
    ) -> None:
        if len(items) != len(targets):
            raise ValueError(f"{len(items)} items but {len(targets)} labels")
        self.items = items
        self.targets = targets
        self.load = load
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load(self.items[index])), int(self.targets[index])


@dataclass
class DataBundle:
    train: ImageDataset
    val: ImageDataset
    info: DatasetInfo


# ---------------------------------------------------------------------------------------------
# Readers: (root, train) -> (items, labels). Each raises DataError naming the path and the layout.

_FMNIST_FILES = "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
_CIFAR_FILES = "cifar-10-batches-py/{data_batch_1..5,test_batch}"
_IMAGENET_FILES = "{train,val}/<wnid>/*.JPEG"


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (MNIST format: magic 0 0 8 ndim, big-endian uint32 dims, uint8 data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        magic = struct.unpack(">4B", data[:4])
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    except (OSError, EOFError, struct.error) as exc:
        raise DataError(f"{path}: unreadable IDX file ({exc}); expected an MNIST-format ubyte file") from exc
    if magic != (0, 0, 8, ndim) or len(data) != 4 + 4 * ndim + int(np.prod(dims)):
        raise DataError(f"{path}: malformed IDX file; expected magic 0x0000080{ndim} and {dims} uint8 values")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


_FMNIST_STEMS = [f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
_DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):  # unzipped first: faster to read
        if path.is_file():
            return path
    return None


def _fmnist_dir(root: Path | None) -> Path:
    if root is not None:
        candidates, hint = [root / "FashionMNIST" / "raw", root], f"or in {root}/"
    else:
        home = Path("~/data").expanduser()
        candidates = [home / "FashionMNIST" / "raw", _DEBIAN_FMNIST]
        hint = f"(data_root unset) or the Debian dataset-fashion-mnist files in {_DEBIAN_FMNIST}/"
    for folder in candidates:
        if all(_find_idx(folder, stem) for stem in _FMNIST_STEMS):
            return folder
    shown = candidates[0].parent.parent
    raise DataError(
        f"{shown}: no Fashion-MNIST files; expected {candidates[0]}/{_FMNIST_FILES} (torchvision layout) {hint}"
    )


def _read_fashion_mnist(root: Path | None, train: bool) -> tuple[np.ndarray, np.ndarray]:
    folder = _fmnist_dir(root)
    prefix = "train" if train else "t10k"
    files = {stem: _find_idx(folder, stem) or folder / stem for stem in _FMNIST_STEMS}  # all found by _fmnist_dir
    images = _read_idx(files[f"{prefix}-images-idx3-ubyte"], 3)
    labels = _read_idx(files[f"{prefix}-labels-idx1-ubyte"], 1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"{folder}: {prefix} files hold {images.shape} images, {len(labels)} labels; expected Nx28x28")
    return images[:, None], labels


def _read_cifar10(root: Path | None, train: bool) -> tuple[np.ndarray, np.ndarray]:
    root = root if root is not None else Path("~/data").expanduser()
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = root / "cifar-10-batches-py" / name
        if not path.is_file():
            raise DataError(f"{root}: missing {path.name}; expected {root}/{_CIFAR_FILES} (python version)")
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles
            # str keys in the official files; bytes keys if a batch was re-pickled from Python 3 raw bytes.
            data = np.asarray(batch.get("data", batch.get(b"data")), dtype=np.uint8).reshape(-1, 3, 32, 32)
            label = np.asarray(batch.get("labels", batch.get(b"labels")), dtype=np.int64).reshape(-1)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: malformed CIFAR-10 batch ({exc}); expected a pickled dict data/labels") from exc
        if len(data) != len(label):
            raise DataError(f"{path}: {len(data)} images but {len(label)} labels; expected a CIFAR-10 batch")
        images.append(data)
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def _imagenet_wnids(root: Path) -> list[str]:
    """The 1000 WordNet ids in standard ImageNet class-index order."""
    for name in ("wnids.txt", "LOC_synset_mapping.txt"):
        path = root / name
        if path.is_file():
            wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
            if len(wnids) != 1000 or len(set(wnids)) != 1000:
                raise DataError(f"{path}: {len(set(wnids))} distinct WordNet ids; expected 1000, one per line")
            return wnids
    train = root / "train"
    folders = sorted(d.name for d in train.iterdir() if d.is_dir()) if train.is_dir() else []
    if len(folders) != 1000:
        raise DataError(
            f"{root}: {len(folders)} class folders in {train}; expected {root}/{_IMAGENET_FILES} with all 1000"
            f" WordNet-id folders, or {root}/wnids.txt listing the 1000 WordNet ids in standard order"
        )
    return folders


def _read_restricted_imagenet(root: Path | None, train: bool) -> tuple[np.ndarray, np.ndarray]:
    root = root if root is not None else Path("~/data/imagenet").expanduser()
    split = root / ("train" if train else "val")
    if not split.is_dir():
        raise DataError(f"{split}: not a folder; expected {root}/{_IMAGENET_FILES}")
    wnids = _imagenet_wnids(root)
    paths: list[bytes] = []  # bytes, not str: a numpy bytes array is 4x smaller than a unicode one
    labels: list[int] = []
    for label, (first, last) in enumerate(RESTRICTED_IMAGENET_RANGES.values()):
        for wnid in wnids[first : last + 1]:
            folder = split / wnid
            if folder.is_dir():  # a partial copy may lack some classes; an empty result is caught below
                files = sorted(os.fsencode(p) for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
                paths += files
                labels += [label] * len(files)
    if not paths:
        raise DataError(f"{split}: no images of the 9 super-classes; expected {root}/{_IMAGENET_FILES}")
    return np.array(paths), np.array(labels, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# The table: everything that differs between datasets.


@dataclass(frozen=True)
class _Source:
    read: Callable[[Path | None, bool], tuple[np.ndarray, np.ndarray]]
    load: Callable[[Any], torch.Tensor | Image.Image]
    augment: Callable[[], list[v2.Transform]]  # train split with spec.augment
    plain: Callable[[], list[v2.Transform]]  # eval split, or train without augmentation


_SOURCES: dict[str, _Source] = {
    "fashion_mnist": _Source(_read_fashion_mnist, _array_image, lambda: [v2.RandomCrop(28, padding=2)], list),
    "cifar10": _Source(
        _read_cifar10, _array_image, lambda: [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()], list
    ),
    "restricted_imagenet": _Source(
        _read_restricted_imagenet,
        _file_image,
        lambda: [v2.RandomResizedCrop(224), v2.RandomHorizontalFlip()],
        lambda: [v2.Resize(256), v2.CenterCrop(224)],
    ),
}


def _to_unit_float(img: torch.Tensor | Image.Image) -> torch.Tensor:
    """uint8 CHW tensor or RGB PIL image -> float32 in [0, 1]; 8x cheaper than v2.ToImage + v2.ToDtype."""
    x = v2.functional.pil_to_tensor(img) if isinstance(img, Image.Image) else img
    return x.float().div_(255)


def make_transform(name: str, augment: bool) -> v2.Compose:
    """Per-sample transform: optional augmentation, then uint8/PIL -> float tensor in [0, 1]."""
    source = _SOURCES[name]
    return v2.Compose([*(source.augment() if augment else source.plain()), _to_unit_float])


def stratified_indices(targets: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`n` indices (sorted) drawn per class in proportion to the class frequencies (largest remainder),
    at random within each class with `seed`; all indices when n >= len(targets)."""
    if n >= len(targets):
        return torch.arange(len(targets))
    counts = torch.bincount(targets).numpy()
    exact = counts * n / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    leftover = np.argsort(-(exact - quota), kind="stable")[: n - int(quota.sum())]
    quota[leftover] += 1
    g = torch.Generator().manual_seed(seed)
    picked = []
    for label, k in enumerate(quota):
        members = torch.nonzero(targets == label).flatten()
        picked.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(picked).sort().values


# The validation subset ignores spec.seed: runs that differ only in seed are evaluated on the same examples.
VAL_SUBSET_SEED = 0
# So does the held-out split (val_split): every cell with the same N holds out the same training images.
VAL_SPLIT_SEED = 1


def _read(spec: RunSpec, train: bool) -> tuple[np.ndarray, torch.Tensor]:
    dataset_info(spec.dataset)  # unknown name -> ValueError listing the valid ones
    root = Path(spec.data_root).expanduser() if spec.data_root is not None else None
    items, labels = _SOURCES[spec.dataset].read(root, train)
    return items, torch.from_numpy(labels).long()


def held_out_indices(targets: torch.Tensor, n: int) -> torch.Tensor:
    """The val_split: `n` stratified training indices (sorted), the same for every cell with that n."""
    if n >= len(targets):
        raise DataError(f"val_split: expected fewer than the {len(targets)} training images; got {n}")
    return stratified_indices(targets, n, VAL_SPLIT_SEED)


def build_split(spec: RunSpec, train: bool) -> ImageDataset:
    """One split of spec.dataset with spec's subset and augmentation settings. With spec.val_split the training
    split is what remains of the training images once the held-out split is taken out (train_subset is then
    drawn from that remainder)."""
    items, targets = _read(spec, train)
    if train and spec.val_split is not None:
        rest = torch.ones(len(targets), dtype=torch.bool)
        rest[held_out_indices(targets, spec.val_split)] = False
        items, targets = items[rest.numpy()], targets[rest]
    subset = spec.train_subset if train else spec.val_subset
    if subset is not None:
        keep = stratified_indices(targets, subset, spec.seed if train else VAL_SUBSET_SEED)
        items, targets = items[keep.numpy()], targets[keep]
    source = _SOURCES[spec.dataset]
    return ImageDataset(items, targets, source.load, make_transform(spec.dataset, train and spec.augment))


def build_held_out(spec: RunSpec) -> ImageDataset:
    """The val_split images (training images, never augmented)."""
    assert spec.val_split is not None, "build_held_out needs spec.val_split"
    items, targets = _read(spec, True)
    keep = held_out_indices(targets, spec.val_split)
    source = _SOURCES[spec.dataset]
    return ImageDataset(items[keep.numpy()], targets[keep], source.load, make_transform(spec.dataset, False))


def build_validation(spec: RunSpec) -> ImageDataset:
    """The run's validation data (on-clock evaluation, best epoch, the judge): the held-out split when val_split
    is set, else the test split (val_subset of it)."""
    return build_held_out(spec) if spec.val_split is not None else build_split(spec, False)


def build_datasets(spec: RunSpec) -> DataBundle:
    return DataBundle(build_split(spec, True), build_validation(spec), dataset_info(spec.dataset))
