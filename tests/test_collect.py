"""collect: run directories -> runs.csv / epochs.csv / bench.csv / robustness.csv, deterministic and atomic."""

from __future__ import annotations

from pathlib import Path

from orchestrator import collect
from orchestrator.monitor import manifest
from workloads import layout
from workloads.spec import Attack, RunSpec, Shape

DESIGN_RUN_COLUMNS = [
    "run_id", "experiment", "kind", "dataset", "model", "method", "attack_norm", "attack_eps", "attack_steps",
    "attack_alpha", "nodes", "gpus_per_node", "world_size", "global_batch_size", "epochs", "state", "job_ids",
    "elapsed_s_last", "best_epoch", "elapsed_s_best", "best_adv_acc", "last_clean_acc", "last_adv_acc", "device",
]  # fmt: skip


def make_run(exp_dir: Path, spec: RunSpec, epochs: list[tuple[float, str, str]], finished: bool = True) -> Path:
    """A run directory; epochs as (elapsed_s, clean_acc, adv_acc) with "" for not evaluated."""
    rd = manifest.run_dir(exp_dir, spec.run_id)
    layout.write_json_atomic(rd / layout.SPEC, spec.to_dict())
    rows = [
        {"run_id": spec.run_id, "epoch": i + 1, "elapsed_s": t, "clean_acc": c, "adv_acc": a,
         "batch_per_rank": spec.batch_per_rank, "world_size": spec.world_size}
        for i, (t, c, a) in enumerate(epochs)
    ]  # fmt: skip
    if rows:
        layout.write_csv_atomic(rd / layout.EPOCHS, layout.EPOCH_COLUMNS, rows)
    layout.write_json_atomic(rd / layout.ENV, {"device": "cpu-test", "job_ids": ["7_1"], "attempts": [{}, {}]})
    if finished:
        layout.write_json_atomic(rd / layout.RESULT, {"run_id": spec.run_id})
    else:
        layout.write_text_atomic(rd / layout.ERROR, "Traceback ...")
    return rd


def spec(method: str, run_id: str, kind: str = "train", gpus: int = 2) -> RunSpec:
    return RunSpec(experiment="exp", run_id=run_id, kind=kind, method=method, epochs=3, global_batch_size=64,
                   attack=Attack(eps=0.5), shape=Shape(nodes=1, gpus_per_node=gpus))  # fmt: skip


def build(tmp_path: Path) -> Path:
    exp = tmp_path / "exp"
    make_run(exp, spec("fast", "fast-run"), [(1.0, "0.5", "0.30"), (2.0, "", ""), (3.5, "0.6", "0.25")])
    make_run(exp, spec("standard", "std-run", gpus=1), [(1.0, "0.7", "0.1"), (2.5, "0.6", "0.2")], finished=False)
    bench = make_run(exp, spec("standard", "bench-run", kind="bench", gpus=1), [])
    layout.write_csv_atomic(
        bench / layout.BENCH,
        ["device", "method", "batch_size", "median_s"],
        [{"device": "cpu", "method": m, "batch_size": 8, "median_s": 0.1} for m in ("fast", "pgd7")],
    )
    ev = make_run(exp, spec("fast", "eval-fast-run", kind="evaluate", gpus=1), [])
    layout.write_csv_atomic(
        ev / layout.ROBUSTNESS,
        ["run_id", "eps", "adv_acc"],
        [{"run_id": "fast-run", "eps": e, "adv_acc": 0.5 - e / 4} for e in (0.0, 0.5)],
    )
    vis = make_run(exp, spec("standard", "vis-run", kind="visualize", gpus=1), [])
    layout.write_csv_atomic(  # one row per visualised model, named by ITS run_id
        vis / "features.csv",
        ["run_id", "method", "vis_hf_share"],
        [
            {"run_id": r, "method": m, "vis_hf_share": h}
            for r, m, h in (("std-run", "standard", 0.7), ("fast-run", "fast", 0.4))
        ],
    )
    return exp


def test_runs_csv_columns_and_values(tmp_path: Path) -> None:
    exp = build(tmp_path)
    paths = collect.collect(exp)
    assert set(paths) == {"runs", "epochs", "bench", "robustness", "features"}
    header = paths["runs"].read_text().splitlines()[0].split(",")
    assert header[: len(DESIGN_RUN_COLUMNS)] == DESIGN_RUN_COLUMNS
    assert "batch_per_rank" in header
    runs = {r["run_id"]: r for r in layout.read_csv(paths["runs"])}
    assert list(runs) == sorted(runs)
    fast = runs["fast-run"]
    assert (fast["state"], fast["world_size"], fast["batch_per_rank"]) == ("finished", "2", "32")
    assert (fast["attack_norm"], fast["attack_steps"], fast["attack_alpha"]) == ("l2", "1", "0.75")  # 1.5 eps
    # best = highest adversarial accuracy, at its cumulative elapsed time; last = the final epoch
    assert (fast["best_epoch"], fast["elapsed_s_best"], fast["best_adv_acc"]) == ("1", "1.0", "0.30")
    assert (fast["elapsed_s_last"], fast["last_clean_acc"], fast["last_adv_acc"]) == ("3.5", "0.6", "0.25")
    assert (fast["device"], fast["job_ids"], fast["attempts"]) == ("cpu-test", "7_1", "2")
    std = runs["std-run"]  # standard training: best by clean accuracy
    assert (std["state"], std["best_epoch"], std["best_metric"]) == ("failed", "1", "clean_acc")
    assert std["attack_steps"] == "0"
    # the validation attack (Fig. 1's cost model reads it); eval batch: the per-rank train batch when unset
    assert [fast[c] for c in ("eval_every", "eval_steps", "eval_restarts", "eval_batch_size")] == ["5", "20", "1", "32"]
    # other kinds: no training settings (RunSpec's defaults would claim method "standard" for every one)
    training = ("method", "attack_norm", "attack_eps", "attack_steps", "attack_alpha", "eval_every", "eval_batch_size")
    for run_id in ("bench-run", "eval-fast-run", "vis-run"):
        assert runs[run_id]["kind"] != "train" and all(runs[run_id][c] == "" for c in training), runs[run_id]


def test_epochs_bench_robustness(tmp_path: Path) -> None:
    paths = collect.collect(build(tmp_path))
    epochs = layout.read_csv(paths["epochs"])
    assert [(r["run_id"], r["epoch"]) for r in epochs] == [
        ("fast-run", "1"), ("fast-run", "2"), ("fast-run", "3"), ("std-run", "1"), ("std-run", "2"),
    ]  # fmt: skip
    bench = layout.read_csv(paths["bench"])
    assert [(r["run_id"], r["method"]) for r in bench] == [("bench-run", "fast"), ("bench-run", "pgd7")]
    robustness = layout.read_csv(paths["robustness"])
    assert [r["run_id"] for r in robustness] == ["fast-run", "fast-run"]  # the evaluated run, as the file says
    features = layout.read_csv(paths["features"])
    assert [(r["run_id"], r["method"], r["visualize_run"]) for r in features] == [
        ("std-run", "standard", "vis-run"), ("fast-run", "fast", "vis-run"),
    ]  # fmt: skip


def test_collect_needs_no_checkpoints(tmp_path: Path) -> None:
    """A committed reference run keeps its CSV/JSON files only: collect never opens a .pt file."""
    exp = build(tmp_path)
    rd = manifest.run_dir(exp, "fast-run")
    (rd / "checkpoint-best.pt").write_bytes(b"not a checkpoint")
    with_pt = {k: p.read_bytes() for k, p in collect.collect(exp).items()}
    (rd / "checkpoint-best.pt").unlink()
    assert {k: p.read_bytes() for k, p in collect.collect(exp).items()} == with_pt


def test_collect_twice_is_byte_identical_and_atomic(tmp_path: Path) -> None:
    exp = build(tmp_path)
    first = {k: p.read_bytes() for k, p in collect.collect(exp).items()}
    second = {k: p.read_bytes() for k, p in collect.collect(exp).items()}
    assert first == second
    assert not list(exp.rglob("*.tmp"))


def test_empty_experiment(tmp_path: Path) -> None:
    paths = collect.collect(tmp_path / "nothing")
    assert layout.read_csv(paths["runs"]) == [] and set(paths) == {"runs", "epochs"}
