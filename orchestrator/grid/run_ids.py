"""Readable run_ids: derived from a grid document's cells, never a scheduler id.

Format, per kind:

    train      [{recipe}-]{method}-n{nodes}g{gpus_per_node}-b{global_batch_size}-s{seed}   e.g. fast-n1g2-b256-s0
    bench      bench-{model}-n{nodes}g{gpus_per_node}                          e.g. bench-resnet50_cifar-n1g1
    evaluate   eval-{evaluate.source_run}                                      e.g. eval-fast-n1g2-b256-s0
    visualize  vis-{visualize.source_runs joined by _}

followed by `-{key}{value}` for every other setting that differs between the document's cells, in RunSpec
order (key = the setting's last name, e.g. -eps0.5; its dotted path with _ where two such names clash
or where the last name is also a top-level setting, e.g. -attack_precisionbf16 beside -precisionfp16;
numbers in %g form, booleans as true/false; optimizer.max_lr is left out of the id of a cell whose schedule does
not read it, unless the id would then clash with another cell's), then characters outside [A-Za-z0-9_.-]
replaced by _.

The rules live here so that a new kind or a new id field is one entry in ID_FIELDS (and one prefix below).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any

from workloads import schema
from workloads.spec import PEAK_SCHEDULES, RunSpec

# Settings spelled out in the run_id prefix of each kind; other settings that vary become -{key}{value}.
ID_FIELDS = {
    "train": ("recipe", "method", "shape.nodes", "shape.gpus_per_node", "global_batch_size", "seed"),
    "bench": ("model", "shape.nodes", "shape.gpus_per_node"),
    "evaluate": ("evaluate.source_run",),
    "visualize": ("visualize.source_runs",),
}
# The same for every cell of a document (experiment, kind; run_id is not assigned yet): never in the suffix.
SAME_IN_A_DOCUMENT = ("experiment", "run_id", "kind")


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """A RunSpec dict as {dotted name: value} (orchestrator.grid.recipe_key reads settings the same way)."""
    # a list of mappings (method_schedule) becomes a tuple of their values: hashable, formats as a_b_c
    return {
        path: tuple(tuple(v.values()) if isinstance(v, dict) else v for v in value)
        if isinstance(value, list)
        else value
        for path, value in schema.flatten(data).items()
    }


def format_value(value: Any) -> str:
    """A setting's value in a run_id or an array name: %g numbers, true/false, lists joined by _."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "_".join(format_value(v) for v in value)
    return "none" if value is None else str(value)


def derive_run_ids(kind: str, specs: list[RunSpec]) -> list[str]:
    """The readable run_ids of one document's cells, in order (format in the module docstring)."""
    flats = [flatten(s.to_dict()) for s in specs]
    skip = set(ID_FIELDS[kind]) | set(SAME_IN_A_DOCUMENT)
    varying = [k for k in flats[0] if k not in skip and len({f[k] for f in flats}) > 1] if flats else []
    leaves = [k.rsplit(".", 1)[-1] for k in varying]
    top = {f.name for f in dataclasses.fields(RunSpec)}
    labels = [
        k.replace(".", "_") if leaves.count(leaf) > 1 or (leaf != k and leaf in top) else leaf
        for k, leaf in zip(varying, leaves, strict=True)
    ]
    ids = []
    for spec, flat in zip(specs, flats, strict=True):
        shape = f"n{spec.shape.nodes}g{spec.shape.gpus_per_node}"
        prefix = {
            "train": f"{spec.recipe + '-' if spec.recipe else ''}{spec.method}-{shape}-b{spec.global_batch_size}"
            f"-s{spec.seed}",
            "bench": f"bench-{spec.model}-{shape}",
            "evaluate": f"eval-{spec.evaluate.source_run}",
            "visualize": "vis-" + "_".join(spec.visualize.source_runs),
        }[kind]
        unread = {"optimizer.max_lr"} if spec.optimizer.schedule not in PEAK_SCHEDULES else set()
        parts = [(f"-{lab}{format_value(flat[k])}", k in unread) for k, lab in zip(varying, labels, strict=True)]
        ids.append((prefix + "".join(p for p, _ in parts), prefix + "".join(p for p, drop in parts if not drop)))
    short = Counter(s for _, s in ids)  # a Counter, not list.count: 10 000 cells stay linear
    return [re.sub(r"[^A-Za-z0-9_.-]+", "_", s if short[s] == 1 else full) for full, s in ids]
