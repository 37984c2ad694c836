"""RunSpec: every setting of one grid cell, with its default and its valid range.

This module is the one source of truth for parameter names, defaults and choices: the grid
validator (orchestrator.grid) and the workloads (reading spec.json) both parse through
`from_dict`, so a key means the same thing everywhere and unknown keys are always errors.
The parser itself is workloads.schema; dataset, model and method names and the methods' attack rules come
from workloads.catalog. KIND_SECTIONS says which settings each kind reads. Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from workloads import catalog
from workloads.schema import SpecError, at_least, choices, join_path, parse

KINDS = ("train", "evaluate", "bench", "visualize")
NORMS = ("l2", "linf")
PRECISIONS = ("fp32", "bf16")
ATTACK_MODES = ("eval", "train")
CHECKPOINTS = ("best", "last")
_METHOD = {"pattern": catalog.METHOD_RE, "expected": catalog.METHOD_HELP}


@dataclass
class Optimizer:
    """SGD with step decay: lr is divided by 1/gamma every step_epochs epochs."""

    lr: float = field(default=0.1, metadata=at_least(0, strict=True))
    momentum: float = field(default=0.9, metadata=at_least(0))
    weight_decay: float = field(default=5.0e-4, metadata=at_least(0))
    step_epochs: int = field(default=50, metadata=at_least(1))
    gamma: float = field(default=0.1, metadata=at_least(0, strict=True))


@dataclass
class Attack:
    """Training threat model. steps/alpha left empty are derived from `method` (see resolve_attack)."""

    norm: str = field(default="l2", metadata=choices(*NORMS))
    eps: float = field(default=1.0, metadata=at_least(0))
    steps: int | None = field(default=None, metadata=at_least(1))
    alpha: float | None = field(default=None, metadata=at_least(0, strict=True))
    random_start: bool = True
    mode: str = field(default="eval", metadata=choices(*ATTACK_MODES))  # model mode while attacking


@dataclass
class Eval:
    """Validation during training: clean accuracy and PGD accuracy every `every` epochs and at the end."""

    every: int = field(default=5, metadata=at_least(1))
    norm: str | None = field(default=None, metadata=choices(*NORMS))  # None: attack.norm
    eps: float | None = field(default=None, metadata=at_least(0))  # None: attack.eps
    steps: int = field(default=20, metadata=at_least(0))
    alpha: float | None = field(default=None, metadata=at_least(0, strict=True))  # None: 2.5 eps / steps
    restarts: int = field(default=1, metadata=at_least(1))
    batch_size: int | None = field(default=None, metadata=at_least(1))  # None: per-rank train batch


@dataclass
class Shape:
    """Resources that make one Slurm array: nodes x GPUs (one task, i.e. one rank, per GPU)."""

    nodes: int = field(default=1, metadata=at_least(1))
    gpus_per_node: int = field(default=1, metadata=at_least(1))

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class Resources:
    timeout_min: int = field(default=60, metadata=at_least(1))
    cpus_per_task: int = field(default=1, metadata=at_least(1))
    mem_gb: float | None = field(default=None, metadata=at_least(0, strict=True))
    max_requeues: int = field(default=3, metadata=at_least(0))


@dataclass
class Bench:
    """kind: bench (Fig. 1 left): time K-step PGD, a forward pass and one training step per method."""

    batch_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256], metadata=at_least(1))
    methods: list[str] = field(default_factory=lambda: ["standard", "fast", "pgd7"], metadata=_METHOD)
    repeats: int = field(default=10, metadata=at_least(1))
    warmup: int = field(default=2, metadata=at_least(0))
    # standard SGD steps on real training batches before timing (0: time the freshly initialised model)
    prime_steps: int = field(default=50, metadata=at_least(0))


@dataclass
class Evaluate:
    """kind: evaluate (Fig. 2): PGD accuracy vs eps of a trained run's checkpoint."""

    source_experiment: str | None = None  # experiment holding the run (None: this grid's experiment)
    source_run: str | None = None  # run_id inside it
    source_dir: str | None = None  # that run's directory (absolute): set by the orchestrator at submit time
    checkpoint: str = "best"  # best | last | a path to a .pt file
    norm: str = field(default="l2", metadata=choices(*NORMS))
    eps_list: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0], metadata=at_least(0))
    steps: int = field(default=20, metadata=at_least(0))
    restarts: int = field(default=10, metadata=at_least(1))
    zero_start: bool = True  # one more PGD run from delta = 0 besides the `restarts` random starts
    alpha_factor: float = field(default=2.5, metadata=at_least(0, strict=True))  # alpha = f * eps / steps
    max_examples: int | None = field(default=None, metadata=at_least(1))
    batch_size: int = field(default=256, metadata=at_least(1))  # examples per attacked batch (per rank)
    autoattack: bool = False  # also APGD-CE + APGD-T (torchattacks, extra [strong]); columns side by side
    autoattack_steps: int = field(default=100, metadata=at_least(1))  # iterations of each APGD run
    allow_pickle: bool = False  # load checkpoints that need torch.load(weights_only=False): trusted files only


@dataclass
class Visualize:
    """kind: visualize (Figs. 3-5): feature visualisation, interpolation, large targeted perturbations."""

    source_experiment: str | None = None
    source_runs: list[str] = field(default_factory=list)
    source_dirs: list[str] = field(default_factory=list)  # their run directories (absolute), set at submit time
    checkpoint: str = field(default="best", metadata=choices(*CHECKPOINTS))
    units: int = field(default=5, metadata=at_least(1))
    vis_eps: float = field(default=1000.0, metadata=at_least(0, strict=True))
    vis_step: float = field(default=1.0, metadata=at_least(0, strict=True))
    vis_iterations: int = field(default=200, metadata=at_least(1))
    interp_lambdas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], metadata=at_least(0))
    interp_iterations: int = field(default=200, metadata=at_least(1))
    large_eps: float = field(default=500.0, metadata=at_least(0, strict=True))
    large_steps: int = field(default=1000, metadata=at_least(1))
    images: int = field(default=2, metadata=at_least(1))
    vis_seed: str = field(default="image", metadata=choices("image", "noise"))  # Fig. 3 seeds: test images or noise
    interp_step: float = field(default=1.0, metadata=at_least(0, strict=True))  # normalised L2 step (Fig. 4)
    interp_pairs: int = field(default=1, metadata=at_least(1))  # anchor pairs (x1, x2) for Fig. 4
    large_targets: int = field(default=1, metadata=at_least(1))  # target classes per image (Fig. 5)
    rank_examples: int = field(default=256, metadata=at_least(1))  # val examples to measure robustness (ranking)


@dataclass
class RunSpec:
    """One grid cell, fully resolved. Written as spec.json into the run directory at submit time."""

    experiment: str = "default"
    run_id: str = ""
    kind: str = field(default="train", metadata=choices(*KINDS))
    dataset: str = field(default="fashion_mnist", metadata=choices(*catalog.DATASETS))
    data_root: str | None = None  # None: torchvision layout under ~/data, Debian files for Fashion-MNIST
    train_subset: int | None = field(default=None, metadata=at_least(1))  # first-N stratified subset
    val_subset: int | None = field(default=None, metadata=at_least(1))
    augment: bool = True
    model: str = field(default="small_cnn", metadata=choices(*catalog.MODELS))
    method: str = field(default="standard", metadata=_METHOD)
    epochs: int = field(default=1, metadata=at_least(1))
    global_batch_size: int = field(default=128, metadata=at_least(1))
    seed: int = field(default=0, metadata=at_least(0))
    precision: str = field(default="fp32", metadata=choices(*PRECISIONS))
    channels_last: bool = False
    threads: int | None = field(default=None, metadata=at_least(1))  # torch threads per rank
    optimizer: Optimizer = field(default_factory=Optimizer)
    attack: Attack = field(default_factory=Attack)
    eval: Eval = field(default_factory=Eval)
    shape: Shape = field(default_factory=Shape)
    resources: Resources = field(default_factory=Resources)
    bench: Bench = field(default_factory=Bench)
    evaluate: Evaluate = field(default_factory=Evaluate)
    visualize: Visualize = field(default_factory=Visualize)

    @property
    def world_size(self) -> int:
        return self.shape.world_size

    @property
    def batch_per_rank(self) -> int:
        return self.global_batch_size // self.world_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ResolvedAttack:
    """What an attack actually does; steps == 0 means no attack (standard training)."""

    norm: str
    eps: float
    steps: int
    alpha: float
    random_start: bool


def resolve_attack(method: str, attack: Attack) -> ResolvedAttack:
    """Method name + overrides -> attack settings: the method's norm, steps and alpha rule (workloads.catalog);
    explicit attack.steps/alpha always win."""
    if not catalog.METHOD_RE.match(method):
        raise SpecError("method", f"expected {catalog.METHOD_HELP}, got {method!r}")
    info = catalog.method_info(method)
    norm = info.norm or attack.norm
    if info.steps == 0:
        return ResolvedAttack(norm, attack.eps, 0, 0.0, attack.random_start)
    steps = attack.steps or info.steps
    alpha = attack.alpha if attack.alpha is not None else info.alpha(attack.eps, steps)
    return ResolvedAttack(norm, attack.eps, steps, alpha, attack.random_start)


def resolve_eval_attack(spec: RunSpec) -> ResolvedAttack:
    """The validation attack during training (PGD with random start)."""
    ev = spec.eval
    norm = ev.norm or resolve_attack(spec.method, spec.attack).norm
    eps = spec.attack.eps if ev.eps is None else ev.eps
    if ev.alpha is not None:
        alpha = ev.alpha
    else:  # eval.steps-step PGD with the catalog's pgdK rule (2.5 eps / K); no steps: no attack
        alpha = catalog.method_info(f"pgd{ev.steps}").alpha(eps, ev.steps) if ev.steps else 0.0
    return ResolvedAttack(norm, eps, ev.steps, alpha, True)


def check_spec(spec: RunSpec, path: str = "") -> list[SpecError]:
    """Cross-field rules that single fields cannot express."""
    errors: list[SpecError] = []
    if spec.global_batch_size % spec.world_size:
        errors.append(
            SpecError(
                join_path(path, "global_batch_size"),
                f"expected a multiple of the world size {spec.world_size} "
                f"(nodes {spec.shape.nodes} x gpus_per_node {spec.shape.gpus_per_node}); "
                f"got {spec.global_batch_size}",
            )
        )
    return errors


def from_dict(data: Any, path: str = "") -> RunSpec:
    """Strictly parse a resolved spec (e.g. spec.json); raises the first SpecError."""
    spec, errors = parse(RunSpec, data, path)
    errors += check_spec(spec, path) if not errors else []
    if errors:
        raise errors[0]
    return spec


# ---------------------------------------------------------------------------------------------
# What each kind reads: the top-level RunSpec keys whose values can change its outcome. The orchestrator
# compares only these between a run's spec.json and the grid (a new bench default is no news to a train run).

_COMMON = ("experiment", "run_id", "kind", "seed", "threads", "shape", "resources")
_DATA = ("dataset", "data_root", "train_subset", "val_subset", "augment")
KIND_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": (*_COMMON, *_DATA, "model", "method", "epochs", "global_batch_size", "precision", "channels_last",
              "optimizer", "attack", "eval"),
    # resolve_eval_attack reads method/attack/eval; prime_model the optimizer
    "bench": (*_COMMON, *_DATA, "model", "method", "precision", "channels_last", "optimizer", "attack", "eval",
              "bench"),
    # this cell's dataset, val_subset, method and attack describe an external (robustness-library) checkpoint
    "evaluate": (*_COMMON, "dataset", "data_root", "val_subset", "method", "attack", "evaluate"),
    # the dataset is the source runs'; the ranking attack is resolve_eval_attack(this cell)
    "visualize": (*_COMMON, "data_root", "method", "attack", "eval", "visualize"),
}  # fmt: skip


def kind_settings(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec dict (spec.json, RunSpec.to_dict()) that a job of `kind` reads, in KIND_SECTIONS order."""
    if kind not in KIND_SECTIONS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}; got {kind!r}")
    return {key: spec[key] for key in KIND_SECTIONS[kind] if key in spec}
