"""What the report prints for names and numbers: approach names and order, dataset labels and order (all read
from workloads.catalog), the time unit of a table or figure, and the marks for missing and unfinished values.

Every report module (tables, Table I, report.md, figures) reads these, and this module reads nothing of the
report: that keeps the report's imports one-directional.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from workloads import catalog

DASH = "—"  # a value that does not exist (e.g. the best epoch of an unfinished run)
MARK = "†"  # an unfinished run's time (extrapolated or so far)


def approach_name(method: str) -> str:
    """The paper's name of a method (catalog label): pgd7 -> "7-Step PGD", fast -> "1-Step PGD", ..."""
    return catalog.method_info(method).label


def approach_order(method: str) -> tuple[int, int, str]:
    """Most attack steps first (as the paper), then catalog order; unknown names last."""
    return catalog.method_order(method)


def dataset_order(name: str) -> tuple[int, str]:
    """Catalog order, unknown names last."""
    return catalog.dataset_order(name)


def dataset_label(name: str) -> str:
    """The name tables and figures print ("CIFAR"); an unknown name as it is."""
    return catalog.DATASETS[name].label if name in catalog.DATASETS else name


@dataclass(frozen=True)
class Unit:
    name: str
    seconds: float


UNITS = (Unit("hours", 3600.0), Unit("minutes", 60.0), Unit("seconds", 1.0))


def pick_unit(seconds: Iterable[float | None]) -> Unit:
    """Hours when the largest time is at least an hour (as the paper), else minutes, else seconds."""
    largest = max((s for s in seconds if s is not None), default=0.0)
    return next((u for u in UNITS if largest >= u.seconds), UNITS[-1])


def fmt_time(seconds: float, unit: Unit) -> str:
    v = seconds / unit.seconds
    return f"{v:.1f}" if v >= 0.1 or v == 0 else f"{v:.2g}"


def csv_number(value: float | None) -> str:
    """A number as the report's CSVs write it (%.6g; empty for a missing value)."""
    return "" if value is None else f"{value:.6g}"


def to_hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600
