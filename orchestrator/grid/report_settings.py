"""A grid file's `report:` section: settings of `orchestrate report` that belong to the experiment, not to a cell.

    report:
      target_adv_acc: 0.6555   # the time-to-target table's target: a fraction in (0, 1]
      target: 0.6555           # the same (give one of the two), or a rule fixed before the runs, relative to a
                               # baseline recipe ([RECIPE-]METHOD, as run ids begin) of the experiment:
      target: {share: 0.95, of: best_adv_acc, baseline: paper-pgd7}   # of: best_adv_acc (median over its
                               # runs of the best judged robust accuracy) | aa_acc (its pooled AutoAttack accuracy)

Strict like the rest of the file (orchestrator.grid.document reports each problem as one `FILE:LINE: key:
expected` line): unknown keys and values outside (0, 1] are refused. Documents with the same name share one
report, so their sections must agree. `orchestrate submit` records the section in
results/<experiment>/report-settings.json (REPORT_SETTINGS; removed when the grid has none), which
`orchestrate report` reads; its --target-adv-acc flag overrides it. Torch-free, no YAML: plain values in, JSON out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from workloads import layout
from workloads.schema import show, unknown_key

REPORT_KEYS = ("target_adv_acc", "target")
TARGET_KEYS = ("share", "of", "baseline")
TARGET_OF = ("best_adv_acc", "aa_acc")
REPORT_SETTINGS = "report-settings.json"  # in the experiment folder, beside manifest.json
TARGET_HELP = "a fraction in (0, 1], e.g. 0.6 for 60 %"


@dataclass(frozen=True)
class ReportSettings:
    target_adv_acc: float | None = None  # None: the report's stated rule
    target_share: float | None = None  # a relative target: share x (target_of of the target_baseline recipe)
    target_of: str | None = None
    target_baseline: str | None = None  # [RECIPE-]METHOD


def baseline_matches(baseline: str, recipe: str | None, method: str) -> bool:
    """Whether a train cell (its recipe name, method) is of the baseline recipe `[RECIPE-]METHOD`."""
    name, _, tail = baseline.rpartition("-")
    return tail == method and (name or None) == (recipe or None)


def _relative(value: dict[str, Any], problem: Callable[[str, str], None]) -> tuple[float, str, str] | None:
    ok = True
    for key in value:
        if key not in TARGET_KEYS:
            problem(f"report.target.{key}", f"unknown key; valid keys of report.target: {', '.join(TARGET_KEYS)}")
            ok = False
    share, of, baseline = value.get("share"), value.get("of", "best_adv_acc"), value.get("baseline")
    if (message := target_problem(share)) is not None:
        problem("report.target.share", message)
        ok = False
    if of not in TARGET_OF:
        problem("report.target.of", f"expected one of {', '.join(TARGET_OF)}; got {show(of)}")
        ok = False
    if not isinstance(baseline, str) or not baseline:
        problem(
            "report.target.baseline", f"expected a recipe as [RECIPE-]METHOD (e.g. paper-pgd7); got {show(baseline)}"
        )
        ok = False
    return (float(share), str(of), str(baseline)) if ok and share is not None else None


def target_problem(value: Any) -> str | None:
    """Why `value` is not a valid target_adv_acc (None when it is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
        return f"expected {TARGET_HELP}; got {show(value)}"
    return None


def parse_section(value: Any, problem: Callable[[str, str], None]) -> ReportSettings | None:
    """The document's report section (None when it has none, or an invalid one: each problem is passed to
    `problem(key path, message)`)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        got = f"a {type(value).__name__}" if isinstance(value, list) else show(value)
        problem("report", f"expected a mapping with keys {', '.join(REPORT_KEYS)}; got {got}")
        return None
    ok = True
    for key in value:
        if key not in REPORT_KEYS:
            problem(f"report.{key}", unknown_key(key, REPORT_KEYS, "of report"))
            ok = False
    target = value.get("target_adv_acc")
    if "target_adv_acc" in value and (message := target_problem(target)) is not None:
        problem("report.target_adv_acc", message)
        ok = False
    rule = value.get("target")
    if "target" in value and "target_adv_acc" in value:
        problem("report.target", "give one of report.target and report.target_adv_acc")
        return None
    if isinstance(rule, dict):
        relative = _relative(rule, problem)
        return ReportSettings(None, *relative) if ok and relative else None
    if "target" in value:
        if (message := target_problem(rule)) is not None:
            problem("report.target", message + " (or a mapping with keys " + ", ".join(TARGET_KEYS) + ")")
            return None
        target = rule
    return ReportSettings(None if target is None else float(target)) if ok else None


def save(exp_dir: Path, settings: ReportSettings | None) -> None:
    """Record an experiment's report settings (None: the grid has no report section; a stale file goes)."""
    path = exp_dir / REPORT_SETTINGS
    if settings is None:
        path.unlink(missing_ok=True)
        return
    exp_dir.mkdir(parents=True, exist_ok=True)
    layout.write_json_atomic(path, section(settings))


def section(settings: ReportSettings) -> dict[str, Any]:
    """The settings as the grid file's report section writes them (what parse_section reads back)."""
    if settings.target_share is not None:
        rule = {"share": settings.target_share, "of": settings.target_of, "baseline": settings.target_baseline}
        return {"target": rule}
    return {k: v for k, v in asdict(settings).items() if v is not None}


def record(documents: Iterable[tuple[Path, ReportSettings | None]]) -> None:
    """`orchestrate submit`: per experiment folder, the report section of its documents (grid.load_grids has
    checked that those of one experiment agree)."""
    chosen: dict[Path, ReportSettings | None] = {}
    for exp_dir, settings in documents:
        if chosen.get(exp_dir) is None:
            chosen[exp_dir] = settings
    for exp_dir, settings in chosen.items():
        save(exp_dir, settings)


def load(exp_dir: Path) -> ReportSettings:
    """The settings recorded for an experiment (none recorded: the defaults); a hand-edited file with a bad value
    is refused in one line."""
    path = exp_dir / REPORT_SETTINGS
    if not path.exists():
        return ReportSettings()
    try:
        data = layout.read_json(path)
    except (OSError, ValueError):  # json's errors are ValueErrors
        raise UserError(f"{path}: not readable JSON; resubmit the grid or delete the file") from None
    problems: list[str] = []
    settings = parse_section(data, lambda key, message: problems.append(f"{path}: {key}: {message}"))
    if problems:
        raise UserError(problems)
    return settings or ReportSettings()
