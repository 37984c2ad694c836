"""val_split: N stratified training images held out of training, the run's validation data: disjoint from the
training subset and from the test set, class counts within one of proportional, the same across runs (any seed)
and world sizes, and what on-clock validation and the judge evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from tests.fixtures import make_cifar10
from workloads.assets.data import DataError, build_datasets, build_held_out, build_split
from workloads.spec import RunSpec, from_dict


def spec(root: Path, **kw: object) -> RunSpec:
    return from_dict({"dataset": "cifar10", "data_root": str(root), "augment": False, **kw})


def keys(items: np.ndarray) -> set[bytes]:
    return {bytes(x.tobytes()) for x in items}  # make_cifar10's random images are distinct


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cifar10(tmp_path_factory.mktemp("cifar"), n_train=310, n_test=40)  # 31 of each class


def test_the_split_is_disjoint_from_training_and_test_and_stratified(root: Path) -> None:
    s = spec(root, val_split=47, train_subset=100)
    data = build_datasets(s)
    held, train, test = keys(data.val.items), keys(data.train.items), keys(build_split(s, False).items)
    assert len(held) == 47 and len(train) == 100
    assert not held & train and not held & test
    counts = torch.bincount(data.val.targets, minlength=10).tolist()
    assert sum(counts) == 47 and all(abs(c - 4.7) < 1 for c in counts)  # ±1 of proportional (4 or 5 of 31 each)
    whole = spec(root, val_split=47)  # without train_subset: every other training image trains
    assert keys(build_split(whole, True).items) == keys(build_split(spec(root), True).items) - held


def test_the_split_is_the_same_for_every_seed_and_world_size(root: Path) -> None:
    a = build_held_out(spec(root, val_split=30, seed=0))
    b = build_held_out(spec(root, val_split=30, seed=5, shape={"gpus_per_node": 2}))
    assert np.array_equal(a.items, b.items) and torch.equal(a.targets, b.targets)
    train = build_split(spec(root, val_split=30, shape={"gpus_per_node": 2}), True)
    shards = [list(DistributedSampler(train, 2, r, shuffle=True, seed=0)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(len(train)))  # two ranks train on the remainder only
    assert not keys(a.items) & keys(train.items)


def test_without_val_split_the_test_set_validates_and_the_training_set_is_whole(root: Path) -> None:
    data = build_datasets(spec(root, val_subset=20))
    assert len(data.train) == 310 and keys(data.val.items) <= keys(build_split(spec(root), False).items)


def test_a_split_as_large_as_the_training_set_is_refused(root: Path) -> None:
    with pytest.raises(DataError, match="val_split: expected fewer than the 310 training images; got 310"):
        build_datasets(spec(root, val_split=310))
