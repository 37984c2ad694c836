"""kind: visualize (Figs. 3-5): the representation tools of workloads.adversarial.representation, run for every source
run
of a visualize cell on the same seeded images, units and targets.

Step sizes are in pixel-space L2 units, so they scale with the image: the defaults (Engstrom et al.) are for
224 px; for 28 px Fashion-MNIST, vis_step 0.25 x 40, interp_step 0.2 x 100, large_eps 10 x 100 steps and
vis_seed noise give clear figures in seconds on a CPU.

The source runs are read from visualize.source_dirs (their run directories, resolved by the orchestrator at
submit time from visualize.source_experiment / source_runs), so the job reads only its own spec.json. `main`
writes features.pt (raw tensors), fig3/fig4/fig5 (.png + .pdf, one row per model, workloads.kinds.visualize_plots)
and features.csv / features_transfer.csv (the quantitative companion, see FEATURE_COLUMNS and TRANSFER_COLUMNS).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workloads import layout
from workloads.adversarial.representation import (
    Trace,
    high_freq_share,
    interpolate,
    large_targeted,
    pixel_blend,
    visualize_units,
)
from workloads.assets.checkpoint import derive_seed, load_model
from workloads.assets.models import RobustModel
from workloads.runtime.distributed import Dist
from workloads.spec import RunSpec, resolve_attack, resolve_eval_attack
from workloads.training.accuracy import batch_accuracy

FEATURES_PT = "features.pt"
FEATURES_CSV = "features.csv"
TRANSFER_CSV = "features_transfer.csv"

# One row per model (source run).
FEATURE_COLUMNS = (
    "run_id", "source_experiment", "method", "train_eps", "checkpoint",
    "robust_eps", "robust_n", "clean_acc", "robust_acc",  # measured here, on the same val examples for all models
    "vis_n", "vis_hf_share", "vis_hf_share_sd", "vis_gain",  # Fig. 3: spectral share above Nyquist/2, objective gain
    "interp_n", "interp_rel_dist", "interp_hf_share",  # Fig. 4: final relative representation distance (mean)
    "large_n", "large_hf_share", "target_self",  # Fig. 5: share of perturbed images the model itself calls the target
    "target_other_mean", "most_robust_other", "target_most_robust_other",  # ... and other models call the target
)  # fmt: skip

# One row per (model that made the perturbations, model that classifies them).
TRANSFER_COLUMNS = (
    "source_run_id", "source_method", "judge_run_id", "judge_method", "is_self", "is_most_robust_other",
    "n", "target_rate",
)  # fmt: skip


def _nanmean(t: Tensor) -> float | None:
    t = t[~torch.isnan(t)]
    return float(t.mean()) if len(t) else None


def _nanstd(t: Tensor) -> float | None:
    t = t[~torch.isnan(t)]
    return float(t.std()) if len(t) > 1 else None


# ---------------------------------------------------------------------------------------------
# Seeded choices shared by all models.


def pick_images(labels: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n indices in a seeded random order, distinct classes first (so interpolation pairs and targets differ)."""
    order = torch.randperm(len(labels), generator=generator)
    seen: set[int] = set()
    first: list[int] = []
    rest: list[int] = []
    for i in order.tolist():
        label = int(labels[i])
        (rest if label in seen else first).append(i)
        seen.add(label)
        if len(first) >= n:
            break
    return torch.tensor((first + rest)[:n], dtype=torch.long)


def pick_targets(labels: Tensor, num_classes: int, per_image: int, generator: torch.Generator) -> Tensor:
    """(N, per_image) target classes per image: a seeded random order of the classes other than its label."""
    per_image = min(per_image, num_classes - 1)
    out = []
    for y in labels.tolist():
        others = torch.tensor([c for c in range(num_classes) if c != y])
        out.append(others[torch.randperm(len(others), generator=generator)[:per_image]])
    return torch.stack(out)


@torch.no_grad()
def _predict(model: RobustModel, x: Tensor, batch: int = 256) -> Tensor:
    return torch.cat([model(x[i : i + batch]).argmax(dim=1) for i in range(0, len(x), batch)])


def robust_accuracy(
    model: RobustModel, x: Tensor, y: Tensor, spec: RunSpec, generator: torch.Generator, batch: int = 256
) -> tuple[float, float, float]:
    """(clean_acc, robust_acc, eps) under the cell's eval attack (spec.eval / spec.attack): ranks the models."""
    attack = resolve_eval_attack(spec)
    clean = robust = 0
    for i in range(0, len(x), batch):
        ok, survived = batch_accuracy(model, x[i : i + batch], y[i : i + batch], attack, generator=generator)
        clean, robust = clean + int(ok.sum()), robust + int(survived.sum())
    return clean / len(x), robust / len(x), attack.eps


# ---------------------------------------------------------------------------------------------
# The workload.


@dataclass
class ModelResult:
    run_id: str
    spec: RunSpec
    units: list[int]
    vis: Trace
    interp: Trace
    large: Trace
    clean_acc: float
    robust_acc: float


def source_dirs(spec: RunSpec) -> dict[str, Path]:
    """run_id -> run directory of each source run: visualize.source_dirs, which the orchestrator resolves from
    visualize.source_experiment / source_runs at submit time (the job reads nothing but its own spec)."""
    vz = spec.visualize
    if not vz.source_runs:
        raise ValueError("visualize.source_runs: expected at least one run_id to visualise; got none")
    if len(vz.source_dirs) != len(vz.source_runs):
        raise ValueError(
            f"visualize.source_dirs: expected one run directory per source run ({len(vz.source_runs)}), filled by "
            f"the orchestrator from visualize.source_runs at submit time; got {len(vz.source_dirs)}"
        )
    return {run_id: Path(d) for run_id, d in zip(vz.source_runs, vz.source_dirs, strict=True)}


# Independent seeded streams: changing one setting (e.g. vis_seed) leaves the other draws unchanged.
STREAM_IMAGES, STREAM_NOISE, STREAM_UNITS, STREAM_TARGETS, STREAM_RANK, STREAM_ATTACK = range(6)


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream))


def _stack_val(dataset: Any, indices: Tensor) -> tuple[Tensor, Tensor]:
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


def run_all(
    spec: RunSpec, models: dict[str, tuple[RobustModel, RunSpec]], val: Any, classes: Sequence[str], device: Any
) -> dict[str, Any]:
    """The three tools for every model on the same seeded images/units/targets; no file I/O (testable)."""
    vz = spec.visualize
    n_pool = max(vz.images, 2 * vz.interp_pairs)
    idx = pick_images(val.targets, n_pool, _generator(spec.seed, STREAM_IMAGES))
    pool_x, pool_y = _stack_val(val, idx)
    pool_x, pool_y = pool_x.to(device), pool_y.to(device)
    seeds_y = pool_y[: vz.images]
    if vz.vis_seed == "noise":
        seeds = torch.rand(pool_x[: vz.images].shape, generator=_generator(spec.seed, STREAM_NOISE)).to(device)
    else:
        seeds = pool_x[: vz.images]
    x1, x2 = pool_x[0 : 2 * vz.interp_pairs : 2], pool_x[1 : 2 * vz.interp_pairs : 2]
    originals, orig_y = pool_x[: vz.images], seeds_y
    targets = pick_targets(orig_y.cpu(), len(classes), vz.large_targets, _generator(spec.seed, STREAM_TARGETS))
    targets = targets.to(device)  # (N, T)
    n_t = targets.shape[1]
    rank_idx = torch.randperm(len(val.targets), generator=_generator(spec.seed, STREAM_RANK))[: vz.rank_examples]
    rank_x, rank_y = _stack_val(val, rank_idx)
    rank_x, rank_y = rank_x.to(device), rank_y.to(device)

    results: dict[str, ModelResult] = {}
    for run_id, (model, src_spec) in models.items():
        # same seeded draw for every model: the same unit indices when feature sizes agree
        units = torch.randperm(model.feature_dim, generator=_generator(spec.seed, STREAM_UNITS))[: vz.units].tolist()
        vis = visualize_units(model, seeds, units, eps=vz.vis_eps, step=vz.vis_step, iterations=vz.vis_iterations)
        interp = interpolate(model, x1, x2, vz.interp_lambdas, step=vz.interp_step, iterations=vz.interp_iterations)
        large = large_targeted(
            model,
            originals.repeat_interleave(n_t, dim=0),
            targets.flatten(),
            eps=vz.large_eps,
            steps=vz.large_steps,
        )
        # a CPU generator: the random starts (drawn on its device) are the same on CPU and GPU
        clean, robust, _ = robust_accuracy(model, rank_x, rank_y, spec, _generator(spec.seed, STREAM_ATTACK))
        results[run_id] = ModelResult(run_id, src_spec, units, vis, interp, large, clean, robust)
    return {
        "seeds": seeds,
        "seed_labels": seeds_y,
        "x1": x1,
        "x2": x2,
        "originals": originals,
        "targets": targets,
        "results": results,
        "rank_n": len(rank_y),
    }


def feature_tables(
    spec: RunSpec, out: dict[str, Any], models: dict[str, tuple[RobustModel, RunSpec]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """features.csv rows (one per model) and features_transfer.csv rows (one per model pair)."""
    vz = spec.visualize
    results: dict[str, ModelResult] = out["results"]
    n_t = out["targets"].shape[1]
    orig_rep = out["originals"].repeat_interleave(n_t, dim=0)
    blend = pixel_blend(out["x1"], out["x2"], vz.interp_lambdas)
    target_flat = out["targets"].flatten()
    robust = {rid: r.robust_acc for rid, r in results.items()}
    feature_rows, transfer_rows = [], []
    for rid, r in results.items():
        others = [o for o in results if o != rid]
        most_robust = max(others, key=lambda o: (robust[o], o)) if others else None
        rates: dict[str, float] = {}
        for judge in results:
            hit = _predict(models[judge][0], r.large.x) == target_flat
            rates[judge] = float(hit.float().mean())
            transfer_rows.append(
                {
                    "source_run_id": rid,
                    "source_method": r.spec.method,
                    "judge_run_id": judge,
                    "judge_method": models[judge][1].method,
                    "is_self": int(judge == rid),
                    "is_most_robust_other": int(judge == most_robust),
                    "n": len(target_flat),
                    "target_rate": rates[judge],
                }
            )
        vis_hf = high_freq_share(r.vis.x - out["seeds"].repeat_interleave(len(r.units), dim=0))
        gain = r.vis.best - r.vis.trace[0]
        feature_rows.append(
            {
                "run_id": rid,
                "source_experiment": vz.source_experiment or spec.experiment,
                "method": r.spec.method,
                "train_eps": resolve_attack(r.spec.method, r.spec.attack).eps if r.spec.method != "standard" else 0.0,
                "checkpoint": vz.checkpoint,
                "robust_eps": resolve_eval_attack(spec).eps,
                "robust_n": out["rank_n"],
                "clean_acc": r.clean_acc,
                "robust_acc": r.robust_acc,
                "vis_n": len(vis_hf),
                "vis_hf_share": _nanmean(vis_hf),
                "vis_hf_share_sd": _nanstd(vis_hf),
                "vis_gain": float(gain.mean()),
                "interp_n": r.interp.trace.shape[1],
                "interp_rel_dist": float(-r.interp.best.mean()),
                "interp_hf_share": _nanmean(high_freq_share(r.interp.x - blend)),
                "large_n": len(target_flat),
                "large_hf_share": _nanmean(high_freq_share(r.large.x - orig_rep)),
                "target_self": rates[rid],
                "target_other_mean": sum(rates[o] for o in others) / len(others) if others else None,
                "most_robust_other": most_robust,
                "target_most_robust_other": rates[most_robust] if most_robust else None,
            }
        )
    return feature_rows, transfer_rows


def raw_tensors(out: dict[str, Any], classes: Sequence[str], spec: RunSpec) -> dict[str, Any]:
    """features.pt content: plain tensors/lists/strings only (loadable with torch.load(weights_only=True))."""
    vz = spec.visualize
    n, n_t, n_l = len(out["seeds"]), out["targets"].shape[1], len(vz.interp_lambdas)
    shape = tuple(out["seeds"].shape[1:])
    models = {}
    for rid, r in out["results"].items():
        k = len(r.units)
        models[rid] = {
            "method": r.spec.method,
            "units": torch.tensor(r.units),
            "vis": r.vis.x.cpu().view(n, k, *shape),
            "vis_trace": r.vis.trace.cpu().view(-1, n, k),
            "interp": r.interp.x.cpu().view(-1, n_l, *shape),
            "interp_trace": r.interp.trace.cpu().view(-1, len(out["x1"]), n_l),
            "large": r.large.x.cpu().view(n, n_t, *shape),
            "large_trace": r.large.trace.cpu().view(-1, n, n_t),
        }
    return {
        "classes": list(classes),
        "seed_kind": vz.vis_seed,
        "seeds": out["seeds"].cpu(),
        "seed_labels": out["seed_labels"].cpu(),  # labels of the originals (the seeds unless seed_kind is noise)
        "originals": out["originals"].cpu(),
        "x1": out["x1"].cpu(),
        "x2": out["x2"].cpu(),
        "lambdas": torch.tensor(vz.interp_lambdas),
        "targets": out["targets"].cpu(),
        "models": models,
    }


def main(spec: RunSpec, run_dir: str | Path, dist: Dist) -> dict[str, Any]:
    """The visualize workload. Only rank 0 works (a few images per model); other ranks return {} at once."""
    if not dist.is_main:
        return {}
    from workloads.assets.data import build_datasets
    from workloads.kinds import visualize_plots  # matplotlib only where figures are drawn

    run_dir = Path(run_dir)
    vz = spec.visualize
    models: dict[str, tuple[RobustModel, RunSpec]] = {}
    for run_id, source in source_dirs(spec).items():
        model, src_spec = load_model(source, which=vz.checkpoint, map_location=dist.device)
        model.requires_grad_(False)  # only input gradients are needed
        models[run_id] = (model, src_spec)
    datasets = {s.dataset for _, s in models.values()}
    if len(datasets) != 1:
        raise ValueError(f"visualize.source_runs: runs of different datasets ({', '.join(sorted(datasets))})")
    # The source runs' dataset, read with this cell's data_root (the machine running it); full val split.
    data_spec = dataclasses.replace(spec, dataset=datasets.pop(), val_subset=None, train_subset=None)
    data = build_datasets(data_spec)
    classes = data.info.classes
    out = run_all(spec, models, data.val, classes, dist.device)
    feature_rows, transfer_rows = feature_tables(spec, out, models)

    raw = raw_tensors(out, classes, spec)
    buf = io.BytesIO()
    torch.save(raw, buf)
    layout.write_bytes_atomic(run_dir / FEATURES_PT, buf.getvalue())
    layout.write_csv_atomic(run_dir / FEATURES_CSV, FEATURE_COLUMNS, feature_rows)
    layout.write_csv_atomic(run_dir / TRANSFER_CSV, TRANSFER_COLUMNS, transfer_rows)
    layouts = visualize_plots.draw_all(raw, run_dir)
    return {
        "models": list(models),
        "figures": {name: list(shape) for name, shape in layouts.items()},
        "features": feature_rows,
    }
