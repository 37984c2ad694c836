"""The final judge on the judged snapshots (evaluate.source_snapshot, workloads.snapshot_choice and
orchestrator.grid.snapshot_source): the snapshot chosen from a judge's rows (best, ties to the earliest epoch, an
explicit
epoch, none judged), refusals at submit time, a one-line error.txt at run time, and a local run end to end whose
final judge reports what `kind: evaluate` of the chosen snapshot's file reports."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.grid.files import GridError, load_grids
from orchestrator.submit.plan import LaunchError, decide
from tests import test_judge_submit as judge_submit
from tests.fixtures import needs_fmnist
from workloads import entry, layout, snapshot_choice
from workloads.kinds import evaluate
from workloads.runtime.distributed import Dist
from workloads.spec import Evaluate, RunSpec, from_dict

RUN = "fast-n1g1-b64-s0"
COLUMNS = layout.SNAPSHOT_COLUMNS


def judged_run(tmp_path: Path, accs: dict[int, float], other: str | None = None) -> tuple[Path, Path]:
    """A source run directory with one snapshot file per epoch of `accs` and a judged.csv of those accuracies."""
    source = tmp_path / "runs" / RUN
    index = []
    for epoch in accs:
        path = layout.snapshot_dir(source) / layout.snapshot_name(epoch)
        layout.write_bytes_atomic(path, b"weights")
        index.append({"run_id": RUN, "epoch": epoch, "train_s": epoch, "elapsed_s": epoch, "file": path.name})
    layout.write_csv_atomic(layout.snapshot_index(source), layout.SNAPSHOT_INDEX_COLUMNS, index)
    rows = [{"run_id": other or RUN, "epoch": e, "adv_acc": a, "clean_acc": 0.9, "n": 40, "split": "val_split"}
            for e, a in accs.items()]  # fmt: skip
    judged = tmp_path / "runs" / "judge-n1g1" / layout.JUDGED
    layout.write_csv_atomic(judged, COLUMNS, rows[::-1])  # in any order
    return source, judged


def test_best_is_the_highest_judged_accuracy_and_ties_go_to_the_earliest_epoch(tmp_path: Path) -> None:
    source, judged = judged_run(tmp_path, {1: 0.30, 2: 0.55, 3: 0.55, 4: 0.40})
    best = snapshot_choice.choose("best", judged, source, RUN)
    assert (best.epoch, best.judged_adv_acc, best.judged_n, best.split) == (2, 0.55, 40, "val_split")
    assert best.path == layout.snapshot_dir(source) / "snapshot-e0002.pt"
    assert not best.judge_finished  # no result.json of the judge yet: the best so far, and said so
    layout.write_json_atomic(judged.parent / layout.RESULT, {})
    explicit = snapshot_choice.choose(4, judged, source, RUN)
    assert (explicit.epoch, explicit.judged_adv_acc, explicit.path.name) == (4, 0.40, "snapshot-e0004.pt")
    assert explicit.judge_finished


@pytest.mark.parametrize(
    ("which", "other", "message"),
    [
        ("best", "another-run", f"no snapshot of {RUN} was judged"),
        (7, None, f"epoch 7 of {RUN} was not judged (judged: 1, 2)"),
    ],
)
def test_nothing_to_choose_is_one_line(tmp_path: Path, which: int | str, other: str | None, message: str) -> None:
    source, judged = judged_run(tmp_path, {1: 0.3, 2: 0.4}, other)
    with pytest.raises(ValueError, match=r"^evaluate\.source_snapshot: ") as err:
        snapshot_choice.choose(which, judged, source, RUN)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_judged_row_at_run_time_writes_a_one_line_error(tmp_path: Path) -> None:
    source, _ = judged_run(tmp_path, {1: 0.3})
    run_dir = tmp_path / "runs" / f"eval-{RUN}"
    ev = Evaluate(source_run=RUN, source_dir=str(source), source_snapshot="best",
                  source_judged=str(tmp_path / "runs" / "judge-gone" / layout.JUDGED))  # fmt: skip
    spec = RunSpec(experiment="exp", run_id=run_dir.name, kind="evaluate", evaluate=ev)
    layout.write_json_atomic(run_dir / layout.SPEC, spec.to_dict())
    with pytest.raises(ValueError):
        entry.run(run_dir / layout.SPEC, Dist())
    first = (run_dir / layout.ERROR).read_text().splitlines()[0]
    assert "evaluate.source_snapshot: no snapshot of" in first and "was judged" in first, first


# the judged grid of tests/test_judge_submit.py on one shape, then its final judge
TRAIN = judge_submit.GRID.format(executor="local").replace("    - {nodes: 1, gpus_per_node: 2}\n", "")
FINAL = """\
---
name: judged
kind: evaluate
executor: local
defaults:
  threads: 1
  shape: {nodes: 1, gpus_per_node: 2}
  evaluate: {source_snapshot: best, eps_list: [1.0], steps: 2, restarts: 1, max_examples: 40, batch_size: 20}
grid:
  evaluate:
    - {source_run: RUN}
""".replace("RUN", RUN)


def grid_text(snapshots: bool = True) -> str:
    return (TRAIN if snapshots else TRAIN.replace("  snapshot_every: 1\n", "")) + FINAL


def test_a_source_snapshot_of_a_run_without_snapshots_is_refused_at_submit(tmp_path: Path, results: Path) -> None:
    path = tmp_path / "final.yaml"
    path.write_text(grid_text(snapshots=False))
    with pytest.raises(GridError) as err:
        load_grids(path)
    (line,) = err.value.problems
    lines = grid_text(snapshots=False).splitlines()
    at = next(i for i, text in enumerate(lines, start=1) if text.startswith("  evaluate: {source_snapshot"))
    assert line.startswith(f"{path}:{at}: defaults.evaluate.source_snapshot: eval-{RUN}: run {RUN} writes no snapshots")
    assert cli.main(["submit", str(path), "--dry-run", "--results", str(results)]) != 0
    # a source run outside the file: its recorded spec.json decides; unknown runs are refused too
    evaluate_only = tmp_path / "eval.yaml"
    evaluate_only.write_text(FINAL)
    with pytest.raises(LaunchError, match=f"source run judged/{RUN} is neither in this grid file nor recorded"):
        decide(load_grids(evaluate_only), results, only_missing=False)
    recorded = RunSpec(experiment="judged", run_id=RUN)
    layout.write_json_atomic(layout.run_dir(results, "judged", RUN) / layout.SPEC, recorded.to_dict())
    refused = f"judged/eval-{RUN}: evaluate.source_snapshot: run {RUN} writes no snapshots"
    with pytest.raises(LaunchError, match=refused):
        decide(load_grids(evaluate_only), results, only_missing=False)
    snapshotting = dataclasses.replace(recorded, snapshot_every=1)
    layout.write_json_atomic(layout.run_dir(results, "judged", RUN) / layout.SPEC, snapshotting.to_dict())
    with pytest.raises(LaunchError, match=f"no judge follows judged/{RUN}"):
        decide(load_grids(evaluate_only), results, only_missing=False)


def test_source_snapshot_takes_best_or_an_epoch() -> None:
    assert (
        from_dict({"kind": "evaluate", "evaluate": {"source_run": "r", "source_snapshot": 3}}).evaluate.source_snapshot
        == 3
    )
    for bad in ("last", 0, True):
        with pytest.raises(ValueError, match=r"evaluate\.source_snapshot: expected (best or an epoch|an integer)"):
            from_dict({"kind": "evaluate", "evaluate": {"source_run": "r", "source_snapshot": bad}})


@needs_fmnist
@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_the_final_judge_evaluates_the_best_judged_snapshot(tmp_path: Path, results: Path) -> None:
    path = tmp_path / "final.yaml"
    path.write_text(grid_text())
    assert cli.main(["submit", str(path), "--results", str(results), "--wait", "--poll", "1"]) == 0
    runs = layout.runs_dir(results, "judged")
    judged = layout.read_csv(runs / "judge-n1g1" / layout.JUDGED)
    assert [r["epoch"] for r in judged] == ["1", "2"]
    best = max(judged, key=lambda r: float(r["adv_acc"]))  # the first of equals: the earliest epoch
    result = layout.read_json(runs / f"eval-{RUN}" / layout.RESULT)
    chosen = (result["snapshot_epoch"], result["snapshot_judged_adv_acc"], result["snapshot_judge_finished"])
    assert chosen == (int(best["epoch"]), float(best["adv_acc"]), True)
    assert result["world_size"] == 2
    (row,) = layout.read_csv(runs / f"eval-{RUN}" / layout.ROBUSTNESS)
    snapshot = runs / RUN / "snapshots" / layout.snapshot_name(int(best["epoch"]))
    assert (row["checkpoint"], row["checkpoint_epoch"], row["source_snapshot"]) == ("snapshot", best["epoch"], "best")
    assert row["snapshot_file"] == result["checkpoint"] == str(snapshot)
    # kind evaluate of that snapshot's file, same settings, in one process (the final judge ran on 2 ranks,
    # rank 0 choosing for both): the same counts
    spec = from_dict(layout.read_json(runs / f"eval-{RUN}" / layout.SPEC))
    direct = dataclasses.replace(spec, run_id="direct", evaluate=dataclasses.replace(
        spec.evaluate, source_snapshot=None, source_judged=None, checkpoint=str(snapshot)))  # fmt: skip
    (tmp_path / "direct").mkdir()
    again = evaluate.main(direct, tmp_path / "direct", Dist())
    (plain,) = layout.read_csv(tmp_path / "direct" / layout.ROBUSTNESS)
    assert (plain["n"], plain["clean_acc"], plain["adv_acc"]) == (row["n"], row["clean_acc"], row["adv_acc"]) == (
        "40", str(again["clean_acc"]), str(again["adv_acc"]["1.0"]))  # fmt: skip
