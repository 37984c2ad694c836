"""kind: bench on CPU: bench.csv rows, columns and the cost ordering of PGD vs a forward pass."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from orchestrator import estimate
from workloads import bench
from workloads.distributed import Dist
from workloads.spec import from_dict


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the machine is shared; these models are tiny


def spec(**bench_settings: object) -> object:
    return from_dict(
        {
            "kind": "bench",
            "run_id": "bench-small_cnn-n1g1",
            "model": "small_cnn",
            "dataset": "fashion_mnist",
            "eval": {"steps": 3},
            "bench": {"batch_sizes": [8, 16], "repeats": 2, "warmup": 1, **bench_settings},
        }
    )


def test_bench_writes_expected_rows(tmp_path: Path) -> None:
    result = bench.main(spec(), tmp_path, Dist())
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert result == {"bench_csv": "bench.csv", "rows": len(rows), "device": bench.device_name(Dist())}
    assert list(rows[0]) == list(bench.BENCH_COLUMNS)
    design = ["device", "model", "dataset", "method", "attack_steps", "batch_size", "repeats", "median_s", "p10_s",
              "p90_s"]  # fmt: skip
    assert list(rows[0])[: len(design)] == design
    keys = [(r["what"], r["method"], int(r["attack_steps"]), int(r["batch_size"])) for r in rows]
    expected = []
    for b in (8, 16):
        expected += [("pgd", "fast", 1, b), ("pgd", "pgd7", 7, b)]
        expected += [("forward", "standard", 0, b), ("eval", "eval", 3, b)]
        expected += [("train_step", "standard", 0, b), ("train_step", "fast", 1, b), ("train_step", "pgd7", 7, b)]
    assert keys == expected
    for r in rows:
        assert r["model"] == "small_cnn" and r["dataset"] == "fashion_mnist" and r["repeats"] == "2"
        assert 0 < float(r["p10_s"]) <= float(r["median_s"]) <= float(r["p90_s"])
    for b in ("8", "16"):
        median = {(r["what"], r["method"]): float(r["median_s"]) for r in rows if r["batch_size"] == b}
        # 7 forward + input-backward passes cost more than one no-grad forward pass
        assert median[("pgd", "pgd7")] > median[("forward", "standard")]
    # the file feeds the cost model as it is
    costs = estimate.select_costs(estimate.read_bench(tmp_path), model="small_cnn", dataset="fashion_mnist")
    assert costs.train_step("pgd7", 8)[2] == "train_step"


def test_bench_leaves_the_weights_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training steps run with lr 0: repeats time the same model, so nothing can diverge on random labels."""
    built: list[torch.nn.Module] = []
    real_build = bench.build_model

    def keep(*args: object, **kwargs: object) -> torch.nn.Module:
        built.append(real_build(*args, **kwargs))  # type: ignore[arg-type]
        return built[-1]

    monkeypatch.setattr(bench, "build_model", keep)
    bench.main(spec(batch_sizes=[4], methods=["standard", "fast"], repeats=2, warmup=1), tmp_path, Dist())
    torch.manual_seed(0)  # bench.main seeds with spec.seed (0) before building: the same initial weights
    fresh = real_build("small_cnn", 10, 1, (0.2860,), (0.3530,))
    for (name, p), q in zip(built[0].named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p.detach(), q), name


def test_only_rank_zero_measures(tmp_path: Path) -> None:
    assert bench.main(spec(), tmp_path, Dist(rank=1, world_size=2)) == {"rank": 1}
    assert not (tmp_path / "bench.csv").exists()


def test_summarize_percentiles() -> None:
    assert bench.summarize([1.0, 2.0, 3.0, 4.0, 5.0]) == {"median_s": 3.0, "p10_s": 1.4, "p90_s": 4.6}
