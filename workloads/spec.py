"""RunSpec: every setting of one grid cell, with its default and its valid range.

This module is the one source of truth for parameter names, defaults and choices: the grid
validator (orchestrator.grid.files) and the workloads (reading spec.json) both parse through
`from_dict`, so a key means the same thing everywhere and unknown keys are always errors.
The parser itself is workloads.schema; dataset, model and method names and the methods' attack rules come
from workloads.catalog. KIND_SECTIONS says which settings each kind reads. Torch-free. (Some 420 lines as one
concept: every setting of every kind, in one place.)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from workloads import catalog
from workloads.schema import SpecError, at_least, choices, join_path, parse
from workloads.subsets import subset_problems

KINDS = ("train", "evaluate", "bench", "visualize", "judge")
NORMS = ("l2", "linf")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("step", "onecycle", "cyclic", "cosine")  # workloads.training.schedules
PEAK_SCHEDULES = ("onecycle", "cyclic")  # the schedules that read max_lr and peak_fraction
ATTACK_MODES = ("eval", "train")
CHECKPOINTS = ("best", "last")
GUARD_ACTIONS = ("none", "flag", "stop")
_METHOD = {"pattern": catalog.METHOD_RE, "expected": catalog.METHOD_HELP}
_RECIPE = {"pattern": re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$"), "expected": "a name of letters, digits, _ and ."}


@dataclass
class Optimizer:
    """SGD and its lr schedule, stepped per iteration (workloads.training.schedules): step (lr x gamma every step_epochs
    epochs, the default), onecycle, cyclic (peak max_lr at peak_fraction of the run) or cosine; each takes an
    optional linear warm-up of warmup_epochs (the rise to the peak; onecycle and cyclic then peak at its end)."""

    lr: float = field(default=0.1, metadata=at_least(0, strict=True))  # initial lr; onecycle/cyclic: peak if no max_lr
    momentum: float = field(default=0.9, metadata=at_least(0))  # SGD momentum
    weight_decay: float = field(default=5.0e-4, metadata=at_least(0))  # SGD weight decay (L2)
    step_epochs: int = field(default=50, metadata=at_least(1))  # schedule step: lr x gamma every step_epochs epochs
    gamma: float = field(default=0.1, metadata=at_least(0, strict=True))  # step: lr factor every step_epochs
    schedule: str = field(default="step", metadata=choices(*SCHEDULES))  # lr schedule, stepped per iteration
    warmup_epochs: float = field(default=0.0, metadata=at_least(0))  # linear rise to the peak, epochs (fractions ok)
    max_lr: float | None = field(default=None, metadata=at_least(0, strict=True))  # onecycle/cyclic: peak lr (None: lr)
    peak_fraction: float = field(default=0.4, metadata=at_least(0, strict=True))  # onecycle/cyclic: peak position, < 1


@dataclass
class Attack:
    """Training threat model. steps/alpha left empty are derived from `method` (see resolve_attack)."""

    norm: str = field(default="l2", metadata=choices(*NORMS))  # the threat model's norm (a method may fix it)
    eps: float = field(default=1.0, metadata=at_least(0))  # radius of the perturbation ball
    steps: int | None = field(default=None, metadata=at_least(1))  # steps per batch (None: the method's; pgd7: 7)
    alpha: float | None = field(default=None, metadata=at_least(0, strict=True))  # step size (None: the method's rule)
    random_start: bool = True  # start each attack from a random point of the ball
    mode: str = field(default="eval", metadata=choices(*ATTACK_MODES))  # model mode while attacking
    precision: str | None = field(default=None, metadata=choices(*PRECISIONS))  # attack passes (None: precision)
    noise_factor: float | None = field(default=None, metadata=at_least(0))  # random start radius / eps (None: method's)
    replays: int | None = field(default=None, metadata=at_least(1))  # free: replays per mini-batch (None: method's)
    align: float | None = field(default=None, metadata=at_least(0))  # gradalign: lambda (None: the catalog's 0.2)
    eps_warmup_epochs: int = field(default=0, metadata=at_least(0))  # eps ramped from 0 over N epochs, per iteration


@dataclass
class Validation:
    """Validation during training: clean accuracy and PGD accuracy every `every` epochs and at the end (every 0:
    none at all, e.g. when a judge job evaluates the run's snapshots off the training clock)."""

    every: int = field(default=5, metadata=at_least(0))  # validate every N epochs (and after the last); 0 never
    norm: str | None = field(default=None, metadata=choices(*NORMS))  # None: attack.norm
    eps: float | None = field(default=None, metadata=at_least(0))  # None: attack.eps
    steps: int = field(default=20, metadata=at_least(0))  # PGD steps of the validation attack (0: clean accuracy only)
    alpha: float | None = field(default=None, metadata=at_least(0, strict=True))  # None: 2.5 eps / steps
    restarts: int = field(default=1, metadata=at_least(1))  # random restarts of the validation attack
    batch_size: int | None = field(default=None, metadata=at_least(1))  # None: per-rank train batch


@dataclass
class Shape:
    """Resources that make one Slurm array: nodes x GPUs (one task, i.e. one rank, per GPU)."""

    nodes: int = field(default=1, metadata=at_least(1))  # nodes per run (executor local: 1)
    gpus_per_node: int = field(default=1, metadata=at_least(1))  # GPUs (ranks) per node; on a CPU each is one process

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class Resources:
    """Slurm resources of a cell's job; cells with the same shape and resources share one array."""

    timeout_min: int = field(default=60, metadata=at_least(1))  # minutes per attempt (default: the profile's limit)
    cpus_per_task: int = field(default=1, metadata=at_least(1))  # CPU cores per rank
    mem_gb: float | None = field(default=None, metadata=at_least(0, strict=True))  # GB per node (None: cluster default)
    max_requeues: int = field(default=3, metadata=at_least(0))  # requeues after preemption or timeout (resumes)
    # Slurm's %N: at most N cells of one array run at once (None: submitit's default, min(cells, 256))
    array_parallelism: int | None = field(default=None, metadata=at_least(1))


@dataclass
class Bench:
    """kind: bench (Fig. 1 left): time K-step PGD, a forward pass and one training step per method."""

    # per-rank batch sizes to time
    batch_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256], metadata=at_least(1))
    # methods whose attack and training step are timed
    methods: list[str] = field(default_factory=lambda: ["standard", "fast", "pgd7"], metadata=_METHOD)
    repeats: int = field(default=10, metadata=at_least(1))  # timed calls per measurement (median, p10, p90)
    warmup: int = field(default=2, metadata=at_least(0))  # untimed calls before timing
    # standard SGD steps on real training batches before timing (0: time the freshly initialised model)
    prime_steps: int = field(default=50, metadata=at_least(0))


@dataclass
class Evaluate:
    """kind: evaluate (Fig. 2): PGD accuracy vs eps of a trained run's checkpoint."""

    source_experiment: str | None = None  # experiment holding the run (None: this grid's experiment)
    source_run: str | None = None  # run_id inside it
    source_dir: str | None = None  # that run's directory (absolute): set by the orchestrator at submit time
    checkpoint: str = "best"  # best | last | a path to a .pt file
    # a judged snapshot of the source run instead of its checkpoint: "best" (highest judged robust accuracy on
    # its validation data, ties to the earliest epoch) or an epoch; chosen at run time (workloads.snapshot_choice)
    source_snapshot: int | str | None = None
    source_judged: str | None = None  # the judged.csv of the judge following the source run: set at submit time
    norm: str = field(default="l2", metadata=choices(*NORMS))  # the attack's norm
    # PGD accuracy at each of these eps (0: clean accuracy)
    eps_list: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0], metadata=at_least(0))
    steps: int = field(default=20, metadata=at_least(0))  # PGD steps
    restarts: int = field(default=10, metadata=at_least(1))  # random starts per example; robust = survives all
    zero_start: bool = True  # one more PGD run from delta = 0 besides the `restarts` random starts
    alpha_factor: float = field(default=2.5, metadata=at_least(0, strict=True))  # alpha = f * eps / steps
    max_examples: int | None = field(default=None, metadata=at_least(1))  # first-N stratified test images (None: all)
    batch_size: int = field(default=256, metadata=at_least(1))  # examples per attacked batch (per rank)
    # AutoAttack's standard ensemble (APGD-CE, APGD-T, FAB-T, Square; pyautoattack, extra [strong]) beside PGD.
    # Budgets other than 100 iterations / 5000 queries run (and are recorded as) version "custom".
    autoattack: bool = False
    autoattack_steps: int = field(default=100, metadata=at_least(1))  # APGD-CE, APGD-T, FAB-T iterations
    autoattack_queries: int = field(default=5000, metadata=at_least(1))  # Square's query budget
    allow_pickle: bool = False  # load checkpoints that need torch.load(weights_only=False): trusted files only


@dataclass
class Visualize:
    """kind: visualize (Figs. 3-5): feature visualisation, interpolation, large targeted perturbations."""

    source_experiment: str | None = None  # experiment holding the runs (None: this grid's experiment)
    source_runs: list[str] = field(default_factory=list)  # run_ids to visualise (one figure row each)
    source_dirs: list[str] = field(default_factory=list)  # their run directories (absolute), set at submit time
    checkpoint: str = field(default="best", metadata=choices(*CHECKPOINTS))  # which checkpoint of each run
    units: int = field(default=5, metadata=at_least(1))  # units (logits) visualised per model (Fig. 3)
    vis_eps: float = field(default=1000.0, metadata=at_least(0, strict=True))  # L2 radius of Fig. 3's visualisation
    vis_step: float = field(default=1.0, metadata=at_least(0, strict=True))  # its normalised L2 step
    vis_iterations: int = field(default=200, metadata=at_least(1))  # its iterations
    # interpolation weights between the two anchors' representations (Fig. 4)
    interp_lambdas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], metadata=at_least(0))
    interp_iterations: int = field(default=200, metadata=at_least(1))  # iterations per interpolation point
    large_eps: float = field(default=500.0, metadata=at_least(0, strict=True))  # L2 radius of Fig. 5's perturbations
    large_steps: int = field(default=1000, metadata=at_least(1))  # their PGD steps
    images: int = field(default=2, metadata=at_least(1))  # test images per figure
    vis_seed: str = field(default="image", metadata=choices("image", "noise"))  # Fig. 3 seeds: test images or noise
    interp_step: float = field(default=1.0, metadata=at_least(0, strict=True))  # normalised L2 step (Fig. 4)
    interp_pairs: int = field(default=1, metadata=at_least(1))  # anchor pairs (x1, x2) for Fig. 4
    large_targets: int = field(default=1, metadata=at_least(1))  # target classes per image (Fig. 5)
    rank_examples: int = field(default=256, metadata=at_least(1))  # val examples to measure robustness (ranking)


@dataclass
class Judge:
    """kind: judge: follows train runs (their snapshot_every snapshots) and evaluates every new snapshot on their
    validation data (the val_split held out of training when they set it, else their validation set), off their
    training clock; ends when every followed run has ended (workloads.kinds.judge)."""

    source_experiment: str | None = None  # experiment holding the runs (None: this grid's experiment)
    source_runs: list[str] = field(default_factory=list)  # run_ids it follows (the grid's train cells: submit)
    source_dirs: list[str] = field(default_factory=list)  # their run directories (absolute), set at submit time
    examples: int = field(default=2000, metadata=at_least(1))  # first N of the validation data
    steps: int = field(default=10, metadata=at_least(0))  # PGD steps, alpha = alpha_factor * eps / steps
    restarts: int = field(default=1, metadata=at_least(1))  # random-start PGD runs per example
    zero_start: bool = False  # one more PGD run from delta = 0 besides the random starts
    alpha_factor: float = field(default=2.5, metadata=at_least(0, strict=True))  # alpha = f * eps / steps
    eps: float | None = field(default=None, metadata=at_least(0))  # None: the followed run's attack.eps
    batch_size: int = field(default=256, metadata=at_least(1))  # examples per attacked batch
    poll_s: float = field(default=10.0, metadata=at_least(0, strict=True))  # seconds between looks for snapshots
    # a followed run that neither finished nor failed and whose run lock nobody held for this long is taken as
    # gone (cancelled, killed, or waiting in the queue that long): the judge never waits on a dead run
    idle_timeout_min: float = field(default=15.0, metadata=at_least(0, strict=True))
    keep_every: int = field(default=1, metadata=at_least(1))  # after judging keep every N-th snapshot (+ last, best)
    ranks: int = field(default=1, metadata=at_least(1))  # processes of a judge job the orchestrator plans (one node)


@dataclass
class Phase:
    """One entry of method_schedule: `method` trains the epochs before the fraction `until` of the run (both
    required); the run's `method` trains the rest."""

    method: str | None = field(default=None, metadata=_METHOD)
    until: float | None = field(default=None, metadata={"gt": 0})


@dataclass
class Guard:
    """Catastrophic-overfitting guard (kind train, workloads.training.guard): each epoch, clean and PGD accuracy on a
    fixed
    training subset; flags the run when the PGD accuracy falls more than `drop` below its best so far."""

    action: str = field(default="none", metadata=choices(*GUARD_ACTIONS))  # none: off; stop: end the run
    examples: int = field(default=512, metadata=at_least(1))  # fixed (seeded) training subset, sharded over ranks
    drop: float = field(default=0.2, metadata=at_least(0, strict=True))  # absolute accuracy drop that flags
    steps: int | None = field(default=None, metadata=at_least(1))  # PGD steps (None: eval.steps), 1 restart


@dataclass
class RunSpec:
    """One grid cell, fully resolved. Written as spec.json into the run directory at submit time."""

    experiment: str = "default"
    run_id: str = ""
    # kind train: a name for the recipe that leads the run_id (recipes of one experiment in several documents)
    recipe: str | None = field(default=None, metadata=_RECIPE)
    kind: str = field(default="train", metadata=choices(*KINDS))
    dataset: str = field(default="fashion_mnist", metadata=choices(*catalog.DATASETS))  # the data (workloads.catalog)
    data_root: str | None = None  # None: torchvision layout under ~/data, Debian files for Fashion-MNIST
    train_subset: int | None = field(default=None, metadata=at_least(1))  # first-N stratified train images (None: all)
    val_subset: int | None = field(default=None, metadata=at_least(1))  # first-N stratified test images (None: all)
    augment: bool = True  # random crops and flips of the training images (the dataset's catalog rule)
    model: str = field(default="small_cnn", metadata=choices(*catalog.MODELS))  # the network (workloads.catalog)
    method: str = field(default="standard", metadata=_METHOD)  # standard (no attack), fast (1-step), pgdK, ...
    method_schedule: list[Phase] = field(default_factory=list)  # phases before `method`: [{method: fast, until: 0.6}]
    epochs: int = field(default=1, metadata=at_least(1))  # training epochs (the schedule's length)
    global_batch_size: int = field(default=128, metadata=at_least(1))  # over all ranks (a multiple of the world size)
    seed: int = field(default=0, metadata=at_least(0))  # seeds model, data order, attacks (replicates)
    precision: str = field(default="fp32", metadata=choices(*PRECISIONS))  # or bf16/fp16 autocast (fp16: CUDA only)
    channels_last: bool = False  # NHWC memory format for the model and batches
    compile: bool = False  # torch.compile the model for the training step (opt-in; compile time per attempt)
    threads: int | None = field(default=None, metadata=at_least(1))  # torch threads per rank (None: torch's)
    tensorboard: bool = False  # TensorBoard event files in the run directory (extra [tensorboard])
    checkpoint_every_min: float = field(default=0.0, metadata=at_least(0))  # minutes between mid-epoch saves; 0 off
    # kind train: a weights-only snapshot every K epochs and at the last (workloads.training.snapshots); 0 off
    snapshot_every: int = field(default=0, metadata=at_least(0))
    # N stratified training images held out of training (seeded, the same for every cell with that N): the run's
    # validation data (on-clock evaluation, best epoch, judge) instead of the test set; None: the test set
    val_split: int | None = field(default=None, metadata=at_least(1))
    collective_timeout_s: float = field(default=600.0, metadata=at_least(1))  # s a hung rank's peers wait
    optimizer: Optimizer = field(default_factory=Optimizer)
    attack: Attack = field(default_factory=Attack)
    eval: Validation = field(default_factory=Validation)
    guard: Guard = field(default_factory=Guard)
    shape: Shape = field(default_factory=Shape)
    resources: Resources = field(default_factory=Resources)
    bench: Bench = field(default_factory=Bench)
    evaluate: Evaluate = field(default_factory=Evaluate)
    visualize: Visualize = field(default_factory=Visualize)
    judge: Judge = field(default_factory=Judge)

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
    start_factor: float = 1.0  # random start radius / eps
    project: bool = True  # project onto the eps-ball after each step
    step: str = "pgd"  # the method's training step (catalog.MethodInfo.step)
    replays: int = 1  # step "free": replays per mini-batch
    align: float = 0.0  # step "gradalign": lambda, the weight of the gradient-misalignment regulariser


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
    start = info.start_factor if attack.noise_factor is None else attack.noise_factor
    replays, align = attack.replays or info.replays, info.align if attack.align is None else attack.align
    return ResolvedAttack(norm, attack.eps, steps, alpha, attack.random_start, start, info.project, info.step, replays,
                          align)  # fmt: skip


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
    return (
        errors
        + check_optimizer(spec, path)
        + _check_recipes(spec, path)
        + _check_source_snapshot(spec, path)
        + subset_problems(spec, path)
    )


def _check_source_snapshot(spec: RunSpec, path: str = "") -> list[SpecError]:
    which, where = spec.evaluate.source_snapshot, join_path(path, "evaluate.source_snapshot")
    if which is None:
        return []
    if isinstance(which, str) and which != "best":
        return [SpecError(where, f"expected best or an epoch (an integer >= 1); got {which!r}")]
    if isinstance(which, int) and which < 1:
        return [SpecError(where, f"expected best or an epoch (an integer >= 1); got {which}")]
    if spec.kind == "evaluate" and not spec.evaluate.source_run:
        return [SpecError(where, "reads the judged snapshots of evaluate.source_run; set source_run")]
    return []


def _check_recipes(spec: RunSpec, path: str = "") -> list[SpecError]:
    """The cross-field rules of method_schedule, attack.replays and the guard (workloads.training.recipe,
    workloads.training.guard)."""
    errors: list[SpecError] = []
    last = 0.0
    norm = resolve_attack(spec.method, spec.attack).norm
    for i, phase in enumerate(spec.method_schedule):
        where = join_path(join_path(path, "method_schedule"), i)
        if phase.method is None or phase.until is None:
            errors.append(
                SpecError(where, "expected a mapping with both method and until, e.g. {method: fast, until: 0.6}")
            )
            continue
        if not last < phase.until < 1:
            low = f"the previous phase's until {last:g}" if i else "0"
            errors.append(
                SpecError(
                    join_path(where, "until"),
                    f"expected a fraction of the epochs above {low} and below 1; got {phase.until:g}",
                )
            )
        last = max(last, phase.until)
        phase_norm = resolve_attack(phase.method, spec.attack).norm
        if phase_norm != norm:
            errors.append(
                SpecError(
                    join_path(where, "method"),
                    f"{phase.method} attacks in {phase_norm}, the run's method {spec.method} in {norm}; "
                    "one norm per run (set attack.norm or pick methods of one norm)",
                )
            )
    methods = [*(p.method for p in spec.method_schedule if p.method is not None), spec.method]
    for key, step, does in (("replays", "free", "replays mini-batches"), ("align", "gradalign", "has an align weight")):
        if getattr(spec.attack, key) is not None and not any(catalog.method_info(m).step == step for m in methods):
            where, trains = join_path(path, f"attack.{key}"), ", ".join(methods)
            errors.append(SpecError(where, f"only the {step} method {does}; the run trains with {trains}"))
    if spec.kind == "bench":
        for i, m in enumerate(spec.bench.methods):
            if catalog.method_info(m).step == "free":
                errors.append(
                    SpecError(
                        join_path(path, f"bench.methods[{i}]"),
                        "free is not benched (its replayed step is not train_step; benchmarks/step_cost.py times it)",
                    )
                )
    if spec.guard.action != "none" and (spec.guard.steps or spec.eval.steps) == 0:
        errors.append(
            SpecError(join_path(path, "guard.steps"), "expected a number of PGD steps >= 1 (eval.steps is 0)")
        )
    return errors


def check_optimizer(spec: RunSpec, path: str = "") -> list[SpecError]:
    """The schedule keys that only some schedules read, and their ranges relative to the run."""
    o, at = spec.optimizer, join_path(path, "optimizer")
    errors: list[SpecError] = []
    if o.max_lr is not None and o.schedule not in PEAK_SCHEDULES:
        errors.append(SpecError(join_path(at, "max_lr"), f"only read by schedule onecycle or cyclic; got {o.schedule}"))
    if o.peak_fraction >= 1:
        errors.append(SpecError(join_path(at, "peak_fraction"), f"expected a value < 1; got {o.peak_fraction!r}"))
    if o.warmup_epochs and o.schedule in PEAK_SCHEDULES and o.peak_fraction != Optimizer.peak_fraction:
        why = f"not read with warmup_epochs (the peak of {o.schedule} is at the warm-up's end): give one of them"
        errors.append(SpecError(join_path(at, "peak_fraction"), why))
    if o.warmup_epochs >= spec.epochs:
        errors.append(
            SpecError(
                join_path(at, "warmup_epochs"), f"expected less than epochs ({spec.epochs}); got {o.warmup_epochs!r}"
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

_COMMON = ("experiment", "run_id", "kind", "seed", "threads", "shape", "resources", "collective_timeout_s")
_DATA = ("dataset", "data_root", "train_subset", "val_subset", "augment", "val_split")
KIND_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": (*_COMMON, *_DATA, "model", "method", "epochs", "global_batch_size", "precision", "channels_last",
              "compile", "optimizer", "attack", "eval", "tensorboard", "method_schedule", "guard",
              "checkpoint_every_min", "snapshot_every"),
    # resolve_eval_attack reads method/attack/eval; prime_model the optimizer
    "bench": (*_COMMON, *_DATA, "model", "method", "precision", "channels_last", "optimizer", "attack", "eval",
              "bench"),
    # this cell's dataset, val_subset, method and attack describe an external (robustness-library) checkpoint
    "evaluate": (*_COMMON, "dataset", "data_root", "val_subset", "method", "attack", "evaluate"),
    # the dataset is the source runs'; the ranking attack is resolve_eval_attack(this cell)
    "visualize": (*_COMMON, "data_root", "method", "attack", "eval", "visualize"),
    # the data, model and attack eps are the followed runs' (their snapshots carry their specs)
    "judge": (*_COMMON, "data_root", "judge"),
}  # fmt: skip


def kind_settings(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec dict (spec.json, RunSpec.to_dict()) that a job of `kind` reads, in KIND_SECTIONS order."""
    if kind not in KIND_SECTIONS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}; got {kind!r}")
    return {key: spec[key] for key in KIND_SECTIONS[kind] if key in spec}
