"""Grid files: parse, validate and expand an experiment grid into fully resolved RunSpecs.

A grid file is YAML; it may hold several documents separated by `---` (e.g. bench, then train, then
evaluate, all with the same name). Keys of one document:

    name: paper-cifar10     required, [A-Za-z0-9_.-]+; results go to results/<name>/
    kind: train             train | evaluate | bench | visualize (default train)
    profile: generic        site profile: slurm_templates/<profile>.yaml, or a path to a .yaml file
    executor: auto          auto (slurm if sbatch is on PATH, else local) | slurm | local
    description: ...        free text
    defaults: {...}         RunSpec settings every cell starts from (sections such as optimizer as mappings)
    grid: {...}             setting -> non-empty list of values; the cells are the cartesian product.
                            A section (shape, attack, ...) takes a list of mappings merged over the defaults'
                            section; `section.field` (e.g. attack.eps) varies one field of a section.

The settings and their valid values are those of workloads.spec.RunSpec (the one source of truth);
experiment, run_id and kind are set by the file itself. Every problem in any document is reported, one line
each, as `FILE:LINE: key.path: what was expected`, and nothing is returned unless the whole file is valid.
Cells get their readable run_ids from orchestrator.run_ids.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import UserError
from orchestrator.profiles import Profile, ProfileError, load_profile
from orchestrator.run_ids import derive_run_ids, format_value
from workloads.schema import parse
from workloads.spec import KINDS, RunSpec, check_spec

EXECUTORS = ("auto", "slurm", "local")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
TOP_LEVEL = ("name", "kind", "profile", "executor", "description", "defaults", "grid")
SET_BY_FILE = ("experiment", "run_id", "kind")  # RunSpec fields the file sets from name/kind and expansion
MAX_CELLS = 10_000  # a typo like a 100-value list in five keys should fail fast, not hang
SECTIONS: dict[str, type] = {
    name: tp
    for name, tp in typing.get_type_hints(RunSpec).items()
    if isinstance(tp, type) and dataclasses.is_dataclass(tp)
}
SETTINGS = tuple(f.name for f in dataclasses.fields(RunSpec) if f.name not in SET_BY_FILE)


class GridError(UserError):
    """An invalid grid file; `problems` holds one line per problem: `FILE:LINE: key.path: what was expected`."""


@dataclass
class Grid:
    """One document of a grid file, validated and expanded."""

    path: Path
    name: str
    kind: str
    profile: Profile
    executor: str  # resolved: "slurm" | "local"
    cells: list[RunSpec]
    description: str = ""
    document: int = 1  # position in its file, from 1

    def arrays(self) -> list[tuple[str, list[RunSpec]]]:
        """Cells grouped by resource shape (and resources): one submitit array each, keyed e.g. "n1g2"."""
        groups: dict[tuple[Any, ...], list[RunSpec]] = {}
        for cell in self.cells:
            key = (cell.shape.nodes, cell.shape.gpus_per_node, dataclasses.astuple(cell.resources))
            groups.setdefault(key, []).append(cell)
        bases = [f"n{n}g{g}" for n, g, _ in groups]
        names = []
        for (n, g, res), base in zip(groups, bases, strict=True):
            if bases.count(base) > 1:  # same shape, different resources: name what differs
                others = [r for nn, gg, r in groups if (nn, gg) == (n, g)]
                fields = dataclasses.fields(RunSpec().resources)
                diff = [
                    f"{f.name}{format_value(v)}"
                    for i, (f, v) in enumerate(zip(fields, res, strict=True))
                    if len({o[i] for o in others}) > 1
                ]
                base = "-".join([base, *diff])
            names.append(base)
        return list(zip(names, groups.values(), strict=True))


def resolve_executor(executor: str) -> str:
    """auto -> slurm when sbatch is on PATH, else local; slurm and local stay as they are."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor: expected one of {', '.join(EXECUTORS)}; got {executor!r}")
    if executor == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return executor


def load_grid(path: str | Path, executor: str | None = None) -> Grid:
    """A single-document grid file (see load_grids)."""
    grids = load_grids(path, executor)
    if len(grids) != 1:
        raise GridError([f"{path}: expected one YAML document; found {len(grids)} (use load_grids)"])
    return grids[0]


def load_grids(path: str | Path, executor: str | None = None) -> list[Grid]:
    """Every document of a grid file, validated and expanded; `executor` overrides each document's executor.

    Raises GridError listing every problem of every document; nothing is returned unless all are valid.
    """
    label = str(path)
    path = Path(path)
    if executor is not None and executor not in EXECUTORS:
        raise GridError([f"{label}: executor: expected one of {', '.join(EXECUTORS)}; got {executor!r}"])
    try:
        text = path.read_text()
    except OSError as exc:
        raise GridError([f"{label}: cannot read the grid file: {exc.strerror}"]) from None
    try:
        nodes, documents = _read_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark is not None else label
        problem = getattr(exc, "problem", None) or str(exc)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None:  # e.g. the unclosed [ that the problem belongs to
            problem = f"{problem} ({context} started on line {context_mark.line + 1})"
        raise GridError([f"{where}: YAML syntax error: {_one_line(str(problem))}"]) from None
    if not any(d is not None for d in documents):
        raise GridError([f"{label}: empty grid file; expected a mapping with keys {', '.join(TOP_LEVEL)}"])

    problems: list[str] = []
    grids: list[Grid] = []
    owners: dict[tuple[str, str], tuple[int, int]] = {}  # (name, run_id) -> (document, line of its name)
    for number, (node, data) in enumerate(zip(nodes, documents, strict=True), start=1):
        if data is None:  # an empty document, e.g. after a trailing ---
            continue
        doc = _Document(label, path, number, node, data, executor)
        grid = doc.load()
        problems += [p for p in doc.problems if p not in problems]
        if grid is None:
            continue
        grids.append(grid)
        for cell in grid.cells:
            first = owners.setdefault((grid.name, cell.run_id), (number, doc.line("name") or 0))
            if first[0] != number:
                problems.append(
                    doc.format(
                        "name",
                        f"run_id {cell.run_id!r} is also a cell of document {first[0]} "
                        f"(line {first[1]}); documents with the same name share results/{grid.name}/runs/",
                    )
                )
                break  # one line per document is enough to point at the clash
    if problems:
        raise GridError(problems)
    return grids


def _read_yaml(text: str) -> tuple[list[yaml.Node], list[Any]]:
    """Nodes (for line numbers and duplicate keys) and data of every document."""
    loader = yaml.SafeLoader(text)
    try:
        nodes: list[yaml.Node] = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:  # check_node() said a document follows
                nodes.append(node)
        return nodes, [loader.construct_document(n) for n in nodes]
    finally:
        loader.dispose()


class _Document:
    """Validation and expansion of one YAML document; problems collect in `self.problems`."""

    def __init__(self, label: str, path: Path, number: int, node: yaml.Node, data: Any, executor: str | None):
        self.label, self.path, self.number, self.data = label, path, number, data
        self.executor_override = executor
        self.problems: list[str] = []
        self.lines: dict[str, int] = {"": node.start_mark.line + 1}
        self._index_lines(node, "")

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
        return _one_line(f"{where}: {path}: {message}" if path else f"{where}: {message}")

    def report(self, path: str, message: str) -> None:
        text = self.format(path, message)
        if text not in self.problems:  # a bad default is seen once per cell; say it once
            self.problems.append(text)

    # -- top level ------------------------------------------------------------------------------------

    def load(self) -> Grid | None:
        data = self.data
        if not isinstance(data, dict):
            self.report("", f"expected a mapping with keys {', '.join(TOP_LEVEL)}; got {_describe(data)}")
            return None
        for key in data:
            if key not in TOP_LEVEL:
                self.report(str(key), f"unknown key; valid keys: {', '.join(TOP_LEVEL)}")
        name = self._name(data.get("name"))
        kind = self._choice(data, "kind", KINDS, "train")
        executor = self._executor(data)
        profile = self._profile(data.get("profile", "generic"))
        description = data.get("description", "")
        if not isinstance(description, str):
            self.report("description", f"expected a string; got {description!r}")
        defaults = self._mapping(data, "defaults")
        for key in SET_BY_FILE:
            if key in defaults:
                self.report(_join("defaults", key), "set by the grid file itself (top-level name/kind); remove it")
        axes = self._axes(self._mapping(data, "grid"))
        # Expand even when the top level has problems: every problem of the cells is reported in one go.
        cells = self._expand(name or "invalid", kind or "train", executor, profile, defaults, axes)
        if self.problems or name is None or kind is None or executor is None or profile is None:
            return None
        self._assign_run_ids(kind, cells, axes)
        if self.problems:
            return None
        return Grid(self.path, name, kind, profile, executor, [c for c, _ in cells], description, self.number)

    def _name(self, name: Any) -> str | None:
        if name is None:
            self.report("name", "required: the experiment name ([A-Za-z0-9_.-]+; results go to results/<name>/)")
        elif not isinstance(name, str) or not NAME_RE.match(name):
            self.report("name", f"expected letters, digits, '_', '.' or '-' only ([A-Za-z0-9_.-]+); got {name!r}")
        else:
            return name
        return None

    def _choice(self, data: dict[str, Any], key: str, valid: tuple[str, ...], default: str) -> str | None:
        value = data.get(key, default)
        if value not in valid:
            self.report(key, f"expected one of {', '.join(valid)}; got {value!r}")
            return None
        return str(value)

    def _executor(self, data: dict[str, Any]) -> str | None:
        chosen = self._choice(data, "executor", EXECUTORS, "auto")
        if self.executor_override is not None:
            chosen = self.executor_override
        return None if chosen is None else resolve_executor(chosen)

    def _profile(self, name: Any) -> Profile | None:
        if not isinstance(name, str) or not name:
            self.report("profile", f"expected a profile name or a path to a .yaml file; got {name!r}")
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
                self.report(path, f"expected a non-empty list of values (e.g. [{values!r}]); got {values!r}")
            elif not values:
                self.report(path, "expected a non-empty list of values; got []")
            else:
                axes.append((str(key), values))
        cells = 1
        for _, values in axes:
            cells *= len(values)
        if cells > MAX_CELLS:
            self.report("grid", f"expected at most {MAX_CELLS} cells; the lists give {cells}")
            return []
        return axes

    def _grid_key_ok(self, key: str, path: str) -> bool:
        section, _, sub = key.partition(".")
        if section in SET_BY_FILE:
            self.report(path, "set by the grid file itself (top-level name/kind); it cannot vary")
        elif section not in SETTINGS:
            self.report(path, f"unknown key; valid keys: {', '.join(SETTINGS)}, or section.field (e.g. attack.eps)")
        elif sub and section not in SECTIONS:
            self.report(path, f"{section} has no fields; sections: {', '.join(SECTIONS)}")
        elif sub and sub not in (fields := [f.name for f in dataclasses.fields(SECTIONS[section])]):
            self.report(path, f"unknown key; valid keys of {section}: {', '.join(fields)}")
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
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


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


def _describe(value: Any) -> str:
    return f"a {type(value).__name__}" if isinstance(value, (list, dict)) else repr(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())
