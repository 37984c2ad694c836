"""orchestrate report: Table I from the paper's own hours, determinism, baselines, and figures from small CSVs."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from orchestrator import report
from orchestrator.report import labels as report_labels
from orchestrator.report import table1
from orchestrator.report import tables as report_tables
from tests import fixtures
from workloads.layout import write_csv_atomic

# Paper Table I: (dataset, method) -> {gpus: (last hours, last ratio, best hours, best ratio)}; None = "—".
PAPER = {
    ("cifar10", "pgd7"): {2: (9.1, 7.4, 6.4, 5.2), 8: (3.0, 2.4, 1.3, 1.1)},
    ("cifar10", "fast"): {2: (2.9, 2.3, 1.4, 1.2), 8: (1.1, 0.9, 0.5, 0.5)},
    ("cifar10", "standard"): {2: (1.2, 1.0, 0.9, 0.7), 8: (0.7, 0.6, 0.5, 0.4)},
    ("restricted_imagenet", "pgd7"): {2: (127.5, 7.1, None, None), 8: (38.8, 2.2, 2.6, 0.2)},
    ("restricted_imagenet", "fast"): {2: (39.8, 2.2, 17.3, 0.9), 8: (12.9, 0.7, 10.9, 0.6)},
    ("restricted_imagenet", "standard"): {2: (17.7, 1.0, 12.3, 0.7), 8: (8.4, 0.5, 5.5, 0.3)},
}
UNFINISHED = ("restricted_imagenet", "pgd7", 2)
RUN_COLUMNS = [
    "run_id", "experiment", "kind", "dataset", "model", "method", "attack_norm", "attack_eps", "world_size",
    "nodes", "gpus_per_node", "global_batch_size", "epochs", "state", "elapsed_s_last", "elapsed_s_best", "device",
]  # fmt: skip


def paper_runs() -> list[dict[str, object]]:
    rows = []
    for (dataset, method), by_gpus in PAPER.items():
        for gpus, (last, _, best, _) in by_gpus.items():
            unfinished = (dataset, method, gpus) == UNFINISHED
            rows.append(
                {
                    "run_id": f"{dataset}-{method}-g{gpus}",
                    "experiment": "paper",
                    "kind": "train",
                    "dataset": dataset,
                    "model": "resnet50",
                    "method": method,
                    "attack_norm": "l2",
                    "attack_eps": 1.0 if dataset == "cifar10" else 3.0,
                    "world_size": gpus,
                    "nodes": gpus // 2,
                    "gpus_per_node": 2,
                    "global_batch_size": 256,
                    "epochs": 150,
                    # the paper's estimate of the unfinished run's last epoch stands in for its elapsed time
                    "state": "failed" if unfinished else "finished",
                    "elapsed_s_last": last * 3600,
                    "elapsed_s_best": None if best is None else best * 3600,
                    "device": "Tesla V100",
                }
            )
    return rows


@pytest.fixture
def paper_dir(tmp_path: Path) -> Path:
    exp = tmp_path / "paper"
    write_csv_atomic(exp / "runs.csv", RUN_COLUMNS, paper_runs())
    return exp


def md_cells(md: str) -> dict[tuple[str, str], list[str]]:
    """Rows of the markdown table keyed by (dataset label carried down, approach)."""
    out, dataset = {}, ""
    for line in md.splitlines():
        if not line.startswith("| ") or line.startswith("| Dataset") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        dataset = cells[0] or dataset
        out[(dataset, cells[1])] = cells[2:]
    return out


def parse_cell(text: str) -> tuple[float | None, float | None, bool]:
    """'9.1 (7.4)' -> (9.1, 7.4, False); '—' -> (None, None, False); a trailing † sets the flag."""
    marked = text.endswith(report_labels.MARK)
    m = re.fullmatch(r"([0-9.]+) \(([0-9.]+)\)" + re.escape(report_labels.MARK) + "?", text)
    if m:
        return float(m.group(1)), float(m.group(2)), marked
    return None, None, marked


def test_paper_table_ratios_and_dashes(paper_dir: Path) -> None:
    report.build_report(paper_dir)
    out = paper_dir / "report"
    md = (out / "table1.md").read_text()
    assert "Training times in hours (relative to 2-GPU, No PGD" in md
    cells = md_cells(md)
    labels = {"cifar10": "CIFAR", "restricted_imagenet": "Restricted ImageNet"}
    for (dataset, method), by_gpus in PAPER.items():
        row = cells[(labels[dataset], report_labels.approach_name(method))]
        for i, gpus in enumerate((2, 8)):
            last_h, last_r, best_h, best_r = by_gpus[gpus]
            h, r, marked = parse_cell(row[i])
            assert h == pytest.approx(last_h, abs=0.051), (dataset, method, gpus, row[i])
            assert r == pytest.approx(last_r, abs=0.3), (dataset, method, gpus, row[i])
            assert marked == ((dataset, method, gpus) == UNFINISHED)
            best_text = row[2 + i]
            if best_h is None:
                assert best_text == report_labels.DASH
            else:
                h, r, _ = parse_cell(best_text)
                assert h == pytest.approx(best_h, abs=0.051) and r == pytest.approx(best_r, abs=0.3), best_text
    assert f"{report_labels.MARK} Did not finish" in md and "Restricted ImageNet 7-Step PGD, 2-GPU" in md
    # Order as the paper: 7-step, 1-step, No PGD within each dataset; CIFAR first.
    approaches = [k for k in cells if k[0] == "CIFAR"]
    assert [a for _, a in approaches] == ["7-Step PGD", "1-Step PGD", "No PGD"]

    rows = list(csv.DictReader((out / "table1.csv").open()))
    assert list(rows[0])[:7] == ["dataset", "approach", "gpus", "last_hours", "last_relative", "best_hours",
                                 "best_relative"]  # fmt: skip
    by_key = {(r["dataset"], r["approach"], int(r["gpus"])): r for r in rows}
    unfinished = by_key[("restricted_imagenet", "7-Step PGD", 2)]
    assert unfinished["last_hours"] == unfinished["best_hours"] == unfinished["last_relative"] == ""
    assert float(unfinished["last_hours_partial"]) == pytest.approx(127.5)
    cifar7 = by_key[("cifar10", "7-Step PGD", 8)]
    # best-epoch columns divide by the baseline's LAST-epoch time (1.3 / 1.2), not its best (1.3 / 0.9)
    assert float(cifar7["best_relative"]) == pytest.approx(1.3 / 1.2, rel=1e-4)
    tex = (out / "table1.tex").read_text()
    assert r"\multicolumn{2}{c}{Last Epoch}" in tex and "---" in tex and r"\dag" in tex
    assert (out / "report.md").exists() and "Table I" in (out / "report.md").read_text()


def test_outputs_are_deterministic(paper_dir: Path) -> None:
    report.build_report(paper_dir)
    first = {n: (paper_dir / "report" / n).read_bytes() for n in ("table1.csv", "table1.md", "table1.tex")}
    report.build_report(paper_dir)
    assert first == {n: (paper_dir / "report" / n).read_bytes() for n in first}


def test_baseline_override(paper_dir: Path) -> None:
    report.build_report(paper_dir, baseline="fast@8")
    rows = list(csv.DictReader((paper_dir / "report" / "table1.csv").open()))
    fast8 = next(r for r in rows if r["dataset"] == "cifar10" and r["approach"] == "1-Step PGD" and r["gpus"] == "8")
    std2 = next(r for r in rows if r["dataset"] == "cifar10" and r["approach"] == "No PGD" and r["gpus"] == "2")
    assert float(fast8["last_relative"]) == 1.0
    assert float(std2["last_relative"]) == pytest.approx(1.2 / 1.1, rel=1e-4)
    with pytest.raises(report_tables.ReportError, match="baseline"):
        table1.parse_baseline("fast@x")


def test_unit_switches_for_short_runs(tmp_path: Path) -> None:
    exp = tmp_path / "tiny"
    rows = [
        {"run_id": f"{m}-g{g}", "kind": "train", "dataset": "fashion_mnist", "model": "small_cnn", "method": m,
         "world_size": g, "global_batch_size": 128, "epochs": 2, "state": "finished", "elapsed_s_last": t,
         "elapsed_s_best": t / 2}
        for m, g, t in (("standard", 1, 40.0), ("fast", 1, 75.0), ("pgd7", 1, 260.0), ("pgd7", 2, 150.0))
    ]  # fmt: skip
    write_csv_atomic(exp / "runs.csv", list(rows[0]), rows)
    md = (report.build_report(exp).parent / "table1.md").read_text()
    assert "Training times in minutes" in md
    cells = md_cells(md)
    assert cells[("Fashion-MNIST", "7-Step PGD")][0] == "4.3 (6.5)"  # 260 s = 4.3 min, 260 / 40 = 6.5
    assert cells[("Fashion-MNIST", "No PGD")][1] == ""  # no 2-GPU standard run: blank, not a dash


def test_unfinished_run_extrapolates_from_epochs_csv(tmp_path: Path) -> None:
    exp = tmp_path / "partial"
    rows = [
        {"run_id": "std", "kind": "train", "dataset": "cifar10", "method": "standard", "world_size": 1,
         "epochs": 10, "state": "finished", "elapsed_s_last": 100.0, "elapsed_s_best": 90.0},
        {"run_id": "pgd", "kind": "train", "dataset": "cifar10", "method": "pgd7", "world_size": 1,
         "epochs": 10, "state": "running", "elapsed_s_last": 200.0, "elapsed_s_best": 150.0},
    ]  # fmt: skip
    write_csv_atomic(exp / "runs.csv", list(rows[0]), rows)
    epochs = [{"run_id": "pgd", "epoch": e, "elapsed_s": 50.0 * e} for e in range(1, 5)]
    write_csv_atomic(exp / "epochs.csv", ["run_id", "epoch", "elapsed_s"], epochs)
    md = (report.build_report(exp).parent / "table1.md").read_text()
    # 200 s after 4 of 10 epochs -> 500 s = 5 x the 100 s baseline
    assert md_cells(md)[("CIFAR", "7-Step PGD")][:2] == [f"8.3 (5.0){report_labels.MARK}", report_labels.DASH]
    assert "extrapolated linearly" in md


def test_nothing_to_report(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(report_tables.ReportError, match="nothing to report"):
        report.build_report(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# Figures from small CSVs


def small_bench_rows() -> list[dict[str, object]]:
    """Plausible bench.csv: t(B) = a + b B per pass, K passes for K-step PGD."""
    passes = {
        ("pgd", "fast", 1): 1.1, ("pgd", "pgd7", 7): 7.2, ("forward", "standard", 0): 0.4, ("eval", "eval", 5): 5.6,
        ("train_step", "standard", 0): 1.3, ("train_step", "fast", 1): 2.4, ("train_step", "pgd7", 7): 8.5,
    }  # fmt: skip
    return fixtures.bench_rows(
        passes, lambda b: 0.002 + 0.0005 * b, (8, 16, 32, 64), dataset="fashion_mnist", repeats=3, spread=0.1
    )


def small_experiment(tmp_path: Path) -> Path:
    exp = tmp_path / "demo"
    bench = small_bench_rows()
    write_csv_atomic(exp / "bench.csv", list(bench[0]), bench)
    runs, rob = [], []
    for i, (method, gpus, t) in enumerate((("standard", 1, 30.0), ("fast", 1, 60.0), ("pgd7", 1, 200.0),
                                           ("fast", 2, 35.0), ("pgd7", 2, 110.0))):  # fmt: skip
        run_id = f"{method}-g{gpus}"
        runs.append({"run_id": run_id, "experiment": "demo", "kind": "train", "dataset": "fashion_mnist",
                     "model": "small_cnn", "method": method, "attack_norm": "l2", "attack_eps": 1.5,
                     "world_size": gpus, "global_batch_size": 64, "epochs": 2, "state": "finished",
                     "elapsed_s_last": t, "elapsed_s_best": t, "device": "x86_64", "train_subset": 2000,
                     "val_subset": 500})  # fmt: skip
        for eps in (0.0, 0.5, 1.0, 1.5, 2.0):
            acc = max(0.0, 0.9 - eps * (0.5 if method == "standard" else 0.15 + 0.01 * i))
            rob.append({"run_id": run_id, "method": method, "eps": eps, "steps": 20, "restarts": 1, "n": 500,
                        "clean_acc": 0.9, "adv_acc": round(acc, 4)})  # fmt: skip
    write_csv_atomic(exp / "runs.csv", list(runs[0]), runs)
    write_csv_atomic(exp / "robustness.csv", list(rob[0]), rob)
    return exp


def labelled_lines(ax: matplotlib.axes.Axes) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_figures_from_small_csvs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.report import plots

    figures = fixtures.keep_figures(monkeypatch, plots)
    exp = small_experiment(tmp_path)
    md_path = report.build_report(exp)
    out = exp / "report"
    for name in ("fig1.png", "fig1.pdf", "fig2.png", "fig2.pdf"):
        assert (out / name).stat().st_size > 1000, name
    assert not list(out.glob(".*")), "no temp files left behind"

    left, middle, right = figures["fig1"].axes[:3]
    assert len([ax for ax in figures["fig1"].axes if ax.get_label() != "<colorbar>"]) == 3
    assert labelled_lines(left) == ["7-Step PGD", "1-Step PGD", "No PGD (forward pass)"]
    assert labelled_lines(middle) == ["7-Step PGD", "1-Step PGD", "No PGD"]
    assert labelled_lines(right) == ["7-Step PGD", "1-Step PGD", "No PGD"]
    stars = [c for c in right.collections if c.get_label().endswith("measured")]
    assert sum(len(c.get_offsets()) for c in stars) == 5  # every finished run at the global batch
    (ax2,) = figures["fig2"].axes
    assert labelled_lines(ax2) == ["7-Step PGD", "1-Step PGD", "No PGD"]
    assert len(ax2.get_lines()) == 5 + 1  # one line per run + the training-eps marker
    marker = [line for line in ax2.get_lines() if line.get_linestyle() == ":"]
    assert len(marker) == 1 and marker[0].get_xdata()[0] == 1.5

    md = md_path.read_text()
    assert "![Fig. 1](fig1.png)" in md and "![Fig. 2](fig2.png)" in md
    assert "- device: x86_64" in md and "- train subset: 2000" in md
    assert "1-Step PGD is 3.33× faster than 7-Step PGD" in md
    # robustness ordering at the training eps, highest first
    found = re.search(r"adversarial accuracy at ε = 1\.5 \(training ε 1\.5\), highest first: (.*?)\.\s", md + " ")
    assert found and [p.rsplit(" ", 1)[0] for p in found.group(1).split(", ")] == ["1-Step PGD", "7-Step PGD",
                                                                                  "No PGD"]  # fmt: skip


def test_fig1_lower_bound_matches_estimate(tmp_path: Path) -> None:
    """The middle panel's points are the cost model's numbers (same code path as `orchestrate estimate`)."""
    from orchestrator.estimate import bench_costs
    from orchestrator.report import plots

    exp = small_experiment(tmp_path)
    tables = report_tables.load_tables(exp)
    assert tables.bench is not None
    costs = bench_costs.BenchCosts(tables.bench, "x86_64")
    settings = plots.settings_for(report_tables.train_runs(tables.runs), "small_cnn", "fashion_mnist")
    assert (settings.epochs, settings.global_batch, settings.train_subset, settings.val_subset) == (2, 64, 2000, 500)
    curves = plots._curves(costs, settings, ["pgd7"], [8, 64], per_x="batch")
    t8 = 0.002 + 0.0005 * 8
    # lower bound at B=8: 2 epochs x 250 batches x 7-step PGD
    # + 1 evaluation (at the last epoch) x 63 batches x (forward + 20-step PGD scaled from the 7-step rows)
    expected = 2 * 250 * 7.2 * t8 + 1 * math.ceil(500 / 8) * (0.4 * t8 + 20 / 7 * 7.2 * t8)
    assert curves[("pgd7", "lower_bound")][0][1] == pytest.approx(expected, rel=1e-9)


def test_settings_print_integers_as_integers(tmp_path: Path) -> None:
    exp = small_experiment(tmp_path)
    runs = list(csv.DictReader((exp / "runs.csv").open()))
    # a bench row leaves the training columns empty: pandas then reads train_subset as floats (2000.0)
    runs.append({"run_id": "bench-run", "kind": "bench", "dataset": "fashion_mnist", "model": "small_cnn"})
    write_csv_atomic(exp / "runs.csv", list(runs[0]), runs)
    md = report.build_report(exp).read_text()
    assert "- train subset: 2000\n" in md and "- val subset: 500\n" in md and "- epochs: 2\n" in md
    assert "- attack eps: 1.5\n" in md  # a float setting stays a float


def test_report_shows_visualize_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import collect

    monkeypatch.setattr(collect, "collect", lambda exp_dir: {})  # the CSVs below stand for collect's output
    exp = small_experiment(tmp_path)
    vis_dir = exp / "runs" / "vis-a"
    vis_dir.mkdir(parents=True)
    for stem in ("fig3", "fig5"):  # no fig4.png: not linked
        (vis_dir / f"{stem}.png").write_bytes(b"\x89PNG")
    columns = ["run_id", "method", "vis_hf_share", "large_hf_share", "target_other_mean", "robust_acc", "vis_n",
               "visualize_run"]  # fmt: skip
    rows = [
        {"run_id": "standard-g1", "method": "standard", "vis_hf_share": 0.7382, "large_hf_share": 0.587,
         "target_other_mean": 0.0, "robust_acc": 0.121, "vis_n": 10, "visualize_run": "vis-a"},
        {"run_id": "pgd7-g1", "method": "pgd7", "vis_hf_share": 0.4157, "large_hf_share": 0.281,
         "target_other_mean": 0.5, "robust_acc": 0.691, "vis_n": 10, "visualize_run": "vis-a"},
    ]  # fmt: skip
    write_csv_atomic(exp / "features.csv", columns, rows)
    md = report.build_report(exp).read_text()
    assert "![Fig. 3: feature visualisation](../runs/vis-a/fig3.png)" in md
    assert "![Fig. 5: large targeted perturbations](../runs/vis-a/fig5.png)" in md
    assert "fig4.png" not in md
    assert "| run_id | method | vis_hf_share | large_hf_share | target_other_mean | robust_acc |" in md
    assert "| pgd7-g1 | pgd7 | 0.416 | 0.281 | 0.500 | 0.691 |" in md
    assert "vis_n" not in md  # key columns only


def test_cli_report_collects_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import cli, collect

    exp = small_experiment(tmp_path)
    (exp / "runs").mkdir()
    calls: list[Path] = []
    monkeypatch.setattr(collect, "collect", lambda exp_dir: calls.append(Path(exp_dir)) or {})
    assert cli.main(["report", str(exp)]) == 0
    assert calls == [exp]
