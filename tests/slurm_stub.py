"""A trivially small job for orchestration tests that must not pay for torch (e.g. the 64-cell array).

It writes what a finished train run writes (one epochs.csv row, env.json, result.json), atomically, from rank 0.
Jobs import it by reference, so it lives in the importable `tests` package (conftest puts the repo on PYTHONPATH).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import submitit

from workloads import layout


class StubCell(submitit.helpers.Checkpointable):
    def __call__(self, spec_path: str) -> dict[str, Any]:
        started = time.time()
        job_env = submitit.JobEnvironment()
        if job_env.global_rank != 0:
            return {}
        run_dir = Path(spec_path).parent
        spec = layout.read_json(spec_path)
        job_id = str(job_env.job_id)
        time.sleep(float(os.environ.get("STUB_SLEEP_S", "0")))
        world = spec["shape"]["nodes"] * spec["shape"]["gpus_per_node"]
        row = {"run_id": spec["run_id"], "epoch": 1, "train_s": 0.0, "eval_s": 0.0, "elapsed_s": 0.01, "lr": 0.1,
               "train_loss": 1.0, "train_acc": 0.5, "clean_acc": 0.5, "adv_acc": 0.25,
               "batch_per_rank": spec["global_batch_size"] // world, "world_size": world}  # fmt: skip
        layout.append_csv_row_atomic(run_dir / layout.EPOCHS, layout.EPOCH_COLUMNS, row)
        env = {"job_id": job_id, "job_ids": [job_id], "attempts": [{"job_id": job_id}], "device": "stub",
               "hostnames": [socket.gethostname()], "world_size": world}  # fmt: skip
        layout.write_json_atomic(run_dir / layout.ENV, env)
        result = {"run_id": spec["run_id"], "kind": spec["kind"], "world_size": world, "started": started,
                  "ended": time.time()}  # fmt: skip
        layout.write_json_atomic(run_dir / layout.RESULT, result)
        return result
