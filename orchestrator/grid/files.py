"""Grid files: parse, validate and expand an experiment grid into fully resolved RunSpecs.

A grid file is YAML; it may hold several documents separated by `---` (e.g. bench, then train, then
evaluate, all with the same name). Keys of one document:

    name: paper-cifar10     required, [A-Za-z0-9_.-]+ not starting with . or -; results go to results/<name>/
    kind: train             train | evaluate | bench | visualize (default train)
    profile: generic        site profile: slurm_templates/<profile>.yaml, or a path to a .yaml file
    executor: auto          auto (slurm if sbatch is on PATH, else local) | slurm | local
    description: ...        free text
    report: {...}           `orchestrate report` settings of the experiment (orchestrator.grid.report_settings), e.g.
                            target_adv_acc: 0.6 (the time-to-target table's target)
    defaults: {...}         RunSpec settings every cell starts from (sections such as optimizer as mappings)
    grid: {...}             setting -> non-empty list of values; the cells are the cartesian product.
                            A section (shape, attack, ...) takes a list of mappings merged over the defaults'
                            section; `section.field` (e.g. attack.eps) varies one field of a section.

The settings and their valid values are those of workloads.spec.RunSpec (the one source of truth);
experiment, run_id and kind are set by the file itself. Every problem in any document is reported, one line
each, as `FILE:LINE: key.path: what was expected`, and nothing is returned unless the whole file is valid.
Cells get their readable run_ids from orchestrator.grid.run_ids; orchestrator.grid.document validates one document.

A grid file is user input and may be hostile: it is read as at most MAX_BYTES of UTF-8 text and composed by a
YAML loader that refuses, as one line and within a fraction of a second, a document nesting deeper than MAX_DEPTH
or expanding (an alias counted every time it is used) to more than MAX_NODES nodes: an alias bomb. Grid fields
never reach a shell: they are written to spec.json; the sbatch script holds the profile's settings (trusted
files) and the experiment name (NAME_RE).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import UserError
from orchestrator.grid import bases as grid_bases
from orchestrator.grid import judge_plan, snapshot_source
from orchestrator.grid.document import EXECUTORS, MAX_CELLS, TOP_LEVEL, Document, one_line, resolve_executor
from orchestrator.grid.names import NAME_RE
from orchestrator.grid.profiles import Profile
from orchestrator.grid.report_settings import ReportSettings, baseline_matches
from orchestrator.grid.run_ids import format_value
from orchestrator.grid.yaml12 import SafeLoader12
from workloads.spec import RunSpec

__all__ = ["EXECUTORS", "MAX_CELLS", "NAME_RE", "Grid", "GridError", "load_grid", "load_grids", "resolve_executor"]

MAX_BYTES = 1 << 20  # a grid file is a page of settings; a larger one is a mistake (or an attack)
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_NODES = 200_000  # nodes of a document once its aliases are expanded (a 10^4-cell list takes ~10^4)


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
    report: ReportSettings | None = None  # the document's report section (orchestrator.grid.report_settings)

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


class _TooLarge(yaml.YAMLError):
    """A document the bounded loader refuses to compose (too deep, too many nodes, a recursive alias)."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.problem, self.problem_mark = message, mark


class _BoundedLoader(SafeLoader12):
    """SafeLoader12 (YAML 1.2 floats: orchestrator.grid.yaml12) that counts what a document expands to while composing
    it: every node's size is 1 + the sizes of its children, an alias weighs what it refers to, and composing stops
    at the first node past MAX_NODES (time and memory stay linear in the file's size, where plain YAML is
    exponential in the number of aliases)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, once the node is complete
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise _TooLarge(
                    f"alias *{event.anchor} refers to a node that contains it (recursive)", event.start_mark
                )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _TooLarge(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if node is None:
            return None
        size = 1 + sum(self._sizes.get(id(child), 1) for child in _children(node))
        if size > MAX_NODES:
            raise _TooLarge(
                f"expands to more than {MAX_NODES} values (aliases counted each time they are used: an alias bomb?)",
                node.start_mark,
            )
        self._sizes[id(node)] = size
        return node


def _top_lines(node: yaml.Node) -> dict[str, int]:
    """A document's top-level key -> its line ("" -> the document's first line)."""
    lines = {"": node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            lines.setdefault(str(key.value), key.start_mark.line + 1)
    return lines


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


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
    text = _read_text(path, label)
    try:
        nodes, sizes, documents = _read_yaml(text)
    except _BadValue as exc:  # a tagged or odd scalar PyYAML cannot build (2026-13-45, !!int x)
        where = f"{label}:{exc.mark.line + 1}" if exc.mark is not None else label
        raise GridError([one_line(f"{where}: YAML value cannot be read: {exc}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark is not None else label
        problem = getattr(exc, "problem", None) or str(exc)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None:  # e.g. the unclosed [ that the problem belongs to
            problem = f"{problem} ({context} started on line {context_mark.line + 1})"
        what = "YAML document refused" if isinstance(exc, _TooLarge) else "YAML syntax error"
        raise GridError([one_line(f"{where}: {what}: {problem}")]) from None
    if not any(d is not None for d in documents):
        raise GridError([f"{label}: empty grid file; expected a mapping with keys {', '.join(TOP_LEVEL)}"])

    tops = [(i, data, _top_lines(node)) for i, (node, data) in enumerate(zip(nodes, documents, strict=True), start=1)
            if data is not None]  # fmt: skip  # an empty document (after a trailing ---) is none
    resolved, problems = grid_bases.resolve(label, tops)
    problems = [one_line(p) for p in problems]
    grids: list[Grid] = []
    docs: dict[int, Document] = {}
    owners: dict[tuple[str, str], tuple[int, int]] = {}  # (name, run_id) -> (document, line of its name)
    reports: dict[str, tuple[ReportSettings, int]] = {}  # name -> (its report section, the document giving it)
    for entry in resolved:
        number, data = entry.number, entry.data
        inherited = [nodes[i - 1] for i in reversed(entry.sources)]  # nearest base first: its lines win
        size = sizes[number - 1] + sum(sizes[i - 1] for i in entry.sources)
        doc = Document(label, path, number, nodes[number - 1], data, executor, size, inherited)
        parts = doc.load()
        problems += [p for p in doc.problems if p not in problems]
        if parts is None:
            continue
        grid = Grid(path, *parts[:5], description=parts.description, document=number, report=parts.report)
        docs[number] = doc
        grids.append(grid)
        if grid.report is not None and reports.setdefault(grid.name, (grid.report, number))[0] != grid.report:
            other = reports[grid.name][1]
            problems.append(doc.format("report", f"differs from document {other}'s report section; documents "
                                       f"with the same name share results/{grid.name}/ and one report"))  # fmt: skip
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
    problems += _source_snapshot_problems(grids, docs)
    for name, (settings, number) in reports.items():
        baseline = settings.target_baseline
        cells = [c for g in grids if g.name == name for c in g.cells if c.kind == "train"]
        if baseline and not any(baseline_matches(baseline, c.recipe, c.method) for c in cells):
            recipes = sorted({f"{c.recipe + '-' if c.recipe else ''}{c.method}" for c in cells})
            problems.append(docs[number].format("report.target.baseline", f"no train cell of experiment {name} is "
                            f"recipe {baseline!r}; its recipes: {', '.join(recipes) or 'none'}"))  # fmt: skip
    if problems:
        raise GridError(problems)
    return _with_judges(grids)


def _source_snapshot_problems(grids: list[Grid], docs: dict[int, Document]) -> list[str]:
    """One line per evaluate document asking for snapshots of a run of this file that writes none."""
    of = {id(c): g.document for g in grids for c in g.cells}
    out: list[str] = []
    for cell, why in snapshot_source.file_problems([c for g in grids for c in g.cells]):
        doc = docs[of[id(cell)]]
        at = next((p for p in ("grid.evaluate.source_snapshot", "defaults.evaluate.source_snapshot") if p in doc.lines),
                  snapshot_source.KEY)  # fmt: skip
        line = doc.format(at, f"{cell.run_id}: {why}")
        out += [line] if line not in out else []
    return out


def _with_judges(grids: list[Grid]) -> list[Grid]:
    """Each train document with snapshots followed by its judge document (orchestrator.grid.judge_plan)."""
    judged = [g for g in grids if g.kind == "train" and judge_plan.followed(g.cells)]
    several = {g.name for g in judged if sum(h.name == g.name for h in judged) > 1}
    ids = {id(g) for g in judged}
    out: list[Grid] = []
    for g in grids:
        out.append(g)
        if id(g) in ids:
            cells = judge_plan.judge_cells(g.name, g.arrays(), f"d{g.document}-" if g.name in several else "")
            what = f"the judge of document {g.document}'s snapshots"
            out.append(dataclasses.replace(g, kind="judge", cells=cells, description=what, report=None))
    return out


def _read_text(path: Path, label: str) -> str:
    """The file as text: at most MAX_BYTES, UTF-8 (one line saying where it is not)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise GridError([f"{label}: cannot read the grid file: {exc.strerror}"]) from None
    if len(data) > MAX_BYTES:
        raise GridError([f"{label}: larger than {MAX_BYTES >> 20} MiB; a grid file is a page of settings"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = f"0x{data[exc.start]:02x} at offset {exc.start}"
        raise GridError([f"{label}:{line}: not UTF-8 text (byte {byte}); a grid file is YAML"]) from None


def _read_yaml(text: str) -> tuple[list[yaml.Node], list[int], list[Any]]:
    """Nodes (for line numbers and duplicate keys), expanded sizes and data of every document."""
    loader = _BoundedLoader(text)
    try:
        nodes: list[yaml.Node] = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:  # check_node() said a document follows
                nodes.append(node)
        sizes = [loader._sizes.get(id(n), 1) for n in nodes]
        # Constructing a document flattens its merge keys (<<: *x) into the nodes themselves: the lines and the
        # duplicate-key check read the nodes as written.
        written = copy.deepcopy(nodes)
        return written, sizes, [_construct(loader, n) for n in nodes]
    finally:
        loader.dispose()


class _BadValue(Exception):
    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.mark = mark


def _construct(loader: _BoundedLoader, node: yaml.Node) -> Any:
    """The document's data; a value PyYAML fails to build (ValueError and kin, not a YAMLError) is reported with
    the line of the first scalar that fails on its own."""
    try:
        return loader.construct_document(node)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        for scalar in _scalars(node, set()):
            try:
                loader.construct_object(scalar)
            except (ValueError, TypeError, AttributeError, OverflowError):
                raise _BadValue(str(exc), scalar.start_mark) from None
        raise _BadValue(str(exc), None) from None


def _scalars(node: yaml.Node, seen: set[int]) -> list[yaml.Node]:
    if id(node) in seen:
        return []
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        return [node]
    return [s for child in _children(node) for s in _scalars(child, seen)]
