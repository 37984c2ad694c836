"""benchmarks/gpu_check.py's reporting: the facts of the environment (env.json) and summary.md.

summary.md: stage outcomes, then one row per device x precision x per-GPU batch (fast/std and pgd7/std with
their floors 1 + attack pass / standard step, the one-epoch images/s and projected 150-epoch hours) next to the
paper's 2 x V100 numbers, then the `orchestrate estimate` predictions of the paper grid from this bench.csv.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Goodwin et al. 2020, Table I (CIFAR-10, ResNet-50, 2 x V100): 1-step (fast) training 2.9 h; step-time ratios
# fast/std 2.4 and pgd7/std 7.6.
PAPER = {"device": "2 x V100 (paper, Table I)", "fast/std": 2.4, "pgd7/std": 7.6, "fast_hours": 2.9}


def version_of(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """HEAD of the source tree, when it is a git checkout and git is installed (a copied tree may be neither)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def nccl_version() -> str | None:
    import torch

    try:
        v = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):  # a build without NCCL
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def driver_version() -> str | None:
    """nvidia-smi's driver version, else NVML's (nvidia-ml-py), else None."""
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
        return smi.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception:  # NVML missing (ImportError) or failing (its own NVMLError): the version is unknown
        return None


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def fmt(value: Any, digits: int = 2) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "-"


def summary_markdown(out: Path, stages: list[dict[str, Any]]) -> str:
    """summary.md: stage outcomes, then device x precision rows of step ratios, throughput and hours."""
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    device = env.get("gpu") or f"cpu ({env.get('cpus', '?')} cores)"
    lines = [f"# gpu_check: {device}", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, NCCL {env.get('nccl')}, "
             f"driver {env.get('driver')}, Python {env.get('python')}{', --quick' if env.get('quick') else ''}", "",
             "| stage | status | seconds | note |", "|---|---|---|---|"]  # fmt: skip
    for s in stages:
        note = s.get("result") or (s.get("error", "").splitlines() or [""])[-1]
        lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']} | {json.dumps(note)[:150]} |")
    train = json.loads((out / "train_epoch.json").read_text()) if (out / "train_epoch.json").exists() else {}
    lines += ["", "| device | precision | batch/GPU | fast/std (floor) | pgd7/std (floor) | images/s (fast, one epoch) "
              "| projected 150-epoch hours (fast) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    steps = read_csv(out / "step_cost.csv")
    largest = max((int(r["batch_per_gpu"]) for r in steps), default=0)
    for r in steps:  # the epoch's numbers on the row of its precision and (largest) batch
        precision = r["precision"] + (" + channels_last" if r["channels_last"] == "True" else "")
        epoch = r["precision"] == "bf16" and int(r["batch_per_gpu"]) == largest
        lines.append(f"| {r['device']} | {precision} | {r['batch_per_gpu']} | {fmt(r['fast/std'])} "
                     f"({fmt(r['fast_floor'])}) | {fmt(r['pgd7/std'])} ({fmt(r['pgd7_floor'])}) | "
                     f"{fmt(train.get('images_per_s'), 0) if epoch else ''} | "
                     f"{fmt(train.get('projected_150_epoch_hours')) if epoch else ''} |")  # fmt: skip
    lines.append(f"| {PAPER['device']} | fp32 | 128 | {PAPER['fast/std']} | {PAPER['pgd7/std']} | - | "
                 f"{PAPER['fast_hours']} (2 GPUs) |")  # fmt: skip
    if train:
        lines += [
            "",
            f"One epoch on 1 device: {train['inputs']}, global batch {train['global_batch']}; {train['projection']}.",
        ]
    estimates = read_csv(out / "estimate.csv")
    if estimates:
        lines += ["", "Predicted by `orchestrate estimate` from this bench.csv (world size 1; more GPUs: basis says "
                  "how communication is counted):", "", "| grid | cell | GPUs | batch/GPU | predicted hours | basis | "
                  "paper (2 x V100) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for e in estimates:
            paper = f"{PAPER['fast_hours']} h" if e["method"] == "fast" and e["gpus"] == "2" else ""
            run_id = e["run_id"] + (" *" if e["extrapolated"] == "True" else "")
            lines.append(f"| {e['grid']} | {run_id} | {e['gpus']} | {e['batch_per_gpu']} | "
                         f"{fmt(e['predicted_hours'])} | {e['basis']} | {paper} |")  # fmt: skip
        if any(e["extrapolated"] == "True" for e in estimates):
            lines.append("\n\\* extrapolated beyond the benched batch sizes or GPU counts")
    return "\n".join(lines) + "\n"
