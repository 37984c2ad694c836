"""`orchestrate`: submit grid files to Slurm (or this machine), follow them, and turn run directories into tables.

    orchestrate submit GRID.yaml [--dry-run] [--executor local|slurm] [--wait] [--retry-failed] [--results DIR]
                       [--bench BENCH_CSV|EXPERIMENT] [--strict]
    orchestrate status [EXPERIMENT|GRID.yaml] [--watch [SECONDS]] [--bench BENCH_CSV|EXPERIMENT] [--json]
    orchestrate list
    orchestrate logs [EXPERIMENT/]RUN_ID [--rank N] [--attempt K] [-f]
    orchestrate collect EXPERIMENT
    orchestrate report EXPERIMENT [EXPERIMENT ...] [--baseline [RECIPE-]METHOD[@GPUS]] [--target-adv-acc ACC]
    orchestrate estimate GRID.yaml --bench BENCH_CSV|EXPERIMENT [--device D] [--basis train_step|lower_bound]
                         [--allreduce-s S]
    orchestrate clean EXPERIMENT [RUN_ID...] [--failed] [--dry-run]
    orchestrate cancel EXPERIMENT
    orchestrate keys [--markdown]

EXPERIMENT is a name under the results root (--results DIR, else $FASTROBUST_RESULTS, else ./results) or the
path of an experiment folder. Exit codes: 0 ok, 1 a cell failed (submit --wait), 2 a user error (one line per
problem, no traceback).

One concept, the command line: each command parses its arguments and calls a room that does the work.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.grid import report_settings as grid_report
from orchestrator.monitor import manifest, progress
from orchestrator.monitor import status as cell_status
from orchestrator.monitor.scheduler import SchedulerUnavailable
from orchestrator.submit import deferred_stop, folder_checks, launch, local_queue
from orchestrator.submit.plan import Plan
from workloads import layout

EXIT_FAILED_CELLS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def _is_grid_file(text: str) -> bool:
    return text.endswith((".yaml", ".yml"))


def experiment_dir(name: str, root: Path) -> Path:
    """An experiment name under the results root, or the path of an experiment folder."""
    exp_dir, as_path = root / name, Path(name).expanduser()
    if exp_dir.is_dir():
        return exp_dir
    if as_path.is_dir():
        return as_path.absolute()
    known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    hint = f"experiments under {root}: {', '.join(known)}" if known else f"no experiments under {root}"
    raise UserError(f"unknown experiment {name!r}; {hint}")


def _grid_experiments(grid_path: str, root: Path, executor: str | None = None) -> dict[Path, list[str]]:
    from orchestrator.grid.files import load_grids

    cells: dict[Path, list[str]] = {}
    for grid in load_grids(grid_path, executor):
        cells.setdefault(root / grid.name, []).extend(c.run_id for c in grid.cells)
    return cells


# ---------------------------------------------------------------------------------------------------------------
# Commands


def _results_root(args: argparse.Namespace) -> Path:
    """The results root of a command that writes there, checked writable before anything runs."""
    root = layout.results_root(args.results)
    folder_checks.require_writable([root], f"results root ({folder_checks.root_origin(args.results)})")
    return root


def cmd_submit(args: argparse.Namespace) -> int:
    root = _results_root(args)
    try:
        return _submit(args, root)
    except KeyboardInterrupt:
        from orchestrator.submit import interrupt

        print(f"orchestrate: {interrupt.message(_grid_experiments(args.grid, root, args.executor))}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _submit(args: argparse.Namespace, root: Path) -> int:
    if args.dry_run:
        sys.stdout.write(launch.dry_run(args.grid, root, args.executor, args.only_missing))
        return 0
    if args.queue_runner:
        deferred_stop.install()
    elif not args.wait and (queued := local_queue.queue_submission(args, root, _bench_path(args.bench, root))):
        print(queued)  # local cells: a background runner submits them
        return 0
    bench = _bench_path(args.bench, root)
    result = launch.submit(args.grid, root, args.executor, args.only_missing, poll_s=args.poll,
                           bar=sys.stderr.isatty(), bench=bench, strict=args.strict)  # fmt: skip
    grid_report.record((p.exp_dir, p.grid.report) for p in result.plans)  # what `orchestrate report` reads
    n = len(result.job_ids)
    say = result.local.write if result.local else print
    say(f"submitted {n} cell(s) in {result.n_arrays} array(s) in {result.seconds:.1f} s")
    if not args.wait:
        if result.local is not None:
            result.local.close()
            if result.local.running:
                print(f"{result.local.running[1]} still runs here; follow it with `orchestrate status`")
        return 0
    return _wait(result, args.poll)


def _wait(result: launch.SubmitResult, poll_s: float) -> int:
    """Local cells: the progress submit showed, until the last one ends; Slurm cells: a bar of cells done."""
    from tqdm import tqdm

    if result.local is not None:
        result.local.wait()
        result.local.close()
    slurm = _plan_cells(p for p in result.plans if p.grid.executor == "slurm")
    if slurm:
        total = sum(len(v) for v in slurm.values())
        with tqdm(total=total, unit="cell", desc="cells done", file=sys.stderr) as bar:
            progress.wait_for_cells(slurm, poll_s, lambda done, _total: bar.update(done - bar.n))
    all_finished = True
    for exp_dir, ids in _plan_cells(result.plans).items():
        cells = cell_status.poll(exp_dir, ids)
        all_finished &= all(c.state == "finished" for c in cells)
        print(cell_status.format_table(cells))
    return 0 if all_finished else EXIT_FAILED_CELLS


def _plan_cells(plans: Iterable[Plan]) -> dict[Path, list[str]]:
    """Every cell of the plans' documents by experiment folder (several documents may share one)."""
    cells: dict[Path, set[str]] = {}
    for p in plans:
        cells.setdefault(p.exp_dir, set()).update(c.run_id for c in p.grid.cells)
    return {exp_dir: sorted(ids) for exp_dir, ids in cells.items()}


def _bench_path(value: str | None, root: Path) -> Path | None:
    """--bench: a bench.csv file, an experiment folder, or an experiment name under the results root."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.exists() and (root / value).is_dir():
        path = root / value
    if not path.exists():
        raise UserError(f"--bench: {value!r} is neither a bench.csv file nor an experiment under {root}")
    return path


def cmd_status(args: argparse.Namespace) -> int:
    root = layout.results_root(args.results)
    if args.target is None:
        exps = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        targets: dict[Path, list[str] | None] = dict.fromkeys(exps)
        if not targets:
            raise UserError(f"no experiments under {root}")
    elif _is_grid_file(args.target):
        targets = dict(_grid_experiments(args.target, root))
    else:
        exp_dir = experiment_dir(args.target, root)
        folder_checks.require_experiment(exp_dir)
        targets = {exp_dir: None}
    if args.json:
        from orchestrator.monitor import listing

        sys.stdout.write(listing.status_json(targets))
        return 0
    if args.watch is not None:
        if args.watch <= 0:
            raise UserError(f"--watch: expected a positive number of seconds; got {args.watch:g}")
        progress.watch(targets, args.watch, bench=_bench_path(args.bench, root))
        return 0
    for exp_dir, ids in targets.items():
        if len(targets) > 1:
            print(f"== {exp_dir.name}")
        print(cell_status.format_table(cell_status.poll(exp_dir, ids)))
        queue = local_queue.describe(exp_dir)
        if queue:
            print(queue)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from orchestrator.monitor import logs

    exp_dir, run_id = logs.find_cell(layout.results_root(args.results), args.cell)
    _check_rank(exp_dir, run_id, args.rank)
    found = logs.cell_logs(exp_dir, run_id, rank=args.rank, attempt=args.attempt)

    def ended() -> bool:  # an older attempt has ended: a newer submission replaced it
        if found.attempt < found.attempts:
            return True
        (cell,) = cell_status.poll(exp_dir, [run_id])
        return cell.state not in ("running", "pending")

    if args.follow and not ended():
        print(f"# {logs.describe(found)}; following until it ends (Ctrl-C stops)", file=sys.stderr)
        logs.follow(found, ended)
    else:
        logs.show(found)
    return 0


def _check_rank(exp_dir: Path, run_id: str, rank: int) -> None:
    """--rank within the cell's world size (read from its spec.json when there is one)."""
    spec = manifest.run_dir(exp_dir, run_id) / layout.SPEC
    shape = layout.read_json(spec).get("shape", {}) if spec.exists() else {}
    world = int(shape.get("nodes", 1)) * int(shape.get("gpus_per_node", 1))
    if rank < 0 or (shape and rank >= world):
        raise UserError(f"--rank {rank}: {exp_dir.name}/{run_id} has ranks 0-{world - 1}")


def cmd_collect(args: argparse.Namespace) -> int:
    from orchestrator import collect

    exp_dir = experiment_dir(args.experiment, layout.results_root(args.results))
    folder_checks.require_writable([exp_dir], "experiment folder")
    for path in collect.collect(exp_dir).values():
        print(path)
    return 0


def _collect_first(exp_dir: Path) -> None:
    """The step `report` and `estimate` take before reading an experiment's CSVs: collect its run directories
    (when it has any; a folder of CSVs copied from a cluster is read as it is), and say so."""
    from orchestrator import collect

    if layout.runs_dir(exp_dir.parent, exp_dir.name).is_dir():
        written = collect.collect(exp_dir)
        print(f"collected {exp_dir}: {', '.join(p.name for p in written.values()) or 'no run directories'}")


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report import build_report  # reads CSVs only
    from orchestrator.report.table1 import parse_baseline
    from orchestrator.report.time_to_target import parse_target

    root = layout.results_root(args.results)
    exp_dirs = [experiment_dir(name, root) for name in args.experiment]
    parse_baseline(args.baseline), parse_target(args.target_adv_acc)  # refused before any CSV is rewritten
    folder_checks.require_writable(exp_dirs, "experiment folder")
    for exp_dir in exp_dirs:
        _collect_first(exp_dir)
        print(build_report(exp_dir, baseline=args.baseline, target_adv_acc=args.target_adv_acc))
    if len(exp_dirs) > 1:
        from orchestrator.report.side_by_side import compare

        print(compare(exp_dirs, root))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from orchestrator.estimate.model import estimate_grid, format_estimate

    root = layout.results_root(args.results)
    bench = Path(args.bench).expanduser()
    if not bench.exists():
        if not (root / args.bench).is_dir():
            raise UserError(f"--bench: {args.bench!r} is neither a bench.csv file nor an experiment under {root}")
        bench = root / args.bench
    if bench.is_dir():
        _collect_first(bench)
    df = estimate_grid(Path(args.grid), bench, device=args.device, basis=args.basis, allreduce_s=args.allreduce_s)
    print(format_estimate(df))
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from orchestrator.submit import clean

    exp_dir = experiment_dir(args.experiment, layout.results_root(args.results))
    folder_checks.require_experiment(exp_dir)
    if not args.dry_run:
        folder_checks.require_writable([exp_dir], "experiment folder")
    done = clean.clean(exp_dir, args.run_ids, failed=args.failed, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(done.removed)} run director{'y' if len(done.removed) == 1 else 'ies'}")
    if done.refused:
        raise UserError(done.refused)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    exp_dir = experiment_dir(args.experiment, layout.results_root(args.results))
    runner = local_queue.stop(exp_dir)  # first: it would start the next cell
    if runner is not None:
        print(f"stopped the local queue (pid {runner}): its waiting cells stay unsubmitted")
    n = launch.cancel(exp_dir)
    print(f"cancelled {n} cell(s)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from orchestrator.monitor import listing

    sys.stdout.write(listing.list_table(layout.results_root(args.results)))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from orchestrator.grid import keys as grid_keys

    sys.stdout.write(grid_keys.markdown() if args.markdown else grid_keys.plain())
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results", metavar="DIR", help="results root (default: $FASTROBUST_RESULTS or ./results)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("submit", parents=[common], help="submit a grid file (one array per resource shape)")
    p.add_argument("grid", metavar="GRID.yaml")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted (Slurm: each array's "
                   "sbatch script; local: the cells it would run); submit nothing")  # fmt: skip
    p.add_argument("--executor", choices=("local", "slurm"), help="override the grid's executor")
    p.add_argument("--wait", action="store_true", help="wait for every cell; exit 1 if any failed")
    p.add_argument("--retry-failed", "--only-missing", dest="only_missing", action="store_true",
                   help="also resubmit failed and cancelled cells (missing cells are submitted without it; "
                   "running ones are skipped); --only-missing is its old name")  # fmt: skip
    p.add_argument(
        "--bench",
        metavar="BENCH_CSV|EXPERIMENT",
        help="bench data for the time guard (default: the experiment's own bench.csv, if any)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2) when a cell's predicted time exceeds timeout_min x (max_requeues + 1)",
    )
    p.add_argument("--poll", type=float, default=float(os.environ.get("FASTROBUST_POLL_S", 10)), help=argparse.SUPPRESS)
    p.add_argument("--queue-runner", action="store_true", help=argparse.SUPPRESS)  # the detached local queue
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", parents=[common], help="one table of cells: state, job id, attempts, epoch")
    p.add_argument("target", nargs="?", metavar="EXPERIMENT|GRID.yaml")
    p.add_argument("--watch", nargs="?", type=float, const=10.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 10) with loss, accuracies and ETA, until no cell is "
                   "running or pending")  # fmt: skip
    p.add_argument(
        "--bench",
        metavar="BENCH_CSV|EXPERIMENT",
        help="--watch: bench data for the ETA of cells without a finished epoch",
    )
    p.add_argument("--json", action="store_true", help="every cell's fields as JSON (for scripts); no table")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("list", parents=[common], help="the experiments under the results root, cells per state")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("logs", parents=[common], help="a cell's job output: stdout, then stderr")
    p.add_argument("cell", metavar="[EXPERIMENT/]RUN_ID")
    p.add_argument("--rank", type=int, default=0, metavar="N", help="the task (rank) whose output to show (default 0)")
    p.add_argument("--attempt", type=int, metavar="K", help="the K-th submission of the cell (default: the latest)")
    p.add_argument("-f", "--follow", action="store_true", help="follow the output until the job ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("collect", parents=[common], help="run directories -> runs.csv, epochs.csv, ...")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("report", parents=[common], help="collect, then tables and figures under results/<exp>/report/")
    p.add_argument("experiment", metavar="EXPERIMENT", nargs="+",
                   help="one or more; several also get a side-by-side page under <results>/comparisons/")  # fmt: skip
    p.add_argument("--baseline", metavar="[RECIPE-]METHOD[@GPUS]", help="the cell relative times divide by")
    p.add_argument("--target-adv-acc", metavar="ACC", help="time-to-target table's target: 0.6 or 60%% (default: "
                   "the grid's report.target_adv_acc, else 95%% of the best validation robust accuracy any run of "
                   "the dataset reached)")  # fmt: skip
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("estimate", parents=[common], help="predicted wall-clock per cell from bench data")
    p.add_argument("grid", metavar="GRID.yaml")
    p.add_argument("--bench", required=True, metavar="BENCH_CSV|EXPERIMENT", help="bench.csv or a bench experiment")
    p.add_argument("--device", help="use the bench rows whose device contains this text (several devices benched)")
    p.add_argument(
        "--basis",
        default="train_step",
        metavar="train_step|lower_bound",
        help="cost per batch: the measured training step (default) or the paper's lower bound from PGD/forward alone",
    )
    p.add_argument(
        "--allreduce-s",
        type=float,
        default=None,
        metavar="S",
        help="per-step all-reduce seconds for GPU counts the bench did not run at "
        "(default: the bench's measured allreduce rows, else 0 = perfect scaling)",
    )
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("clean", parents=[common], help="remove run directories (never one a live job holds)")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="the cells whose run directories to remove")
    p.add_argument("--failed", action="store_true", help="also every failed or cancelled cell")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("cancel", parents=[common], help="cancel every running/pending cell of an experiment")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("keys", help="every grid key: type, default, valid values, the kinds that read it, meaning")
    p.add_argument("--markdown", action="store_true", help="the reference page docs/grid-keys.md, as markdown")
    p.set_defaults(func=cmd_keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))  # every cmd_* returns its exit status
    except UserError as exc:
        for line in exc.problems:
            print(f"orchestrate: error: {' '.join(str(line).split())}", file=sys.stderr)
        return EXIT_USAGE
    except SchedulerUnavailable as exc:
        print(f"orchestrate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("orchestrate: interrupted (submitted jobs keep running; see `orchestrate status`)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
