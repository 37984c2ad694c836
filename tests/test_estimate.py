"""Cost model: interpolation, the closed-form total, the multi-GPU form, and `estimate` on a grid file."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.estimate import bench_costs, compare
from orchestrator.estimate import model as estimate
from orchestrator.estimate.bench_costs import EstimateError, interpolate_cost
from tests import fixtures
from workloads.layout import write_csv_atomic

REPO = Path(__file__).resolve().parents[1]

# Synthetic per-batch costs with a closed form: one attack pass costs a + b B.
A, B_COEF = 0.01, 0.002
BATCHES = (16, 32, 64, 128, 256)


def t_pass(b: float) -> float:
    return A + B_COEF * b


COSTS = {  # (what, method, steps) -> multiple of t_pass
    ("pgd", "fast", 1): 1.0,
    ("pgd", "pgd7", 7): 7.0,
    ("forward", "standard", 0): 0.35,
    ("eval", "eval", 20): 20.7,
    ("train_step", "standard", 0): 1.1,
    ("train_step", "fast", 1): 2.1,
    ("train_step", "pgd7", 7): 8.1,
}


def bench_rows(device: str = "x86_64", model: str = "small_cnn", dataset: str = "cifar10") -> list[dict[str, object]]:
    extra = {"precision": "fp32", "channels_last": False}
    return fixtures.bench_rows(COSTS, t_pass, BATCHES, device=device, model=model, dataset=dataset, extra=extra)


@pytest.fixture
def bench() -> pd.DataFrame:
    return pd.DataFrame(bench_rows())


def costs_of(bench: pd.DataFrame) -> bench_costs.BenchCosts:
    return bench_costs.select_costs(bench, model="small_cnn", dataset="cifar10")


# ---------------------------------------------------------------------------------------------
# Interpolation


def test_interpolation_exact_on_measured_points() -> None:
    points = {b: t_pass(b) for b in BATCHES}
    for b in BATCHES:
        assert interpolate_cost(points, b) == (t_pass(b), False)


def test_interpolation_between_points_is_log_log_linear() -> None:
    # exact for a power law, whatever its exponent
    power = {b: 0.003 * b**0.7 for b in BATCHES}
    for b in (20, 48, 100, 200):
        t, extra = interpolate_cost(power, b)
        assert t == pytest.approx(0.003 * b**0.7, rel=1e-12) and not extra
    # close to, and bracketed by, an affine cost between its neighbours
    affine = {b: t_pass(b) for b in BATCHES}
    t, extra = interpolate_cost(affine, 48)
    assert not extra and t_pass(32) < t < t_pass(64)
    assert t == pytest.approx(t_pass(48), rel=0.03)


def test_extrapolation_is_flagged_and_slope_clamped() -> None:
    power = {b: 0.003 * b**0.7 for b in BATCHES}
    t, extra = interpolate_cost(power, 512)
    assert extra and t == pytest.approx(0.003 * 512**0.7, rel=1e-12)  # the end segment's slope continues
    t, extra = interpolate_cost(power, 4)
    assert extra and t == pytest.approx(0.003 * 4**0.7, rel=1e-12)
    # superlinear measured points: beyond them time grows at most proportionally (slope clamped to 1)
    square = {8: 1.0, 16: 4.0}
    t, extra = interpolate_cost(square, 32)
    assert extra and t == pytest.approx(8.0)
    # a single point: proportional to the batch, flagged
    assert interpolate_cost({32: 2.0}, 64) == (4.0, True)
    with pytest.raises(EstimateError):
        interpolate_cost({}, 8)


# ---------------------------------------------------------------------------------------------
# The closed form


def closed_form(method: str, *, epochs: int, global_batch: int, gpus: int, every: int, n_train: int, n_val: int,
                allreduce: float = 0.0, eval_batch: int | None = None) -> float:  # fmt: skip
    """The paper's bound written out independently of the module, for t(B) = k (a + b B)."""
    b = global_batch // gpus
    k_step = {"standard": 1.1, "fast": 2.1, "pgd7": 8.1}[method]
    steps_per_epoch = math.ceil(math.ceil(n_train / gpus) / b)
    eb = eval_batch or b
    evals = math.ceil(epochs / every)  # every `every` epochs and the last
    return epochs * steps_per_epoch * (k_step * t_pass(b) + (allreduce if gpus > 1 else 0)) + evals * math.ceil(
        math.ceil(n_val / gpus) / eb
    ) * 20.7 * t_pass(eb)


@pytest.mark.parametrize("method", ["standard", "fast", "pgd7"])
@pytest.mark.parametrize("batch", BATCHES)
def test_single_gpu_total_matches_closed_form(bench: pd.DataFrame, method: str, batch: int) -> None:
    pred = estimate.predict(costs_of(bench), method=method, dataset="cifar10", epochs=150, global_batch=batch,
                            gpus=1, eval_every=5, eval_steps=20)  # fmt: skip
    expected = closed_form(method, epochs=150, global_batch=batch, gpus=1, every=5, n_train=50000, n_val=10000)
    assert pred.seconds == pytest.approx(expected, rel=1e-12)
    assert not pred.extrapolated and pred.basis == "train_step"


@pytest.mark.parametrize("gpus", [1, 2, 4, 8, 16])
def test_multi_gpu_form_at_fixed_global_batch(bench: pd.DataFrame, gpus: int) -> None:
    pred = estimate.predict(costs_of(bench), method="pgd7", dataset="cifar10", epochs=12, global_batch=256,
                            gpus=gpus, eval_every=5, allreduce_s=0.05)  # fmt: skip
    expected = closed_form("pgd7", epochs=12, global_batch=256, gpus=gpus, every=5, n_train=50000, n_val=10000,
                           allreduce=0.05)  # fmt: skip
    assert pred.seconds == pytest.approx(expected, rel=1e-12)
    assert not pred.extrapolated  # per-GPU batch 256/16 = 16 is still measured
    assert pred.basis == ("train_step+allreduce_s" if gpus > 1 else "train_step")


def test_more_gpus_is_faster_and_subsets_shrink_the_run(bench: pd.DataFrame) -> None:
    c = costs_of(bench)
    times = [estimate.predict(c, method="fast", dataset="cifar10", epochs=10, global_batch=256, gpus=g).seconds
             for g in (1, 2, 4, 8)]  # fmt: skip
    assert times == sorted(times, reverse=True)
    full = estimate.predict(c, method="fast", dataset="cifar10", epochs=2, global_batch=64).seconds
    sub = estimate.predict(c, method="fast", dataset="cifar10", epochs=2, global_batch=64, train_subset=5000,
                           val_subset=1000).seconds  # fmt: skip
    assert sub == pytest.approx(
        closed_form("fast", epochs=2, global_batch=64, gpus=1, every=5, n_train=5000, n_val=1000), rel=1e-12
    )
    assert sub < full / 9


def test_lower_bound_basis_is_the_papers_pgd_proxy(bench: pd.DataFrame) -> None:
    c = costs_of(bench)
    pred = estimate.predict(c, method="pgd7", dataset="cifar10", epochs=150, global_batch=128, basis="lower_bound")
    # 150 epochs x 391 batches x 7-step PGD + 30 evaluations x 79 batches x (forward + 20-step PGD from 7-step rows)
    t = t_pass(128)
    assert pred.seconds == pytest.approx(150 * 391 * 7 * t + 30 * 79 * (0.35 * t + 20 * t), rel=1e-12)
    std = estimate.predict(c, method="standard", dataset="cifar10", epochs=150, global_batch=128, basis="lower_bound")
    assert std.seconds == pytest.approx(150 * 391 * 0.35 * t + 30 * 79 * (0.35 * t + 20 * t), rel=1e-12)
    with pytest.raises(EstimateError, match="basis"):
        estimate.predict(c, method="pgd7", dataset="cifar10", epochs=1, global_batch=128, basis="nonsense")


def test_missing_train_step_falls_back_to_standard_plus_pgd(bench: pd.DataFrame) -> None:
    no_pgd7_step = bench[~((bench["what"] == "train_step") & (bench["method"] == "pgd7"))]
    c = costs_of(no_pgd7_step)
    step, extra, basis, _ = c.train_step("pgd7", 64)
    assert basis == "pgd+standard" and not extra
    assert step == pytest.approx((1.1 + 7.0) * t_pass(64))
    # a step count without its own rows: scaled per pass from the largest K measured
    assert c.pgd(10, 64)[0] == pytest.approx(10 * t_pass(64))


def test_selection_errors_are_one_line(bench: pd.DataFrame) -> None:
    with pytest.raises(EstimateError, match="no bench data for model resnet50, dataset cifar10") as info:
        bench_costs.select_costs(bench, model="resnet50", dataset="cifar10")
    assert "\n" not in str(info.value) and "small_cnn/cifar10 on x86_64" in str(info.value)
    two = pd.concat([bench, pd.DataFrame(bench_rows(device="NVIDIA H100"))])
    with pytest.raises(EstimateError, match="several devices"):
        bench_costs.select_costs(two, model="small_cnn", dataset="cifar10")
    assert bench_costs.select_costs(two, model="small_cnn", dataset="cifar10", device="h100").device == "NVIDIA H100"
    with pytest.raises(EstimateError, match="precision bf16"):
        bench_costs.select_costs(bench, model="small_cnn", dataset="cifar10", precision="bf16")


# ---------------------------------------------------------------------------------------------
# estimate on a grid file


GRID = """\
name: tiny-train
kind: train
profile: generic
executor: local
defaults:
  dataset: cifar10
  model: small_cnn
  epochs: 3
  train_subset: 2000
  val_subset: 400
  global_batch_size: 64
  eval: {every: 2, steps: 20}
grid:
  method: [standard, fast, pgd7]
  shape:
    - {nodes: 1, gpus_per_node: 1}
    - {nodes: 1, gpus_per_node: 2}
"""


def test_estimate_grid_matches_closed_form(tmp_path: Path) -> None:
    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID)
    exp = tmp_path / "bench-exp"
    rows = bench_rows()
    write_csv_atomic(exp / "bench.csv", list(rows[0]), rows)
    df = estimate.estimate_grid(grid, exp)  # an experiment folder holding bench.csv
    assert list(df.columns) == list(estimate.ESTIMATE_COLUMNS)
    assert len(df) == 6
    for r in df.itertuples():
        expected = closed_form(str(r.method), epochs=3, global_batch=64, gpus=int(r.gpus), every=2, n_train=2000,
                               n_val=400)  # fmt: skip
        assert r.predicted_s == pytest.approx(expected, rel=1e-12), r.run_id
        assert r.gpu_hours == pytest.approx(expected * r.gpus / 3600, rel=1e-12)
        assert r.batch_per_gpu == 64 // r.gpus
        assert not r.extrapolated  # per-GPU batches 64 and 32 were both measured
    # a bench on one device only, no all-reduce measured: the 2-GPU cells say that communication is not counted
    assert {(r.gpus, r.basis) for r in df.itertuples()} == {(1, "train_step"), (2, "train_step+perfect_scaling")}
    text = estimate.format_estimate(df)
    assert "total:" in text and f"{df['gpu_hours'].sum():.3g} GPU-hours over 6 cells" in text
    assert "+perfect_scaling: the bench has no rows at that GPU count" in text
    assert estimate.estimate_grid(grid, exp / "bench.csv").equals(df)  # a bench.csv path works as well


def test_estimate_grid_without_matching_bench(tmp_path: Path) -> None:
    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID.replace("model: small_cnn", "model: resnet18_cifar"))
    rows = bench_rows()
    write_csv_atomic(tmp_path / "bench.csv", list(rows[0]), rows)
    with pytest.raises(EstimateError, match="no bench data for model resnet18_cifar, dataset cifar10"):
        estimate.estimate_grid(grid, tmp_path / "bench.csv")
    with pytest.raises(EstimateError, match="no such bench file"):
        estimate.estimate_grid(grid, tmp_path / "missing.csv")


def test_extrapolated_cells_are_marked(bench: pd.DataFrame) -> None:
    from workloads.spec import from_dict

    cells = [from_dict({"run_id": "big", "dataset": "cifar10", "model": "small_cnn", "method": "fast",
                        "global_batch_size": 1024, "epochs": 1})]  # fmt: skip
    df = estimate.estimate_cells(cells, bench)
    assert bool(df["extrapolated"].iloc[0])
    assert "big *" in estimate.format_estimate(df) and "extrapolated beyond" in estimate.format_estimate(df)


def test_cli_estimate_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator import cli

    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID)
    rows = bench_rows() + bench_rows(device="other")
    write_csv_atomic(tmp_path / "bench.csv", list(rows[0]), rows)
    base = ["estimate", str(grid), "--bench", str(tmp_path / "bench.csv")]
    assert cli.main(base) == 2  # two devices benched: the user must choose
    assert "spans several devices" in capsys.readouterr().err
    assert cli.main([*base, "--device", "x86", "--basis", "lower_bound", "--allreduce-s", "0.5"]) == 0
    out = capsys.readouterr().out
    expected = estimate.estimate_grid(grid, tmp_path / "bench.csv", device="x86", basis="lower_bound", allreduce_s=0.5)
    assert out.strip() == estimate.format_estimate(expected)
    assert "lower_bound" in out and "bench device: x86_64" in out
    assert cli.main([*base, "--device", "x86", "--basis", "nope"]) == 2
    assert "basis: expected one of train_step, lower_bound" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Data loading (what == data rows)

D_TRAIN, D_VAL = 50e-6, 9e-6  # seconds per example of one loaded batch: train (augmented) and val


def with_data(rows: list[dict[str, object]], device: str) -> pd.DataFrame:
    data = []
    for b in BATCHES:
        for method, per_example in (("data_train", D_TRAIN), ("data_val", D_VAL)):
            t = per_example * b
            data.append({**rows[0], "device": device, "method": method, "what": "data", "attack_steps": 0,
                         "batch_size": b, "median_s": t, "p10_s": t, "p90_s": t})  # fmt: skip
    return pd.DataFrame([*rows, *data])


@pytest.mark.parametrize("gpus", [1, 2, 4])
@pytest.mark.parametrize("method", ["standard", "pgd7"])
def test_cpu_data_loading_adds_serially(method: str, gpus: int) -> None:
    bench = with_data(bench_rows(device="AMD EPYC 9R14"), "AMD EPYC 9R14")
    costs = costs_of(bench)
    assert not bench_costs.is_gpu_device(costs.device)
    pred = estimate.predict(costs, method=method, dataset="cifar10", epochs=9, global_batch=128, gpus=gpus,
                            eval_every=3, eval_steps=20)  # fmt: skip
    b = 128 // gpus
    compute = closed_form(method, epochs=9, global_batch=128, gpus=gpus, every=3, n_train=50000, n_val=10000)
    loading = (
        9 * math.ceil(math.ceil(50000 / gpus) / b) * D_TRAIN * b
        + 3 * math.ceil(math.ceil(10000 / gpus) / b) * D_VAL * b
    )
    assert pred.seconds == pytest.approx(compute + loading, rel=1e-9)
    assert not pred.extrapolated


def test_cuda_data_loading_counts_only_what_compute_does_not_hide() -> None:
    device = "NVIDIA H100 80GB HBM3"
    assert bench_costs.is_gpu_device(device)
    rows = bench_rows(device=device)
    kw = dict(method="standard", dataset="cifar10", epochs=6, global_batch=64, eval_every=3, eval_steps=20)
    compute = closed_form("standard", epochs=6, global_batch=64, gpus=1, every=3, n_train=50000, n_val=10000)
    # loading faster than the step (and the eval batch): fully hidden by the workers
    assert estimate.predict(costs_of(with_data(rows, device)), **kw).seconds == pytest.approx(compute, rel=1e-12)
    # a slow loader: the step waits max(0, t_data - t_step) per batch; eval (20.7 t_pass) still hides it
    slow = with_data(rows, device)
    slow.loc[slow["what"] == "data", "median_s"] *= 100  # 5 ms per example of train, 0.9 ms of val
    t_data_train = 100 * D_TRAIN * 64
    t_data_val = 100 * D_VAL * 64
    t_step, t_eval = 1.1 * t_pass(64), 20.7 * t_pass(64)
    assert t_data_train > t_step and t_data_val < t_eval
    wait = 6 * math.ceil(50000 / 64) * (t_data_train - t_step)
    assert estimate.predict(costs_of(slow), **kw).seconds == pytest.approx(compute + wait, rel=1e-9)


def test_without_data_rows_nothing_is_added(bench: pd.DataFrame) -> None:
    kw = dict(method="fast", dataset="cifar10", epochs=9, global_batch=128, gpus=2, eval_every=3, eval_steps=20)
    costs = costs_of(bench)
    assert costs.data("train", 64) is None and costs.data("val", 64) is None
    expected = closed_form("fast", epochs=9, global_batch=128, gpus=2, every=3, n_train=50000, n_val=10000)
    assert estimate.predict(costs, **kw).seconds == pytest.approx(expected, rel=1e-12)
    # data rows of another device (or dataset) are not used for this one
    other = pd.concat([bench, with_data(bench_rows(dataset="fashion_mnist"), "x86_64")], ignore_index=True)
    assert estimate.predict(costs_of(other), **kw).seconds == pytest.approx(expected, rel=1e-12)


def test_data_cost_closed_form() -> None:
    assert estimate.data_cost(0.3, 0.1, overlapped=False) == 0.3
    assert estimate.data_cost(0.3, 0.1, overlapped=True) == pytest.approx(0.2)
    assert estimate.data_cost(0.05, 0.1, overlapped=True) == 0.0


# ---------------------------------------------------------------------------------------------
# Multi-GPU costs measured at the cell's world size (bench cells of shape 1xG)

CONTENTION = 1.25  # rows at world size 2 cost this much more than at 1 (DDP all-reduce, shared node)
ALLREDUCE_2, ALLREDUCE_4 = 0.004, 0.006  # seconds of one gradient all-reduce across 2 / 4 ranks


def at_world(rows: list[dict[str, object]], world: int, factor: float) -> list[dict[str, object]]:
    out = []
    for r in rows:
        t = float(r["median_s"]) * factor  # type: ignore[arg-type]
        out.append({**r, "world_size": world, "median_s": t, "p10_s": t, "p90_s": t})
    return out


def allreduce_rows(world: int, seconds: float) -> list[dict[str, object]]:
    base = {**bench_rows()[0], "what": "allreduce", "method": "gradients", "attack_steps": 0, "world_size": world}
    return [{**base, "batch_size": b, "median_s": seconds, "p10_s": seconds, "p90_s": seconds} for b in BATCHES]


@pytest.fixture
def multi_bench() -> pd.DataFrame:
    rows = at_world(bench_rows(), 1, 1.0) + at_world(bench_rows(), 2, CONTENTION) + allreduce_rows(2, ALLREDUCE_2)
    return pd.DataFrame(rows)


KW = dict(dataset="cifar10", epochs=6, global_batch=128, eval_every=3, eval_steps=20)


@pytest.mark.parametrize("method", ["standard", "fast", "pgd7"])
def test_rows_at_the_cells_world_size_are_used_as_measured(multi_bench: pd.DataFrame, method: str) -> None:
    costs = costs_of(multi_bench)
    assert costs.world_sizes == [1, 2]
    two = estimate.predict(costs, method=method, gpus=2, **KW)  # type: ignore[arg-type]
    expected = CONTENTION * closed_form(method, epochs=6, global_batch=128, gpus=2, every=3, n_train=50000,
                                        n_val=10000)  # fmt: skip
    assert two.seconds == pytest.approx(expected, rel=1e-12)  # steps and evaluation both from the 2-rank rows
    assert (two.basis, two.bench_world_size, two.extrapolated) == ("train_step", 2, False)
    one = estimate.predict(costs, method=method, gpus=1, **KW)  # type: ignore[arg-type]
    assert one.seconds == pytest.approx(
        closed_form(method, epochs=6, global_batch=128, gpus=1, every=3, n_train=50000, n_val=10000), rel=1e-12
    )
    assert one.bench_world_size == 1
    # the paper's bound stays one device's costs at the per-GPU batch, whatever was benched at 2
    bound = estimate.predict(costs, method=method, gpus=2, basis="lower_bound", **KW)  # type: ignore[arg-type]
    ideal = estimate.predict(costs_of(pd.DataFrame(bench_rows())), method=method, gpus=2, basis="lower_bound",
                             **KW)  # type: ignore[arg-type]  # fmt: skip
    assert bound.seconds == pytest.approx(ideal.seconds, rel=1e-12)


def test_unbenched_world_size_adds_the_nearest_measured_allreduce(multi_bench: pd.DataFrame) -> None:
    costs = costs_of(multi_bench)
    four = estimate.predict(costs, method="fast", gpus=4, **KW)  # type: ignore[arg-type]
    # single-device step + the all-reduce measured across 2 ranks (nearest benched world size: flagged)
    expected = closed_form("fast", epochs=6, global_batch=128, gpus=4, every=3, n_train=50000, n_val=10000,
                           allreduce=ALLREDUCE_2)  # fmt: skip
    assert four.seconds == pytest.approx(expected, rel=1e-12)
    assert (four.basis, four.bench_world_size, four.extrapolated) == ("train_step+allreduce", 1, True)
    # with all-reduce rows at 4 itself: that value, not flagged
    exact = costs_of(pd.concat([multi_bench, pd.DataFrame(allreduce_rows(4, ALLREDUCE_4))], ignore_index=True))
    four = estimate.predict(exact, method="fast", gpus=4, **KW)  # type: ignore[arg-type]
    assert four.seconds == pytest.approx(
        closed_form("fast", epochs=6, global_batch=128, gpus=4, every=3, n_train=50000, n_val=10000,
                    allreduce=ALLREDUCE_4), rel=1e-12)  # fmt: skip
    assert not four.extrapolated
    # an explicit allreduce_s replaces the measured term (only where the world size was not benched)
    knob = estimate.predict(costs, method="fast", gpus=4, allreduce_s=0.5, **KW)  # type: ignore[arg-type]
    assert knob.seconds == pytest.approx(
        closed_form("fast", epochs=6, global_batch=128, gpus=4, every=3, n_train=50000, n_val=10000, allreduce=0.5),
        rel=1e-12,
    )
    two = estimate.predict(costs, method="fast", gpus=2, allreduce_s=0.5, **KW)  # type: ignore[arg-type]
    assert two.bench_world_size == 2 and two.seconds == pytest.approx(
        CONTENTION * closed_form("fast", epochs=6, global_batch=128, gpus=2, every=3, n_train=50000, n_val=10000),
        rel=1e-12,
    )


def test_a_bench_only_at_world_size_two_still_predicts_one_gpu() -> None:
    """Rows at one world size only: every cell uses them (the smallest world size benched)."""
    costs = costs_of(pd.DataFrame(at_world(bench_rows(), 2, CONTENTION)))
    one = estimate.predict(costs, method="pgd7", gpus=1, **KW)  # type: ignore[arg-type]
    assert one.bench_world_size == 2
    assert one.seconds == pytest.approx(
        CONTENTION * closed_form("pgd7", epochs=6, global_batch=128, gpus=1, every=3, n_train=50000, n_val=10000),
        rel=1e-12,
    )


def test_old_bench_files_without_world_size_read_as_one(tmp_path: Path) -> None:
    rows = bench_rows()
    write_csv_atomic(tmp_path / "bench.csv", list(rows[0]), rows)
    df = bench_costs.read_bench(tmp_path / "bench.csv")
    assert set(df["world_size"]) == {1}


# ---------------------------------------------------------------------------------------------
# Estimate vs measured (report)


def test_compare_runs_predicts_each_finished_train_run(multi_bench: pd.DataFrame) -> None:
    def row(run_id: str, method: str, gpus: int, measured: float, **extra: object) -> dict[str, object]:
        return {"run_id": run_id, "kind": "train", "state": "finished", "method": method, "model": "small_cnn",
                "dataset": "cifar10", "device": "x86_64", "epochs": 6, "global_batch_size": 128,
                "world_size": gpus, "eval_every": 3, "eval_steps": 20, "eval_restarts": 1, "eval_batch_size": None,
                "train_subset": None, "val_subset": None, "elapsed_s_last": measured, **extra}  # fmt: skip

    one = closed_form("fast", epochs=6, global_batch=128, gpus=1, every=3, n_train=50000, n_val=10000)
    two = CONTENTION * closed_form("pgd7", epochs=6, global_batch=128, gpus=2, every=3, n_train=50000, n_val=10000)
    runs = pd.DataFrame([
        row("fast-1", "fast", 1, one * 1.25),
        row("pgd7-2", "pgd7", 2, two / 1.25),
        row("running", "fast", 1, 1.0, state="running"),  # unfinished: left out
        row("other-device", "fast", 1, 1.0, device="NVIDIA H100"),  # no bench rows for it: left out
        {**row("bench", "", 1, 1.0), "kind": "bench"},  # not a training run
    ])  # fmt: skip
    df = compare.compare_runs(runs, multi_bench)
    assert list(df.columns) == list(compare.COMPARE_COLUMNS)
    assert list(df["run_id"]) == ["fast-1", "pgd7-2"]
    assert df["predicted_s"].tolist() == pytest.approx([one, two], rel=1e-12)
    assert df["error_pct"].tolist() == pytest.approx([-20.0, 25.0], rel=1e-9)
    assert df["bench_world_size"].tolist() == [1, 2]
    assert compare.compare_runs(runs.iloc[0:0], multi_bench).empty


# ---------------------------------------------------------------------------------------------
# The newer methods and recipes: free (m replays), nfgsm (one attack pass), method_schedule, eps warm-up


def recipe_form(per_batch: float, *, epochs: int, b: int, gpus: int = 1, every: int = 3, n_train: int = 50000,
                n_val: int = 10000) -> float:  # fmt: skip
    """The whole run for a given mean mini-batch cost, evaluation as in closed_form (20.7 t_pass per batch)."""
    steps = math.ceil(math.ceil(n_train / gpus) / b)
    evals = math.ceil(epochs / every)
    return epochs * steps * per_batch + evals * math.ceil(math.ceil(n_val / gpus) / b) * 20.7 * t_pass(b)


RECIPE_KW = dict(dataset="cifar10", epochs=6, global_batch=128, eval_every=3, eval_steps=20)


@pytest.mark.parametrize("replays", [None, 1, 8])
def test_free_is_m_standard_steps_per_mini_batch(bench: pd.DataFrame, replays: int | None) -> None:
    """workloads.training.free_step: m replays, each one forward + one backward + an optimizer step = a standard step;
    the grid's epochs are what runs (the recipe divides them by m in the grid file)."""
    m = replays or 4  # the catalog's default
    pred = estimate.predict(costs_of(bench), method="free", replays=replays, **RECIPE_KW)  # type: ignore[arg-type]
    assert pred.seconds == pytest.approx(recipe_form(m * 1.1 * t_pass(128), epochs=6, b=128), rel=1e-12)
    assert (pred.basis, pred.extrapolated) == (f"{m}xtrain_step", False)
    # free on m replays over epochs / m costs what the standard recipe's training costs over the full epochs
    free = estimate.predict(costs_of(bench), method="free", replays=3, dataset="cifar10", epochs=2, global_batch=128,
                            eval_every=100, eval_steps=20)  # fmt: skip
    std = estimate.predict(costs_of(bench), method="standard", dataset="cifar10", epochs=6, global_batch=128,
                           eval_every=100, eval_steps=20)  # fmt: skip
    one_eval = math.ceil(10000 / 128) * 20.7 * t_pass(128)  # each runs one evaluation (its last epoch)
    assert free.seconds - one_eval == pytest.approx(std.seconds - one_eval, rel=1e-12)
    # lower bound: one forward per replay
    bound = estimate.predict(costs_of(bench), method="free", replays=replays, basis="lower_bound", **RECIPE_KW)  # type: ignore[arg-type]
    t = t_pass(128)
    assert bound.seconds == pytest.approx(6 * 391 * m * 0.35 * t + 2 * 79 * (0.35 * t + 20 * t), rel=1e-12)


def test_free_pays_one_all_reduce_per_replay(bench: pd.DataFrame) -> None:
    pred = estimate.predict(costs_of(bench), method="free", replays=8, gpus=4, allreduce_s=0.01, **RECIPE_KW)  # type: ignore[arg-type]
    per_batch = 8 * (1.1 * t_pass(32) + 0.01)
    assert pred.seconds == pytest.approx(recipe_form(per_batch, epochs=6, b=32, gpus=4), rel=1e-12)
    assert pred.basis == "8xtrain_step+allreduce_s"


def test_nfgsm_costs_one_attack_pass_like_fast(bench: pd.DataFrame) -> None:
    """nfgsm: one attack pass then the weight step, as fast. Its own train_step rows when benched; else fast's
    (basis train_step(fast)); else the standard step + the 1-step attack rows (pgd+standard)."""
    costs = costs_of(bench)
    pred = estimate.predict(costs, method="nfgsm", **RECIPE_KW)  # type: ignore[arg-type]
    assert pred.seconds == pytest.approx(recipe_form(2.1 * t_pass(128), epochs=6, b=128), rel=1e-12)
    assert pred.basis == "train_step(fast)"
    fast = estimate.predict(costs, method="fast", **RECIPE_KW)  # type: ignore[arg-type]
    assert pred.seconds == fast.seconds
    extra = {"precision": "fp32", "channels_last": False}
    own = pd.DataFrame(bench_rows() + fixtures.bench_rows({("train_step", "nfgsm", 1): 2.3}, t_pass, BATCHES,
                                                          extra=extra))  # fmt: skip
    pred = estimate.predict(costs_of(own), method="nfgsm", **RECIPE_KW)  # type: ignore[arg-type]
    assert (pred.basis, pred.seconds) == ("train_step", pytest.approx(recipe_form(2.3 * t_pass(128), epochs=6, b=128)))
    no_fast_step = bench[~((bench["what"] == "train_step") & (bench["method"] == "fast"))]
    pred = estimate.predict(costs_of(no_fast_step), method="nfgsm", **RECIPE_KW)  # type: ignore[arg-type]
    assert pred.basis == "pgd+standard"
    assert pred.seconds == pytest.approx(recipe_form((1.1 + 1.0) * t_pass(128), epochs=6, b=128), rel=1e-12)
    # pgd7 has no twin (no other 7-step method benched): the standard step + its PGD, as before
    no_pgd7 = bench[~((bench["what"] == "train_step") & (bench["method"] == "pgd7"))]
    assert costs_of(no_pgd7).train_step("pgd7", 64)[2] == "pgd+standard"


def test_gradalign_needs_its_own_rows(bench: pd.DataFrame) -> None:
    """GradAlign's double backprop costs ~2-3x a fast step: no twin and no standard + PGD proxy may price it (they
    would underestimate it); its own train_step rows do, and without them the estimate says what to bench."""
    with pytest.raises(EstimateError, match="no train_step rows for gradalign "):
        estimate.predict(costs_of(bench), method="gradalign", **RECIPE_KW)  # type: ignore[arg-type]
    extra = {"precision": "fp32", "channels_last": False}
    own = pd.DataFrame(bench_rows() + fixtures.bench_rows({("train_step", "gradalign", 1): 5.0}, t_pass, BATCHES,
                                                          extra=extra))  # fmt: skip
    pred = estimate.predict(costs_of(own), method="gradalign", **RECIPE_KW)  # type: ignore[arg-type]
    assert (pred.basis, pred.seconds) == ("train_step", pytest.approx(recipe_form(5.0 * t_pass(128), epochs=6, b=128)))


@pytest.mark.parametrize(("epochs", "until", "first"), [(15, 0.6, 9), (10, 0.6, 6), (3, 0.6, 2), (4, 0.5, 2)])
def test_a_method_schedule_weighs_each_phase_by_its_iterations(
    bench: pd.DataFrame, epochs: int, until: float, first: int
) -> None:
    """workloads.training.recipe: epoch e trains with the phase whose until the epoch's middle (e - 0.5) lies before."""
    from workloads.spec import Phase, RunSpec
    from workloads.training import recipe

    spec = RunSpec(epochs=epochs, method="pgd7", method_schedule=[Phase("fast", until)])
    assert sum(recipe.phase_method(spec, e) == "fast" for e in range(1, epochs + 1)) == first  # the trainer's rule
    pred = estimate.predict(costs_of(bench), method="pgd7", method_schedule=[("fast", until)],
                            **{**RECIPE_KW, "epochs": epochs})  # type: ignore[arg-type]  # fmt: skip
    per_batch = (first * 2.1 + (epochs - first) * 8.1) * t_pass(128) / epochs
    assert pred.seconds == pytest.approx(recipe_form(per_batch, epochs=epochs, b=128), rel=1e-12)
    assert pred.basis == f"train_step[fast={first / epochs:.0%},pgd7={1 - first / epochs:.0%}]"
    # phases whose bases differ say each one
    no_pgd7 = bench[~((bench["what"] == "train_step") & (bench["method"] == "pgd7"))]
    mixed = estimate.predict(costs_of(no_pgd7), method="pgd7", method_schedule=[("fast", until)],
                             **{**RECIPE_KW, "epochs": epochs})  # type: ignore[arg-type]  # fmt: skip
    assert mixed.basis == f"fast={first / epochs:.0%}:train_step;pgd7={1 - first / epochs:.0%}:pgd+standard"


def test_schedule_shares_and_runs_csv_form() -> None:
    from orchestrator.estimate import phases

    assert phases.phase_shares("pgd7", [], 15) == [("pgd7", 1.0)]
    assert phases.phase_shares("pgd7", [("fast", 0.2), ("pgd3", 0.6)], 10) == [("fast", 0.2), ("pgd3", 0.4),
                                                                                ("pgd7", 0.4)]  # fmt: skip
    assert phases.phase_shares("pgd7", [("fast", 0.01)], 10) == [("pgd7", 1.0)]  # trains no epoch: left out
    assert phases.parse_schedule("fast@0.6;pgd3@0.8") == (("fast", 0.6), ("pgd3", 0.8))
    assert phases.parse_schedule("") == () and phases.parse_schedule(float("nan")) == ()
    with pytest.raises(EstimateError, match="method_schedule"):
        phases.parse_schedule("fast0.6")
    assert phases.weight_steps("free") == 4 and phases.weight_steps("free", 8) == 8
    assert phases.weight_steps("fast", 8) == 1


def test_estimate_cells_read_replays_schedule_and_ignore_eps_warmup(bench: pd.DataFrame) -> None:
    from workloads.spec import from_dict

    base = {"dataset": "cifar10", "model": "small_cnn", "epochs": 6, "global_batch_size": 128,
            "eval": {"every": 3, "steps": 20}}  # fmt: skip
    cells = [
        from_dict({**base, "run_id": "free", "method": "free", "attack": {"replays": 8}}),
        from_dict({**base, "run_id": "sched", "method": "pgd7", "method_schedule": [{"method": "fast", "until": 0.5}]}),
        from_dict({**base, "run_id": "fast", "method": "fast"}),
        from_dict({**base, "run_id": "warm", "method": "fast", "attack": {"eps_warmup_epochs": 2}}),
    ]
    df = estimate.estimate_cells(cells, bench).set_index("run_id")
    t = t_pass(128)
    assert df.loc["free", "predicted_s"] == pytest.approx(recipe_form(8 * 1.1 * t, epochs=6, b=128), rel=1e-12)
    assert df.loc["sched", "predicted_s"] == pytest.approx(recipe_form((2.1 + 8.1) / 2 * t, epochs=6, b=128))
    assert df.loc["warm", "predicted_s"] == df.loc["fast", "predicted_s"]  # eps warm-up: the same passes


def test_compare_runs_reads_schedule_and_free(bench: pd.DataFrame) -> None:
    base = {"kind": "train", "state": "finished", "model": "small_cnn", "dataset": "cifar10", "device": "x86_64",
            "epochs": 6, "global_batch_size": 128, "world_size": 1, "eval_every": 3, "eval_steps": 20,
            "eval_restarts": 1, "elapsed_s_last": 100.0}  # fmt: skip
    runs = pd.DataFrame([{**base, "run_id": "free", "method": "free", "method_schedule": ""},
                         {**base, "run_id": "sched", "method": "pgd7", "method_schedule": "fast@0.5"}])  # fmt: skip
    df = compare.compare_runs(runs, bench).set_index("run_id")
    t = t_pass(128)
    assert df.loc["free", "predicted_s"] == pytest.approx(recipe_form(4 * 1.1 * t, epochs=6, b=128), rel=1e-12)
    assert df.loc["sched", "predicted_s"] == pytest.approx(recipe_form(5.1 * t, epochs=6, b=128), rel=1e-12)


def cifar10_recipes_bench() -> list[dict[str, object]]:
    """A synthetic bench of what experiments/bench/cpu_fast_recipes_cifar10.yaml measures: both models, the three
    precision settings the grid uses, world sizes 1 and 2 (+ the 2-rank all-reduce), the grid's per-GPU batches."""
    rows: list[dict[str, object]] = []
    batches = (32, 64, 128, 256, 512)
    for model in ("resnet18_cifar", "resnet50_cifar"):
        scale = 1.0 if model == "resnet18_cifar" else 2.5
        for precision, channels_last in (("fp32", False), ("fp32", True), ("bf16", True)):
            extra = {"precision": precision, "channels_last": channels_last}
            one = fixtures.bench_rows(COSTS, lambda b, k=scale: k * t_pass(b), batches, model=model, extra=extra)
            ar = [{**one[0], "what": "allreduce", "method": "gradients", "attack_steps": 0, "batch_size": b,
                   "median_s": ALLREDUCE_2, "p10_s": ALLREDUCE_2, "p90_s": ALLREDUCE_2} for b in batches]  # fmt: skip
            rows += at_world(one, 1, 1.0) + at_world(one, 2, CONTENTION) + at_world(ar, 2, 1.0)
    return rows


def test_estimate_of_the_gpu_grid_prices_every_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """experiments/fast_recipes_cifar10.yaml from a small bench.csv: every train cell gets hours; free, nfgsm and
    the fast -> pgd7 schedule are priced by the rules above (rows at 2 ranks for 1 x 2, 1 rank + the all-reduce
    for 4 x 2)."""
    from orchestrator import cli

    grid = REPO / "experiments" / "fast_recipes_cifar10.yaml"
    rows = cifar10_recipes_bench()
    write_csv_atomic(tmp_path / "bench.csv", list(rows[0]), rows)
    df = estimate.estimate_grid(grid, tmp_path / "bench.csv")
    from orchestrator.grid.files import load_grids

    cells = [c for g in load_grids(grid) for c in g.cells]
    train, judges = [c for c in cells if c.kind == "train"], [c for c in cells if c.kind == "judge"]
    assert sorted(df["run_id"]) == sorted(c.run_id for c in train + judges) and len(train) == 48 and len(judges) == 15
    assert list(df["method"]).count("judge") == 15
    assert df["predicted_s"].notna().all() and (df["predicted_s"] > 0).all()
    by_id = df.set_index("run_id")
    for cell in train:
        r = by_id.loc[cell.run_id]
        scale = 1.0 if cell.model == "resnet18_cifar" else 2.5
        g = cell.world_size
        b = cell.batch_per_rank
        factor = CONTENTION if g == 2 else 1.0  # rows at 2 ranks; 1 and 8 GPUs: the 1-rank rows
        k = {"standard": 1.1, "fast": 2.1, "pgd7": 8.1, "nfgsm": 2.1, "free": 8 * 1.1}[cell.method]
        if cell.method_schedule:  # fast for 9 of 15 epochs, then pgd7
            k = (9 * 2.1 + 6 * 8.1) / 15
        per_batch = factor * k * scale * t_pass(b) + (ALLREDUCE_2 * (8 if cell.method == "free" else 1) if g == 8
                                                       else 0.0)  # fmt: skip
        steps = math.ceil(math.ceil(48000 / g) / b)  # 2000 of the 50000 held out (val_split)
        evals = math.ceil(cell.epochs / cell.eval.every) if cell.eval.every else 0
        expected = cell.epochs * steps * per_batch + evals * math.ceil(math.ceil(2000 / g) / b) * (
            factor * 20.7 * scale * t_pass(b)
        )
        assert r["predicted_s"] == pytest.approx(expected, rel=1e-9), cell.run_id
        assert r["gpu_hours"] == pytest.approx(expected * g / 3600, rel=1e-9)
        basis = {"nfgsm": "train_step(fast)", "free": "8xtrain_step"}.get(cell.method, "train_step")
        basis += ("+allreduce" if g == 8 else "") + ("[fast=60%,pgd7=40%]" if cell.method_schedule else "")
        assert (r["basis"], bool(r["extrapolated"])) == (basis, g == 8), cell.run_id  # 8: the 2-rank all-reduce
    # a judge's work is its snapshots' (paper: 3 methods x 30 snapshots per model; nfgsm: 1 x 30), at one cost each
    assert by_id.loc["judge-d1-n1g1", "predicted_s"] == pytest.approx(3 * by_id.loc["judge-d3-n1g1", "predicted_s"])
    assert (by_id.loc[[c.run_id for c in judges], "predicted_s"] > 0).all()
    assert cli.main(["estimate", str(grid), "--bench", str(tmp_path / "bench.csv")]) == 0
    out = capsys.readouterr().out
    assert "total:" in out and "over 63 cells" in out and "judges: 15 job(s)" in out
    row_re = r"^(\S+)(?: \*)?\s+(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+ (?:h|min|s))\s+([\d.e+]+)\s+(\S+)$"
    parsed = [m[1] for line in out.splitlines()[2:] if (m := re.match(row_re, line))]
    assert sorted(parsed) == sorted(df["run_id"])  # one line per cell, the basis one word
    for note in ("train_step(M): the bench has no train_step rows", "Nx...: free replays each mini-batch N times",
                 "M=a%: a method_schedule's phase"):  # fmt: skip
        assert note in out, out


def test_other_precisions_borrow_the_groups_all_reduce() -> None:
    """The gradient all-reduce is the same whatever the precision or memory format (fp32 parameters and gradients):
    a bf16 + channels_last group benched on 1 rank only adds the fp32 group's 2-rank all-reduce."""
    fp32 = bench_rows()
    bf16 = [{**r, "precision": "bf16", "channels_last": True} for r in bench_rows()]
    rows = at_world(fp32, 1, 1.0) + at_world(bf16, 1, 0.5) + allreduce_rows(2, ALLREDUCE_2)
    costs = bench_costs.select_costs(pd.DataFrame(rows), model="small_cnn", dataset="cifar10", precision="bf16",
                                     channels_last=True)  # fmt: skip
    pred = estimate.predict(costs, method="fast", gpus=2, **KW)  # type: ignore[arg-type]
    train = 6 * math.ceil(25000 / 64) * (0.5 * 2.1 * t_pass(64) + ALLREDUCE_2)
    expected = train + 2 * math.ceil(5000 / 64) * 0.5 * 20.7 * t_pass(64)  # 2 evaluations (every 3 of 6 epochs)
    assert pred.seconds == pytest.approx(expected, rel=1e-12)
    assert (pred.basis, pred.bench_world_size) == ("train_step+allreduce", 1)
    with pytest.raises(EstimateError, match="precision fp16"):  # nothing of that precision: still refused
        bench_costs.select_costs(pd.DataFrame(rows), model="small_cnn", dataset="cifar10", precision="fp16")


def test_the_bench_grid_covers_every_group_the_gpu_grid_needs() -> None:
    """experiments/bench/cpu_fast_recipes_cifar10.yaml benches each (model, precision, channels_last) of
    fast_recipes_cifar10.yaml's train cells, standard and fast in each (free and nfgsm derive from them), at world
    sizes 1 and 2 (the all-reduce), with the cells' eps and norm."""
    from orchestrator.grid.files import load_grids
    from workloads.training.recipe import schedule_methods

    bench_grid = REPO / "experiments" / "bench" / "cpu_fast_recipes_cifar10.yaml"
    bench_cells = [c for g in load_grids(bench_grid) for c in g.cells]
    train = [c for g in load_grids(REPO / "experiments" / "fast_recipes_cifar10.yaml") for c in g.cells
             if c.kind == "train"]  # fmt: skip
    groups: dict[tuple[str, str, bool], set[str]] = {}
    for c in bench_cells:
        assert (c.attack.norm, c.attack.eps, c.dataset) == ("l2", 1.0, "cifar10")
        groups.setdefault((c.model, c.precision, c.channels_last), set()).update(c.bench.methods)
    assert {c.world_size for c in bench_cells} == {1, 2}
    for cell in train:
        methods = groups[(cell.model, cell.precision, cell.channels_last)]
        assert {"standard", "fast"} <= methods, cell.run_id
        for m in schedule_methods(cell):
            assert m in methods or m in ("free", "nfgsm"), (cell.run_id, m)
