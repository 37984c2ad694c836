"""kind: visualize (Figs. 3-5): what a model's penultimate representation has learned, made visible and measurable.

Three optimisers, all in pixel space ([0, 1], the model normalises inside), all recording their objective at
every iterate so that tests (and users) can see them climb:

- `visualize_units` (Fig. 3): from a seed image, maximise one unit of `model.features(x)` by L2 gradient
  ascent with normalised steps, projected onto the eps-ball around the seed and clamped into [0, 1]
  (Engstrom et al. 2019, "Adversarial robustness as a prior for learned representations": eps 1000, step 1,
  200 iterations at 224 px; the eps-ball is then effectively only the [0, 1] box). A representation ending in
  a ReLU is maximised before the ReLU (same maximiser, but a unit at 0 still has a gradient).
- `interpolate` (Fig. 4): for each lambda find x whose representation matches the CONVEX combination
  lambda * f(x1) + (1 - lambda) * f(x2), starting from the pixel-space blend, by normalised gradient descent on
  the relative distance ||f(x) - t|| / ||t||. The paper's eq. (14) prints lambda f(x1) - (1 - lambda) f(x2); that
  is a typo (at lambda = 1/2 it would target half the difference of two representations, not a point between
  them), so the convex combination is implemented.
- `large_targeted` (Fig. 5): targeted L2 PGD (`attacks.pgd(targeted=True)`) towards a class with a large eps and
  many steps (paper: eps 500, K 1000), alpha = 2.5 eps / K, no random start (a random point of a 500-ball
  clamped into the box would be binary noise).

All three return the best iterate per example (highest objective), as the robustness library's `use_best`.

Step sizes are in pixel-space L2 units, so they scale with the image: the defaults (Engstrom et al.) are for
224 px; for 28 px Fashion-MNIST, vis_step 0.25 x 40, interp_step 0.2 x 100, large_eps 10 x 100 steps and
vis_seed noise give clear figures in seconds on a CPU.

`main` runs them for every source run of a visualize cell on the same seeded images, units and targets, and
writes features.pt (raw tensors), fig3/fig4/fig5 (.png + .pdf, one row per model) and features.csv /
features_transfer.csv (the quantitative companion, see FEATURE_COLUMNS and TRANSFER_COLUMNS).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workloads import layout
from workloads.attacks import pgd
from workloads.checkpoint import derive_seed, load_model
from workloads.distributed import Dist
from workloads.models import RobustModel
from workloads.spec import RunSpec, resolve_attack, resolve_eval_attack

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

Objective = Callable[[Tensor], Tensor]  # x -> per-example objective to maximise, shape (batch,)


@dataclass
class Trace:
    """Best iterate per example and the objective of every iterate: trace[t] for t = 0 (start) .. iterations."""

    x: Tensor  # (batch, C, H, W), the best iterate
    trace: Tensor  # (iterations + 1, batch)

    @property
    def best(self) -> Tensor:
        return self.trace.max(dim=0).values


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _l2(t: Tensor) -> Tensor:
    return t.detach().float().flatten(1).norm(dim=1)


def _normalised(g: Tensor) -> Tensor:
    """g / ||g||_2 per example; a zero gradient gives a zero step (no move), never NaN."""
    n = _l2(g)
    return g / _bcast(torch.where(n > 0, n, torch.ones_like(n)), g)


def _project(x: Tensor, center: Tensor, eps: float | None) -> Tensor:
    """Onto the L2 eps-ball around `center` (skipped for eps None), then into the [0, 1] box.
    Clamping after the renorm only shrinks |x - center| per pixel when center is in the box, so both hold."""
    if eps is not None:
        d = x - center
        scale = (eps / _l2(d).clamp_min(torch.finfo(torch.float32).tiny)).clamp(max=1.0)
        x = center + d * _bcast(scale, d)
    return x.clamp(0.0, 1.0)


def ascend(
    objective: Objective,
    start: Tensor,
    *,
    step: float,
    iterations: int,
    eps: float | None,
    center: Tensor | None = None,
) -> Trace:
    """Projected gradient ascent with normalised L2 steps: x += step * g / ||g||, project, clamp into [0, 1].

    `center` (default: start) is the middle of the eps-ball. Gradients are taken for x only
    (torch.autograd.grad), so model parameters' .grad are never touched."""
    center = (start if center is None else center).detach()
    x = _project(start.detach().clone(), center, eps)
    best_x, best_obj = x.clone(), torch.full((len(x),), -torch.inf, device=x.device)
    values = []
    with torch.enable_grad():
        for t in range(iterations + 1):
            x.requires_grad_(True)
            obj = objective(x)
            last = t == iterations
            grad = None if last else torch.autograd.grad(obj.sum(), [x])[0]
            obj = obj.detach().float()
            x = x.detach()
            values.append(obj)
            better = obj > best_obj
            best_x = torch.where(_bcast(better, x), x, best_x)
            best_obj = torch.where(better, obj, best_obj)
            if grad is not None:
                x = _project(x + step * _normalised(grad), center, eps)
    return Trace(best_x, torch.stack(values))


# ---------------------------------------------------------------------------------------------
# The three tools.


def visualize_units(
    model: RobustModel, seeds: Tensor, units: Sequence[int], *, eps: float, step: float, iterations: int
) -> Trace:
    """Fig. 3: for every seed (N) and unit (K), maximise features(x)[unit] within the eps-ball around the seed
    (its pre-activation when the representation ends in a ReLU, see `unit_objective`).

    Returns a Trace over the N*K pairs in seed-major order (pair i*K + k = seed i, unit k); reshape x to
    (N, K, C, H, W)."""
    n, k = len(seeds), len(units)
    start = seeds.detach().repeat_interleave(k, dim=0)
    unit_idx = torch.tensor(list(units), device=seeds.device).repeat(n)
    rows = torch.arange(n * k, device=seeds.device)

    representation = unit_objective(model)

    def objective(x: Tensor) -> Tensor:
        return representation(x)[rows, unit_idx]

    return ascend(objective, start, step=step, iterations=iterations, eps=eps)


def unit_objective(model: RobustModel) -> Callable[[Tensor], Tensor]:
    """x -> the representation to maximise a unit of: the pre-activation when the body ends in a ReLU.

    max(z, 0) and z have the same maximiser wherever the unit is positive, but a unit clipped at 0 has zero
    input gradient, so ascent on the post-ReLU value could never move it (the 128-d small CNN has ~20% of its
    units active per image). ResNets end in average pooling, whose output is used as is."""
    body = model.body
    if isinstance(body, nn.Sequential) and isinstance(body[-1], nn.ReLU):
        pre = body[:-1]
        return lambda x: pre(model.normalize(x))
    return model.features


def relative_distance(feats: Tensor, target: Tensor) -> Tensor:
    """||f - t|| / ||t|| per example (||t|| floored so an all-zero target cannot divide by zero)."""
    diff = (feats - target).float()
    # sqrt(sum + tiny): the norm's gradient at an exact match would otherwise be NaN
    dist = (diff.pow(2).sum(dim=1) + 1e-12).sqrt()
    return dist / target.float().norm(dim=1).clamp_min(1e-12)


def _pairs(x1: Tensor, x2: Tensor, lambdas: Sequence[float]) -> tuple[Tensor, Tensor, Tensor]:
    """(lambda, x1, x2) repeated in pair-major order: element p*L + l is pair p with lambda l."""
    lam = torch.tensor(list(lambdas), dtype=x1.dtype, device=x1.device).repeat(len(x1))
    n_l = len(lambdas)
    return lam, x1.detach().repeat_interleave(n_l, dim=0), x2.detach().repeat_interleave(n_l, dim=0)


def pixel_blend(x1: Tensor, x2: Tensor, lambdas: Sequence[float]) -> Tensor:
    """lambda x1 + (1 - lambda) x2 per pair and lambda (pair-major): the start of `interpolate`."""
    lam, a, b = _pairs(x1, x2, lambdas)
    lam = _bcast(lam, a)
    return lam * a + (1 - lam) * b


def interpolate(
    model: RobustModel,
    x1: Tensor,
    x2: Tensor,
    lambdas: Sequence[float],
    *,
    step: float,
    iterations: int,
    start: Tensor | None = None,
) -> Trace:
    """Fig. 4: for every pair (P) and lambda (L), find x with f(x) close to lambda f(x1) + (1 - lambda) f(x2).

    Convex combination (the paper's eq. (14) prints a minus sign; see the module docstring). Starts from the
    pixel blend lambda x1 + (1 - lambda) x2 unless `start` (P*L images) is given; minimises the relative
    distance ||f(x) - t|| / ||t|| with normalised gradient steps, clamped into [0, 1]. Pairs are in pair-major
    order (pair p, lambda l at p*L + l); the Trace's objective is the NEGATIVE relative distance."""
    lam, a, b = _pairs(x1, x2, lambdas)
    with torch.no_grad():
        lam_f = lam[:, None].float()
        target = lam_f * model.features(a).float() + (1 - lam_f) * model.features(b).float()
    init = pixel_blend(x1, x2, lambdas) if start is None else start

    def objective(x: Tensor) -> Tensor:
        return -relative_distance(model.features(x), target)

    return ascend(objective, init, step=step, iterations=iterations, eps=None)


def large_targeted(model: RobustModel, x: Tensor, targets: Tensor, *, eps: float, steps: int) -> Trace:
    """Fig. 5: targeted L2 PGD (attacks.pgd, targeted=True, no random start, alpha = 2.5 eps / steps).

    The objective recorded is the target log-probability, read at every step through pgd's loss hook, so the
    Trace comes from the very iterates pgd takes. x returned = x + delta (the final iterate, as pgd returns)."""
    values: list[Tensor] = []

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        values.append(-loss.detach())
        return loss

    delta = pgd(
        model,
        x,
        targets,
        norm="l2",
        eps=eps,
        alpha=2.5 * eps / steps,
        steps=steps,
        random_start=False,
        targeted=True,
        loss_fn=loss_fn,
    )
    adv = (x + delta).detach()
    with torch.no_grad():
        values.append(-F.cross_entropy(model(adv).float(), targets, reduction="none"))
    return Trace(adv, torch.stack(values))


# ---------------------------------------------------------------------------------------------
# The quantitative companion.


def high_freq_share(images: Tensor, cutoff: float = 0.5) -> Tensor:
    """Per image, the share of 2-D spectral energy at radial frequencies above cutoff x Nyquist.

    images: (N, C, H, W); energy |FFT2|^2 summed over channels; frequencies in cycles/pixel (Nyquist 0.5), radius
    sqrt(fx^2 + fy^2), so white noise scores 1 - pi/16 ~ 0.80 at the default cutoff and smooth images near 0.
    An all-zero image gives NaN (no energy to share)."""
    img = images.detach().float()
    h, w = img.shape[-2:]
    power = torch.fft.fft2(img).abs().pow(2).sum(dim=1)  # (N, H, W)
    fy = torch.fft.fftfreq(h, device=img.device)[:, None]
    fx = torch.fft.fftfreq(w, device=img.device)[None, :]
    high = (fy.pow(2) + fx.pow(2)).sqrt() > cutoff * 0.5
    total = power.flatten(1).sum(dim=1)
    share = (power * high).flatten(1).sum(dim=1) / total
    return torch.where(total > 0, share, torch.full_like(share, torch.nan))


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
    first, rest = [], []
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
        xb, yb = x[i : i + batch], y[i : i + batch]
        clean += int((_predict(model, xb) == yb).sum())
        delta = pgd(
            model, xb, yb, norm=attack.norm, eps=attack.eps, alpha=attack.alpha, steps=attack.steps,
            random_start=True, generator=generator,
        )  # fmt: skip
        robust += int((_predict(model, xb + delta) == yb).sum())
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


def source_dir(spec: RunSpec, run_dir: Path, run_id: str) -> Path:
    """results/<source_experiment>/runs/<run_id>; the results root is run_dir.parents[2]."""
    experiment = spec.visualize.source_experiment or spec.experiment
    return Path(run_dir).resolve().parents[2] / experiment / "runs" / run_id


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


def summarise(
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
    from workloads import feature_plots  # matplotlib only where figures are drawn
    from workloads.data import build_datasets

    run_dir = Path(run_dir)
    vz = spec.visualize
    if not vz.source_runs:
        raise ValueError("visualize.source_runs: expected at least one run_id to visualise; got none")
    models: dict[str, tuple[RobustModel, RunSpec]] = {}
    for run_id in vz.source_runs:
        model, src_spec = load_model(source_dir(spec, run_dir, run_id), which=vz.checkpoint, map_location=dist.device)
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
    feature_rows, transfer_rows = summarise(spec, out, models)

    raw = raw_tensors(out, classes, spec)
    buf = io.BytesIO()
    torch.save(raw, buf)
    layout.write_bytes_atomic(run_dir / FEATURES_PT, buf.getvalue())
    layout.write_csv_atomic(run_dir / FEATURES_CSV, FEATURE_COLUMNS, feature_rows)
    layout.write_csv_atomic(run_dir / TRANSFER_CSV, TRANSFER_COLUMNS, transfer_rows)
    layouts = feature_plots.draw_all(raw, run_dir)
    return {
        "models": list(models),
        "figures": {name: list(shape) for name, shape in layouts.items()},
        "features": feature_rows,
    }
