"""GPU proof (issue 15): one command that runs the project's CUDA paths and measures the paper's Table I cell.

    PYTHONPATH=. python3 benchmarks/gpu_check.py OUT_DIR [--cifar-root DIR] [--device cuda|cpu] [--quick]

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
then summary.md (one table against the paper's 2 x V100 numbers). Exit 0 when every stage passed, else 1.
Without a CUDA device (and without --device cpu) it prints one line and exits 0. --quick shrinks every stage
(small_cnn, tiny batches and data) so that `--quick --device cpu` runs in about a minute (tests/test_gpu_check.py).

Dependencies. torch is the machine's own and is never installed. Per stage: env torch; cuda_tests pytest and
submitit (tests/conftest.py imports it); step_cost torch; bench numpy, then pandas, pyyaml and submitit (the CLI
imports orchestrator.launch); train_epoch numpy, tqdm, torchvision, PIL. The H200 image has all but submitit.
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
STAGES = ("env", "cuda_tests", "step_cost", "bench", "train_epoch")
PAPER = {"device": "2 x V100 (paper, Table I)", "fast/std": 2.4, "pgd7/std": 7.6, "fast_hours": 2.9}
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
    budgets_s: tuple[int, ...] = (30, 120, 110, 120, 100)  # per stage, in STAGES order
    total_s: int = 470


QUICK = Config(model="small_cnn", step_batches=(8,), step_repeats=2, step_warmup=1, bench_batches=(8, 16),
               bench_repeats=2, bench_warmup=1, eval_steps=2, train_images=128, val_images=32, global_batch=32,
               budgets_s=(30, 60, 60, 60, 60), total_s=240)  # fmt: skip


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
    from workloads.distributed import Dist

    return Dist(device=device_of(args))


def version_of(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


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
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                     check=False).stdout.strip() or None,
    }  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "gpu_count":
                torch.cuda.device_count(), "capability": f"{props.major}.{props.minor}", "multiprocessors":
                props.multi_processor_count, "nccl": nccl_version(), "driver": driver_version()}  # fmt: skip
    write_json(out / "env.json", env)
    return {"gpu": env.get("gpu"), "torch": env["torch"], "cuda": env["cuda"], "driver": env.get("driver")}


def stage_cuda_tests(args: argparse.Namespace, cfg: Config, out: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    xml = out / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rA", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]  # fmt: skip
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

    grid = yaml.safe_load(PAPER_GRID.read_text())
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
        lines += ["", f"One epoch: {train['inputs']}, global batch {train['global_batch']}; {train['projection']}."]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--cifar-root", help="a CIFAR-10 root (cifar-10-batches-py/ inside); else random inputs")
    parser.add_argument("--device", help="cuda (default when available) or cpu")
    parser.add_argument("--quick", action="store_true", help="shrink every stage (a CPU test of this script)")
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", help="pure-Python wheels of missing modules")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # the child side
    args = parser.parse_args(argv)
    if args.stage:
        return run_stage(args.stage, args)
    import torch

    if args.device is None:
        if not torch.cuda.is_available():
            print(f"gpu_check: no CUDA device (torch {torch.__version__} sees none); nothing to check, exit 0")
            return 0
        args.device = "cuda"
    args.device = "cuda:0" if args.device == "cuda" else args.device
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg, deadline = config(args), time.monotonic() + config(args).total_s
    stages = []
    for name, budget in zip(STAGES, cfg.budgets_s, strict=True):
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
