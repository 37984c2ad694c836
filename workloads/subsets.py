"""Settings that take the first N images of a split (train_subset, val_subset, ...): N cannot exceed the split.

A larger N would silently use the whole split while runs.csv and the report state N; the split sizes are the
catalog's (workloads.catalog.DatasetInfo.train_size / val_size, the standard splits). Torch-free.
"""

from __future__ import annotations

from workloads import catalog
from workloads.schema import SpecError, join_path

# dotted setting -> the split it draws from ("train": the training images val_split leaves for training)
SUBSETS = (
    ("train_subset", "train"),
    ("val_subset", "val"),
    ("guard.examples", "train"),
    ("evaluate.max_examples", "val"),
    ("visualize.images", "val"),
    ("visualize.rank_examples", "val"),
)


def subset_problems(spec: object, path: str = "") -> list[SpecError]:
    """One SpecError per subset setting of a RunSpec (typed `object`: workloads.spec imports this module) larger
    than the split of its dataset it draws from; val_split (held out of the training images) must leave some."""
    dataset = str(getattr(spec, "dataset"))  # noqa: B009 - see the type above
    info = catalog.dataset_info(dataset)
    held_out = getattr(spec, "val_split", None) or 0
    errors: list[SpecError] = []
    if held_out >= info.train_size:
        errors.append(
            SpecError(
                join_path(path, "val_split"),
                f"expected fewer than the {info.train_size} images of {dataset}'s train split; got {held_out}",
            )
        )
        return errors
    for key, split in SUBSETS:
        section, _, leaf = key.rpartition(".")
        value = getattr(getattr(spec, section) if section else spec, leaf)
        size = info.train_size - held_out if split == "train" else info.val_size
        if value is not None and value > size:
            what = f"{dataset}'s {split} split has {size} images" + (
                f" once val_split holds out {held_out}" if split == "train" and held_out else ""
            )
            errors.append(SpecError(join_path(path, key), f"expected at most {size} ({what}); got {value}"))
    return errors
