"""What checkpoint.save wrote (run_dir/checkpoints.json: size and sha256 per file) and a cheap structural check of
a checkpoint file against it, for `orchestrate status` (torch-free: the orchestrator never imports torch).

A finished run whose checkpoint is missing, torn or replaced still has its result.json; the evaluate cells that read
it would fail at load time. Loading every checkpoint to find out is far too slow for a status poll of 10^4 cells, so
the check is structural: the file exists, its size is the size the writer recorded, it begins with a zip local
header and ends with a zip end-of-central-directory record (torch.save writes a zip archive; a plain pickle, a
truncated file or a file of another size fails). The sha256 (of the file as it is on disk right after the write)
is recorded for a full check (`sha256sum -c`, or a job that wants to be sure) but never computed by status: one
open, fstat and two small reads per checkpoint. Runs written before the record existed get the zip check only.
checkpoint.save is wrapped by `recorded`, so every save (end of epoch, mid-epoch, best) updates the record.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from workloads import layout

RECORD = "checkpoints.json"
NAMES = (layout.CKPT_BEST, layout.CKPT_LAST)  # the files evaluate cells read (checkpoint: best | last)
PREV = "checkpoint-prev.pt"  # workloads.assets.checkpoint.CKPT_PREV: the generation before checkpoint-last.pt
ZIP_LOCAL = b"PK\x03\x04"
ZIP_END = b"PK\x05\x06"  # end of central directory: the last 22 bytes of a zip without a comment
END_SIZE = 22
TAIL = 1024  # how much of the end is read: the end record may be followed by a (short) archive comment

P = ParamSpec("P")
R = TypeVar("R")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_small(path: str) -> bytes | None:
    """A small file's bytes, None when it cannot be read: plain os calls, no buffered file object (status reads
    a few files of each of 10^4 run directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def load(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The record of a run directory ({} when there is none or it does not parse)."""
    try:
        data = json.loads(read_small(os.path.join(run_dir, RECORD)) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def record(path: str | os.PathLike[str], previous: dict[str, Any] | None = None) -> None:
    """Note the size and sha256 of a checkpoint that was just written completely (rank 0, holding the run dir).
    `previous` is the record of checkpoint-last.pt before this save: it now describes checkpoint-prev.pt."""
    path = Path(path)
    entries = load(path.parent)
    entries[path.name] = {"size": path.stat().st_size, "sha256": _digest(path)}
    prev = path.with_name(PREV)
    if path.name == layout.CKPT_LAST and previous is not None and prev.exists():
        entries[PREV] = previous
    layout.write_json_atomic(path.parent / RECORD, entries)


def recorded(save: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R]:
    """Decorator for checkpoint.save(path, ...): after the write, record what was written (see record)."""

    @functools.wraps(save)
    def wrapper(path: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        previous = load(Path(path).parent).get(Path(path).name)
        result = save(path, *args, **kwargs)
        record(path, previous if Path(path).name == layout.CKPT_LAST else None)
        return result

    return wrapper


def problem(path: str | os.PathLike[str], expected: dict[str, Any] | None = None) -> str:
    """Why `path` cannot be a complete checkpoint ("" when it looks like one): missing, truncated (no zip end
    record), not a torch.save file (a plain pickle, anything else), or replaced (a complete zip of another size
    than the writer recorded: another run's checkpoint, a foreign torch.save file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, len(ZIP_LOCAL), 0)
        tail = os.pread(fd, TAIL, max(0, size - TAIL))
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    finally:
        os.close(fd)
    want = expected.get("size") if expected else None
    if not isinstance(want, int):
        want = None
    if size == 0 or head != ZIP_LOCAL:
        if size == 0 or head == ZIP_LOCAL[: len(head)]:
            return f"truncated: {size} of {want} bytes" if want is not None else "empty"
        return "not a torch.save file (a plain pickle)" if head[:1] == b"\x80" else "not a torch.save file"
    if not _ends_with_zip_end(tail):
        return f"truncated: {size} of {want} bytes" if want is not None else f"truncated: no zip end in {size} bytes"
    if want is not None and size != want:
        return f"replaced: {size} bytes, {want} written"
    return ""


def _ends_with_zip_end(tail: bytes) -> bool:
    """The end-of-central-directory record closes the file: its signature, then 18 bytes, then exactly the archive
    comment its last field announces (so a torn file whose data happens to hold the signature does not pass)."""
    pos = tail.rfind(ZIP_END)
    while pos >= 0:
        if (
            len(tail) - pos >= END_SIZE
            and int.from_bytes(tail[pos + 20 : pos + 22], "little") == len(tail) - pos - END_SIZE
        ):
            return True
        pos = tail.rfind(ZIP_END, 0, pos)
    return False


def unreadable(run_dir: Path, required: Iterable[str] = (), listing: Collection[str] | None = None) -> list[str]:
    """'name (why)' for each checkpoint of a finished train run that evaluate could not read: the files the record
    lists and `required` (checkpoint-last.pt: every epoch writes it), plus any other of NAMES present on disk.
    `listing`: the run directory's names when the caller has them (no stat, no read of a missing record)."""
    entries = load(run_dir) if listing is None or RECORD in listing else {}
    on_disk = (lambda n: n in listing) if listing is not None else (lambda n: (run_dir / n).exists())
    names = [n for n in NAMES if n in entries or n in required or on_disk(n)]
    found = ((n, problem(os.path.join(run_dir, n), entries.get(n))) for n in names)
    return [f"{n} ({why})" for n, why in found if why]
