"""The strict dict -> dataclass parser: unknown keys, wrong types and out-of-range values are errors.

Used by the spec (workloads.spec), the grid files and the site profiles (orchestrator), so a key means the same
thing and fails the same way everywhere. A field's valid range is its dataclass `metadata`: `choices(...)`,
`at_least(...)`, or {"pattern": compiled regex, "expected": what to say}. Every problem is collected with its key
path (`optimizer.lr`, `bench.methods[1]`), so a user sees them all at once. Torch-free.

Every value a YAML or JSON parser can produce meets its field's rule, whatever the field: a number is finite
(.nan, .inf and 1.0e400 are refused, also where no range is declared), an integer fits 64 bits (torch, numpy and
Slurm take int64), a string is at most MAX_STRING characters with no control characters (it may become a path,
a log line or a table cell). Messages echo at most a short prefix of the value (show).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
MAX_STRING = 4096  # PATH_MAX: no setting needs more
INT64 = 2**63 - 1
KEYS_DOC = "docs/grid-keys.md"  # every setting's type, default and meaning (orchestrator.grid.keys writes it)
SHORT_LIST = 10  # a section with at most this many keys is listed whole in an unknown-key message


class SpecError(ValueError):
    """A user error in a spec or grid: `path` is the key path, the message says what was expected."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


def at_least(low: float, strict: bool = False) -> dict[str, Any]:
    return {"gt" if strict else "ge": low}


def show(value: Any, limit: int = 60) -> str:
    """repr(value), shortened: a message never echoes a megabyte of user input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} characters)"


def _sane(value: Any) -> str | None:
    """What makes a well-typed value unusable whatever its field (None when nothing does)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "expected a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value <= INT64:
        return "expected an integer of at most 19 digits"
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return f"expected at most {MAX_STRING} characters; got {len(value)}"
        if not value.isprintable():
            return f"expected printable characters only (no control characters); got {show(value)}"
    return None


def unknown_key(key: Any, valid: Sequence[str], where: str = "", doc: str | None = KEYS_DOC) -> str:
    """The unknown-key message: every valid key when there are few, else the closest ones (difflib), whole, and
    where the rest are documented; `where` names the section (e.g. "of optimizer")."""
    of = f" {where}" if where else ""
    if len(valid) <= SHORT_LIST:
        listed = f"valid keys{of}: {', '.join(valid)}"
    else:
        close = difflib.get_close_matches(str(key), valid, n=4, cutoff=0.6)
        listed = f"closest valid keys{of}: {', '.join(close)}" if close else f"no valid key{of} is close"
    return f"unknown key; {listed}" + (f" (every key: {doc})" if doc else "")


def key_text(key: Any) -> str:
    """A mapping key as it appears in a key path: itself when short and printable, else shortened and escaped."""
    text = str(key)
    return text if len(text) <= 40 and text.isprintable() else show(text, 40)


def join_path(path: str, key: str | int) -> str:
    """The key path of `key` inside `path`: a.b, a[0] (a long or unprintable key shortened, see key_text)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = key_text(key)
    return f"{path}.{key}" if path else key


def type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _check_range(value: Any, meta: typing.Mapping[str, Any], path: str, errors: list[SpecError]) -> None:
    if "pattern" in meta and not meta["pattern"].match(value):
        errors.append(SpecError(path, f"expected {meta['expected']}; got {show(value)}"))
    if "choices" in meta and value not in meta["choices"]:
        errors.append(SpecError(path, f"expected one of {', '.join(meta['choices'])}; got {show(value)}"))
    if "ge" in meta and value < meta["ge"]:
        errors.append(SpecError(path, f"expected a value >= {meta['ge']}; got {show(value)}"))
    if "gt" in meta and value <= meta["gt"]:
        errors.append(SpecError(path, f"expected a value > {meta['gt']}; got {show(value)}"))


def _convert(tp: Any, value: Any, meta: typing.Mapping[str, Any], path: str, errors: list[SpecError]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        fits = [a for a in inner if isinstance(a, type) and _plain_fit(a, value)]  # e.g. int | str: the value's
        return _convert((fits or inner)[0], value, meta, path, errors)
    if origin is list:
        if not isinstance(value, list):
            errors.append(SpecError(path, f"expected {type_name(tp)}; got {show(value)}"))
            return value
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, meta, join_path(path, i), errors) for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path, errors)
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        errors.append(SpecError(path, f"expected {type_name(tp)}; got {show(value)}"))
        return value
    if (problem := _sane(value)) is not None:
        errors.append(SpecError(path, problem))
        return value
    value = float(value) if tp is float else value
    _check_range(value, meta, path, errors)
    return value


def _plain_fit(tp: type, value: Any) -> bool:
    """Whether `value` is of the plain type `tp` (bool is not an int here, as in _convert)."""
    if tp in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if tp is float else isinstance(value, tp)


def _from_dict(cls: type[T], data: Any, path: str, errors: list[SpecError]) -> T:
    if not isinstance(data, dict):
        errors.append(SpecError(path, f"expected a mapping; got {show(data)}"))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            errors.append(SpecError(join_path(path, str(key)), unknown_key(key, list(fields))))
            continue
        kwargs[key] = _convert(hints[key], value, fields[key].metadata, join_path(path, key), errors)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # only reachable when an earlier error left a wrong type behind
        errors.append(SpecError(path, str(exc)))
        return cls()


def parse(cls: type[T], data: Any, path: str = "") -> tuple[T, list[SpecError]]:
    """Parse `data` into `cls`; returns the object and every problem found (empty when valid)."""
    errors: list[SpecError] = []
    obj = _from_dict(cls, data, path, errors)
    return obj, errors


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a spec dict) as {dotted key path: leaf value}; lists are leaves."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        flat.update(flatten(value, path) if isinstance(value, Mapping) else {path: value})
    return flat
