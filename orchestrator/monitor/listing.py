"""Status for scripts and the results root at a glance: `status --json` (every cell's fields as JSON) and
`orchestrate list` (the experiments under the results root with the count of cells in each state). Reads what
`status` reads (orchestrator.monitor.status.poll: one scheduler query per experiment). Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from orchestrator.monitor import status
from orchestrator.monitor.manifest import MANIFEST
from workloads import layout


def status_json(targets: dict[Path, list[str] | None]) -> str:
    """{"experiments": [{"name", "path", "counts", "cells": [every CellStatus field]}]} as indented JSON."""
    out: list[dict[str, Any]] = []
    for exp_dir, ids in targets.items():
        cells = status.poll(exp_dir, ids)
        out.append({"name": exp_dir.name, "path": str(exp_dir), "counts": status.counts(cells),
                    "cells": [dataclasses.asdict(c) for c in cells]})  # fmt: skip
    return json.dumps({"experiments": out}, indent=2, sort_keys=False) + "\n"


def experiments(root: Path) -> list[Path]:
    """The experiment folders under the results root: those with runs/ or a manifest (sorted by name)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and ((p / layout.RUNS).is_dir() or (p / MANIFEST).exists()))


def list_table(root: Path) -> str:
    """One line per experiment: name, cells, then the count of cells in each state that occurs."""
    rows: list[tuple[str, ...]] = [("experiment", "cells", *status.STATES)]
    for exp_dir in experiments(root):
        counts = status.counts(status.poll(exp_dir))
        rows.append((exp_dir.name, str(sum(counts.values())), *(str(counts.get(s, 0)) for s in status.STATES)))
    if len(rows) == 1:
        return f"no experiments under {root}\n"
    used = [i for i in range(len(rows[0])) if i < 2 or any(r[i] != "0" for r in rows[1:])]  # states that occur
    rows = [tuple(r[i] for i in used) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"
