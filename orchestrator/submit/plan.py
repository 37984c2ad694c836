"""What a submission would do, per cell, before anything is submitted (`orchestrate submit`, also --dry-run).

`decide` plans without a lock (a refusal is quick and takes nothing); `replan` checks a document's cells again
under the experiment's lock, right before they are submitted, so two submissions of one grid never both submit a
cell. Rules, checked for every cell of every document of a grid file:
- finished cells are skipped; when the recorded spec.json differs from the grid in a setting the cell's kind
  reads (workloads.spec.kind_settings), the skip note names those settings;
- running/pending cells are never submitted twice: without --retry-failed their presence refuses the submission;
- failed/cancelled cells are resubmitted only with --retry-failed (alias --only-missing; it also skips
  running/pending ones); without it they are skipped, and the skip note names the flag;
- missing cells (never submitted, or unknown to the scheduler) are submitted, with or without the flag.
The cells to submit leave here resolved: an evaluate cell's source run and a visualize or judge cell's source runs
become absolute run directories under the results root (evaluate.source_dir, visualize/judge.source_dirs), so a job
reads only its own spec.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.grid import snapshot_source
from orchestrator.grid.files import Grid
from orchestrator.monitor import manifest, status
from workloads import layout
from workloads.schema import flatten
from workloads.spec import RunSpec, kind_settings

# Settings the orchestrator fills at submit time from others (source_experiment/source_run(s) and the results
# root): the spec.json comparison leaves them out, since the settings they follow from are compared.
RESOLVED_AT_SUBMIT = ("evaluate.source_dir", "evaluate.source_judged", "visualize.source_dirs", "judge.source_dirs")
RETRY_FLAG = "--retry-failed"  # also submits failed/cancelled cells; --only-missing is its old name
_ABSENT = object()  # a setting the recorded spec.json does not have (written before the setting existed)


class LaunchError(UserError):
    """A submission refused as a whole; `problems` holds one line each."""


@dataclass
class Plan:
    """What one document's submission will do."""

    grid: Grid
    exp_dir: Path
    submit: list[RunSpec] = field(default_factory=list)  # resolved (resolve_sources)
    skipped: dict[str, str] = field(default_factory=dict)  # run_id -> why
    seen_jobs: dict[str, str | None] = field(default_factory=dict)  # run_id -> newest job id `decide` saw

    def arrays(self) -> list[tuple[str, list[RunSpec]]]:
        """Grid.arrays restricted to the cells to submit (names kept: they come from all cells); empty ones left out."""
        wanted = {c.run_id: c for c in self.submit}
        chosen = [(name, [wanted[c.run_id] for c in cells if c.run_id in wanted]) for name, cells in self.grid.arrays()]
        return [(name, cells) for name, cells in chosen if cells]


def under_root(path: Path, root: Path, what: str) -> Path:
    """`path` itself when it resolves (symbolic links followed) inside the results root; a job reads and writes
    nothing outside it (an explicit checkpoint path is the one exception: read-only, see
    workloads.assets.checkpoint)."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise LaunchError(f"{what} {path} resolves to {path.resolve()}, outside the results root {root.resolve()}")
    return path


def resolve_sources(cell: RunSpec, root: Path) -> RunSpec:
    """The cell with its source runs as absolute run directories under the results root (grid files cannot set
    them: orchestrator.grid.names.SET_AT_SUBMIT)."""
    where = f"{cell.experiment}/{cell.run_id}: source run"
    if cell.kind == "evaluate" and cell.evaluate.source_run and not cell.evaluate.source_dir:
        source = layout.run_dir(root, cell.evaluate.source_experiment or cell.experiment, cell.evaluate.source_run)
        under_root(source, root, where)
        return dataclasses.replace(cell, evaluate=dataclasses.replace(cell.evaluate, source_dir=str(source)))
    for kind in ("visualize", "judge"):  # sections with source_experiment, source_runs and source_dirs
        section = getattr(cell, kind)
        if cell.kind == kind and section.source_runs and not section.source_dirs:
            experiment = section.source_experiment or cell.experiment
            dirs = [str(under_root(layout.run_dir(root, experiment, r), root, where)) for r in section.source_runs]
            return dataclasses.replace(cell, **{kind: dataclasses.replace(section, source_dirs=dirs)})
    return cell


def spec_differences(cell: RunSpec, spec_path: Path) -> list[str]:
    """Dotted settings the cell's kind reads whose value in the recorded spec.json differs from the grid's;
    empty when there is no file. A setting the file lacks was added after the run was made, and every new
    setting's default keeps the old behaviour, so it is compared as its default."""
    if not spec_path.exists():
        return []
    defaults = flatten(kind_settings(cell.kind, RunSpec().to_dict()))
    recorded = flatten(kind_settings(cell.kind, layout.read_json(spec_path)))
    wanted = flatten(kind_settings(cell.kind, cell.to_dict()))
    keys = list(wanted) + [k for k in recorded if k not in wanted]  # RunSpec order, then settings gone since
    return [
        k
        for k in keys
        if k not in RESOLVED_AT_SUBMIT and wanted.get(k, _ABSENT) != recorded.get(k, defaults.get(k, _ABSENT))
    ]


def _finished_note(cell: RunSpec, exp_dir: Path) -> str:
    differ = spec_differences(cell, manifest.run_dir(exp_dir, cell.run_id) / layout.SPEC)
    if not differ:
        return "finished"
    return (
        f"finished (its spec.json differs from the grid in {', '.join(differ)}: `orchestrate clean {exp_dir.name} "
        f"{cell.run_id}` removes its run directory, then resubmit to rerun it)"
    )


def replan(p: Plan, only_missing: bool) -> Plan:
    """`p` again, under the experiment's lock (manifest.locked), just before its cells are submitted: a cell that
    another submission submitted since `decide` (two `orchestrate submit` of one grid at once) is not submitted
    twice. Without --retry-failed that refuses the submission, naming every cell the other one submitted; with it,
    those cells are skipped. A cell counts as submitted meanwhile when the manifest holds a newer job for it than
    `decide` saw, whatever that job's state is now (one that already failed was still submitted), or when it is
    active or finished now. Updates and returns `p`."""
    entries = manifest.load(p.exp_dir)
    now = {s.run_id: s for s in status.poll(p.exp_dir, {c.run_id for c in p.submit})}

    def newer_job(run_id: str) -> bool:
        entry = entries.get(run_id)
        return entry is not None and entry.job_id != p.seen_jobs.get(run_id)

    active = ("finished", "running", "pending", "unknown")
    taken = [c for c in p.submit if newer_job(c.run_id) or now[c.run_id].state in active]
    if not taken:
        return p
    what = [
        f"{p.grid.name}/{c.run_id} ({now[c.run_id].state}"
        + (f", job {entries[c.run_id].job_id})" if c.run_id in entries else ")")
        for c in taken
    ]
    if not only_missing:
        raise LaunchError(
            f"another submission submitted {len(taken)} of these cell(s) meanwhile: {', '.join(what)}; "
            "not submitted twice (see orchestrate status)"
        )
    for c in taken:
        p.skipped[c.run_id] = f"{now[c.run_id].state} (submitted meanwhile by another submission)"
    p.submit = [c for c in p.submit if c not in taken]
    return p


def decide(grids: list[Grid], root: Path, only_missing: bool) -> list[Plan]:
    """Decide every cell; raises LaunchError (nothing submitted) when the submission must be refused."""
    plans = [Plan(g, layout.experiment_dir(root, g.name)) for g in grids]
    seen = {p.exp_dir: manifest.load(p.exp_dir) for p in plans}  # before the states: replan compares with these
    statuses: dict[Path, dict[str, status.CellStatus]] = {}
    for p in plans:  # one scheduler query per experiment
        if p.exp_dir not in statuses:
            ids = {c.run_id for q in plans if q.exp_dir == p.exp_dir for c in q.grid.cells}
            statuses[p.exp_dir] = {s.run_id: s for s in status.poll(p.exp_dir, ids)}
    active, refused = [], []
    every_cell = [c for p in plans for c in p.grid.cells]
    for p in plans:
        entries = seen[p.exp_dir]
        for cell in p.grid.cells:
            st = statuses[p.exp_dir][cell.run_id].state
            where = f"{p.grid.name}/{cell.run_id}"
            if st == "finished":
                p.skipped[cell.run_id] = _finished_note(cell, p.exp_dir)
            elif st in ("running", "pending", "unknown"):
                p.skipped[cell.run_id] = st
                active.append(f"{where} ({st})")
            elif st in ("failed", "cancelled") and not only_missing:
                p.skipped[cell.run_id] = f"{st} earlier; not resubmitted without {RETRY_FLAG}"
            else:
                under_root(manifest.run_dir(p.exp_dir, cell.run_id), root, f"{where}: run directory")
                try:
                    p.submit.append(snapshot_source.resolve(resolve_sources(cell, root), every_cell, root))
                except ValueError as exc:  # evaluate.source_snapshot on a run without snapshots or a judge
                    refused.append(str(exc))
                p.seen_jobs[cell.run_id] = entries[cell.run_id].job_id if cell.run_id in entries else None
    problems = refused
    if active and not only_missing:
        problems.append(
            f"{len(active)} cell(s) already running or pending, not submitted twice: {', '.join(active)}; "
            f"wait for them (orchestrate status), cancel them (orchestrate cancel), or pass {RETRY_FLAG}"
        )
    if problems:
        raise LaunchError(problems)
    return plans
