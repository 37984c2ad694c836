"""One document of a grid file: validation and expansion into RunSpecs (orchestrator.grid.files reads the file).

Every problem of the document is collected, one line each, as `FILE:LINE: key.path: what was expected`; a line is
printable (control characters escaped) and bounded in length whatever the file holds, since a grid file is user
input. Names that become paths match orchestrator.grid.names.NAME_RE, so nothing a cell names can leave the
results root. One concept: a document's keys checked against the spec and expanded into cells.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shutil
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from orchestrator.grid import replicates as grid_replicates
from orchestrator.grid.devices import gpu_only_problems
from orchestrator.grid.names import NAME_HELP, is_name, name_problems
from orchestrator.grid.profiles import Profile, ProfileError, load_profile
from orchestrator.grid.report_settings import ReportSettings, parse_section
from orchestrator.grid.run_ids import derive_run_ids
from workloads.schema import join_path, parse, show, unknown_key
from workloads.spec import KINDS, RunSpec, check_spec

EXECUTORS = ("auto", "slurm", "local")
_SETTINGS = ("name", "kind", "profile", "executor", "description", "defaults", "grid", "report", "replicates")
TOP_LEVEL = (*_SETTINGS, "base", "extends")  # base/extends: shared defaults across documents (grid_bases)
EXTENSION = "x-"  # top-level keys with this prefix are ignored: a place for YAML anchors (&common)
SET_BY_FILE = ("experiment", "run_id", "kind")  # RunSpec fields the file sets from name/kind and expansion
MAX_CELLS = 10_000  # a typo like a 100-value list in five keys should fail fast, not hang
MAX_CELLS_ENV = "FASTROBUST_MAX_CELLS"  # raises it for one submission
MAX_WORK = 5_000_000  # cells x values of the document: what expanding and validating it costs
MAX_DESCRIPTION = 10_000  # characters
MAX_LINE = 400  # characters of one problem line (a 1 MB value is not echoed back)
SECTIONS: dict[str, type] = {
    name: tp
    for name, tp in typing.get_type_hints(RunSpec).items()
    if isinstance(tp, type) and dataclasses.is_dataclass(tp)
}
SETTINGS = tuple(f.name for f in dataclasses.fields(RunSpec) if f.name not in SET_BY_FILE)


def resolve_executor(executor: str) -> str:
    """auto -> slurm when sbatch is on PATH, else local; slurm and local stay as they are."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor: expected one of {', '.join(EXECUTORS)}; got {executor!r}")
    if executor == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return executor


class Parts(NamedTuple):
    """A valid document's settings and cells (orchestrator.grid.files makes a Grid of them)."""

    name: str
    kind: str
    profile: Profile
    executor: str
    cells: list[RunSpec]
    description: str
    report: ReportSettings | None = None  # the document's report section (orchestrator.grid.report_settings)


def max_cells() -> int:
    """MAX_CELLS, or $FASTROBUST_MAX_CELLS when set to a whole number."""
    value = os.environ.get(MAX_CELLS_ENV, "")
    return int(value) if value.isdigit() else MAX_CELLS


class Document:
    """Validation and expansion of one YAML document; problems collect in `self.problems`."""

    def __init__(self, label: str, path: Path, number: int, node: yaml.Node, data: Any, executor: str | None,
                 size: int = 1, inherited: Sequence[yaml.Node] = ()) -> None:  # fmt: skip
        self.label, self.path, self.number, self.data, self.size = label, path, number, data, size
        self.executor_override = executor
        self.problems: list[str] = []
        self.lines: dict[str, int] = {"": node.start_mark.line + 1}
        self._index_lines(node, "")
        for base in inherited:  # a key the document took from a base (orchestrator.grid.bases) is found there
            self._index_lines(base, "")

    # -- reporting ------------------------------------------------------------------------------------

    def _index_lines(self, node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                sub = _join(path, str(key_node.value))
                if sub in seen:
                    self.problems.append(
                        self.format(sub, "duplicate key (YAML keeps only the last value)", key_node.start_mark.line + 1)
                    )
                seen.add(sub)
                self.lines.setdefault(sub, key_node.start_mark.line + 1)
                self._index_lines(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = _join(path, i)
                self.lines.setdefault(sub, item.start_mark.line + 1)
                self._index_lines(item, sub)

    def line(self, path: str) -> int | None:
        """Line of `path`, or of its nearest written parent (a missing key is reported where it belongs)."""
        while path not in self.lines:
            path = _parent(path)
        return self.lines[path]

    def format(self, path: str, message: str, line: int | None = None) -> str:
        where = f"{self.label}:{line or self.line(path)}"
        return one_line(f"{where}: {path}: {message}" if path else f"{where}: {message}")

    def report(self, path: str, message: str) -> None:
        text = self.format(path, message)
        if text not in self.problems:  # a bad default is seen once per cell; say it once
            self.problems.append(text)

    # -- top level ------------------------------------------------------------------------------------

    def load(self) -> Parts | None:
        data = self.data
        if not isinstance(data, dict):
            self.report("", f"expected a mapping with keys {', '.join(TOP_LEVEL)}; got {_describe(data)}")
            return None
        for key in data:
            if key not in TOP_LEVEL and not str(key).startswith(EXTENSION):
                self.report(str(key), unknown_key(key, TOP_LEVEL))
        name = self._name(data.get("name"))
        kind = self._choice(data, "kind", KINDS, "train")
        executor = self._executor(data)
        profile = self._profile(data.get("profile", "generic"))
        description = data.get("description", "")
        if not isinstance(description, str):
            self.report("description", f"expected a string; got {show(description)}")
        elif len(description) > MAX_DESCRIPTION:
            self.report("description", f"expected at most {MAX_DESCRIPTION} characters; got {len(description)}")
        defaults = self._mapping(data, "defaults")
        for key in SET_BY_FILE:
            if key in defaults:
                self.report(_join("defaults", key), "set by the grid file itself (top-level name/kind); remove it")
        axes = grid_replicates.seed_axis(data.get("replicates"), defaults, self._axes(self._mapping(data, "grid")),
                                         self.report)  # fmt: skip
        report = parse_section(data.get("report"), self.report)
        # Expand even when the top level has problems: every problem of the cells is reported in one go.
        cells = self._expand(name or "invalid", kind or "train", executor, profile, defaults, axes)
        if self.problems or name is None or kind is None or executor is None or profile is None:
            return None
        self._assign_run_ids(kind, cells, axes)
        if self.problems:
            return None
        return Parts(name, kind, profile, executor, [c for c, _ in cells], description, report)

    def _name(self, name: Any) -> str | None:
        if name is None:
            self.report("name", f"required: the experiment name ({NAME_HELP}; results go to results/<name>/)")
        elif not is_name(name):
            self.report("name", f"expected {NAME_HELP}; got {show(name)}")
        else:
            return str(name)
        return None

    def _choice(self, data: dict[str, Any], key: str, valid: tuple[str, ...], default: str) -> str | None:
        value = data.get(key, default)
        if value not in valid:
            self.report(key, f"expected one of {', '.join(valid)}; got {show(value)}")
            return None
        return str(value)

    def _executor(self, data: dict[str, Any]) -> str | None:
        chosen = self._choice(data, "executor", EXECUTORS, "auto")
        if self.executor_override is not None:
            chosen = self.executor_override
        return None if chosen is None else resolve_executor(chosen)

    def _profile(self, name: Any) -> Profile | None:
        if not isinstance(name, str) or not name:
            self.report("profile", f"expected a profile name or a path to a .yaml file; got {show(name)}")
            return None
        try:
            return load_profile(name, self.path.parent)
        except ProfileError as exc:
            for problem in exc.problems:
                self.report("profile", problem)
            return None

    def _mapping(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.report(key, f"expected a mapping of settings; got {_describe(value)}")
            return {}
        return value

    def _axes(self, grid: dict[str, Any]) -> list[tuple[str, list[Any]]]:
        """The valid `grid` entries as (key, values); every invalid one is reported and left out."""
        axes = []
        for key, values in grid.items():
            path = _join("grid", str(key))
            if not self._grid_key_ok(str(key), path):
                continue
            if not isinstance(values, list):
                self.report(path, f"expected a non-empty list of values (e.g. [{show(values)}]); got {show(values)}")
            elif not values:
                self.report(path, "expected a non-empty list of values; got []")
            else:
                axes.append((str(key), values))
        cells = 1
        for _, values in axes:
            cells *= len(values)
        if cells > (limit := max_cells()):
            self.report(
                "grid",
                f"expected at most {limit} cells; the lists give {cells} (split the grid into several, or raise the "
                f"limit for this submission: {MAX_CELLS_ENV}={cells} orchestrate submit ...)",
            )
            return []
        if cells * self.size > MAX_WORK:  # every cell copies the document's values: bounded time to validate
            self.report("grid", f"{cells} cells x {self.size} values each is more than {MAX_WORK} values to check")
            return []
        return axes

    def _grid_key_ok(self, key: str, path: str) -> bool:
        section, _, sub = key.partition(".")
        if section in SET_BY_FILE:
            self.report(path, "set by the grid file itself (top-level name/kind); it cannot vary")
        elif section not in SETTINGS:
            self.report(path, unknown_key(key, [*SETTINGS, *_section_fields()]))
        elif sub and section not in SECTIONS:
            self.report(path, f"{section} has no fields; sections: {', '.join(SECTIONS)}")
        elif sub and sub not in (fields := [f.name for f in dataclasses.fields(SECTIONS[section])]):
            self.report(path, unknown_key(sub, fields, f"of {section}"))
        else:
            return True
        return False

    # -- cells ----------------------------------------------------------------------------------------

    def _expand(
        self,
        name: str,
        kind: str,
        executor: str | None,
        profile: Profile | None,
        defaults: dict[str, Any],
        axes: list[tuple[str, list[Any]]],
    ) -> list[tuple[RunSpec, tuple[int, ...]]]:
        """Every cell as (RunSpec, index into each grid list); invalid cells are reported and left out."""
        cells = []
        for combo in itertools.product(*(range(len(values)) for _, values in axes)):
            raw: dict[str, Any] = {}
            origins: dict[str, str] = {}  # RunSpec key path -> where the user wrote it
            for key, value in defaults.items():
                _put(raw, str(key), value, str(key), _join("defaults", str(key)), origins)
            for (key, values), i in zip(axes, combo, strict=True):
                where = _join(_join("grid", key), i)
                section, _, sub = key.partition(".")
                if sub:
                    current = raw.get(section)
                    target = current if isinstance(current, dict) else {}
                    raw[section] = target = dict(target)
                    _put(target, sub, values[i], key, where, origins)
                else:
                    _put(raw, key, values[i], key, where, origins)
            if (
                profile is not None
                and profile.time_limit_min is not None
                and "resources.timeout_min" not in origins
                and isinstance(raw.setdefault("resources", {}), dict)
            ):
                raw["resources"] = {**raw["resources"], "timeout_min": profile.time_limit_min}
            raw.update(experiment=name, kind=kind)
            spec, errors = parse(RunSpec, raw)
            if not errors:
                errors = check_spec(spec)
            for error in errors:
                self.report(_user_path(origins, error.path), error.message)
            if not errors and self._cell_ok(spec, kind, executor, profile, origins):
                cells.append((spec, combo))
        return cells

    def _cell_ok(
        self, spec: RunSpec, kind: str, executor: str | None, profile: Profile | None, origins: dict[str, str]
    ) -> bool:
        """Rules that need the kind, executor or profile, beyond what workloads.spec checks."""
        before = len(self.problems)
        nodes_at = _user_path(origins, "shape.nodes")
        gpus_at = _user_path(origins, "shape.gpus_per_node")
        if executor == "local" and spec.shape.nodes > 1:
            self.report(
                nodes_at,
                f"executor local runs on this machine only: expected nodes 1; got "
                f"{spec.shape.nodes} (use executor: slurm)",
            )
        if executor == "slurm" and profile is not None:
            if profile.max_nodes is not None and spec.shape.nodes > profile.max_nodes:
                self.report(
                    nodes_at,
                    f"expected at most {profile.max_nodes} nodes (profile {profile.name}); got {spec.shape.nodes}",
                )
            if profile.max_gpus_per_node is not None and spec.shape.gpus_per_node > profile.max_gpus_per_node:
                self.report(
                    gpus_at,
                    f"expected at most {profile.max_gpus_per_node} GPUs per node "
                    f"(profile {profile.name}); got {spec.shape.gpus_per_node}",
                )
        for key, message in gpu_only_problems(spec, executor, profile):  # fp16 on a CPU cell
            # (orchestrator.grid.devices)
            self.report(_user_path(origins, key), message)
        for key, message in name_problems(spec, origins):  # nothing a cell names leaves the results root
            self.report(_user_path(origins, key), message)
        if kind == "evaluate" and not spec.evaluate.source_run:
            self.report(
                _user_path(origins, "evaluate.source_run"),
                "required for kind evaluate: the run_id of the trained run to evaluate",
            )
        if kind == "visualize" and not spec.visualize.source_runs:
            self.report(
                _user_path(origins, "visualize.source_runs"),
                "required for kind visualize: a non-empty list of trained run_ids",
            )
        return len(self.problems) == before

    def _assign_run_ids(
        self, kind: str, cells: list[tuple[RunSpec, tuple[int, ...]]], axes: list[tuple[str, list[Any]]]
    ) -> None:
        ids = derive_run_ids(kind, [spec for spec, _ in cells])
        first: dict[str, tuple[int, ...]] = {}
        blamed: set[str] = set()
        for (spec, combo), run_id in zip(cells, ids, strict=True):
            spec.run_id = run_id
            if run_id not in first:
                first[run_id] = combo
                continue
            other = first[run_id]
            # Blame the first grid list whose index differs: that value repeats (or sanitises to) the other.
            diff = [i for i, (a, b) in enumerate(zip(other, combo, strict=True)) if a != b]
            axis = axes[diff[0]][0] if diff else ""
            at = _join(_join("grid", axis), combo[diff[0]]) if diff else "grid"
            was = _join(_join("grid", axis), other[diff[0]]) if diff else "another cell"
            if at not in blamed:  # one line per repeated value, not one per cell it repeats in
                blamed.add(at)
                self.report(at, f"gives the same run_id {run_id!r} as {was}; each cell must differ")


# -- helpers -------------------------------------------------------------------------------------------


def _join(path: str, key: str | int) -> str:
    return join_path(path, key)


def _parent(path: str) -> str:
    """`a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> ``."""
    match = re.match(r"^(.*?)(\[\d+\]|\.[^.\[\]]*)$", path)
    return match.group(1) if match else ""


def _put(dst: dict[str, Any], key: str, value: Any, spec_path: str, user_path: str, origins: dict[str, str]) -> None:
    """dst[key] = value, merging mappings into mappings, and remember where each key path came from."""
    origins[spec_path] = user_path
    if isinstance(value, dict):
        merged = dict(dst[key]) if isinstance(dst.get(key), dict) else {}
        for k, v in value.items():
            _put(merged, str(k), v, _join(spec_path, str(k)), _join(user_path, str(k)), origins)
        dst[key] = merged
    else:
        dst[key] = value


def _user_path(origins: dict[str, str], spec_path: str) -> str:
    """Where the user wrote the value at `spec_path`; defaults.<path> for a value nobody wrote (add it there)."""
    path, suffix = spec_path, ""
    while path:
        if path in origins:
            return origins[path] + suffix
        parent = _parent(path)
        suffix = path[len(parent) :] + suffix
        path = parent
    return _join("defaults", spec_path)


def _section_fields() -> list[str]:
    """Every section.field a grid list may vary (attack.eps, optimizer.schedule, ...)."""
    return [f"{name}.{f.name}" for name, tp in SECTIONS.items() for f in dataclasses.fields(tp)]


def _describe(value: Any) -> str:
    return f"a {type(value).__name__}" if isinstance(value, (list, dict)) else show(value)


def one_line(text: str) -> str:
    """One printable, bounded line: whitespace runs become one space, other control characters are escaped
    (a key or value of the file cannot move the cursor or recolour the terminal), at most MAX_LINE characters."""
    text = " ".join(text.split())
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."
