"""The results layout (results/<experiment>/runs/<run_id>/, every artefact name, the epochs.csv columns)
and atomic file writes (temp file in the same folder + fsync + os.replace).

The one owner of where things are: the orchestrator and the workloads ask these functions for paths and
names instead of joining strings. A crash at any point leaves either the old or the new version of a file,
never a torn one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RUNS = "runs"  # results/<experiment>/runs/<run_id>/
SUBMITIT = ".submitit"  # results/<experiment>/.submitit/: submitit's job folders (pickles, stdout/stderr)
SPEC = "spec.json"
ENV = "env.json"
EPOCHS = "epochs.csv"
RESULT = "result.json"
ERROR = "error.txt"
CKPT_LAST = "checkpoint-last.pt"
CKPT_BEST = "checkpoint-best.pt"
ROBUSTNESS = "robustness.csv"
STAGE = "stage.json"  # what a running evaluate cell is doing (workloads.stage); `status` shows it
BENCH = "bench.csv"
# Snapshots (kind train, snapshot_every): RUN_DIR/snapshots/snapshot-e<epoch>.pt (weights only) + index.csv, one row
# per snapshot, written after its file; the judge reads the index.
SNAPSHOTS = "snapshots"
SNAPSHOT_INDEX = "index.csv"
SNAPSHOT_INDEX_COLUMNS = ("run_id", "epoch", "train_s", "elapsed_s", "file")
# The judge's rows (kind judge: RUN_DIR/judged.csv) and the experiment's (collect: results/<exp>/snapshots.csv):
# one per judged (run, snapshot); train_s the run's cumulative train clock at the snapshot, elapsed_s its
# cumulative wall-clock, accuracies as fractions; then the split judged, the judging seconds and the judge's run.
JUDGED = "judged.csv"
SNAPSHOTS_CSV = "snapshots.csv"
SNAPSHOT_COLUMNS = (
    "run_id", "epoch", "train_s", "elapsed_s", "clean_acc", "adv_acc", "n", "attack",
    "split", "judge_s", "judge_run",
)  # fmt: skip

EPOCH_COLUMNS = (
    "run_id", "epoch", "train_s", "eval_s", "elapsed_s", "lr", "train_loss", "train_acc",
    "clean_acc", "adv_acc", "batch_per_rank", "world_size",
    # appended (older files lack them and still parse): the catastrophic-overfitting guard (workloads.training.guard)
    "guard_clean_acc", "guard_adv_acc", "co_flag", "guard_s",
)  # fmt: skip


RESULTS_ENV = "FASTROBUST_RESULTS"


def results_root(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """--results DIR, else $FASTROBUST_RESULTS, else ./results."""
    value = cli_value or os.environ.get(RESULTS_ENV) or "results"
    return Path(value).expanduser().absolute()


def experiment_dir(results_root: str | os.PathLike[str], experiment: str) -> Path:
    return Path(results_root) / experiment


def runs_dir(results_root: str | os.PathLike[str], experiment: str) -> Path:
    return experiment_dir(results_root, experiment) / RUNS


def run_dir(results_root: str | os.PathLike[str], experiment: str, run_id: str) -> Path:
    return runs_dir(results_root, experiment) / run_id


def snapshot_dir(run_directory: str | os.PathLike[str]) -> Path:
    return Path(run_directory) / SNAPSHOTS


def snapshot_index(run_directory: str | os.PathLike[str]) -> Path:
    return snapshot_dir(run_directory) / SNAPSHOT_INDEX


def snapshot_name(epoch: int) -> str:
    return f"snapshot-e{epoch:04d}.pt"


def results_root_of(run_directory: str | os.PathLike[str]) -> Path:
    """The results root holding a run directory (the inverse of run_dir); ValueError for any other folder."""
    path = Path(run_directory).resolve()
    if path.parent.name != RUNS:
        raise ValueError(f"{path}: expected a run directory <results>/<experiment>/{RUNS}/<run_id>/")
    return path.parents[2]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace; the file gets the usual 0666 & ~umask mode
    (mkstemp's 0600 would hide results from the rest of a group on a shared cluster filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None and exc.errno is not None:  # a failed write()/fsync() names no file: name it
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def savefig_atomic(fig: Any, path: str | os.PathLike[str], **savefig_kwargs: Any) -> None:
    """A matplotlib figure rendered in memory, then written by write_bytes_atomic: never a torn file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, **savefig_kwargs)
    write_bytes_atomic(path, buffer.getvalue())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def write_csv_atomic(path: str | os.PathLike[str], columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    write_text_atomic(path, csv_text(columns, rows))


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_csv_row_atomic(path: str | os.PathLike[str], columns: Sequence[str], row: Mapping[str, Any]) -> None:
    """Append one row by rewriting the file atomically (files here are small: one row per epoch)."""
    rows: Sequence[Mapping[str, Any]] = read_csv(path) if Path(path).exists() else []
    write_csv_atomic(path, columns, [*rows, row])


def improves(value: float | None, best: float | None) -> bool:
    """The best-epoch rule (Table I's best epoch): a value beats the best so far only when strictly higher, so the
    earliest of equal epochs stays best; a missing or NaN value never does."""
    return value is not None and not math.isnan(value) and (best is None or value > best)


def best_epoch_row(rows: Iterable[dict[str, str]], metric: str) -> dict[str, str] | None:
    """The epochs.csv row that `improves` leaves best for `metric` (None: no epoch measured it)."""
    best, best_value = None, None
    for row in rows:
        try:
            value = float(row.get(metric) or "nan")
        except ValueError:
            continue
        if improves(value, best_value):
            best, best_value = row, value
    return best
