"""Run directories (+ scheduler state) -> results/<experiment>/{runs,epochs,bench,robustness,features,snapshots}.csv.

Rows are sorted and every value is formatted deterministically, so collecting twice gives byte-identical files
(as long as no cell changed state in between). Files are written atomically. Only the CSV/JSON files of a run
directory are read (never its checkpoints), so a copy without the .pt files collects the same.

runs.csv has one row per cell of every kind. The training settings (method, attack_*, eval_*) are filled for
train cells only: a bench cell times several methods, an evaluate cell's model is named by robustness.csv's
run_id and method columns, a visualize cell compares several runs (features.csv names them); RunSpec's defaults
would only mislead there. snapshots.csv (layout.SNAPSHOT_COLUMNS) holds the judge cells' judged.csv rows, one per
judged (run, snapshot), sorted by run_id and epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.grid import recipe_key
from orchestrator.monitor import status as cell_status
from workloads import layout
from workloads.catalog import method_info
from workloads.spec import RunSpec, from_dict, resolve_attack

RUNS_CSV = "runs.csv"
EPOCHS_CSV = "epochs.csv"
BENCH_CSV = layout.BENCH  # the run directories' files, concatenated under the same name
ROBUSTNESS_CSV = layout.ROBUSTNESS
FEATURES_CSV = "features.csv"  # the visualize workload's (workloads.kinds.visualize.FEATURES_CSV)

RUN_COLUMNS = (
    # the contract's columns, in their order
    "run_id", "experiment", "kind", "dataset", "model", "method", "attack_norm", "attack_eps", "attack_steps",
    "attack_alpha", "nodes", "gpus_per_node", "world_size", "global_batch_size", "epochs", "state", "job_ids",
    "elapsed_s_last", "best_epoch", "elapsed_s_best", "best_adv_acc", "last_clean_acc", "last_adv_acc", "device",
    # extras
    "batch_per_rank", "precision", "seed", "train_subset", "val_subset", "last_epoch", "best_clean_acc",
    "best_metric", "attempts", "eval_every", "eval_steps", "eval_restarts", "eval_batch_size",
    "co_flag", "co_epoch",  # the catastrophic-overfitting guard (workloads.training.guard): empty when it was off
    "method_schedule",  # phases before `method` (workloads.training.recipe) as method@until;...: empty without
    "recipe",  # the grid's recipe name (leads the run_id), empty without
    "attack_replays",  # free's replays per mini-batch as set in the grid, empty: the method's default
)  # fmt: skip
# then orchestrator.grid.recipe_key.added_columns: recipe_key, recipe_label, the optimizer.* settings always, and every
# other setting that varies across the experiment's train cells (dotted names; empty for other kinds)


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _co_flag(rows: list[dict[str, str]]) -> tuple[bool | None, str | None]:
    """(flagged, first flagged epoch) from epochs.csv's co_flag column; (None, None) when the guard was off."""
    measured = [r for r in rows if r.get("co_flag") not in (None, "")]
    flagged = [r["epoch"] for r in measured if r["co_flag"] == "1"]
    return (bool(flagged), flagged[0] if flagged else None) if measured else (None, None)


def run_row(
    spec: RunSpec, status: cell_status.CellStatus, rows: list[dict[str, str]], env: dict[str, Any]
) -> dict[str, Any]:
    attack = resolve_attack(spec.method, spec.attack)
    metric = method_info(spec.method).best_metric  # Table I's "best epoch", as the trainer chose it
    best = layout.best_epoch_row(rows, metric)
    last = rows[-1] if rows else {}
    co_flag, co_epoch = _co_flag(rows)
    train = spec.kind == "train"  # the training settings mean nothing for other kinds (module docstring)
    return {
        "run_id": spec.run_id,
        "experiment": spec.experiment,
        "kind": spec.kind,
        "dataset": spec.dataset,
        "model": spec.model,
        "method": spec.method if train else None,
        "attack_norm": attack.norm if train else None,
        "attack_eps": attack.eps if train else None,
        "attack_steps": attack.steps if train else None,
        "attack_alpha": round(attack.alpha, 10) if train else None,
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
        "best_metric": metric if train else None,
        "attempts": status.attempts,
        "eval_every": spec.eval.every if train else None,
        "eval_steps": spec.eval.steps if train else None,
        "eval_restarts": spec.eval.restarts if train else None,
        "eval_batch_size": (spec.eval.batch_size or spec.batch_per_rank) if train else None,  # per rank, as train
        "co_flag": co_flag,
        "co_epoch": co_epoch,
        "method_schedule": ";".join(f"{p.method}@{p.until:g}" for p in spec.method_schedule) if train else None,
        "recipe": spec.recipe,
        "attack_replays": spec.attack.replays if train else None,
    }


def _concat(
    run_dirs: Iterable[tuple[str, Path]], name: str, origin: str | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of `name` from every run directory (run_id first; columns in order of first appearance), plus the
    directory's run_id as column `origin` when given (the file's run_id names another run)."""
    columns: list[str] = ["run_id"]
    rows: list[dict[str, str]] = []
    for run_id, rd in run_dirs:
        path = rd / name
        if not path.exists():
            continue
        for row in layout.read_csv(path):
            columns += [c for c in row if c not in columns]
            rows.append({**row, "run_id": row.get("run_id") or run_id, **({origin: run_id} if origin else {})})
    return columns + ([origin] if origin else []), rows


def collect(exp_dir: Path) -> dict[str, Path]:
    """Write runs.csv and epochs.csv (+ bench.csv, robustness.csv, features.csv when run directories hold them;
    features.csv gets a visualize_run column: the visualize cell whose run directory holds fig3-5)."""
    exp_dir = Path(exp_dir)
    statuses = {s.run_id: s for s in cell_status.poll(exp_dir)}
    runs_dir = layout.runs_dir(exp_dir.parent, exp_dir.name)
    specs = {}
    for run_id in sorted(statuses):
        if (runs_dir / run_id / layout.SPEC).exists():  # else a manifest entry without its run directory
            specs[run_id] = from_dict(layout.read_json(runs_dir / run_id / layout.SPEC))
    varying = recipe_key.varying_settings([s for s in specs.values() if s.kind == "train"])
    run_rows, epoch_rows, run_dirs = [], [], []
    for run_id, spec in specs.items():
        rd = runs_dir / run_id
        rows = layout.read_csv(rd / layout.EPOCHS) if (rd / layout.EPOCHS).exists() else []
        rows.sort(key=lambda r: int(r["epoch"]))
        env = layout.read_json(rd / layout.ENV) if (rd / layout.ENV).exists() else {}
        row = run_row(spec, statuses[run_id], rows, env)
        added = recipe_key.recipe_columns(spec, varying) if spec.kind == "train" else {}
        run_rows.append({**added, **row})  # a setting with a column of its own keeps that column's form
        epoch_rows += [{**r, "run_id": r.get("run_id") or run_id} for r in rows]
        run_dirs.append((run_id, rd))
    written = {"runs": exp_dir / RUNS_CSV, "epochs": exp_dir / EPOCHS_CSV}
    run_columns = [*RUN_COLUMNS, *(c for c in recipe_key.added_columns(varying) if c not in RUN_COLUMNS)]
    layout.write_csv_atomic(written["runs"], run_columns, run_rows)
    epoch_columns = list(layout.EPOCH_COLUMNS)
    epoch_columns += sorted({c for r in epoch_rows for c in r} - set(epoch_columns))
    layout.write_csv_atomic(written["epochs"], epoch_columns, epoch_rows)
    for key, name, origin in (
        ("bench", BENCH_CSV, None),
        ("robustness", ROBUSTNESS_CSV, None),
        ("features", FEATURES_CSV, "visualize_run"),
    ):
        columns, rows = _concat(run_dirs, name, origin)
        if rows:
            written[key] = exp_dir / name
            layout.write_csv_atomic(written[key], columns, rows)
    _, judged = _concat(run_dirs, layout.JUDGED)
    if judged:
        written["snapshots"] = exp_dir / layout.SNAPSHOTS_CSV
        judged.sort(key=lambda r: (r["run_id"], int(r["epoch"]), r.get("judge_run", "")))
        layout.write_csv_atomic(written["snapshots"], layout.SNAPSHOT_COLUMNS, judged)
    return written
