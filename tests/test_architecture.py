"""The package map holds: modules live in their rooms, no room imports a room above it, no import cycles, workloads
never import orchestrator, the orchestrator stays torch-free, unittest/mock only in tests/, and no module over 400
lines without saying why it is one concept.

Rooms, top to bottom (a module may import its own room and the rooms below it, never one above):

    orchestrator: cli (and the job shim) > report > collect > submit > monitor > estimate > grid > errors
    workloads:    kinds > entry > training > adversarial > runtime > assets > the contract at the package top
                  (catalog, schema, spec, layout, checkpoint_record)

The orchestrator as a whole sits above workloads (it imports the contract and a few torch-free modules; never the
reverse). A room is a sub-package; a flat module at a package top is a room of its own, and only the modules of
FLAT may be flat: a new module goes into a room.

Imports are read with `ast` (nothing is executed) except in the torch test, which must import for real: it runs in a
subprocess so this process's sys.modules (which the other tests fill with torch) does not matter.
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workloads")
MAX_LINES = 400
ONE_CONCEPT = "one concept"
TEST_ONLY = ("unittest", "mock")  # test doubles; production code must not patch at run time
# The modules allowed at each package's top (the job shim: jobs pickled before the move name orchestrator.job).
FLAT = {
    "orchestrator": {"__init__", "cli", "errors", "collect", "job"},
    # the torch-free contract the orchestrator reads too: subsets (split limits, checked by spec), snapshot_choice
    # (which judged snapshot an evaluate cell reads) and stage (a running cell's stage.json)
    "workloads": {
        "__init__",
        "catalog",
        "schema",
        "spec",
        "layout",
        "checkpoint_record",
        "entry",
        "subsets",
        "snapshot_choice",
        "stage",
    },
}
# Top to bottom; one tuple per level (rooms of one level may import each other only through no cycle).
ROOM_ORDER: tuple[tuple[str, ...], ...] = (
    ("orchestrator.cli", "orchestrator.job"),
    ("orchestrator.report",),
    ("orchestrator.collect",),
    ("orchestrator.submit",),
    ("orchestrator.monitor",),
    ("orchestrator.estimate",),
    ("orchestrator.grid",),
    ("orchestrator.errors", "orchestrator"),
    ("workloads.kinds",),
    ("workloads.entry",),
    ("workloads.training",),
    ("workloads.adversarial",),
    ("workloads.runtime",),
    ("workloads.assets",),
    (
        "workloads",
        "workloads.catalog",
        "workloads.schema",
        "workloads.spec",
        "workloads.layout",
        "workloads.checkpoint_record",
        "workloads.subsets",
        "workloads.snapshot_choice",
        "workloads.stage",
    ),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files() -> dict[str, Path]:
    """Module name -> file for every module of the two packages."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def repo_files_outside_tests() -> list[Path]:
    """Every .py file of the checkout except tests/, hidden folders (.venv, caches), build output and results."""
    skip = {"tests", "build", "results"}
    return [
        p
        for p in sorted(REPO.rglob("*.py"))
        if not any(part.startswith(".") or part in skip for part in p.relative_to(REPO).parts[:-1])
    ]


def imported_names(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import in the file, function-level and TYPE_CHECKING ones included.

    `from a import b` yields `a.b`: `resolve` keeps its longest prefix that is a module (`a` when b is a name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def room(module: str) -> str:
    """A module's room: its sub-package under orchestrator/ or workloads/, or itself when it is flat at the top."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and is_package(parts)) else module


def is_package(parts: list[str]) -> bool:
    return (REPO.joinpath(*parts) / "__init__.py").is_file()


def level(module: str) -> int:
    return next(i for i, rooms in enumerate(ROOM_ORDER) if room(module) in rooms)


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is a module of the packages (None: a third-party or stdlib import)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported module of the packages: first line importing it}."""
    modules = package_files()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for line, imported in imported_names(path):
            target = resolve(imported, modules)
            if target is not None and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a, b, ..., a) through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(component, graph) for component in components]


def _cycle_in(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component (BFS)."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle found in component {component}")  # unreachable for a Tarjan component


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


# ---------------------------------------------------------------------------------------------------------------


def test_the_import_walk_sees_known_edges() -> None:
    """Guards the walker itself: an empty graph would pass every other test here."""
    graph = import_graph()
    assert "orchestrator.errors" in graph["orchestrator.cli"]
    assert "workloads.spec" in graph["orchestrator.grid.files"]
    assert sum(len(edges) for edges in graph.values()) > 20


@pytest.mark.parametrize("package", PACKAGES)
def test_only_the_allowed_modules_are_flat(package: str) -> None:
    flat = {p.stem for p in (REPO / package).glob("*.py")}
    extra, missing = sorted(flat - FLAT[package]), sorted(FLAT[package] - flat)
    assert not extra, f"{package}/ takes no new flat module ({', '.join(extra)}): put it in a room of {package}/"
    assert not missing, f"FLAT names modules {package}/ no longer has: {', '.join(missing)}"


def test_every_room_has_its_place_in_the_order() -> None:
    rooms = {room(module) for module in package_files()}
    placed = {r for level_rooms in ROOM_ORDER for r in level_rooms}
    assert rooms <= placed, f"rooms missing from ROOM_ORDER: {sorted(rooms - placed)}"
    assert placed <= rooms, f"ROOM_ORDER names rooms that do not exist: {sorted(placed - rooms)}"


def test_no_room_imports_a_room_above_it() -> None:
    graph = import_graph()
    upward = [
        f"{module} (line {line}) imports {target}: {room(target)} is above {room(module)}"
        for module, edges in sorted(graph.items())
        for target, line in sorted(edges.items())
        if level(target) < level(module)
    ]
    assert not upward, "imports against the room order (see this file's docstring):\n" + "\n".join(upward)


def test_the_room_order_sees_an_upward_import() -> None:
    """Guards the check itself: a training module importing a kind is upward, the reverse is not."""
    assert level("workloads.kinds.train") < level("workloads.training.engine") < level("workloads.spec")
    assert level("orchestrator.cli") < level("orchestrator.submit.launch") < level("orchestrator.grid.files")
    assert room("orchestrator.grid.files") == "orchestrator.grid" and room("workloads.spec") == "workloads.spec"


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_the_entry_points_still_run() -> None:
    """Job scripts and docs start `python -m workloads.entry` and `python -m workloads.kinds.train`."""
    for module in ("workloads.entry", "workloads.kinds.train"):
        out = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0 and "usage:" in out.stdout, f"python -m {module} --help:\n{out.stderr[-2000:]}"


def test_cycle_finder_reports_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(["a", "b", "c", "a"], graph) == "a (line 1) -> b (line 2) -> c (line 3) -> a"


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = [describe(c, graph) for c in cycles(graph)]
    assert not found, "import cycles (function-level imports count too):\n" + "\n".join(found)


def test_workloads_never_import_orchestrator() -> None:
    modules = package_files()
    bad = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for module, path in modules.items()
        if module.startswith("workloads")
        for line, name in imported_names(path)
        if name == "orchestrator" or name.startswith("orchestrator.")
    ]
    assert not bad, "workloads must not import the orchestrator (data flows one way):\n" + "\n".join(sorted(set(bad)))


def test_orchestrator_never_loads_torch() -> None:
    """Import every orchestrator module, in order, in a fresh interpreter; name the first one that loads torch."""
    names = sorted(m for m in package_files() if m.split(".")[0] == "orchestrator")
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        print(json.dumps(name)); break\n"
        "else:\n"
        "    print(json.dumps(None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"importing the orchestrator failed:\n{out.stderr[-3000:]}"
    culprit = json.loads(out.stdout.strip().splitlines()[-1])
    assert culprit is None, f"importing {culprit} loads torch (the orchestrator runs on login nodes without it)"


def test_unittest_and_mock_only_in_tests() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in repo_files_outside_tests()
        for line, name in imported_names(path)
        if name.split(".")[0] in TEST_ONLY
    ]
    assert not bad, "unittest / mock belong under tests/:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_are_short_or_say_why(package: str) -> None:
    too_long = []
    for name, path in package_files().items():
        if name.split(".")[0] != package:
            continue
        text = path.read_text()
        docstring = " ".join((ast.get_docstring(ast.parse(text)) or "").split()).lower()
        lines = len(text.splitlines())
        if lines > MAX_LINES and ONE_CONCEPT not in docstring:
            too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
    assert not too_long, (
        f"modules over {MAX_LINES} lines whose docstring does not say why they are {ONE_CONCEPT!r}:\n"
        + "\n".join(too_long)
    )
