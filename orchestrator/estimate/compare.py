"""Estimate vs measured: the cost model (orchestrator.estimate.model) run on every finished train run of a
runs.csv, next to the run's measured last-epoch wall-clock (the report's estimate_vs_measured.csv)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import pandas as pd

from orchestrator.estimate.bench_costs import BenchCosts, EstimateError, with_world_size
from orchestrator.estimate.model import RunSettings, predict_run
from orchestrator.estimate.phases import parse_schedule

COMPARE_COLUMNS = (
    "run_id", "method", "gpus", "predicted_s", "measured_s", "error_pct", "extrapolated", "basis", "bench_world_size",
)  # fmt: skip


def _setting(row: Mapping[Hashable, Any], column: str) -> int | None:
    """An integer setting of a runs.csv row (pandas scalars: NaN where the column is empty)."""
    value = row.get(column)
    return None if value is None or pd.isna(value) else int(float(value))


def compare_runs(runs: pd.DataFrame, bench: pd.DataFrame) -> pd.DataFrame:
    """Predicted (from bench rows of the run's device, model and dataset) vs measured last-epoch wall-clock of
    every finished train run in runs.csv rows; runs without matching bench data are left out."""
    bench = with_world_size(bench)
    needed = {"run_id", "kind", "state", "method", "model", "dataset", "device", "elapsed_s_last", "epochs"}
    if runs.empty or not needed <= set(runs.columns) or bench.empty:
        return pd.DataFrame(columns=list(COMPARE_COLUMNS))
    done = runs[(runs["kind"] == "train") & (runs["state"] == "finished") & runs["elapsed_s_last"].notna()]
    groups = {key: BenchCosts(rows.reset_index(drop=True), str(key[0]))
              for key, rows in bench.groupby(["device", "model", "dataset"])}  # fmt: skip
    out = []
    for row in done.to_dict("records"):
        costs = groups.get((str(row["device"]), str(row["model"]), str(row["dataset"])))
        if costs is None:
            continue
        settings = RunSettings(
            dataset=str(row["dataset"]),
            epochs=int(row["epochs"]),
            global_batch=_setting(row, "global_batch_size") or 256,
            eval_every=_setting(row, "eval_every") or 5,
            eval_steps=_setting(row, "eval_steps") or 0,
            eval_restarts=_setting(row, "eval_restarts") or 1,
            eval_batch=_setting(row, "eval_batch_size"),
            train_subset=_setting(row, "train_subset"),
            val_subset=_setting(row, "val_subset"),
            replays=_setting(row, "attack_replays"),  # a runs.csv without the column: the catalog's m
            method_schedule=parse_schedule(row.get("method_schedule")),
        )
        try:
            pred = predict_run(costs, settings, method=str(row["method"]), gpus=_setting(row, "world_size") or 1)
        except EstimateError:
            continue  # e.g. a method the bench did not time
        measured = float(row["elapsed_s_last"])
        out.append({
            "run_id": row["run_id"], "method": row["method"], "gpus": _setting(row, "world_size") or 1,
            "predicted_s": pred.seconds, "measured_s": measured,
            "error_pct": 100.0 * (pred.seconds - measured) / measured if measured > 0 else math.nan,
            "extrapolated": pred.extrapolated, "basis": pred.basis, "bench_world_size": pred.bench_world_size,
        })  # fmt: skip
    return pd.DataFrame(out, columns=list(COMPARE_COLUMNS))
