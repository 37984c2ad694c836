"""The judge jobs of a grid (orchestrator.grid.judge_plan): one judge cell per array of a train document with
snapshots, its dependency (Slurm: after, so it starts beside the training), run end to end on the local executor
(after the training cells), collected into snapshots.csv and shown by `status`."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import cli, collect
from orchestrator.grid.files import load_grids
from orchestrator.monitor import progress
from orchestrator.monitor import status as cell_status
from orchestrator.submit import launch
from tests.fixtures import needs_fmnist, normalise
from workloads import layout

GRID = """\
name: judged
kind: train
profile: local-cluster
executor: {executor}
defaults:
  model: small_cnn
  dataset: fashion_mnist
  method: fast
  epochs: 2
  train_subset: 256
  val_split: 60
  global_batch_size: 64
  snapshot_every: 1
  eval: {{every: 0}}
  judge: {{examples: 40, steps: 2, batch_size: 20, poll_s: 0.2}}
  resources: {{timeout_min: 5}}
grid:
  shape:
    - {{nodes: 1, gpus_per_node: 1}}
    - {{nodes: 1, gpus_per_node: 2}}
"""


def write(tmp_path: Path, executor: str, text: str = GRID) -> Path:
    path = tmp_path / "judged.yaml"
    path.write_text(text.format(executor=executor))
    return path


def test_a_train_document_with_snapshots_gets_one_judge_per_array(tmp_path: Path) -> None:
    train, judge = load_grids(write(tmp_path, "local"))
    assert judge.kind == "judge" and judge.document == train.document == 1
    assert [c.run_id for c in judge.cells] == ["judge-n1g1", "judge-n1g2"]
    for cell, (_, followed) in zip(judge.cells, train.arrays(), strict=True):
        assert cell.judge.source_runs == [c.run_id for c in followed] and cell.judge.source_dirs == []
        assert (cell.judge.examples, cell.judge.steps, cell.shape.world_size) == (40, 2, 1)
    unjudged = GRID.replace("  snapshot_every: 1\n", "")
    assert [g.kind for g in load_grids(write(tmp_path, "local", unjudged))] == ["train"]  # no snapshots: no judge


def test_the_dry_run_shows_the_judges_and_their_dependency(tmp_path: Path, results: Path) -> None:
    out = normalise(launch.dry_run(write(tmp_path, "slurm"), results), results)
    assert "# === judged document 1 (judge), array n1g1: 2 cell(s): judge-n1g1, judge-n1g2" in out
    assert out.count("#!/bin/bash") == 3  # two training arrays, one judge array
    assert "#SBATCH --dependency='after:<job ids of document 1>'" in out  # beside the training, not after it
    assert "afterany" not in out and not any(results.iterdir())


@needs_fmnist
@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_local_judges_run_after_the_training_and_are_collected(
    tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = write(tmp_path, "local").read_text().replace("    - {nodes: 1, gpus_per_node: 2}\n", "")
    (tmp_path / "one.yaml").write_text(grid)
    assert cli.main(["submit", str(tmp_path / "one.yaml"), "--results", str(results), "--wait", "--poll", "1"]) == 0
    out = capsys.readouterr().out
    assert "submitted judged [judge] n1g1: judge-n1g1 as local job" in out
    exp = results / "judged"
    states = {c.run_id: c for c in cell_status.poll(exp)}
    assert {r: c.state for r, c in states.items()} == {"fast-n1g1-b64-s0": "finished", "judge-n1g1": "finished"}
    written = collect.collect(exp)
    rows = layout.read_csv(written["snapshots"])
    assert (exp / layout.SNAPSHOTS_CSV).read_text().splitlines()[0] == ",".join(layout.SNAPSHOT_COLUMNS)
    assert [(r["run_id"], r["epoch"], r["split"], r["n"]) for r in rows] == [
        ("fast-n1g1-b64-s0", "1", "val_split", "40"),
        ("fast-n1g1-b64-s0", "2", "val_split", "40"),
    ]
    index = layout.read_csv(layout.snapshot_index(exp / "runs" / "fast-n1g1-b64-s0"))
    assert [r["train_s"] for r in rows] == [r["train_s"] for r in index]
    judged = states["fast-n1g1-b64-s0"].judged
    assert judged == f"e2 {100 * float(rows[1]['adv_acc']):.1f}%"
    table = cell_status.format_table(list(states.values()))
    assert table.splitlines()[0].split()[-1] == "judged" and judged in table
    watch = progress.format_watch(list(states.values()), progress.watch_rows(exp, list(states.values()),
                                                                             progress.Predictions()))  # fmt: skip
    assert watch.splitlines()[0].split()[-1] == "judged" and judged in watch
    capsys.readouterr()
    assert cli.main(["report", "judged", "--results", str(results)]) == 0, capsys.readouterr()  # no on-clock rows
