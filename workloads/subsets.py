"""Settings that take the first N images of a split (train_subset, val_subset, ...): N cannot exceed the split.

A larger N would silently use the whole split while runs.csv and the report state N; the split sizes are the
catalog's (workloads.catalog.DatasetInfo.train_size / val_size, the standard splits). Torch-free.
"""

from __future__ import annotations

from workloads import catalog
from workloads.schema import SpecError, join_path

# dotted setting -> the split it draws from
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
    than the split of its dataset it draws from."""
    dataset = str(getattr(spec, "dataset"))  # noqa: B009 - see the type above
    info = catalog.dataset_info(dataset)
    errors: list[SpecError] = []
    for key, split in SUBSETS:
        section, _, leaf = key.rpartition(".")
        value = getattr(getattr(spec, section) if section else spec, leaf)
        size = info.train_size if split == "train" else info.val_size
        if value is not None and value > size:
            errors.append(
                SpecError(
                    join_path(path, key),
                    f"expected at most {size} ({dataset}'s {split} split has {size} images); got {value}",
                )
            )
    return errors
