"""Run directories (+ scheduler state) -> results/<experiment>/{runs,epochs,bench,robustness}.csv.

Rows are sorted and every value is formatted deterministically, so collecting twice gives byte-identical files
(as long as no cell changed state in between). Files are written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator import state as cell_state
from workloads import rundir
from workloads.spec import RunSpec, from_dict, resolve_attack

RUNS_CSV = "runs.csv"
EPOCHS_CSV = "epochs.csv"
BENCH_CSV = "bench.csv"
ROBUSTNESS_CSV = "robustness.csv"

RUN_COLUMNS = (
    # design.md's columns, in its order
    "run_id", "experiment", "kind", "dataset", "model", "method", "attack_norm", "attack_eps", "attack_steps",
    "attack_alpha", "nodes", "gpus_per_node", "world_size", "global_batch_size", "epochs", "state", "job_ids",
    "elapsed_s_last", "best_epoch", "elapsed_s_best", "best_adv_acc", "last_clean_acc", "last_adv_acc", "device",
    # extras
    "batch_per_rank", "precision", "seed", "train_subset", "val_subset", "last_epoch", "best_clean_acc",
    "best_metric", "attempts",
)  # fmt: skip


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _best_row(rows: list[dict[str, str]], metric: str) -> dict[str, str] | None:
    """The evaluated epoch with the highest `metric` (earliest on ties)."""
    best, best_value = None, -math.inf
    for row in rows:
        value = _num(row.get(metric))
        if value is not None and value > best_value:
            best, best_value = row, value
    return best


def run_row(spec: RunSpec, status: cell_state.CellStatus, rows: list[dict[str, str]], env: dict[str, Any]) -> dict:
    attack = resolve_attack(spec.method, spec.attack)
    # Table I's "best epoch": highest adversarial validation accuracy; clean accuracy for standard training
    metric = "clean_acc" if attack.steps == 0 else "adv_acc"
    best = _best_row(rows, metric)
    last = rows[-1] if rows else {}
    return {
        "run_id": spec.run_id,
        "experiment": spec.experiment,
        "kind": spec.kind,
        "dataset": spec.dataset,
        "model": spec.model,
        "method": spec.method,
        "attack_norm": attack.norm,
        "attack_eps": attack.eps,
        "attack_steps": attack.steps,
        "attack_alpha": round(attack.alpha, 10),
        "nodes": spec.shape.nodes,
        "gpus_per_node": spec.shape.gpus_per_node,
        "world_size": spec.world_size,
        "global_batch_size": spec.global_batch_size,
        "epochs": spec.epochs,
        "state": status.state,
        "job_ids": ";".join(status.job_ids),
        "elapsed_s_last": last.get("elapsed_s"),
        "best_epoch": best["epoch"] if best else None,
        "elapsed_s_best": best["elapsed_s"] if best else None,
        "best_adv_acc": best.get("adv_acc") if best else None,
        "last_clean_acc": last.get("clean_acc"),
        "last_adv_acc": last.get("adv_acc"),
        "device": env.get("device"),
        "batch_per_rank": spec.batch_per_rank,
        "precision": spec.precision,
        "seed": spec.seed,
        "train_subset": spec.train_subset,
        "val_subset": spec.val_subset,
        "last_epoch": last.get("epoch"),
        "best_clean_acc": best.get("clean_acc") if best else None,
        "best_metric": metric if spec.kind == "train" else None,
        "attempts": status.attempts,
    }


def _concat(run_dirs: Iterable[tuple[str, Path]], name: str) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of `name` from every run directory (run_id first; columns in order of first appearance)."""
    columns: list[str] = ["run_id"]
    rows: list[dict[str, str]] = []
    for run_id, rd in run_dirs:
        path = rd / name
        if not path.exists():
            continue
        for row in rundir.read_csv(path):
            columns += [c for c in row if c not in columns]
            rows.append({**row, "run_id": row.get("run_id") or run_id})
    return columns, rows


def collect(exp_dir: Path) -> dict[str, Path]:
    """Write runs.csv and epochs.csv (+ bench.csv, robustness.csv when run directories hold them)."""
    exp_dir = Path(exp_dir)
    statuses = {s.run_id: s for s in cell_state.poll(exp_dir)}
    runs_dir = exp_dir / "runs"
    run_rows, epoch_rows, run_dirs = [], [], []
    for run_id in sorted(statuses):
        rd = runs_dir / run_id
        if not (rd / rundir.SPEC).exists():
            continue  # a manifest entry without its run directory: nothing to collect
        spec = from_dict(rundir.read_json(rd / rundir.SPEC))
        rows = rundir.read_csv(rd / rundir.EPOCHS) if (rd / rundir.EPOCHS).exists() else []
        rows.sort(key=lambda r: int(r["epoch"]))
        env = rundir.read_json(rd / rundir.ENV) if (rd / rundir.ENV).exists() else {}
        run_rows.append(run_row(spec, statuses[run_id], rows, env))
        epoch_rows += [{**r, "run_id": r.get("run_id") or run_id} for r in rows]
        run_dirs.append((run_id, rd))
    written = {"runs": exp_dir / RUNS_CSV, "epochs": exp_dir / EPOCHS_CSV}
    rundir.write_csv_atomic(written["runs"], RUN_COLUMNS, run_rows)
    epoch_columns = list(rundir.EPOCH_COLUMNS)
    epoch_columns += sorted({c for r in epoch_rows for c in r} - set(epoch_columns))
    rundir.write_csv_atomic(written["epochs"], epoch_columns, epoch_rows)
    for key, name in (("bench", BENCH_CSV), ("robustness", ROBUSTNESS_CSV)):
        columns, rows = _concat(run_dirs, name)
        if rows:
            written[key] = exp_dir / name
            rundir.write_csv_atomic(written[key], columns, rows)
    return written
