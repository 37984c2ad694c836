"""RunSpec: every setting of one grid cell, with its default and its valid range.

This module is the one source of truth for parameter names, defaults and choices: the grid
validator (orchestrator.grid) and the workloads (reading spec.json) both parse through
`from_dict`, so a key means the same thing everywhere and unknown keys are always errors.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

KINDS = ("train", "evaluate", "bench", "visualize")
DATASETS = ("fashion_mnist", "cifar10", "restricted_imagenet")
MODELS = ("small_cnn", "resnet18_cifar", "resnet50_cifar", "resnet50")
NORMS = ("l2", "linf")
PRECISIONS = ("fp32", "bf16")
ATTACK_MODES = ("eval", "train")
CHECKPOINTS = ("best", "last")
METHOD_RE = re.compile(r"^(standard|fast|fgsm_rs|pgd[1-9][0-9]*)$")
METHOD_HELP = "standard, fast, fgsm_rs or pgdK (K a positive integer, e.g. pgd7)"


def choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


def at_least(low: float, strict: bool = False) -> dict[str, Any]:
    return {"gt" if strict else "ge": low}


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
    methods: list[str] = field(
        default_factory=lambda: ["standard", "fast", "pgd7"], metadata={"pattern": METHOD_RE, "expected": METHOD_HELP}
    )
    repeats: int = field(default=10, metadata=at_least(1))
    warmup: int = field(default=2, metadata=at_least(0))
    # standard SGD steps on real training batches before timing (0: time the freshly initialised model)
    prime_steps: int = field(default=50, metadata=at_least(0))


@dataclass
class Evaluate:
    """kind: evaluate (Fig. 2): PGD accuracy vs eps of a trained run's checkpoint."""

    source_experiment: str | None = None  # experiment holding the run (None: this grid's experiment)
    source_run: str | None = None  # run_id inside it
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
    dataset: str = field(default="fashion_mnist", metadata=choices(*DATASETS))
    data_root: str | None = None  # None: torchvision layout under ~/data, Debian files for Fashion-MNIST
    train_subset: int | None = field(default=None, metadata=at_least(1))  # first-N stratified subset
    val_subset: int | None = field(default=None, metadata=at_least(1))
    augment: bool = True
    model: str = field(default="small_cnn", metadata=choices(*MODELS))
    method: str = field(default="standard", metadata={"pattern": METHOD_RE, "expected": METHOD_HELP})
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


def method_steps(method: str) -> tuple[str | None, int]:
    """(norm forced by the method or None, number of steps) for a method name."""
    if not METHOD_RE.match(method):
        raise SpecError("method", f"expected {METHOD_HELP}, got {method!r}")
    if method == "standard":
        return None, 0
    if method == "fast":
        return "l2", 1
    if method == "fgsm_rs":
        return "linf", 1
    return None, int(method[3:])


def resolve_attack(method: str, attack: Attack) -> ResolvedAttack:
    """Method name + overrides -> attack settings (paper: fast alpha=1.5 eps, pgdK alpha=2.5 eps/K,
    Wong et al.: fgsm_rs alpha=1.25 eps). Explicit attack.steps/alpha always win."""
    forced_norm, steps = method_steps(method)
    norm = forced_norm or attack.norm
    if steps == 0:
        return ResolvedAttack(norm, attack.eps, 0, 0.0, attack.random_start)
    steps = attack.steps or steps
    if attack.alpha is not None:
        alpha = attack.alpha
    elif method == "fast":
        alpha = 1.5 * attack.eps
    elif method == "fgsm_rs":
        alpha = 1.25 * attack.eps
    else:
        alpha = 2.5 * attack.eps / steps
    return ResolvedAttack(norm, attack.eps, steps, alpha, attack.random_start)


def resolve_eval_attack(spec: RunSpec) -> ResolvedAttack:
    """The validation attack during training (PGD with random start)."""
    ev = spec.eval
    norm = ev.norm or resolve_attack(spec.method, spec.attack).norm
    eps = spec.attack.eps if ev.eps is None else ev.eps
    alpha = ev.alpha if ev.alpha is not None else (2.5 * eps / ev.steps if ev.steps else 0.0)
    return ResolvedAttack(norm, eps, ev.steps, alpha, True)


# ---------------------------------------------------------------------------------------------
# Strict parsing: dict -> dataclass, collecting every problem with its key path.


class SpecError(ValueError):
    """A user error in a spec or grid: `path` is the key path, the message says what was expected."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


T = TypeVar("T")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _check_range(value: Any, meta: typing.Mapping[str, Any], path: str, errors: list[SpecError]) -> None:
    if "pattern" in meta and not meta["pattern"].match(value):
        errors.append(SpecError(path, f"expected {meta['expected']}; got {value!r}"))
    if "choices" in meta and value not in meta["choices"]:
        errors.append(SpecError(path, f"expected one of {', '.join(meta['choices'])}; got {value!r}"))
    if "ge" in meta and value < meta["ge"]:
        errors.append(SpecError(path, f"expected a value >= {meta['ge']}; got {value!r}"))
    if "gt" in meta and value <= meta["gt"]:
        errors.append(SpecError(path, f"expected a value > {meta['gt']}; got {value!r}"))


def _convert(tp: Any, value: Any, meta: typing.Mapping[str, Any], path: str, errors: list[SpecError]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, meta, path, errors)
    if origin is list:
        if not isinstance(value, list):
            errors.append(SpecError(path, f"expected {_type_name(tp)}; got {value!r}"))
            return value
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, meta, _join(path, i), errors) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path, errors)
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        errors.append(SpecError(path, f"expected {_type_name(tp)}; got {value!r}"))
        return value
    value = float(value) if tp is float else value
    _check_range(value, meta, path, errors)
    return value


def _from_dict(cls: type[T], data: Any, path: str, errors: list[SpecError]) -> T:
    if not isinstance(data, dict):
        errors.append(SpecError(path, f"expected a mapping; got {data!r}"))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            valid = ", ".join(fields)
            errors.append(SpecError(_join(path, str(key)), f"unknown key; valid keys: {valid}"))
            continue
        kwargs[key] = _convert(hints[key], value, fields[key].metadata, _join(path, key), errors)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # only reachable when an earlier error left a wrong type behind
        errors.append(SpecError(path, str(exc)))
        return cls()


def parse(cls: type[T], data: Any, path: str = "") -> tuple[T, list[SpecError]]:
    """Parse `data` into `cls`; returns the object and every problem found (empty when valid)."""
    errors: list[SpecError] = []
    obj = _from_dict(cls, data, path, errors)
    return obj, errors


def check_spec(spec: RunSpec, path: str = "") -> list[SpecError]:
    """Cross-field rules that single fields cannot express."""
    errors: list[SpecError] = []
    if spec.global_batch_size % spec.world_size:
        errors.append(
            SpecError(
                _join(path, "global_batch_size"),
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
