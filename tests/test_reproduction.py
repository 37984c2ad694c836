"""End-to-end reproduction: the committed reference run of the demo, the paper's grids and the demo grid.

(a) The report regenerated from the committed CSVs (results/reference/demo/*.csv, no run directories) reproduces
    the committed report/table1.csv byte for byte, and the committed numbers show the paper's qualitative findings.
(b) `orchestrate submit <paper grid> --dry-run` is pinned by golden files (FASTROBUST_UPDATE_GOLDEN=1 rewrites them).
(c) `orchestrate estimate <paper grid> --bench experiments/bench/cpu_paper_models.csv` prints predicted hours.
(d) experiments/demo.yaml loads and its cells are the demo study; the committed spec.json files are its cells.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from orchestrator import cli
from orchestrator.grid.files import load_grids
from tests.fixtures import normalise
from workloads import layout
from workloads.schema import flatten

REPO = Path(__file__).resolve().parents[1]
DEMO_GRID = REPO / "experiments" / "demo.yaml"
DEMO_RESULTS = REPO / "results" / "reference" / "demo"  # committed reference run (the demo writes results/demo)
PAPER_GRIDS = ("paper_cifar10", "paper_restricted_imagenet", "fig1_bench", "fast_recipes_cifar10")
CPU_BENCH = REPO / "experiments" / "bench" / "cpu_paper_models.csv"
CSVS = ("runs.csv", "epochs.csv", "bench.csv", "robustness.csv")
METHODS = ("standard", "fast", "pgd7")


# ---------------------------------------------------------------------------------------------------------------
# (a) the committed reference run


@pytest.fixture
def csv_only_demo(tmp_path: Path) -> Path:
    """The committed CSVs alone in a fresh experiment folder (as if copied back from a cluster)."""
    exp = tmp_path / "demo"
    exp.mkdir()
    for name in CSVS:
        shutil.copyfile(DEMO_RESULTS / name, exp / name)
    return exp


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_report_from_committed_csvs_reproduces_table1(csv_only_demo: Path) -> None:
    from orchestrator.report import build_report

    build_report(csv_only_demo)
    regenerated = (csv_only_demo / "report" / "table1.csv").read_bytes()
    committed = (DEMO_RESULTS / "report" / "table1.csv").read_bytes()
    assert regenerated == committed, "results/reference/demo/report/table1.csv no longer follows from its CSVs"
    for name in ("fig1.png", "fig2.png", "report.md"):
        assert (csv_only_demo / "report" / name).stat().st_size > 0


FAST_RECIPES_RESULTS = REPO / "results" / "reference" / "fast-recipes"  # experiments/fast_recipes.yaml's reference


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_fast_recipes_tables_follow_from_their_committed_csvs(tmp_path: Path) -> None:
    """The time-to-robustness study's reference run: Table I and the time-to-target table regenerate byte for
    byte from its committed CSVs (the report reads CSVs only)."""
    from orchestrator.report import build_report

    exp = tmp_path / "fast-recipes"
    exp.mkdir()
    for name in ("runs.csv", "epochs.csv", "robustness.csv"):
        shutil.copyfile(FAST_RECIPES_RESULTS / name, exp / name)
    build_report(exp)
    for name in ("table1.csv", "time_to_target.csv", "time_to_target.md"):
        regenerated = (exp / "report" / name).read_bytes()
        assert regenerated == (FAST_RECIPES_RESULTS / "report" / name).read_bytes(), f"{name} no longer follows"


def test_committed_run_shows_the_papers_findings() -> None:
    """Time: no PGD < 1-step < 7-step at each GPU count; robustness at the training eps: standard << fast <~ pgd7."""
    runs = pd.read_csv(DEMO_RESULTS / "runs.csv")
    train = runs[runs["kind"] == "train"]
    assert len(train) == 6 and set(train["state"]) == {"finished"}
    for gpus, group in train.groupby("world_size"):
        last = group.set_index("method")["elapsed_s_last"]
        assert last["standard"] < last["fast"] < last["pgd7"], f"time ordering at {gpus} GPU(s): {dict(last)}"
    rob = pd.read_csv(DEMO_RESULTS / "robustness.csv")
    eps = float(train["attack_eps"].iloc[0])
    at_eps = rob[rob["eps"].sub(eps).abs() < 1e-9].set_index("method")["adv_acc"]
    assert at_eps["fast"] - at_eps["standard"] > 0.25, dict(at_eps)  # standard << fast
    assert at_eps["pgd7"] - at_eps["standard"] > 0.25, dict(at_eps)  # standard << pgd7
    assert abs(at_eps["pgd7"] - at_eps["fast"]) < 0.10, dict(at_eps)  # fast <~ pgd7: comparable
    clean = rob[rob["eps"] == 0].set_index("method")
    assert (clean["adv_acc"] == clean["clean_acc"]).all()  # eps 0 is the clean accuracy


def test_committed_run_is_predicted_by_its_bench_within_15_percent() -> None:
    """The estimate's target on the reference run: `estimate` from the run's own bench.csv (rows at each cell's world
    size) against each training run's measured wall-clock. The committed numbers, not a new timing."""
    from orchestrator.estimate.compare import compare_runs

    runs, bench = pd.read_csv(DEMO_RESULTS / "runs.csv"), pd.read_csv(DEMO_RESULTS / "bench.csv")
    df = compare_runs(runs, bench)
    assert len(df) == 6 and set(df["gpus"]) == {1, 2}
    assert (df.loc[df["gpus"] == 2, "bench_world_size"] == 2).all()  # 2-GPU cells from the 2-rank rows
    assert df["error_pct"].abs().max() < 15.0, df[["run_id", "predicted_s", "measured_s", "error_pct"]].to_string()
    committed = pd.read_csv(DEMO_RESULTS / "report" / "estimate_vs_measured.csv")
    assert committed["run_id"].tolist() == df["run_id"].tolist()
    assert committed["error_pct"].tolist() == pytest.approx(df["error_pct"].tolist(), rel=1e-9)


def test_committed_run_directories_are_small_and_complete() -> None:
    runs = sorted(p for p in (DEMO_RESULTS / "runs").iterdir() if p.is_dir())
    assert len(runs) >= 11  # 2 bench + 6 train + 3 evaluate (+ visualize)
    for run in runs:
        for name in (layout.SPEC, "env.json", layout.RESULT):
            assert (run / name).is_file(), f"{run.name}: {name} missing"
        assert not (run / layout.ERROR).exists(), f"{run.name} failed"
    tracked = [p for p in DEMO_RESULTS.rglob("*") if p.is_file() and ".submitit" not in p.parts]
    big = [f"{p.relative_to(REPO)} ({p.stat().st_size} B)" for p in tracked if not p.name.endswith(".pt")]
    big = [b for b in big if int(b.rsplit("(", 1)[1].split()[0]) > 1_000_000]
    assert not big, f"files over 1 MB in the reference run: {big}"


# ---------------------------------------------------------------------------------------------------------------
# (b) the paper's grids: dry runs pinned by golden files


@pytest.mark.parametrize("name", PAPER_GRIDS)
def test_paper_grid_dry_run_golden(
    name: str, results: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # profiles and grids are named relative to the repository
    code = cli.main(["submit", f"experiments/{name}.yaml", "--dry-run", "--results", str(results)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = normalise(captured.out, results, REPO)
    golden = REPO / "tests" / "golden" / f"dry-run-{name}.txt"
    if os.environ.get("FASTROBUST_UPDATE_GOLDEN") == "1":
        golden.write_text(out)
    assert out == golden.read_text(), f"dry run of {name}.yaml changed; FASTROBUST_UPDATE_GOLDEN=1 rewrites it"
    assert not any(results.iterdir()), "a dry run writes nothing"


# The paper grids' settings (Section IV): tests/test_grid.py::test_paper_grids_have_the_papers_settings.


# ---------------------------------------------------------------------------------------------------------------
# (c) estimate on the paper's grids from a committed bench file


def _hours(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"h": 1.0, "min": 1 / 60, "s": 1 / 3600}[unit]


@pytest.mark.parametrize("name", ("paper_cifar10", "paper_restricted_imagenet"))
def test_estimate_paper_grid_prints_hours(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["estimate", str(REPO / "experiments" / f"{name}.yaml"), "--bench", str(CPU_BENCH)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    rows = {}
    for line in lines[2:]:
        match = re.match(r"^(\S+)(?: \*)?\s+(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+ (?:h|min|s))\s+([\d.e+]+)\s+(\S+)$", line)
        if match:
            rows[(match[2], int(match[3]))] = _hours(match[5])
    assert set(rows) == {(m, g) for m in METHODS for g in (2, 8)}, captured.out
    for gpus in (2, 8):
        assert rows[("standard", gpus)] < rows[("fast", gpus)] < rows[("pgd7", gpus)], rows
    for method in METHODS:
        assert rows[(method, 8)] < rows[(method, 2)], rows  # more GPUs, less wall-clock
    assert all(math.isfinite(h) and h > 0 for h in rows.values())
    assert re.search(r"total: [\d.e+]+ GPU-hours over 6 cells \(bench device: .+\)", captured.out), captured.out


FAST_RECIPES_BENCH = REPO / "experiments" / "bench" / "cpu_fast_recipes_cifar10.csv"


def test_estimate_of_the_fast_recipes_grid_follows_from_its_committed_bench(capsys: pytest.CaptureFixture[str]) -> None:
    """experiments/fast_recipes_cifar10.yaml's hours from the committed CPU bench (13 min on the 2-vCPU Xeon): every
    one of its 48 train cells and 15 judge jobs priced, the paper recipes in their order at each shape, and the
    printed table the committed one byte for byte (the estimate is a pure function of the grid and the bench)."""
    grid = REPO / "experiments" / "fast_recipes_cifar10.yaml"
    assert cli.main(["estimate", str(grid), "--bench", str(FAST_RECIPES_BENCH)]) == 0
    out = capsys.readouterr().out
    assert out == FAST_RECIPES_BENCH.with_suffix(".estimate.txt").read_text(), "regenerate the .estimate.txt"
    assert re.search(r"total: [\d.e+]+ GPU-hours over 63 cells", out), out  # 48 train cells, 15 judges
    hours = {}
    for line in out.splitlines()[2:]:
        if match := re.match(
            r"^paper-(\w+)-n(\d)g(\d)\S*-model(\w+) \*?\s+\S+\s+\d+\s+\d+\s+([\d.]+ (?:h|min|s))", line
        ):
            hours[(match[1], int(match[2]) * int(match[3]), match[4])] = _hours(match[5])
    assert len(hours) == 18, out
    for _, gpus, model in hours:
        assert hours[("standard", gpus, model)] < hours[("fast", gpus, model)] < hours[("pgd7", gpus, model)]


def test_committed_bench_is_labelled_cpu() -> None:
    """The committed bench is measured on a CPU (no GPU here): its file name says so."""
    bench = pd.read_csv(CPU_BENCH)
    assert CPU_BENCH.name.startswith("cpu")
    assert {"resnet50_cifar", "resnet50"} <= set(bench["model"])
    assert not bench["device"].astype(str).str.contains("NVIDIA|GPU|H100|A100", regex=True).any()


# ---------------------------------------------------------------------------------------------------------------
# (d) the demo grid


def test_demo_grid_is_the_issue_study() -> None:
    grids = load_grids(DEMO_GRID)
    assert [g.kind for g in grids] == ["bench", "train", "evaluate", "visualize"]
    assert {g.name for g in grids} == {"demo"} and {g.executor for g in grids} == {"local"}
    cells = [c for g in grids for c in g.cells]
    for c in cells:
        assert c.shape.nodes == 1
        assert c.dataset == "fashion_mnist" and c.data_root is None  # real Fashion-MNIST (Debian files)
    bench, train, evaluate, visualize = grids
    assert set(bench.cells[0].bench.methods) == set(METHODS) and len(bench.cells[0].bench.batch_sizes) >= 3
    assert {c.world_size for c in bench.cells} == {1, 2}  # a bench cell per train shape (multi-GPU estimates)
    assert {(c.method, c.shape.gpus_per_node) for c in train.cells} == {(m, g) for m in METHODS for g in (1, 2)}
    assert len(train.cells) == 6
    for c in train.cells:
        assert c.model == "small_cnn" and c.attack.norm == "l2" and c.attack.eps > 0
        assert c.train_subset and c.val_subset and c.epochs > c.eval.every and c.eval.steps > 0
        assert c.optimizer.step_epochs < c.epochs  # the lr schedule is scaled down with the epochs
        assert c.global_batch_size % c.world_size == 0
    one_gpu = {c.run_id for c in train.cells if c.world_size == 1}
    assert {c.evaluate.source_run for c in evaluate.cells} == one_gpu
    eps = train.cells[0].attack.eps
    for c in evaluate.cells:
        assert eps in c.evaluate.eps_list and 0.0 in c.evaluate.eps_list
        assert c.evaluate.checkpoint == "best" and c.evaluate.max_examples
    assert set(visualize.cells[0].visualize.source_runs) == one_gpu


def test_demo_reads_real_fashion_mnist() -> None:
    from workloads.assets.data import build_split

    (train,) = [g for g in load_grids(DEMO_GRID) if g.kind == "train"]
    val = build_split(train.cells[0], train=False)
    assert len(val) == train.cells[0].val_subset
    labels = [int(val[i][1]) for i in range(len(val))]
    assert sorted(set(labels)) == list(range(10))
    x = val[0][0]
    assert tuple(x.shape) == (1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_committed_specs_are_the_demo_cells() -> None:
    """The reference run's spec.json files are exactly the current demo.yaml's cells (its settings record)."""
    cells = {c.run_id: c for g in load_grids(DEMO_GRID) for c in g.cells}
    committed = {p.parent.name: layout.read_json(p) for p in (DEMO_RESULTS / "runs").glob(f"*/{layout.SPEC}")}
    assert set(committed) == set(cells)
    for run_id, spec in committed.items():
        # every recorded setting as the grid gives it now (settings added to RunSpec later may be absent)
        now = flatten(cells[run_id].to_dict())
        differ = {k: (v, now.get(k, "<no such setting>")) for k, v in flatten(spec).items() if now.get(k) != v}
        assert not differ, f"{run_id}: spec.json differs from experiments/demo.yaml (recorded, now): {differ}"
