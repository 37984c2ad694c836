"""kind: bench on CPU: bench.csv rows, columns and the cost ordering of PGD vs a forward pass."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from orchestrator.estimate import bench_costs
from tests.fixtures import needs_fmnist
from workloads.kinds import bench
from workloads.runtime.distributed import Dist
from workloads.spec import from_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # the machine is shared; these models are tiny


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
    assert result == {"bench_csv": "bench.csv", "rows": len(rows), "device": bench.device_name(Dist()), "world_size": 1}
    assert {r["world_size"] for r in rows} == {"1"}  # no process group: no allreduce rows
    assert list(rows[0]) == list(bench.BENCH_COLUMNS)
    design = ["device", "model", "dataset", "method", "attack_steps", "batch_size", "repeats", "median_s", "p10_s",
              "p90_s"]  # fmt: skip
    assert list(rows[0])[: len(design)] == design
    keys = [(r["what"], r["method"], int(r["attack_steps"]), int(r["batch_size"])) for r in rows]
    keys = [k for k in keys if k[0] != "data"]  # test_bench_writes_data_rows_for_fashion_mnist checks those
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
    costs = bench_costs.select_costs(bench_costs.read_bench(tmp_path), model="small_cnn", dataset="fashion_mnist")
    assert costs.train_step("pgd7", 8)[2] == "train_step"


@needs_fmnist
def test_bench_writes_data_rows_for_fashion_mnist(tmp_path: Path) -> None:
    """what=data rows: one batch through the real dataset and transforms, after each batch size's other rows."""
    bench.main(spec(methods=["standard"]), tmp_path, Dist())
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    keys = [(r["what"], r["method"], int(r["attack_steps"]), int(r["batch_size"])) for r in rows]
    expected = []
    for b in (8, 16):
        expected += [("forward", "standard", 0, b), ("eval", "eval", 3, b), ("train_step", "standard", 0, b)]
        expected += [("data", "data_train", 0, b), ("data", "data_val", 0, b)]
    assert keys == expected
    median = {(r["what"], r["method"], r["batch_size"]): float(r["median_s"]) for r in rows}
    for b in ("8", "16"):
        # augmentation (a padded random crop) costs more per example than the plain conversion
        assert median[("data", "data_train", b)] > median[("data", "data_val", b)] > 0
    # the cost model reads them: the data term of the train split at a measured batch size
    costs = bench_costs.select_costs(bench_costs.read_bench(tmp_path), model="small_cnn", dataset="fashion_mnist")
    assert costs.data("train", 16) == (median[("data", "data_train", "16")], False)
    assert costs.data("val", 8) == (median[("data", "data_val", "8")], False)


def test_bench_without_the_data_skips_data_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A data root that does not hold the dataset: the data rows are left out with a note, the rest is measured."""
    s = spec(batch_sizes=[4], methods=["standard"])
    s = from_dict({**s.to_dict(), "data_root": str(tmp_path / "nowhere")})  # type: ignore[attr-defined]
    result = bench.main(s, tmp_path, Dist())
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert result["rows"] == len(rows) and rows
    assert {r["what"] for r in rows} == {"forward", "eval", "train_step"}
    assert {(r["inputs"], r["prime_steps"]) for r in rows} == {("random", "0")}  # no data: noise, fresh weights
    assert "no data rows (fashion_mnist unavailable" in capsys.readouterr().out


def test_data_batches_are_the_trainers(monkeypatch: pytest.MonkeyPatch) -> None:
    """time_batches draws through a DataLoader with the trainer's loader settings, batch after batch."""
    seen: list[dict[str, object]] = []
    real = bench.DataLoader

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bench, "DataLoader", spy)
    calls: list[int] = []

    class Items(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            calls.append(i)
            return torch.zeros(1, 2, 2), 0

    times = bench.time_batches(Items(), 4, Dist(), repeats=3, warmup=2, seed=0)
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert len(calls) == (2 + 3) * 4  # warm-up and timed batches of 4, sampled with replacement past len 10
    assert seen and seen[0]["num_workers"] == 0  # CPU: in-process, as train.loader_kwargs


def test_bench_leaves_the_weights_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training steps run with lr 0: repeats time the same model, so nothing can diverge on random labels."""
    built: list[torch.nn.Module] = []
    real_build = bench.build_model

    def keep(*args: object, **kwargs: object) -> torch.nn.Module:
        built.append(real_build(*args, **kwargs))  # type: ignore[arg-type]
        return built[-1]

    monkeypatch.setattr(bench, "build_model", keep)
    bench.main(spec(batch_sizes=[4], methods=["standard", "fast"], repeats=2, warmup=1, prime_steps=0), tmp_path,
               Dist())  # fmt: skip
    torch.manual_seed(0)  # bench.main seeds with spec.seed (0) before building: the same initial weights
    fresh = real_build("small_cnn", 10, 1, (0.2860,), (0.3530,))
    for (name, p), q in zip(built[0].named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p.detach(), q), name


@needs_fmnist
def test_bench_times_a_primed_model_on_real_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the dataset at hand: prime_steps SGD steps on real batches first, then every row on a real batch."""
    primed: list[int] = []
    real_prime = bench.prime_model

    def spy(model: torch.nn.Module, *args: object) -> int:
        before = [p.detach().clone() for p in model.parameters()]
        steps = real_prime(model, *args)  # type: ignore[arg-type]
        primed.append(sum(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters(), strict=True)))
        return steps

    monkeypatch.setattr(bench, "prime_model", spy)
    bench.main(spec(batch_sizes=[4], methods=["standard"], repeats=1, warmup=0, prime_steps=3), tmp_path, Dist())
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert {(r["inputs"], r["prime_steps"]) for r in rows} == {("data", "3")}
    assert primed and primed[0] > 0  # the weights moved
    x, y = bench.real_batch(bench.build_datasets(spec()).train, 6, seed=1)  # type: ignore[arg-type]
    assert tuple(x.shape) == (6, 1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.dtype == torch.int64 and len(set(y.tolist())) > 1


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    s = spec(batch_sizes=[4], methods=["standard"], repeats=1, warmup=0)
    assert bench.main(s, tmp_path, Dist(rank=1, world_size=2)) == {"rank": 1}
    assert not (tmp_path / "bench.csv").exists()


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_two_ranks_bench_ddp_steps_and_the_gradient_allreduce(tmp_path: Path) -> None:
    """A bench cell of shape 1x2 (two gloo ranks through workloads.entry, as a job runs it): every row says
    world size 2, training steps run through DDP (so cost at least the rank's compute), and what=allreduce
    rows time one gradient-sized all-reduce; the cost model predicts a 2-GPU cell from those rows."""
    from tests.test_distributed import torchrun_entry, write_spec

    run_dir = tmp_path / "bench-small_cnn-n1g2"
    spec_path, _ = write_spec(run_dir, kind="bench", data_root=str(tmp_path / "no-data"),
                              eval={"steps": 2}, bench={"batch_sizes": [8, 16], "methods": ["standard", "fast"],
                                                        "repeats": 3, "warmup": 1})  # fmt: skip
    torchrun_entry(spec_path, world=2)
    rows = list(csv.DictReader((run_dir / "bench.csv").open()))
    assert {r["world_size"] for r in rows} == {"2"}
    keys = [(r["what"], r["method"], int(r["batch_size"])) for r in rows]
    for b in (8, 16):
        assert ("allreduce", "gradients", b) in keys and ("train_step", "fast", b) in keys
    df = bench_costs.read_bench(run_dir)
    costs = bench_costs.select_costs(df, model="small_cnn", dataset="fashion_mnist")
    assert costs.world_sizes == [2]
    t, extra = costs.allreduce(2, 8)  # type: ignore[misc]
    assert t > 0 and not extra
    step, _, basis, world = costs.train_step("fast", 16, 2)
    assert (basis, world) == ("train_step", 2) and step > 0


def test_timing_stats_percentiles() -> None:
    assert bench.timing_stats([1.0, 2.0, 3.0, 4.0, 5.0]) == {"median_s": 3.0, "p10_s": 1.4, "p90_s": 4.6}
