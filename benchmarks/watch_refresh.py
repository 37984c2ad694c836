"""How long one `orchestrate status --watch` refresh takes on a large experiment (target: <= 1 s for 1000 cells).

Synthetic experiment: N train run directories (spec.json, env.json, an epochs.csv of E rows each) in arrays of
500 Slurm cells, all running; the scheduler's one sacct call is answered by a stand-in (no cluster needed), so
the figure is the orchestrator's own cost: the status poll, the epochs.csv reads and the table. Prints the
median of a few refreshes and the number of scheduler calls per refresh.

    python benchmarks/watch_refresh.py [--cells 1000] [--epochs 9] [--repeats 5]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.monitor import manifest, progress, scheduler
from workloads import layout


def make_experiment(root: Path, cells: int, epochs: int) -> Path:
    exp_dir = root / "watch"
    entries: dict[str, manifest.Entry] = {}
    for i in range(cells):
        run_id, job_id = f"cell-{i:05d}", f"{100 + i // 500}_{i % 500}"
        run_dir = manifest.run_dir(exp_dir, run_id)
        run_dir.mkdir(parents=True)
        (run_dir / layout.SPEC).write_text(json.dumps({"kind": "train", "epochs": 2 * epochs, "run_id": run_id}))
        (run_dir / layout.ENV).write_text(json.dumps({"attempts": [{"job_id": job_id}], "job_ids": [job_id]}))
        with open(run_dir / layout.EPOCHS, "w", newline="") as f:
            writer = csv.DictWriter(f, layout.EPOCH_COLUMNS, restval="")
            writer.writeheader()
            writer.writerows({"run_id": run_id, "epoch": e, "elapsed_s": 10.0 * e, "train_loss": 1.0 / e,
                              "clean_acc": 0.8, "adv_acc": 0.4} for e in range(1, epochs + 1))  # fmt: skip
        manifest.record(entries, run_id, job_id, job_id.split("_")[0], "slurm", "train", 1)
    manifest.save(exp_dir, entries)
    return exp_dir


class Sacct:
    calls = 0

    def __call__(self, cmd: list[str], *args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        bases = cmd[cmd.index("-j") + 1].split(",")
        return subprocess.CompletedProcess(cmd, 0, "".join(f"{b}_[0-499]|RUNNING|00:01:00|n1|\n" for b in bases), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    fake = Sacct()
    scheduler.shutil.which = lambda name: f"/usr/bin/{name}"  # type: ignore[assignment]
    scheduler.subprocess.run = fake  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        exp_dir = make_experiment(Path(tmp), args.cells, args.epochs)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            progress.refresh({exp_dir: None}, progress.Predictions())
            times.append(time.perf_counter() - t0)
    print(f"{args.cells} cells x {args.epochs} epochs: one refresh {statistics.median(times):.3f} s median "
          f"(min {min(times):.3f} s, {args.repeats} refreshes), {fake.calls / args.repeats:g} scheduler call(s) each "
          f"(target <= 1 s)")  # fmt: skip


if __name__ == "__main__":
    main()
