"""GPU proof: one command that runs the project's CUDA paths and measures the paper's Table I cell.

    PYTHONPATH=. python3 benchmarks/gpu_check.py OUT_DIR [--cifar-root DIR] [--device cuda|cpu] [--quick]
        [--only STAGE,...] [--wheels DIR]

Five stages, each in its own process with its own time budget (together <= 8 minutes on one H200); a stage that
fails or runs out of time is recorded in stages.json and the next one runs:
  env          env.json: GPU, memory, driver, CUDA / cuDNN / NCCL, torch, Python and package versions;
  cuda_tests   `pytest -m cuda tests/test_cuda.py` -> cuda_tests.xml (junit), cuda_tests.json, cuda_tests.log;
  step_cost    benchmarks/step_cost.py on the device (CUDA events): resnet50_cifar at per-GPU batch 128 and 256,
               standard / fast / pgd7 and the attacks alone, fp32 and bf16 + channels_last -> step_cost.csv;
  bench        the bench kind at world size 1 (resnet50_cifar; CIFAR-10 from --cifar-root, else random inputs,
               column inputs=random) -> bench.csv, then `python -m orchestrator.cli estimate` of
               experiments/paper_cifar10.yaml and of the same grid at 1 GPU -> estimate_*.txt, estimate.csv;
  train_epoch  one epoch of the train kind, fast-L2, resnet50_cifar, 50 000 CIFAR-shaped images (--cifar-root,
               else random images written as CIFAR-10 files), global batch 256, bf16 + channels_last
               -> train_epoch.json (images/s, projected 150-epoch hours);
then summary.md (one table against the paper's 2 x V100 numbers; written by benchmarks/gpu_check_report.py).
Exit 0 when every stage passed, else 1.
Without a CUDA device (and without --device cpu) it prints one line and exits 0. --quick shrinks every stage
(small_cnn, tiny batches and data) so that `--quick --device cpu` runs in about a minute (tests/test_gpu_check.py).

Dependencies. torch is the machine's own and is never installed. Per stage: env torch; cuda_tests pytest and
submitit (tests/conftest.py imports it); step_cost torch; bench numpy, then pandas, pyyaml and submitit (the CLI
imports orchestrator.submit.launch); train_epoch numpy, tqdm, torchvision, PIL. The H200 image has all but submitit.
submitit (and its needs cloudpickle, typing_extensions, both on the image) is pure Python: fetch its wheel here

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: -d .whl submitit==1.5.4

and carry `.whl` (device tool: carry [".whl"]). Each stage puts the pure-Python wheels in --wheels (default .whl)
of modules it cannot import on sys.path and PYTHONPATH (zip import: nothing is installed); equivalently
`pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and PYTHONPATH=/tmp/site:. first.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # run as a script or imported by a test: its sibling modules

from gpu_check_report import PAPER, driver_version, git_commit, nccl_version, summary_markdown, version_of  # noqa: E402

STAGES = ("env", "cuda_tests", "step_cost", "bench", "train_epoch")
PAPER_GRID = REPO / "experiments" / "paper_cifar10.yaml"


@dataclass(frozen=True)
class Config:
    """Sizes of every stage: the real check, or --quick (CPU-testable in about a minute)."""

    model: str = "resnet50_cifar"
    step_batches: tuple[int, ...] = (128, 256)
    step_repeats: int = 10
    step_warmup: int = 3
    bench_batches: tuple[int, ...] = (32, 128, 256)  # per-GPU batches of the 8-, 2- and 1-GPU cells
    bench_repeats: int = 10
    bench_warmup: int = 3
    eval_steps: int = 20  # as the paper grid's eval (bench eval rows must match it)
    train_images: int = 50_000
    val_images: int = 1_000  # the projection scales the eval time to the 10 000 of CIFAR-10's test split
    global_batch: int = 256
    budgets_s: tuple[int, ...] = (30, 150, 110, 120, 100)  # per stage, in STAGES order
    total_s: int = 470


# Generous budgets: a loaded 2-core CI machine, not the work, sets them.
QUICK = Config(model="small_cnn", step_batches=(8,), step_repeats=1, step_warmup=1, bench_batches=(8, 16),
               bench_repeats=1, bench_warmup=0, eval_steps=2, train_images=128, val_images=32, global_batch=32,
               budgets_s=(60, 120, 120, 120, 120), total_s=540)  # fmt: skip


def config(args: argparse.Namespace) -> Config:
    return QUICK if args.quick else Config()


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the stages (run in the stage's own process).


def add_wheels(wheels: Path, modules: tuple[str, ...] = ("submitit",)) -> list[str]:
    """Put the pure-Python wheels of `wheels` on sys.path (and PYTHONPATH, for subprocesses) when one of
    `modules` cannot be imported; returns the wheels added."""
    import importlib.util

    if all(importlib.util.find_spec(m) is not None for m in modules) or not wheels.is_dir():
        return []
    added = [str(w.resolve()) for w in sorted(wheels.glob("*-py3-none-any.whl"))]
    sys.path[:0] = added
    os.environ["PYTHONPATH"] = os.pathsep.join([*added, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return added


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def device_of(args: argparse.Namespace) -> Any:
    import torch

    return torch.device("cuda:0" if args.device == "cuda" else args.device)


def dist_of(args: argparse.Namespace) -> Any:
    """A single-process Dist on the chosen device (the CUDA one is what distributed.single picks)."""
    from workloads.runtime.distributed import Dist

    return Dist(device=device_of(args))


# ---------------------------------------------------------------------------------------------------------------
# Stages: each writes its files into out and returns what goes into <stage>.json.


def stage_env(args: argparse.Namespace, cfg: Config, out: Path) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "device_arg": args.device, "quick": args.quick, "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
        else None, "hostname": platform.node(), "cpus": len(os.sched_getaffinity(0)),
        "packages": {m: version_of(m) for m in ("torchvision", "numpy", "pandas", "PyYAML", "tqdm", "pytest",
                                                "submitit", "Pillow")},
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "git_commit": git_commit(),
    }  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "gpu_count":
                torch.cuda.device_count(), "capability": f"{props.major}.{props.minor}", "multiprocessors":
                props.multi_processor_count, "nccl": nccl_version(), "driver": driver_version()}  # fmt: skip
    write_json(out / "env.json", env)
    return {"gpu": env.get("gpu"), "torch": env["torch"], "cuda": env["cuda"], "driver": env.get("driver")}


def stage_cuda_tests(args: argparse.Namespace, cfg: Config, out: Path) -> dict[str, Any]:
    import importlib.util
    import xml.etree.ElementTree as ET

    xml = out / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rA", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]  # fmt: skip
    if importlib.util.find_spec("pytest_timeout") is not None:  # a hung test fails alone (the H200 image has it)
        cmd.append("--timeout=90")
    with (out / "cuda_tests.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    cases = [{"test": c.get("name"), "outcome": next((ch.tag for ch in c), "passed"), "seconds": c.get("time")}
             for c in suite.iter("testcase")]  # fmt: skip
    result = {"exit_code": rc, **counts, "passed": counts["tests"] - counts["failures"] - counts["errors"]
              - counts["skipped"], "cases": cases}  # fmt: skip
    write_json(out / "cuda_tests.json", result)
    if rc not in (0, 5) or counts["failures"] or counts["errors"]:
        raise RuntimeError(f"pytest -m cuda: {counts['failures']} failed, {counts['errors']} errors (exit {rc})")
    return {k: v for k, v in result.items() if k != "cases"}


def stage_step_cost(args: argparse.Namespace, cfg: Config, out: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import step_cost

    rows = []
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        for batch in cfg.step_batches:
            record_path = out / f"step_cost_{precision}_b{batch}.json"
            argv = ["--device", args.device, "--model", cfg.model, "--batch", str(batch), "--precision", precision,
                    "--repeats", str(cfg.step_repeats), "--warmup", str(cfg.step_warmup), "--attack-passes",
                    "--threads", str(len(os.sched_getaffinity(0))), "--out", str(record_path)]  # fmt: skip
            step_cost.main(argv + (["--channels-last"] if channels_last else []))
            record = json.loads(record_path.read_text())
            record_path.unlink()  # one CSV holds them all
            med, ratios = record["median_s"], record["ratios_median"]
            rows.append({
                "device": record.get("device_name", record["device"]), "model": cfg.model, "batch_per_gpu": batch,
                "precision": precision, "channels_last": channels_last, "repeats": cfg.step_repeats,
                "standard_s": med["standard"], "fast_s": med["fast"], "pgd7_s": med["pgd7"],
                "fast_attack_s": med["fast attack"], "pgd7_attack_s": med["pgd7 attack"],
                "bare_std_s": med["bare std"], "fast/std": ratios["fast/std"], "pgd7/std": ratios["pgd7/std"],
                "fast_floor": ratios["fast floor"], "pgd7_floor": ratios["pgd7 floor"],
                "paper_fast/std": PAPER["fast/std"], "paper_pgd7/std": PAPER["pgd7/std"],
            })  # fmt: skip
    write_rows(out / "step_cost.csv", rows)
    return {"rows": len(rows)}


def bench_spec(args: argparse.Namespace, cfg: Config, out: Path) -> dict[str, Any]:
    """The bench cell: 1 GPU, the paper grid's model, eval attack and batches (random inputs without a root)."""
    return {
        "experiment": "gpu-check", "run_id": f"bench-{cfg.model}-n1g1", "kind": "bench", "dataset": "cifar10",
        "data_root": args.cifar_root or str(out / "no-cifar-root"), "model": cfg.model, "eval": {"steps":
        cfg.eval_steps}, "global_batch_size": cfg.global_batch, "bench": {"batch_sizes": list(cfg.bench_batches),
        "methods": ["standard", "fast", "pgd7"], "repeats": cfg.bench_repeats, "warmup": cfg.bench_warmup,
        "prime_steps": 50 if args.cifar_root and not args.quick else 0},
    }  # fmt: skip


def grid_variant(out: Path, cfg: Config, name: str, shape: list[dict[str, int]] | None) -> Path:
    """The paper grid with another shape list, and (--quick) the quick model and eval steps: a file in out."""
    import yaml

    from orchestrator.grid import yaml12

    grid = yaml12.safe_load(PAPER_GRID.read_text())
    grid["name"] = f"{grid['name']}-{name}"
    grid["defaults"] |= {"model": cfg.model, "eval": {**grid["defaults"]["eval"], "steps": cfg.eval_steps}}
    if shape is not None:
        grid["grid"]["shape"] = shape
    path = out / f"paper_cifar10_{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def stage_bench(args: argparse.Namespace, cfg: Config, out: Path) -> dict[str, Any]:
    import importlib
    import importlib.util

    from workloads import entry, layout
    from workloads.spec import from_dict

    spec = from_dict(bench_spec(args, cfg, out))
    run_dir = out / "bench"
    run_dir.mkdir(exist_ok=True)
    layout.write_json_atomic(run_dir / layout.SPEC, spec.to_dict())
    if importlib.util.find_spec("submitit") is not None:
        entry.run(run_dir / layout.SPEC, dist=dist_of(args))  # the job's own entry point (env.json, result.json)
    else:  # entry.run's env.json needs submitit: run the kind alone
        importlib.import_module(entry.KIND_MODULES["bench"]).main(spec, run_dir, dist_of(args))
    bench_csv = out / "bench.csv"
    bench_csv.write_bytes((run_dir / layout.BENCH).read_bytes())
    grids = {"paper": PAPER_GRID if not args.quick else grid_variant(out, cfg, "paper", None),
             "1gpu": grid_variant(out, cfg, "1gpu", [{"nodes": 1, "gpus_per_node": 1}])}  # fmt: skip
    for name, grid in grids.items():
        cmd = [sys.executable, "-m", "orchestrator.cli", "estimate", str(grid), "--bench", str(bench_csv)]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        (out / f"estimate_{name}.txt").write_text(f"$ {' '.join(cmd[1:])}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            raise RuntimeError(f"orchestrate estimate {grid.name} failed: {(done.stderr or done.stdout).strip()}")
    from orchestrator.estimate.model import estimate_grid  # the numbers behind the CLI's table

    rows = [{"grid": name, **r} for name, grid in grids.items()
            for r in estimate_grid(grid, bench_csv).to_dict("records")]  # fmt: skip
    write_rows(out / "estimate.csv", rows)
    inputs = sorted({r["inputs"] for r in layout.read_csv(bench_csv)})
    return {"bench_rows": len(layout.read_csv(bench_csv)), "inputs": inputs, "estimates": len(rows)}


def stage_train_epoch(args: argparse.Namespace, cfg: Config, out: Path) -> dict[str, Any]:
    import importlib
    import shutil
    import tempfile

    from workloads import entry, layout
    from workloads.spec import from_dict

    work = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    try:
        if args.cifar_root:
            root, inputs = args.cifar_root, "cifar10"
        else:
            from tests.fixtures import make_cifar10  # random images in the real CIFAR-10 file format

            root = str(make_cifar10(work / "cifar", n_train=cfg.train_images, n_test=cfg.val_images))
            inputs = "random (CIFAR-10-format files of random images)"
        spec = from_dict({
            "experiment": "gpu-check", "run_id": "train-epoch", "kind": "train", "dataset": "cifar10",
            "data_root": root, "train_subset": cfg.train_images, "val_subset": cfg.val_images, "model": cfg.model,
            "method": "fast", "epochs": 1, "global_batch_size": cfg.global_batch, "precision": "bf16",
            "channels_last": True, "attack": {"norm": "l2", "eps": 1.0}, "eval": {"every": 1, "steps": cfg.eval_steps},
        })  # fmt: skip
        run_dir = work / "run"
        run_dir.mkdir()
        importlib.import_module(entry.KIND_MODULES["train"]).main(spec, run_dir, dist_of(args))
        (row,) = layout.read_csv(run_dir / layout.EPOCHS)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # checkpoints and 150 MB of images
    train_s, eval_s = float(row["train_s"]), float(row["eval_s"])
    evals = 150 // 5  # the paper grid: eval every 5 epochs (and at 150)
    projected_s = 150 * train_s + evals * eval_s * 10_000 / cfg.val_images
    result = {
        "inputs": inputs, "model": cfg.model, "method": "fast", "precision": "bf16", "channels_last": True,
        "global_batch": cfg.global_batch, "train_images": cfg.train_images, "val_images": cfg.val_images,
        "train_s": train_s, "eval_s": eval_s, "images_per_s": cfg.train_images / train_s,
        "train_loss": float(row["train_loss"]), "projected_150_epoch_hours": projected_s / 3600,
        "projection": "150 x train_s + 30 evals x eval_s x 10000/val_images; epoch 1 includes cuDNN autotuning "
        "and worker start-up", "paper_fast_hours_2xV100": PAPER["fast_hours"],
    }  # fmt: skip
    write_json(out / "train_epoch.json", result)
    return {"images_per_s": result["images_per_s"], "projected_150_epoch_hours": result["projected_150_epoch_hours"]}


STAGE_FUNCTIONS = {"env": stage_env, "cuda_tests": stage_cuda_tests, "step_cost": stage_step_cost,
                   "bench": stage_bench, "train_epoch": stage_train_epoch}  # fmt: skip


def run_stage(name: str, args: argparse.Namespace) -> int:
    """The child side: one stage in this process; its result in <stage>.json (traceback: the log, exit 1)."""
    out = args.out.resolve()
    add_wheels(args.wheels)
    result = STAGE_FUNCTIONS[name](args, config(args), out)
    write_json(out / f".{name}.result.json", result)  # merged into stages.json by the parent
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The parent: one process per stage, with a timeout; then the summary.


def spawn_stage(name: str, args: argparse.Namespace, out: Path, budget_s: float) -> dict[str, Any]:
    """Run one stage in a child process (its own session, so a timeout kills whatever it started)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--stage", name, "--device", args.device,
           "--wheels", str(args.wheels.resolve())] + (["--quick"] if args.quick else [])  # fmt: skip
    if args.cifar_root:
        cmd += ["--cifar-root", args.cifar_root]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    log_path, result_path = out / f"{name}.log", out / f".{name}.result.json"
    t0 = time.perf_counter()
    print(f"gpu_check: {name} (budget {budget_s:.0f} s) ...", flush=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(budget_s, 1))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group
            proc.wait()
            rc, status = None, "timeout"
    record: dict[str, Any] = {"stage": name, "status": status, "exit_code": rc,
                              "seconds": round(time.perf_counter() - t0, 1), "budget_s": round(budget_s)}  # fmt: skip
    if result_path.exists():
        record["result"] = json.loads(result_path.read_text())
        result_path.unlink()
    if status != "ok":
        tail = log_path.read_text(errors="replace").strip().splitlines()[-12:]
        record["error"] = "\n".join(tail) if tail else "(no output)"
    print(f"gpu_check: {name} {status} in {record['seconds']} s", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--cifar-root", help="a CIFAR-10 root (cifar-10-batches-py/ inside); else random inputs")
    parser.add_argument("--device", help="cuda (default when available) or cpu")
    parser.add_argument("--quick", action="store_true", help="shrink every stage (a CPU test of this script)")
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", help="pure-Python wheels of missing modules")
    parser.add_argument("--only", metavar="STAGE,...", help=f"run only these of {', '.join(STAGES)} (a rerun)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # the child side
    args = parser.parse_args(argv)
    if args.stage:
        return run_stage(args.stage, args)
    only = STAGES if args.only is None else tuple(args.only.split(","))
    if unknown := sorted(set(only) - set(STAGES)):
        parser.error(f"--only: unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(STAGES)}")
    import torch

    args.device = args.device or "cuda"
    if args.device.startswith("cuda") and not torch.cuda.is_available():  # CPU-only CI stays green
        print(f"gpu_check: no CUDA device (torch {torch.__version__} sees none); nothing to check, exit 0")
        return 0
    args.device = "cuda:0" if args.device == "cuda" else args.device
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg, deadline = config(args), time.monotonic() + config(args).total_s
    stages = []
    for name, budget in zip(STAGES, cfg.budgets_s, strict=True):
        if name not in only:
            continue
        left = deadline - time.monotonic()
        if left < 5:
            stages.append({"stage": name, "status": "skipped", "seconds": 0, "error": "no time left"})
            continue
        stages.append(spawn_stage(name, args, out, min(budget, left)))
        write_json(out / "stages.json", stages)
    (out / "summary.md").write_text(summary_markdown(out, stages))
    failed = [s["stage"] for s in stages if s["status"] != "ok"]
    print(f"gpu_check: {len(stages) - len(failed)}/{len(stages)} stages ok; {out / 'summary.md'}"
          + (f"; not ok: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
