"""Feature visualisation, interpolation and large targeted perturbations (Figs. 3-5) on real small models.

A `standard` and a `fast` (fast-L2, eps 2) small CNN are trained once for this module on 4000 Fashion-MNIST
images (3 epochs, ~35 s on one core); every test reuses them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from workloads import entry, layout
from workloads.adversarial import representation
from workloads.assets.checkpoint import load_model
from workloads.assets.data import build_datasets
from workloads.kinds import visualize, visualize_plots
from workloads.kinds.train import train
from workloads.runtime.distributed import Dist
from workloads.spec import Attack, Optimizer, RunSpec, Validation, Visualize

pytestmark = pytest.mark.slow  # the module trains its models: not in the quick lane
SOURCE_EXPERIMENT = "src"
METHODS = ("standard", "fast")


@pytest.fixture(scope="module")
def results_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for method in METHODS:
        spec = RunSpec(
            experiment=SOURCE_EXPERIMENT, run_id=method, method=method, train_subset=4000, val_subset=200,
            epochs=3, global_batch_size=128, threads=1, optimizer=Optimizer(lr=0.05),
            attack=Attack(eps=2.0), eval=Validation(every=3, steps=5),
        )  # fmt: skip
        train(spec, root / SOURCE_EXPERIMENT / "runs" / method)
    return root


@pytest.fixture(scope="module")
def models(results_root: Path) -> dict[str, torch.nn.Module]:
    out = {}
    for method in METHODS:
        model, _ = load_model(results_root / SOURCE_EXPERIMENT / "runs" / method, which="last")
        out[method] = model.requires_grad_(False)
    return out


@pytest.fixture(scope="module")
def val_images() -> tuple[torch.Tensor, torch.Tensor]:
    val = build_datasets(RunSpec(val_subset=500, augment=False)).val
    idx = visualize.pick_images(val.targets, 6, torch.Generator().manual_seed(0))
    return torch.stack([val[int(i)][0] for i in idx]), val.targets[idx]


def assert_climbs(trace: torch.Tensor) -> None:
    """The mean objective over examples rises and ends at least half-way from its start to its best.

    The optimisers take fixed-size normalised steps, which oscillate once near an optimum: how far the last
    iterate falls below the best depends on the trained model (up to 6 % of the gain across training seeds here),
    so a near-monotone check would test the model, not the code. A sign error or a diverging step ends below
    half-way (or never rises)."""
    mean = trace.float().mean(dim=1)
    best_gain = float(mean.max() - mean[0])
    assert best_gain > 0, f"objective never increased from {mean[0]:.4g}"
    end_gain = float(mean[-1] - mean[0])
    assert end_gain >= 0.5 * best_gain, f"ended {end_gain:.4g} above the start, best was {best_gain:.4g}"


def assert_in_ball(x: torch.Tensor, center: torch.Tensor, eps: float) -> torch.Tensor:
    assert x.min() >= 0 and x.max() <= 1
    dist = (x - center).flatten(1).norm(dim=1)
    assert (dist <= eps * (1 + 1e-6)).all(), f"max distance {dist.max():.6g} > eps {eps}"
    return dist


# ---------------------------------------------------------------------------------------------
# The spectral measure on known images.


def test_high_freq_share_on_known_images() -> None:
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(16, 1, 28, 28, generator=g) - 0.5
    assert representation.high_freq_share(noise).mean() == pytest.approx(1 - math.pi / 16, abs=0.03)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    smooth = torch.cos(2 * math.pi * (xx + yy) / 28)[None, None]  # one cycle per image: lowest frequency
    checker = ((xx + yy) % 2 * 2 - 1)[None, None]  # Nyquist in both directions
    assert representation.high_freq_share(smooth).item() < 1e-6
    assert representation.high_freq_share(checker).item() == pytest.approx(1.0)
    assert torch.isnan(representation.high_freq_share(torch.zeros(1, 3, 8, 8))).all()


# ---------------------------------------------------------------------------------------------
# The three optimisers: objective climbs, constraints hold.


@pytest.mark.parametrize("method", METHODS)
def test_visualize_units_ascends_within_eps(models, val_images, method: str) -> None:
    model, (x, _) = models[method], val_images
    seeds = x[:3]
    units = [3, 40, 77, 101]
    eps = 2.0  # small enough that the projection binds (the box alone allows ~28)
    result = representation.visualize_units(model, seeds, units, eps=eps, step=0.25, iterations=30)
    assert result.trace.shape == (31, 12)
    assert_climbs(result.trace)
    dist = assert_in_ball(result.x, seeds.repeat_interleave(4, dim=0), eps)
    assert dist.max() > 0.9 * eps, "the eps constraint never became active: the test would not check it"
    assert torch.equal(result.best, result.trace.max(dim=0).values)


@pytest.mark.parametrize("method", METHODS)
def test_interpolate_descends_and_matches_the_convex_target(models, val_images, method: str) -> None:
    model, (x, _) = models[method], val_images
    x1, x2 = x[0:4:2], x[1:4:2]
    lambdas = [0.0, 0.25, 0.5, 0.75, 1.0]
    result = representation.interpolate(model, x1, x2, lambdas, step=0.05, iterations=30)
    interior = result.trace.view(31, 2, 5)[:, :, 1:4].flatten(1)  # endpoints start at their optimum (distance 0)
    assert_climbs(interior)
    assert result.x.min() >= 0 and result.x.max() <= 1
    # the convex target: at lambda = 1 the best iterate has x1's representation
    with torch.no_grad():
        rel = representation.relative_distance(model.features(result.x.view(2, 5, 1, 28, 28)[:, 4]), model.features(x1))
    assert (rel < 1e-3).all()
    # ... and from a far start (noise), the optimiser pulls the representation towards f(x1)
    noise = torch.rand(x1.shape, generator=torch.Generator().manual_seed(2))
    inverted = representation.interpolate(model, x1, x2, [1.0], step=0.2, iterations=100, start=noise)
    assert_climbs(inverted.trace)
    start_dist, best_dist = -inverted.trace[0], -inverted.best
    # at least halved: across training seeds and CPUs the best ratio was 0.01-0.25 (a wrong target or sign: ~1)
    assert (best_dist < 0.5 * start_dist).all(), f"{start_dist} -> {best_dist}"


def test_interpolation_target_is_convex_not_eq14(models, val_images) -> None:
    """At lambda = 1/2 the target is the midpoint of the two representations (eq. (14)'s minus sign is a typo)."""
    model, (x, _) = models["fast"], val_images
    x1, x2 = x[0:1], x[1:2]
    seen = {}

    def spy(feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen["target"] = target
        return original(feats, target)

    original = representation.relative_distance
    representation.relative_distance = spy  # type: ignore[assignment]
    try:
        representation.interpolate(model, x1, x2, [0.5], step=0.05, iterations=1)
    finally:
        representation.relative_distance = original  # type: ignore[assignment]
    with torch.no_grad():
        midpoint = 0.5 * model.features(x1) + 0.5 * model.features(x2)
    torch.testing.assert_close(seen["target"], midpoint)


@pytest.mark.parametrize("method", METHODS)
def test_large_targeted_climbs_within_eps(models, val_images, method: str) -> None:
    model, (x, y) = models[method], val_images
    targets = (y + 3) % 10
    eps = 3.0
    result = representation.large_targeted(model, x, targets, eps=eps, steps=30)
    assert result.trace.shape == (31, len(x))
    assert_climbs(result.trace)
    assert_in_ball(result.x, x, eps)
    with torch.no_grad():
        final = -torch.nn.functional.cross_entropy(model(result.x), targets, reduction="none")
    torch.testing.assert_close(result.trace[-1], final)


# ---------------------------------------------------------------------------------------------
# The claim behind Fig. 3.


def test_robust_model_visualisations_have_less_high_frequency_energy(models, val_images) -> None:
    seeds = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # noise seeds, as in the paper
    share = {}
    units = torch.randperm(128, generator=torch.Generator().manual_seed(1))[:8].tolist()
    for method, model in models.items():
        result = representation.visualize_units(model, seeds, units, eps=1000.0, step=0.25, iterations=40)
        share[method] = float(representation.high_freq_share(result.x - seeds.repeat_interleave(8, dim=0)).nanmean())
    print(f"high-frequency share: {share}")
    # the paper's claim is a direction; its size depends on the trained pair: fast/standard was 0.60-0.79 over four
    # training seeds (mean 0.69, SD 0.08), so 0.95 leaves over 3 SD while a reversed claim still fails
    assert share["fast"] < 0.95 * share["standard"], share


# ---------------------------------------------------------------------------------------------
# The workload end to end: files, CSV columns, figure layout.


def vis_spec(results_root: Path, **overrides: object) -> RunSpec:
    """A visualize cell of the two source runs, their source_dirs resolved as the orchestrator does at submit time."""
    dirs = [str(layout.run_dir(results_root, SOURCE_EXPERIMENT, m)) for m in METHODS]
    settings = dict(
        source_experiment=SOURCE_EXPERIMENT, source_runs=list(METHODS), source_dirs=dirs, checkpoint="last", units=3,
        vis_eps=1000.0, vis_step=0.2, vis_iterations=8, interp_lambdas=[0.0, 0.5, 1.0], interp_step=0.05,
        interp_iterations=8, large_eps=20.0, large_steps=20, images=2, large_targets=2, rank_examples=32,
    )  # fmt: skip
    settings.update(overrides)
    return RunSpec(
        experiment="vis", run_id="vis0", kind="visualize", threads=2, eval=Validation(steps=3),
        visualize=Visualize(**settings),  # type: ignore[arg-type]
    )  # fmt: skip


def test_main_writes_tensors_csv_and_figures(results_root: Path) -> None:
    spec = vis_spec(results_root)
    run_dir = results_root / "vis" / "runs" / "vis0"
    spec_path = run_dir / layout.SPEC
    layout.write_json_atomic(spec_path, spec.to_dict())
    result = entry.run(spec_path, dist=Dist())
    assert (run_dir / layout.RESULT).exists()

    # one row per model; columns: units per seed block, lambdas + 2 anchors per pair, targets + original per image
    assert result["figures"] == {"fig3": [2, 2 * (1 + 3)], "fig4": [2, 1 * (2 + 3)], "fig5": [2, 2 * (1 + 2)]}
    for name in ("fig3", "fig4", "fig5"):
        for ext in ("png", "pdf"):
            assert (run_dir / f"{name}.{ext}").stat().st_size > 0
    assert not list(run_dir.glob(".*.tmp")), "temp files left behind"

    rows = layout.read_csv(run_dir / visualize.FEATURES_CSV)
    assert tuple(rows[0]) == visualize.FEATURE_COLUMNS
    assert [r["run_id"] for r in rows] == list(METHODS)
    assert [r["method"] for r in rows] == list(METHODS)
    for r in rows:
        assert 0 <= float(r["vis_hf_share"]) <= 1
        assert 0 <= float(r["target_self"]) <= 1
        assert r["most_robust_other"] == next(m for m in METHODS if m != r["run_id"])
    transfer = layout.read_csv(run_dir / visualize.TRANSFER_CSV)
    assert tuple(transfer[0]) == visualize.TRANSFER_COLUMNS
    assert len(transfer) == 4 and sum(int(t["is_self"]) for t in transfer) == 2

    raw = torch.load(run_dir / visualize.FEATURES_PT, weights_only=True)
    assert raw["models"]["fast"]["vis"].shape == (2, 3, 1, 28, 28)
    assert raw["models"]["fast"]["interp"].shape == (1, 3, 1, 28, 28)
    assert raw["models"]["standard"]["large"].shape == (2, 2, 1, 28, 28)
    assert raw["targets"].shape == (2, 2) and (raw["targets"] != raw["seed_labels"][:, None]).all()
    # the same seeds, pairs and targets for every model
    assert raw["seeds"].shape == (2, 1, 28, 28) and raw["x1"].shape == (1, 1, 28, 28)


def test_main_on_other_ranks_does_nothing(results_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "vis" / "runs" / "vis1"
    assert visualize.main(vis_spec(results_root), run_dir, Dist(rank=1, world_size=2)) == {}
    assert not run_dir.exists()


def test_render_grid_shape() -> None:
    grid = visualize_plots.FigureGrid(
        images=[[torch.rand(3, 8, 8) for _ in range(4)] for _ in range(3)],
        titles=[[f"{r}{c}" for c in range(4)] for r in range(3)],
        row_labels=["a", "b", "c"],
    )
    fig = visualize_plots.render(grid)
    assert len(fig.axes) == 12
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (3, 4)
