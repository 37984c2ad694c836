"""Checks of the folders a command writes or reads, made before it does anything: a results root under a
regular file, on a read-only file system or without write permission, and a folder that is not an experiment,
are one line each (exit 2) naming the folder and what is wrong, never a traceback halfway through a submission.

Writability is probed, not inferred: a temporary file is created and removed in the folder (or, for a folder
that does not exist yet, in its nearest existing parent), which is what every later write needs and what
mount options, permissions, ACLs and quotas all answer.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.monitor import manifest
from workloads import layout
from workloads.layout import RESULTS_ENV


class FolderError(UserError):
    """A folder a command needs is unusable; one line naming it and what is wrong."""


def root_origin(cli_value: str | None) -> str:
    """Where the results root came from, for the message: --results, $FASTROBUST_RESULTS or the default."""
    if cli_value:
        return "--results"
    return f"${RESULTS_ENV}" if os.environ.get(RESULTS_ENV) else "the default ./results"


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (the root always does)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or "/")


def write_problem(folder: Path) -> str | None:
    """Why nothing can be written in `folder` (created when missing), or None when a file can be."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        kind = "a regular file" if existing.is_file() else "not a folder"
        return f"{existing} is {kind}, so no folder can be created under it"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return f"{existing} is on a read-only file system"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{existing} is not writable (permission denied)"
        return f"{existing} is not writable ({exc.strerror})"
    os.close(fd)
    os.unlink(probe)
    return None


def require_writable(folders: Iterable[Path], what: str) -> None:
    """Raise FolderError (one line per unusable folder, each named once) unless every folder is writable."""
    problems: list[str] = []
    for folder in dict.fromkeys(folders):
        problem = write_problem(folder)
        if problem is not None:
            problems.append(f"{what} {folder}: {problem}; nothing was done")
    if problems:
        raise FolderError(problems)


def require_experiment(exp_dir: Path) -> None:
    """`exp_dir` is an experiment folder: it has a manifest or a runs/ folder (what a submission creates)."""
    if (exp_dir / manifest.MANIFEST).is_file() or layout.runs_dir(exp_dir.parent, exp_dir.name).is_dir():
        return
    parent_is = exp_dir.name == layout.RUNS and (exp_dir.parent / manifest.MANIFEST).is_file()
    hint = f"; did you mean {exp_dir.parent}?" if parent_is else "; pass an experiment name or folder"
    raise FolderError(
        f"{exp_dir} is not an experiment folder (it has no {manifest.MANIFEST} and no {layout.RUNS}/ folder){hint}"
    )
