"""What an evaluate cell reads: the source run's checkpoint (best / last / a path, a fastrobust or a
robustness-library file) or the judged snapshot `evaluate.source_snapshot` asks for, and the images to attack.

A snapshot is chosen by rank 0 from the judge's rows and told to every rank, so all ranks load one file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from workloads import layout, snapshot_choice
from workloads.assets import checkpoint
from workloads.assets.data import build_split
from workloads.assets.external import madry
from workloads.assets.models import RobustModel
from workloads.runtime import distributed
from workloads.runtime.distributed import Dist
from workloads.spec import RunSpec


@dataclasses.dataclass(frozen=True)
class Source:
    path: Path  # the checkpoint file
    run_id: str
    experiment: str | None
    method: str
    spec: RunSpec  # dataset settings to evaluate on (the source run's, or this run's for external files)
    model: str  # architecture name
    attack_eps: float | None  # the training eps (Fig. 2's dotted line); None for standard training
    epoch: int | None  # the checkpoint's epoch
    snapshot: snapshot_choice.Chosen | None = None  # the judged snapshot read (evaluate.source_snapshot)


def checkpoint_file(spec: RunSpec, run_dir: Path) -> tuple[Path, str | None]:
    """(checkpoint file, source experiment or None for a direct path) for spec.evaluate. best/last are read from
    evaluate.source_dir, the source run's directory the orchestrator resolved at submit time; a relative
    checkpoint path is relative to the folder holding results/ (the project root)."""
    ev = spec.evaluate
    if ev.checkpoint in ("best", "last"):
        if not ev.source_dir:
            raise ValueError(
                f"evaluate.source_dir: not set; evaluate.checkpoint {ev.checkpoint} reads the source run's directory, "
                "which the orchestrator fills from evaluate.source_run at submit time (or give a checkpoint path)"
            )
        path = Path(ev.source_dir) / (layout.CKPT_BEST if ev.checkpoint == "best" else layout.CKPT_LAST)
        if not path.is_file():
            run = ev.source_run or Path(ev.source_dir).name
            raise FileNotFoundError(f"evaluate.checkpoint: {path} does not exist (has {run} finished?)")
        return path, ev.source_experiment or spec.experiment
    path = Path(ev.checkpoint).expanduser()
    if not path.is_absolute():
        path = layout.results_root_of(run_dir).parent / path
    if path.is_dir():
        path = path / layout.CKPT_BEST
    if not path.is_file():
        raise FileNotFoundError(f"evaluate.checkpoint: {path} does not exist")
    return path, ev.source_experiment


def choose_snapshot(spec: RunSpec, dist: Dist | None = None) -> snapshot_choice.Chosen | None:
    """The judged snapshot spec.evaluate asks for (None: a checkpoint), chosen by rank 0 for every rank (the
    judge's rows are read once, so all ranks load one file); a ValueError on every rank when there is none."""
    ev, dist = spec.evaluate, dist or Dist()
    chosen, problem = None, None
    if dist.is_main:
        try:
            chosen = snapshot_choice.of_evaluate(ev.source_snapshot, ev.source_judged, ev.source_dir, ev.source_run)
        except ValueError as exc:
            problem = str(exc)
    if dist.distributed:
        chosen, problem = distributed.all_gather_object(dist, (chosen, problem))[0]
    if problem is not None:
        raise ValueError(problem)
    return chosen


def load_source(
    spec: RunSpec, run_dir: Path, map_location: Any = "cpu", chosen: snapshot_choice.Chosen | None = None
) -> tuple[RobustModel, Source]:
    """The model to evaluate (eval mode) and where it came from: a fastrobust checkpoint (its own spec gives
    dataset, subset, method) or a robustness-library checkpoint (this run's spec gives them). With
    evaluate.source_snapshot, `chosen` (choose_snapshot) is the snapshot read."""
    ev = spec.evaluate
    if ev.source_snapshot is not None and chosen is None:
        chosen = choose_snapshot(spec)
    path, experiment = (
        (chosen.path, ev.source_experiment or spec.experiment) if chosen else checkpoint_file(spec, run_dir)
    )
    state = madry.read_checkpoint(path, map_location, allow_pickle=spec.evaluate.allow_pickle)
    if isinstance(state, dict) and state.get("format") == checkpoint.FORMAT:
        epoch = state.get("epoch")
        del state  # load_model re-reads it (keeps checkpoint.py the one reader of our format)
        model, src = checkpoint.load_model(path, map_location=map_location)
        if spec.data_root is not None:  # this cell's data_root wins (e.g. the data live elsewhere on this cluster)
            src = dataclasses.replace(src, data_root=spec.data_root)
        source = Source(
            path=path, run_id=spec.evaluate.source_run or src.run_id, experiment=experiment, method=src.method,
            spec=src, model=src.model, attack_eps=src.attack.eps if src.method != "standard" else None, epoch=epoch,
            snapshot=chosen,
        )  # fmt: skip
        return model, source
    if madry.is_madry_checkpoint(state):
        model, info = madry.model_from_checkpoint(state)
        # External models carry no spec: this cell's dataset settings, method and attack.eps describe them.
        source = Source(
            path=path, run_id=spec.evaluate.source_run or path.stem, experiment=experiment, method=spec.method,
            spec=spec, model=info.arch, attack_eps=spec.attack.eps if spec.method != "standard" else None,
            epoch=info.epoch,
        )  # fmt: skip
        return model.to(map_location), source
    raise ValueError(f"{path}: neither a {checkpoint.FORMAT} nor a robustness-library checkpoint")


def val_dataset(source: Source, max_examples: int | None) -> Dataset[Any]:
    data = build_split(source.spec, train=False)  # the source run's dataset, data_root and val_subset
    if max_examples is not None and max_examples < len(data):
        return Subset(data, range(max_examples))
    return data
