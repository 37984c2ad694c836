"""The grid-key reference, generated from the schema: every setting's type, default, valid values, the kinds that
read it and one line of meaning.

The meaning of a setting is the comment on its line in workloads/spec.py (or the comment lines just above it),
and a section's the docstring of its dataclass, so the reference has one owner and cannot drift from the code:
`python -m orchestrator.grid.keys` (or `orchestrate keys --markdown > docs/grid-keys.md`) rewrites
docs/grid-keys.md, and a test checks that the committed file equals what this module generates. Torch-free.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import sys
import tokenize
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.grid import document as grid_document
from orchestrator.grid.keys_prose import DOCUMENT_KEYS, FOOTER, HEADER
from workloads import layout
from workloads import spec as spec_module
from workloads.schema import KEYS_DOC, type_name
from workloads.spec import KIND_SECTIONS, RunSpec


@dataclass(frozen=True)
class Key:
    """One setting as the reference lists it."""

    path: str  # as written in defaults (nested) or in grid (section.field)
    type: str
    default: str
    allowed: str
    kinds: str
    meaning: str


def _comments() -> dict[int, str]:
    """Line number -> the text of the comment on that line of workloads/spec.py."""
    source = inspect.getsource(spec_module)
    found: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            found[tok.start[0]] = tok.string.lstrip("#").strip()
    return found


def _field_meanings(cls: type) -> dict[str, str]:
    """Field name -> its comment: the one on its line(s), else the comment lines right above it."""
    source = inspect.getsource(spec_module)
    comments = _comments()
    lines = source.splitlines()
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    meanings: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        end = stmt.end_lineno or stmt.lineno
        text = comments.get(end, "")
        if not text:
            above: list[str] = []
            line = stmt.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments.get(line, ""))
                line -= 1
            text = " ".join(above)
        # spec.py speaks Python (None); a grid file is YAML (null)
        meanings[stmt.target.id] = re.sub(r"\bNone\b", "null", text.replace("fmt: skip", "")).strip()
    return meanings


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def format_value(value: Any) -> str:
    """A default as YAML would write it: null, true, 0.1, [32, 64], fast."""
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e6 else repr(value)
    return json.dumps(value)


def allowed(meta: Mapping[str, Any]) -> str:
    """A field's valid range (workloads.schema metadata) in words."""
    parts = []
    if "choices" in meta:
        parts.append(" \\| ".join(meta["choices"]))
    if "ge" in meta:
        parts.append(f">= {meta['ge']:g}")
    if "gt" in meta:
        parts.append(f"> {meta['gt']:g}")
    if "pattern" in meta:
        parts.append(str(meta["expected"]))
    return "; ".join(parts)


def _kinds(top: str) -> str:
    readers = [kind for kind, keys in KIND_SECTIONS.items() if top in keys]
    if not readers:
        return "none (names the run)"
    return ", ".join(readers) if len(readers) < len(KIND_SECTIONS) else "all"


def sections() -> dict[str, type]:
    """The RunSpec fields that are sections (mappings of their own fields), in RunSpec order."""
    return dict(grid_document.SECTIONS)


def keys() -> list[Key]:
    """Every setting a grid may write, top level first, then each section's fields, in RunSpec order."""
    hints = typing.get_type_hints(RunSpec)
    top_meanings = _field_meanings(RunSpec)
    rows: list[Key] = []
    secs = sections()
    for f in dataclasses.fields(RunSpec):
        if f.name in grid_document.SET_BY_FILE or f.name in secs:
            continue
        rows.append(Key(f.name, type_name(hints[f.name]), format_value(_default(f)), allowed(f.metadata),
                        _kinds(f.name), top_meanings.get(f.name, "")))  # fmt: skip
    for name, cls in secs.items():
        sub_hints = typing.get_type_hints(cls)
        meanings = _field_meanings(cls)
        for f in dataclasses.fields(cls):
            rows.append(Key(f"{name}.{f.name}", type_name(sub_hints[f.name]), format_value(_default(f)),
                            allowed(f.metadata), _kinds(name), meanings.get(f.name, "")))  # fmt: skip
    return rows


def section_help(cls: type) -> str:
    """A section's docstring as one paragraph."""
    doc = cls.__doc__ or ""
    return " ".join(doc.split()) if not doc.startswith(f"{cls.__name__}(") else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if "\\|" not in text else text


def markdown() -> str:
    """docs/grid-keys.md."""
    out = [HEADER.strip("\n"), ""]
    out += ["## Document keys", "", "| key | meaning |", "|---|---|"]
    out += [f"| `{k}` | {v} |" for k, v in DOCUMENT_KEYS.items()]
    out += ["", "## Settings (`defaults:` and `grid:`)", ""]
    out += [f"Kinds: {', '.join(KIND_SECTIONS)}; \"all\" = every kind reads it. Types and ranges are checked when"
            " the grid is loaded; nothing is submitted unless every cell is valid.", ""]  # fmt: skip
    rows = keys()
    header = ["| key | type | default | allowed | kinds | meaning |", "|---|---|---|---|---|---|"]
    out += [*header, *(_row(k) for k in rows if "." not in k.path)]
    for name, cls in sections().items():
        out += ["", f"### `{name}`", ""]
        if text := section_help(cls):
            out += [text, ""]
        out += [*header, *(_row(k) for k in rows if k.path.startswith(f"{name}."))]
    out += ["", FOOTER.strip("\n"), ""]
    return "\n".join(out)


def _row(k: Key) -> str:
    cells = [f"`{k.path}`", k.type, f"`{k.default}`", k.allowed, k.kinds, k.meaning]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def plain() -> str:
    """One line per setting, for a terminal: key, type, default, allowed, kinds, meaning."""
    rows = keys()
    width = max(len(k.path) for k in rows)
    lines = [f"{k.path:<{width}}  {k.type}; default {k.default}" + (f"; {k.allowed.replace(chr(92), '')}"
             if k.allowed else "") + f"; read by {k.kinds}\n{'':<{width}}  {k.meaning}" for k in rows]  # fmt: skip
    return "\n".join(lines) + f"\n\nThe whole reference, with examples: {KEYS_DOC}\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/grid-keys.md (or the path given) from the schema."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0] if args else KEYS_DOC)
    target.parent.mkdir(parents=True, exist_ok=True)
    layout.write_text_atomic(target, markdown())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
