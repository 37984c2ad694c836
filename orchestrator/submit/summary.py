"""What a submission is about to do, said before the first cell runs: cells and arrays per document.

An array is what the scheduler sees: one per resource shape, split at the cluster's MaxArraySize on Slurm; the
local executor runs a shape's cells one after the other as one array. Torch-free.
"""

from __future__ import annotations

from orchestrator.submit.plan import Plan


def arrays_of(p: Plan, limit: int | None) -> int:
    """How many arrays `p`'s cells to submit make (local: one per shape)."""
    if p.grid.executor == "local" or not limit:
        return len(p.arrays())
    return sum(-(-len(cells) // limit) for _, cells in p.arrays())


def plan_lines(plans: list[Plan], limit: int | None) -> list[str]:
    """One line per document with cells to submit, e.g.
    `to submit: quickstart document 1 (train): 2 cell(s) in 1 array(s) (n1g1), run here one at a time`."""
    lines = []
    for p in plans:
        if not p.submit:
            continue
        shapes = ", ".join(name for name, _ in p.arrays())
        where = "run here one at a time" if p.grid.executor == "local" else "on Slurm"
        lines.append(f"to submit: {p.grid.name} document {p.grid.document} ({p.grid.kind}): {len(p.submit)} cell(s) "
                     f"in {arrays_of(p, limit)} array(s) ({shapes}), {where}")  # fmt: skip
    return lines
