"""Site profiles: what differs between Slurm clusters, and nothing else.

A profile is a YAML file `<name>.yaml`; a grid names it with `profile: <name>` (or a path to a .yaml file,
relative to the grid file's folder). A name is looked up, first hit wins, in the folders of FASTROBUST_PROFILES
(os.pathsep-separated: a site's own profiles, outside any checkout), slurm_templates/ next to the grid's folder and
in the cwd, then the profiles shipped with the package (slurm_templates/, package data).

Keys (all optional; see `Profile` for types and defaults):

    partition, account, qos, constraint   sbatch options (null: the cluster's default / not set)
    gpu_request: gpus_per_node            how GPUs are requested: gpus_per_node (--gpus-per-node=N),
                                          gres (--gres=gpu:N, or gpu:<gres_type>:N), none (CPU-only cluster)
    gres_type: null                       e.g. volta -> --gres=gpu:volta:N (gres style only)
    setup: []                             shell lines run in the sbatch script before srun (module load, ...)
    time_limit_min: null                  time limit of cells that do not set resources.timeout_min
    signal_delay_s: 90                    USR2 this long before the limit, so the job can checkpoint and requeue
    max_nodes, max_gpus_per_node: null    site limits, checked when the grid is loaded (null: no check)
    additional: {}                        any other sbatch option, e.g. {mail-type: END, exclusive: true}
    env: {}                               environment variables exported in the job, e.g. {GLOO_SOCKET_IFNAME: lo}

`slurm_parameters(profile, spec)` turns a profile and one cell into submitit `update_parameters` kwargs.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import UserError
from orchestrator.grid import yaml12
from workloads.schema import at_least, choices, parse
from workloads.spec import RunSpec

GPU_REQUESTS = ("gpus_per_node", "gres", "none")
REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES_ENV = "FASTROBUST_PROFILES"
SHIPPED_PACKAGE = "slurm_templates"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# sbatch options that have their own profile field or come from the cell: `additional` must not override them.
RESERVED_SBATCH = {
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "constraint": "constraint",
    "gres": "gpu_request: gres",
    "gpus-per-node": "gpu_request: gpus_per_node",
    "time": "time_limit_min (or the cell's resources.timeout_min)",
    "signal": "signal_delay_s",
    "nodes": "the cell's shape.nodes",
    "ntasks-per-node": "the cell's shape.gpus_per_node",
    "cpus-per-task": "the cell's resources.cpus_per_task",
    "mem": "the cell's resources.mem_gb",
    "array": "the grid (one array per resource shape)",
}


class ProfileError(UserError, ValueError):
    """A profile that cannot be used; `problems` holds one line per problem."""


@dataclass
class Profile:
    name: str = "generic"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpu_request: str = field(default="gpus_per_node", metadata=choices(*GPU_REQUESTS))
    gres_type: str | None = None
    setup: list[str] = field(default_factory=list)
    time_limit_min: int | None = field(default=None, metadata=at_least(1))
    signal_delay_s: int = field(default=90, metadata=at_least(0))
    max_nodes: int | None = field(default=None, metadata=at_least(1))
    max_gpus_per_node: int | None = field(default=None, metadata=at_least(1))
    additional: dict[str, str | int | bool] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    path: Path | None = None  # the file it was read from


# Keys a profile file may hold: every field except those set by the loader.
_NOT_IN_FILE = ("name", "path")
_MAPPING_KEYS = ("additional", "env")  # workloads.schema.parse handles no dicts: checked here


def shipped_dir() -> Path:
    """The folder of the profiles shipped with the package (installed: package data; a checkout: slurm_templates/)."""
    try:
        files = importlib.resources.files(SHIPPED_PACKAGE)
    except ModuleNotFoundError:  # an editable install made before the profiles were package data
        return REPO_ROOT / SHIPPED_PACKAGE
    return files if isinstance(files, Path) else REPO_ROOT / SHIPPED_PACKAGE


def profile_dirs(grid_dir: Path | None = None) -> list[Path]:
    """Where profile names are looked up, first hit wins: FASTROBUST_PROFILES, next to the grid's folder, the cwd,
    the shipped profiles."""
    dirs = [Path(d).expanduser() for d in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if d]
    dirs += [Path(grid_dir).resolve().parent / "slurm_templates"] if grid_dir is not None else []
    dirs += [Path.cwd() / "slurm_templates", shipped_dir()]
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in unique:
            unique.append(d.resolve())
    return unique


def available_profiles(grid_dir: Path | None = None) -> list[str]:
    names = {p.stem for d in profile_dirs(grid_dir) if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def find_profile(name_or_path: str, grid_dir: Path | None = None) -> Path:
    """A profile name (slurm_templates/<name>.yaml) or a path to a .yaml file -> the file."""
    if "/" in name_or_path or os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        candidate = Path(name_or_path).expanduser()
        if not candidate.is_absolute() and grid_dir is not None and (Path(grid_dir) / candidate).is_file():
            candidate = Path(grid_dir) / candidate
        if candidate.is_file():
            return candidate
        raise ProfileError([f"profile file {name_or_path!r} not found"])
    for d in profile_dirs(grid_dir):
        candidate = d / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    valid = ", ".join(available_profiles(grid_dir)) or "none found"
    where = ", ".join(str(d) for d in profile_dirs(grid_dir))
    folders = f"searched {where}; {PROFILES_ENV} adds folders"
    raise ProfileError([f"unknown profile {name_or_path!r}; available: {valid}, or a .yaml path ({folders})"])


def load_profile(name_or_path: str, grid_dir: Path | None = None) -> Profile:
    """Read and validate a profile; raises ProfileError listing every problem (one line each)."""
    path = find_profile(name_or_path, grid_dir)
    try:
        data = yaml12.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError([f"{where}: YAML syntax error: {' '.join(str(problem).split())}"]) from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ProfileError([f"{path}: expected a mapping of profile settings; got {type(data).__name__}"])
    problems: list[str] = []
    valid = [f.name for f in dataclasses.fields(Profile) if f.name not in _NOT_IN_FILE]
    plain = {}
    for key, value in data.items():
        if key not in valid:
            problems.append(f"{path}: {key}: unknown key; valid keys: {', '.join(valid)}")
        elif key not in _MAPPING_KEYS:
            plain[key] = value
    profile, errors = parse(Profile, plain)
    problems += [f"{path}: {e.path}: {e.message}" for e in errors]
    profile.additional = _check_mapping(data.get("additional"), "additional", path, problems)
    profile.env = {k: str(v) for k, v in _check_mapping(data.get("env"), "env", path, problems).items()}
    for key in profile.additional:
        reserved = RESERVED_SBATCH.get(key.replace("_", "-"))
        if reserved:
            problems.append(f"{path}: additional.{key}: not allowed here; set it through {reserved}")
    for key in profile.env:
        if not ENV_NAME_RE.match(key):
            problems.append(f"{path}: env.{key}: expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    if profile.gres_type is not None and profile.gpu_request != "gres":
        problems.append(f"{path}: gres_type: only used with gpu_request: gres; got gpu_request {profile.gpu_request}")
    if problems:
        raise ProfileError(problems)
    profile.name = path.stem
    profile.path = path
    return profile


def _check_mapping(value: Any, key: str, path: Path, problems: list[str]) -> dict[str, Any]:
    """A mapping of names to scalars (str, int, float or bool); anything else is a problem."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{path}: {key}: expected a mapping of names to values; got {value!r}")
        return {}
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(v, (str, int, float, bool)):
            problems.append(f"{path}: {key}.{k}: expected a string, number or true; got {v!r}")
        else:
            out[str(k)] = v
    return out


def gpu_request(profile: Profile, gpus_per_node: int) -> dict[str, Any]:
    """The submitit kwargs that request `gpus_per_node` GPUs on each node, in the profile's style."""
    if profile.gpu_request == "gpus_per_node":
        return {"gpus_per_node": gpus_per_node}
    if profile.gpu_request == "gres":
        kind = f"gpu:{profile.gres_type}" if profile.gres_type else "gpu"
        return {"slurm_gres": f"{kind}:{gpus_per_node}"}
    return {}


def slurm_parameters(profile: Profile, spec: RunSpec) -> dict[str, Any]:
    """submitit AutoExecutor.update_parameters kwargs for the array holding `spec`.

    One Slurm task per GPU (tasks_per_node = gpus_per_node); a multi-task step is killed as a whole when one task
    fails (srun --kill-on-bad-exit=1). slurm_-prefixed keys are ignored by a local
    AutoExecutor, so the same dict also serves executor: local. `env` is exported by setup lines, which run in
    the sbatch script before srun, so every task inherits it. Pass `executor_kwargs(spec)` to the AutoExecutor
    constructor: submitit takes max_num_timeout there, not in update_parameters.
    """
    res = spec.resources
    params: dict[str, Any] = {
        "timeout_min": res.timeout_min,
        "nodes": spec.shape.nodes,
        "tasks_per_node": spec.shape.gpus_per_node,
        "cpus_per_task": res.cpus_per_task,
        **gpu_request(profile, spec.shape.gpus_per_node),
        "slurm_signal_delay_s": profile.signal_delay_s,
    }
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    if spec.shape.nodes * spec.shape.gpus_per_node > 1:
        # A task that exits non-zero (its supervisor has recorded a dead or hung rank) ends the whole step: the
        # peers could otherwise wait for it in a collective up to collective_timeout_s (NCCL sees no closed socket).
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(profile, key) is not None:
            params[f"slurm_{key}"] = getattr(profile, key)
    setup = list(profile.setup) + [f"export {k}={shlex.quote(v)}" for k, v in profile.env.items()]
    if setup:
        params["slurm_setup"] = setup
    if profile.additional:
        params["slurm_additional_parameters"] = dict(profile.additional)
    return params


def executor_kwargs(spec: RunSpec) -> dict[str, Any]:
    """AutoExecutor constructor kwargs: how often a timed-out/preempted job may requeue itself."""
    return {"slurm_max_num_timeout": spec.resources.max_requeues}
