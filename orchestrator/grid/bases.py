"""Settings shared by the documents of one grid file: a document with `base: NAME` is not run; a document with
`extends: NAME` (or a list of names) starts from that base's keys.

Precedence: later wins. `extends: [A, B]` applies A, then B, then the document's own keys; mappings merge key by
key at every depth, anything else (a value, a list, null) replaces what came before. A base may extend bases.
Refused, one `FILE:LINE: key: what was expected` line each: a base name that is not a name, two bases of one
name, an unknown base, a cycle, a base that no document extends. A base may hold any document key (`name`
included): only the documents without `base:` run. Merging never
copies more than the documents hold: every value of a merged document was written once in the file, so the
bounded loader's limits (orchestrator.grid.files) still bound what is validated. Torch-free, no YAML: plain data in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.grid.names import NAME_HELP, is_name
from workloads.schema import show

OWN_KEYS = ("base", "extends")  # read here, never passed on to a merged document


@dataclass
class Resolved:
    """One document to validate: its merged data and the documents (numbers, from 1) its keys came from."""

    number: int
    data: Any
    sources: list[int] = field(default_factory=list)  # the bases it extends, nearest last


@dataclass
class _Doc:
    number: int
    data: dict[str, Any]
    line: int  # of the document's first key


def merge(under: Any, over: Any) -> Any:
    """`over` on top of `under`: mappings merge key by key at every depth; anything else replaces."""
    if not (isinstance(under, dict) and isinstance(over, dict)):
        return over
    merged = dict(under)
    for key, value in over.items():
        merged[key] = merge(merged[key], value) if key in merged else value
    return merged


def resolve(label: str, documents: list[tuple[int, Any, dict[str, int]]]) -> tuple[list[Resolved], list[str]]:
    """The runnable documents of a file, each merged over the bases it extends, and every problem found.

    `documents` holds (number, data, lines): lines maps a top-level key to its line in the file."""
    problems: list[str] = []

    def say(lines: dict[str, int], key: str, message: str) -> None:
        line = lines.get(key, lines.get("", 0))
        problems.append(f"{label}:{line}: {key}: {message}" if key else f"{label}:{line}: {message}")

    bases: dict[str, tuple[int, Any, dict[str, int]]] = {}
    for number, data, lines in documents:
        if not isinstance(data, dict) or "base" not in data:
            continue
        name = data["base"]
        if not is_name(name):
            say(lines, "base", f"expected a name for this base ({NAME_HELP}); got {show(name)}")
        elif name in bases:
            say(lines, "base", f"a second base named {name!r} (the first is document {bases[name][0]})")
        else:
            bases[name] = (number, data, lines)
    extended: set[str] = set()
    done: dict[str, Resolved | None] = {}  # each base is merged once, however many documents extend it

    def chain(number: int, data: dict[str, Any], lines: dict[str, int], stack: tuple[str, ...]) -> Resolved | None:
        names = data.get("extends", [])
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) < len(names):
            say(lines, "extends", f"expected a base name or a list of distinct base names; got {show(names)}")
            return None
        merged: Any = {}
        sources: list[int] = []
        for name in names:
            extended.add(name)
            if name in stack:
                cycle = " -> ".join([*stack[stack.index(name) :], name])
                say(lines, "extends", f"a cycle of bases: {cycle}")
                return None
            if name not in bases:
                known = f"bases of this file: {', '.join(bases)}" if bases else "this file has no base document"
                say(lines, "extends", f"unknown base {show(name)}; {known}")
                return None
            if name not in done:
                b_number, b_data, b_lines = bases[name]
                done[name] = chain(b_number, b_data, b_lines, (*stack, name))
            parent = done[name]
            if parent is None:
                return None
            merged = merge(merged, parent.data)
            sources += [*parent.sources, parent.number]
        own = {k: v for k, v in data.items() if k not in OWN_KEYS}
        return Resolved(number, merge(merged, own), list(dict.fromkeys(sources)))

    runnable: list[Resolved] = []
    for number, data, lines in documents:
        if not isinstance(data, dict):
            runnable.append(Resolved(number, data))
        elif "base" not in data:
            resolved = chain(number, data, lines, ())
            if resolved is not None:
                runnable.append(resolved)
        elif (name := data.get("base")) in bases and name not in done:  # a base no document reached yet
            done[name] = chain(number, data, lines, (name,))
    for name, (_, _, lines) in bases.items():
        if name not in extended:
            say(lines, "base", f"base {name!r} is extended by no document (extends: {name})")
    return runnable, list(dict.fromkeys(problems))
