"""Loaders on generated fixtures in the real on-disk formats and on the real Fashion-MNIST files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from tests.fixtures import (
    DEBIAN_FMNIST,
    cifar_green,
    fake_wnid,
    make_cifar10,
    make_fashion_mnist,
    make_imagenet,
    needs_fmnist,
)
from workloads.assets.data import DataError, ImageDataset, build_datasets, build_split, stratified_indices
from workloads.catalog import DATASETS, RESTRICTED_IMAGENET_RANGES, dataset_info
from workloads.spec import RunSpec


def spec(dataset: str, root: Path | str | None, **kw: object) -> RunSpec:
    return RunSpec(dataset=dataset, data_root=None if root is None else str(root), **kw)  # type: ignore[arg-type]


def crop_matches(aug: torch.Tensor, orig: torch.Tensor, pad: int) -> set[tuple[int, int, bool]]:
    """The (row, column, mirrored) crops of orig zero-padded by `pad` that equal aug."""
    padded = torch.nn.functional.pad(orig, (pad, pad, pad, pad))
    h, w = orig.shape[-2:]
    return {
        (i, j, mirrored)
        for mirrored in (False, True)
        for i in range(2 * pad + 1)
        for j in range(2 * pad + 1)
        if torch.equal(aug.flip(-1) if mirrored else aug, padded[:, i : i + h, j : j + w])
    }


# ---------------------------------------------------------------------------------------------
# Static info


def test_dataset_info() -> None:
    shapes = {"fashion_mnist": (1, 28, 10), "cifar10": (3, 32, 10), "restricted_imagenet": (3, 224, 9)}
    assert set(shapes) == set(DATASETS)
    for name, (channels, side, classes) in shapes.items():
        info = dataset_info(name)
        assert (info.in_channels, info.image_size, info.num_classes) == (channels, side, classes)
        assert len(info.mean) == len(info.std) == channels and len(info.classes) == classes
    assert dataset_info("restricted_imagenet").classes == tuple(RESTRICTED_IMAGENET_RANGES)
    with pytest.raises(ValueError, match="valid datasets: fashion_mnist, cifar10, restricted_imagenet"):
        dataset_info("mnist")


# ---------------------------------------------------------------------------------------------
# CIFAR-10 pickles


def test_cifar10_pickles_load_with_labels_and_layout(tmp_path: Path) -> None:
    make_cifar10(tmp_path, n_train=30, n_test=12)
    bundle = build_datasets(spec("cifar10", tmp_path, augment=False))
    assert (len(bundle.train), len(bundle.val)) == (30, 12)
    assert bundle.info == dataset_info("cifar10")
    for ds in (bundle.train, bundle.val):
        assert torch.bincount(ds.targets, minlength=10).min() >= 1
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
            assert y == int(ds.targets[i])
            # channel 1 is the label's constant plane: the label goes with its image and the layout is CHW
            assert torch.all(x[1] == cifar_green(y) / 255)
            assert x[0].std() > 0.1  # channel 0 is noise, not another constant plane


def test_cifar10_missing_and_malformed(tmp_path: Path) -> None:
    root = tmp_path / "absent"
    with pytest.raises(DataError) as err:
        build_split(spec("cifar10", root), train=True)
    assert str(root) in str(err.value) and "cifar-10-batches-py/{data_batch_1..5,test_batch}" in str(err.value)
    make_cifar10(tmp_path, n_train=10, n_test=5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        build_split(spec("cifar10", tmp_path), train=True)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as err:
        build_split(spec("cifar10", tmp_path), train=False)
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Restricted ImageNet folders

# ImageNet index -> super-class label (None: outside every range); includes the range boundaries.
IMAGENET_EXPECTED = {0: None, 29: None, 30: 2, 37: 3, 150: None, 151: 0, 268: 0, 269: None, 281: 1, 319: 8, 999: None}


def wnid_labels(ds: ImageDataset) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for path, label in zip(ds.items, ds.targets.tolist(), strict=True):
        out.setdefault(Path(os.fsdecode(path)).parent.name, set()).add(label)
    return out


def test_restricted_imagenet_label_mapping(tmp_path: Path) -> None:
    make_imagenet(tmp_path, list(IMAGENET_EXPECTED), per_class=2)
    bundle = build_datasets(spec("restricted_imagenet", tmp_path))
    expected = {fake_wnid(i): {label} for i, label in IMAGENET_EXPECTED.items() if label is not None}
    for ds in (bundle.train, bundle.val):
        assert wnid_labels(ds) == expected
        assert len(ds) == 2 * len(expected)
    x, y = bundle.val[0]
    assert x.shape == (3, 224, 224) and x.min() >= 0.0 and x.max() <= 1.0 and y == int(bundle.val.targets[0])
    assert bundle.train[0][0].shape == (3, 224, 224)


def test_restricted_imagenet_uses_the_wnid_list_order(tmp_path: Path) -> None:
    # A list in reversed order moves folder n...848 to index 151 (dog) and n...151 to index 848 (no class).
    make_imagenet(tmp_path, [151, 848], per_class=1, wnids_file=False)
    wnids = [fake_wnid(i) for i in reversed(range(1000))]
    (tmp_path / "LOC_synset_mapping.txt").write_text("".join(f"{w} some class, name\n" for w in wnids))
    assert wnid_labels(build_split(spec("restricted_imagenet", tmp_path), train=False)) == {fake_wnid(848): {0}}


def test_restricted_imagenet_sorted_folders_need_all_1000(tmp_path: Path) -> None:
    make_imagenet(tmp_path, [151, 281], per_class=1, wnids_file=False)
    with pytest.raises(DataError) as err:
        build_split(spec("restricted_imagenet", tmp_path), train=True)
    message = str(err.value)
    assert str(tmp_path) in message and "wnids.txt" in message and "\n" not in message
    for i in range(1000):  # with every class folder present, the sorted folder order is the standard one
        (tmp_path / "train" / fake_wnid(i)).mkdir(exist_ok=True)
    ds = build_split(spec("restricted_imagenet", tmp_path), train=True)
    assert wnid_labels(ds) == {fake_wnid(151): {0}, fake_wnid(281): {1}}


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST: real Debian files and IDX fixtures


@pytest.fixture(scope="module")
def fmnist() -> tuple[ImageDataset, ImageDataset]:
    bundle = build_datasets(spec("fashion_mnist", DEBIAN_FMNIST, augment=False))
    return bundle.train, bundle.val


@needs_fmnist
def test_real_fashion_mnist(fmnist: tuple[ImageDataset, ImageDataset]) -> None:
    train, val = fmnist
    assert (len(train), len(val)) == (60000, 10000)
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    assert torch.bincount(val.targets).tolist() == [1000] * 10
    assert int(train.targets[0]) == 9 and int(val.targets[0]) == 9  # both files start with an ankle boot
    batch, labels = next(iter(DataLoader(val, batch_size=256)))
    assert batch.shape == (256, 1, 28, 28) and batch.dtype == torch.float32 and labels.dtype == torch.int64
    assert batch.min() == 0.0 and batch.max() == 1.0  # ToTensor scaling: 0..255 -> [0, 1]
    assert abs(float(batch.mean()) - dataset_info("fashion_mnist").mean[0]) < 0.03


@needs_fmnist
def test_fashion_mnist_torchvision_layout_and_default_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist: tuple[ImageDataset, ImageDataset]
) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in DEBIAN_FMNIST.glob("*-ubyte.gz"):
        os.symlink(f, raw / f.name)
    val = build_split(spec("fashion_mnist", tmp_path), train=False)
    assert torch.equal(val.targets, fmnist[1].targets)
    # data_root unset: ~/data/FashionMNIST/raw when present, else the Debian files
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert len(build_split(spec("fashion_mnist", None), train=False)) == 10000
    make_fashion_mnist(tmp_path / "home" / "data", n_train=20, n_test=7)
    assert len(build_split(spec("fashion_mnist", None), train=False)) == 7


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_fixture(tmp_path: Path, gz: bool) -> None:
    make_fashion_mnist(tmp_path, n_train=30, n_test=10, gz=gz)
    bundle = build_datasets(spec("fashion_mnist", tmp_path))
    assert (len(bundle.train), len(bundle.val)) == (30, 10)
    assert bundle.val[3][0].shape == (1, 28, 28)


def test_fashion_mnist_malformed_idx(tmp_path: Path) -> None:
    make_fashion_mnist(tmp_path, n_train=10, n_test=10, gz=False)
    bad = tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01" + bad.read_bytes()[4:])  # wrong number of dimensions
    with pytest.raises(DataError) as err:
        build_split(spec("fashion_mnist", tmp_path), train=False)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Errors, subsets, augmentation


@pytest.mark.parametrize("dataset", DATASETS)
def test_missing_root_is_a_one_line_error(tmp_path: Path, dataset: str) -> None:
    root = tmp_path / "no" / "such" / "dir"
    with pytest.raises(DataError) as err:
        build_datasets(spec(dataset, root))
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert str(root) in message and "expected" in message and "\n" not in message


def test_stratified_indices_are_proportional_and_seeded() -> None:
    targets = torch.from_numpy(np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [60, 30, 10])))
    picked = stratified_indices(targets, 10, seed=0)
    assert torch.bincount(targets[picked], minlength=3).tolist() == [6, 3, 1]
    assert torch.equal(picked, stratified_indices(targets, 10, seed=0))
    assert not torch.equal(picked, stratified_indices(targets, 10, seed=1))
    assert picked.tolist() == sorted(set(picked.tolist()))
    counts = torch.bincount(targets[stratified_indices(targets, 7, seed=3)], minlength=3)
    assert counts.sum() == 7 and all(abs(c - e) < 1 for c, e in zip(counts.tolist(), [4.2, 2.1, 0.7], strict=True))
    assert torch.equal(stratified_indices(targets, 500, seed=0), torch.arange(100))


def test_subsets_through_the_spec(tmp_path: Path) -> None:
    make_cifar10(tmp_path, n_train=100, n_test=50)
    a = build_datasets(spec("cifar10", tmp_path, train_subset=20, val_subset=10, seed=0, augment=False))
    b = build_datasets(spec("cifar10", tmp_path, train_subset=20, val_subset=10, seed=0, augment=False))
    c = build_datasets(spec("cifar10", tmp_path, train_subset=20, val_subset=10, seed=1, augment=False))
    assert torch.bincount(a.train.targets, minlength=10).tolist() == [2] * 10  # labels are shuffled on disk
    assert torch.bincount(a.val.targets, minlength=10).tolist() == [1] * 10
    assert np.array_equal(a.train.items, b.train.items) and not np.array_equal(a.train.items, c.train.items)
    assert np.array_equal(a.val.items, c.val.items)  # the validation subset does not depend on the seed
    for i in range(len(a.train)):  # items and labels stay paired after subsetting
        x, y = a.train[i]
        assert torch.all(x[1] == cifar_green(y) / 255)


@pytest.mark.parametrize(("dataset", "pad", "flip"), [("cifar10", 4, True), ("fashion_mnist", 2, False)])
def test_augmentation_is_per_sample_crop_and_flip(tmp_path: Path, dataset: str, pad: int, flip: bool) -> None:
    make_cifar10(tmp_path, n_train=10, n_test=10)
    make_fashion_mnist(tmp_path, n_train=10, n_test=10)
    torch.manual_seed(0)
    train = build_split(spec(dataset, tmp_path, augment=True), train=True)
    plain = build_split(spec(dataset, tmp_path, augment=False), train=True)
    original = plain[0][0]
    batch, _ = next(iter(DataLoader(Subset(train, [0] * 16), batch_size=16)))  # one image, 16 times
    assert len({x.numpy().tobytes() for x in batch}) >= 8  # each sample draws its own crop
    matches = [crop_matches(x, original, pad) for x in batch]
    assert all(matches)  # every sample is a crop of the padded image (mirrored or not)
    mirrored = [all(m[2] for m in match) for match in matches]
    assert any(mirrored) if flip else not any(mirrored)
    plain_batch, _ = next(iter(DataLoader(Subset(plain, [0] * 4), batch_size=4)))
    assert all(torch.equal(x, original) for x in plain_batch)  # augment=False: no randomness


def test_restricted_imagenet_augmentation_is_random(tmp_path: Path) -> None:
    make_imagenet(tmp_path, [151], per_class=1)
    torch.manual_seed(0)
    train = build_split(spec("restricted_imagenet", tmp_path, augment=True), train=True)
    plain = build_split(spec("restricted_imagenet", tmp_path, augment=False), train=True)
    crops = [train[0][0] for _ in range(3)]
    assert all(c.shape == (3, 224, 224) for c in crops) and not torch.equal(crops[0], crops[1])
    assert torch.equal(plain[0][0], plain[0][0])
