"""Recipe identity: a recipe is every setting of a train cell but its seed and its run-specific fields, so two
runs of one recipe (replicates) differ only in seed. This module is the one owner of that rule; collect writes
its answers into runs.csv (recipe_key, recipe_label and a column per setting that varies) and the report reads
them back from there (it reads CSVs only).

    recipe_key   "method=fast;optimizer.schedule=cyclic;shape.gpus_per_node=2": the settings that vary across the
                 experiment's train cells (RunSpec order, values as run_ids prints them); "" when one recipe
    recipe_label the grid's recipe name when set, else the varying settings in words ("fast, schedule cyclic")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.grid.run_ids import flatten, format_value
from workloads.spec import RunSpec

# Not part of a recipe: the seed (replicates differ in it), names and paths, where and how the run executes.
NOT_RECIPE = ("experiment", "run_id", "kind", "seed", "data_root", "tensorboard", "checkpoint_every_min",
              "collective_timeout_s", "threads")  # fmt: skip
NOT_RECIPE_PREFIXES = ("resources.", "bench.", "evaluate.", "visualize.")
# The lr schedule: runs.csv carries these always (the lever a time-to-target table compares).
SCHEDULE_SETTINGS = tuple(f"optimizer.{k}" for k in flatten(RunSpec().to_dict()["optimizer"]))
# Table I spreads these over its columns (approach rows, GPU columns): not part of a row's name.
TABLE_AXES = ("method", "shape.nodes", "shape.gpus_per_node")
SEP, EQ = ";", "="
PAPER = "paper"  # the grids' recipe name for the paper's own recipe: the default baseline, listed first


def is_recipe_setting(key: str) -> bool:
    return key not in NOT_RECIPE and not key.startswith(NOT_RECIPE_PREFIXES)


def varying_settings(specs: Sequence[RunSpec]) -> list[str]:
    """The recipe settings (dotted, RunSpec order) whose values differ between the given train cells."""
    flats = [flatten(s.to_dict()) for s in specs]
    if not flats:
        return []
    return [k for k in flats[0] if is_recipe_setting(k) and len({format_value(f[k]) for f in flats}) > 1]


def recipe_key(spec: RunSpec, varying: Sequence[str]) -> str:
    """The cell's recipe among cells whose varying recipe settings are `varying` (format: module docstring)."""
    flat = flatten(spec.to_dict())
    return SEP.join(f"{k}{EQ}{format_value(flat[k])}" for k in varying)


def parse_key(key: str) -> dict[str, str]:
    """recipe_key's settings back as {dotted name: value text} (values never hold ';': run_ids' format)."""
    return dict(part.split(EQ, 1) for part in str(key).split(SEP) if EQ in part)


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def label_of(settings: Mapping[str, str], recipe: str | None = None) -> str:
    """A readable name: the grid's recipe name, else the settings ("fast, schedule cyclic, max_lr 0.2"; unset ones,
    none, left out as run_ids leaves them out)."""
    if recipe:
        return recipe
    return ", ".join(v if k == "method" else f"{_leaf(k)} {v}" for k, v in settings.items() if v != "none")


def row_names(keys: Sequence[str]) -> list[str]:
    """Names for Table I rows from their recipe_keys (TABLE_AXES are never named): a row with a recipe name is named
    by it, plus the settings that tell it from another row of the same name and method; a row without one by its
    settings.
    The empty key (one recipe per approach) names nothing: ""."""
    parsed = [parse_key(k) for k in keys]
    names = []
    for settings in parsed:
        rest = {k: v for k, v in settings.items() if k not in TABLE_AXES}
        name = rest.pop("recipe", None)
        if name is None or name == "none":
            names.append(label_of(rest))
            continue
        same = [p for p in parsed if p.get("recipe") == name and p.get("method") == settings.get("method")]
        differ = {k: v for k, v in rest.items() if any(p.get(k) != v for p in same)}
        names.append(", ".join([name, *(f"{_leaf(k)} {v}" for k, v in differ.items())]))
    return names


def recipe_columns(spec: RunSpec, varying: Sequence[str]) -> dict[str, Any]:
    """runs.csv's added columns for a train cell: recipe_key, recipe_label, the schedule settings and every
    setting in `varying` (dotted names), values as RunSpec holds them."""
    flat = flatten(spec.to_dict())
    key = recipe_key(spec, varying)
    label = label_of({k: v for k, v in parse_key(key).items() if k != "recipe"}, spec.recipe)
    out: dict[str, Any] = {"recipe_key": key, "recipe_label": label}
    for k in (*SCHEDULE_SETTINGS, *varying):
        value = flat[k]
        out[k] = format_value(value) if isinstance(value, (tuple, list)) else value
    return out


def added_columns(varying: Sequence[str]) -> list[str]:
    """The runs.csv columns recipe_columns fills, in order (the schedule's first, then the other varying ones)."""
    return ["recipe_key", "recipe_label", *SCHEDULE_SETTINGS, *(k for k in varying if k not in SCHEDULE_SETTINGS)]


def row_key(key: str) -> str:
    """A recipe_key without TABLE_AXES: the recipes Table I puts in one row (their runs spread over its columns)."""
    return SEP.join(f"{k}{EQ}{v}" for k, v in parse_key(key).items() if k not in TABLE_AXES)
