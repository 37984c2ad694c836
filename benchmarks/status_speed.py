"""How long `orchestrate status EXPERIMENT` takes on 10 000 cells (target: <= 2 s, one scheduler call).

Synthetic experiment in the on-disk formats `orchestrate submit` and the jobs leave (manifest.json; run
directories with spec.json = RunSpec.to_dict(), env.json, epochs.csv, result.json, error.txt, checkpoint-best.pt /
checkpoint-last.pt + checkpoints.json), in Slurm arrays of 1000 cells: 60 % finished, 20 % running (part of their
epochs), 10 % pending, 5 % failed (error.txt), 5 % cancelled, and three finished cells whose checkpoint is torn,
foreign or missing. The scheduler is a stand-in `sacct` (and `squeue`) first on PATH that prints the answer the
real one would give and counts its calls, so the figure is the orchestrator's own cost as a user sees it: the
whole `orchestrate status` process (interpreter start and imports included), median of --repeats.

    python benchmarks/status_speed.py [--cells 10000] [--repeats 5]

tests/test_load.py builds the same experiment (build) and checks the counts and the single scheduler call.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.monitor import manifest  # noqa: E402
from workloads import checkpoint_record, layout  # noqa: E402
from workloads.spec import RunSpec  # noqa: E402

EXPERIMENT = "load"
EPOCHS = 10
ARRAY = 1000  # cells per Slurm array (MaxArraySize 1001, Slurm's default)
BAD_CHECKPOINTS = {"truncated": layout.CKPT_BEST, "foreign": layout.CKPT_LAST, "missing": layout.CKPT_BEST}
# state of cell i (by i % 20) -> what sacct says of its job
PLAN = ["finished"] * 12 + ["running"] * 4 + ["pending"] * 2 + ["failed", "cancelled"]
SACCT = {"finished": "COMPLETED", "running": "RUNNING", "failed": "FAILED", "cancelled": "CANCELLED by 1000"}
SCHEDULER = '#!/bin/sh\necho "$(basename "$0") $*" >> "{calls}"\n[ "$(basename "$0")" = sacct ] && cat "{answer}"\n'


def state_of(i: int) -> str:
    return PLAN[i % len(PLAN)]


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"  # as layout.write_json_atomic


def _env(run_id: str, job_id: str) -> dict[str, Any]:
    """env.json as workloads.runtime.runinfo writes it for one single-rank attempt."""
    start = "2026-12-01T23:00:00+0000"
    return {
        "job_id": job_id, "hostnames": ["node1"], "ranks": [{"rank": 0, "hostname": "node1", "device": "cpu"}],
        "world_size": 1, "backend": "gloo", "rank_source": "submitit", "device": "cpu", "device_type": "cpu",
        "torch_threads": 1, "malloc": None, "git_commit": "0" * 40, "submitit_job_id": job_id, "start_time": start,
        "versions": {"python": "3.11.2", "torch": "2.5.1", "cuda": None, "cudnn": None, "submitit": "1.5.2"},
        "slurm": {"job_id": job_id, "array_job_id": job_id.split("_")[0], "array_task_id": job_id.split("_")[1],
                  "node_list": "node1", "restart_count": None, "partition": "debug", "cpus_per_task": "1"},
        "job_ids": [job_id], "attempts": [{"job_id": job_id, "start_time": start, "hostnames": ["node1"],
                                           "restart_count": None}],
    }  # fmt: skip


def _epochs_csv(run_id: str, n: int) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, layout.EPOCH_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    for e in range(1, n + 1):
        writer.writerow({"run_id": run_id, "epoch": e, "train_s": 9.5, "eval_s": 0.5, "elapsed_s": 10.0 * e,
                         "lr": 0.1, "train_loss": 1.0 / e, "train_acc": 0.5, "clean_acc": 0.8, "adv_acc": 0.4,
                         "batch_per_rank": 128, "world_size": 1})  # fmt: skip
    return buf.getvalue()


def _checkpoint() -> bytes:
    """A small zip laid out as torch.save lays one out (archive/data.pkl + archive/version, stored)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"format": "fastrobust-v1", "epoch": EPOCHS}))
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def _write_checkpoints(run_dir: Path, data: bytes, bad: str | None) -> None:
    """checkpoint-best/last.pt and checkpoints.json as checkpoint.save leaves them; `bad` spoils one afterwards."""
    entries = {}
    for name in (layout.CKPT_BEST, layout.CKPT_LAST):
        path = run_dir / name
        path.write_bytes(data)
        entries[name] = {"size": len(data), "sha256": checkpoint_record._digest(path)}
    (run_dir / checkpoint_record.RECORD).write_text(_json(entries))
    if bad is not None:
        spoil(run_dir / BAD_CHECKPOINTS[bad], bad)


def spoil(path: Path, how: str) -> None:
    """A torn write (first half kept), a foreign file (a plain pickle), or a deleted checkpoint."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "foreign":
        path.write_bytes(pickle.dumps({"model": [0.0] * 64}))
    else:
        path.unlink()


def build(root: Path, cells: int = 10_000) -> tuple[Path, str]:
    """The experiment folder and sacct's answer (`sacct -X -n -P -o JobID,State,Elapsed,NodeList,AllocTRES,End`
    with SLURM_TIME_FORMAT=%s): the ended jobs ended an hour ago."""
    exp_dir = layout.experiment_dir(root, EXPERIMENT)
    template = RunSpec(experiment=EXPERIMENT, kind="train", epochs=EPOCHS, train_subset=512).to_dict()
    ckpt = _checkpoint()
    bad = dict(zip((6 * len(PLAN) * k for k in range(1, 4)), BAD_CHECKPOINTS, strict=True))
    entries: dict[str, manifest.Entry] = {}
    answer: list[str] = []
    pending: dict[str, list[int]] = {}
    for i in range(cells):
        run_id, state = f"cell-{i:05d}", state_of(i)
        array, task = str(1000 + i // ARRAY), i % ARRAY
        job_id = f"{array}_{task}"
        run_dir = manifest.run_dir(exp_dir, run_id)
        run_dir.mkdir(parents=True)
        (run_dir / layout.SPEC).write_text(_json({**template, "run_id": run_id, "seed": i}))
        manifest.record(entries, run_id, job_id, array, "slurm", "train", 1)
        if state == "pending":
            pending.setdefault(array, []).append(task)
            continue
        done = {"finished": EPOCHS, "running": 1 + i % (EPOCHS - 1), "failed": 3, "cancelled": 2}[state]
        (run_dir / layout.ENV).write_text(_json(_env(run_id, job_id)))
        (run_dir / layout.EPOCHS).write_text(_epochs_csv(run_id, done))
        end = "Unknown" if state == "running" else str(int(time.time()) - 3600)
        answer.append(f"{job_id}|{SACCT[state]}|00:{done:02d}:00|node1|billing=1,cpu=1,mem=1G,node=1|{end}")
        if state == "failed":
            (run_dir / layout.ERROR).write_text(
                "RuntimeError: CUDA out of memory\n\nTraceback (most recent call last):\n"
            )
        if state == "finished":
            _write_checkpoints(run_dir, ckpt, bad.get(i))
            result = {"run_id": run_id, "kind": "train", "world_size": 1, "epochs": EPOCHS, "best_epoch": EPOCHS}
            (run_dir / layout.RESULT).write_text(_json(result))
    for array, tasks in pending.items():  # sacct folds an array's pending tasks into one line
        answer.append(f"{array}_[{','.join(map(str, tasks))}]|PENDING|00:00:00|None assigned||Unknown")
    (exp_dir / manifest.MANIFEST).write_text(_json({k: vars(v) for k, v in sorted(entries.items())}))
    return exp_dir, "".join(f"{line}\n" for line in answer)


def expected_counts(cells: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(cells):
        counts[state_of(i)] = counts.get(state_of(i), 0) + 1
    return counts


def fake_scheduler(folder: Path, answer: str) -> tuple[Path, Path]:
    """A bin folder with stand-in sacct/squeue (sacct prints `answer`) and the file each call is logged to."""
    bin_dir, calls, answer_file = folder / "bin", folder / "scheduler-calls.txt", folder / "sacct-answer.txt"
    bin_dir.mkdir(parents=True, exist_ok=True)
    answer_file.write_text(answer)
    calls.write_text("")
    for name in ("sacct", "squeue"):
        (bin_dir / name).write_text(SCHEDULER.format(calls=calls, answer=answer_file))
        (bin_dir / name).chmod(0o755)
    return bin_dir, calls


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (the figure a busy machine does not inflate)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        exp_dir, answer = build(Path(tmp) / "results", args.cells)
        bin_dir, calls = fake_scheduler(Path(tmp), answer)
        built = time.perf_counter() - t0
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "orchestrator.cli", "status", str(exp_dir)]
        times, cpu, out = [], [], ""
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), _children_cpu()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            times.append(time.perf_counter() - t0)
            cpu.append(_children_cpu() - c0)
        n_calls = len(calls.read_text().splitlines())
    summary = next(line for line in out.splitlines() if line.startswith(f"{args.cells} cells:"))
    print(f"orchestrate status, {args.cells} cells: {statistics.median(times):.2f} s median (min {min(times):.2f} s, "
          f"max {max(times):.2f} s, {args.repeats} runs; CPU {statistics.median(cpu):.2f} s median, load average "
          f"{os.getloadavg()[0]:.1f}), {n_calls / args.repeats:g} scheduler call(s) each (target <= 2 s); tree built "
          f"in {built:.0f} s\n{summary}")  # fmt: skip


if __name__ == "__main__":
    main()
