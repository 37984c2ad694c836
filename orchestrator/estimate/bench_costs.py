"""Per-batch costs measured by `kind: bench` (bench.csv): reading them, choosing the rows of one device, model
and dataset, and querying t(B) of each kind of work at a world size (orchestrator.estimate.model builds the
cost model on top).

t(B) between measured batch sizes is interpolated linearly in log-log space (exact on measured points);
outside them the end segment's slope (clamped to [0, 1]: time never falls with batch size, nor grows faster
than proportionally) is extended and the result is flagged as extrapolated.

Rows carry the world size of the bench cell that measured them (all its ranks at once): a query at world size
G uses the rows at G when there are any, else those of the smallest world size benched.
This module reads CSVs only (pandas); it never imports torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from orchestrator.errors import UserError
from workloads import layout
from workloads.catalog import method_info

# Substrings (lower case) of accelerator names as torch.cuda.get_device_name reports them (see is_gpu_device).
GPU_NAME_HINTS = ("nvidia", "tesla", "geforce", "quadro", "titan", "rtx", "radeon", "instinct", "gpu", "cuda")


class EstimateError(UserError, ValueError):
    """No usable bench data (or no trainable cell); the message is one line saying what is missing."""


def is_gpu_device(device: str) -> bool:
    """Whether a bench device name is a CUDA device's (loader workers overlap with compute) or a CPU's."""
    name = device.lower()
    return any(hint in name for hint in GPU_NAME_HINTS)


def interpolate_cost(points: Mapping[int, float], b: float) -> tuple[float, bool]:
    """t(b) from measured {batch_size: seconds}: log-log linear; returns (t, extrapolated)."""
    if not points:
        raise EstimateError("no measured batch sizes to interpolate from")
    xs = sorted(points)
    if b in points:
        return float(points[int(b)]), False  # b equals an int key here
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(points[x], 1e-12)) for x in xs]
    lb = math.log(b)
    if len(xs) == 1:
        return float(points[xs[0]]) * b / xs[0], True  # one point: assume time proportional to batch
    if lb < lx[0] or lb > lx[-1]:
        i = 0 if lb < lx[0] else len(xs) - 2  # the end segment on that side
        slope = min(max((ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i]), 0.0), 1.0)
        end = 0 if lb < lx[0] else len(xs) - 1  # continue from the measured end point
        return math.exp(ly[end] + slope * (lb - lx[end])), True
    i = max(j for j in range(len(xs) - 1) if lx[j] <= lb)
    frac = (lb - lx[i]) / (lx[i + 1] - lx[i])
    return math.exp(ly[i] + frac * (ly[i + 1] - ly[i])), False


# ---------------------------------------------------------------------------------------------
# Bench data


def read_bench(source: Path) -> pd.DataFrame:
    """bench.csv rows from a file or a folder holding one (as written: `orchestrate estimate` collects an
    experiment's run directories first, this function never does)."""
    source = Path(source).expanduser()
    path = source / layout.BENCH if source.is_dir() else source
    if not path.exists():
        raise EstimateError(f"{path}: no such bench file (run a `kind: bench` grid on the target device first)")
    df = pd.read_csv(path)
    missing = {"device", "model", "dataset", "method", "attack_steps", "batch_size", "median_s"} - set(df.columns)
    if missing:
        raise EstimateError(f"{path}: bench.csv lacks columns {', '.join(sorted(missing))}")
    if "what" not in df.columns:  # a file with only the minimum columns: attack rows and the forward proxy
        df["what"] = ["forward" if s == 0 else "pgd" for s in df["attack_steps"]]
    return with_world_size(df)


def with_world_size(df: pd.DataFrame) -> pd.DataFrame:
    """bench rows with a world_size column: 1 for files written before benches ran at several world sizes."""
    if "world_size" not in df.columns:
        return df.assign(world_size=1)
    return df.assign(world_size=df["world_size"].fillna(1).astype(int))


Key = tuple[str, str, int, int, int]  # (what, method, attack_steps, attack_restarts, world_size)
Curve = dict[int, float]  # {batch size: seconds}


@dataclass
class BenchCosts:
    """Per-batch costs of one (device, model, dataset[, precision]) group of bench rows."""

    rows: pd.DataFrame
    device: str
    # {key: {batch size: [median_s of each row]}}, built once: queries run in plain Python (report speed)
    _times: dict[Key, dict[int, list[float]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rows = with_world_size(self.rows)
        restarts = rows["attack_restarts"] if "attack_restarts" in rows.columns else [1] * len(rows)
        self._times = {}
        columns = (rows["what"], rows["method"], rows["attack_steps"], restarts, rows["world_size"])
        for what, method, steps, r, g, b, t in zip(*columns, rows["batch_size"], rows["median_s"], strict=True):
            key = (str(what), str(method), int(steps), 1 if pd.isna(r) else int(r), int(g))
            self._times.setdefault(key, {}).setdefault(int(b), []).append(float(t))

    @property
    def world_sizes(self) -> list[int]:
        return sorted({k[4] for k in self._times})

    def _curve_at(
        self,
        world: int | None,
        what: str,
        method: str | None = None,
        steps: int | None = None,
        restarts: int | None = None,
    ) -> tuple[Curve, int]:
        """({batch size: seconds}, world size used) over the matching rows measured at `world`, else (None, or
        no such rows) at the smallest world size that has them. Several rows per batch size (repeated bench
        runs): the median of their medians."""
        found: dict[int, dict[int, list[float]]] = {}  # {world size: {batch size: times}}
        for (w, m, k, r, g), by_batch in self._times.items():
            if w == what and method in (None, m) and steps in (None, k) and restarts in (None, r):
                merged = found.setdefault(g, {})
                for b, ts in by_batch.items():
                    merged.setdefault(b, []).extend(ts)
        if not found:
            return {}, world or 1
        g = world if world in found else min(found)
        return {b: statistics.median(ts) for b, ts in found[g].items()}, g

    def _curve(
        self, what: str, method: str | None = None, steps: int | None = None, restarts: int | None = None,
        world: int | None = None,
    ) -> Curve:  # fmt: skip
        return self._curve_at(world, what, method, steps, restarts)[0]

    def forward(self, b: float, world: int | None = None) -> tuple[float, bool]:
        curve = self._curve("forward", world=world)
        if not curve:
            raise EstimateError(f"bench data for {self.device} has no forward rows")
        return interpolate_cost(curve, b)

    def pgd(self, steps: int, b: float, method: str | None = None, world: int | None = None) -> tuple[float, bool]:
        """K-step PGD: this method's rows, else any rows with K steps, else scaled per pass from the largest K."""
        if steps == 0:
            return 0.0, False
        for m in (method, None):
            curve = self._curve("pgd", m, steps, world=world)
            if curve:
                return interpolate_cost(curve, b)
        measured = [k for (w, _, k, _, _) in self._times if w == "pgd"]
        if not measured:
            raise EstimateError(f"bench data for {self.device} has no pgd rows (needed for {steps}-step PGD)")
        k = max(measured)  # most passes: per-pass cost least noisy
        t, extra = interpolate_cost(self._curve("pgd", None, k, world=world), b)
        return t * steps / k, extra

    def train_step(
        self, method: str, b: float, world: int | None = None, replays: int | None = None
    ) -> tuple[float, bool, str, int]:
        """(seconds, extrapolated, basis, world size of the rows used) of one training step (one mini-batch) of
        `method`: its train_step rows at `world`; else, for an attack-then-step method, the train_step rows of a
        method with the same number of attack passes (`twin`: nfgsm ≈ fast), else the standard step plus its PGD
        at `world`; else all that at the smallest benched world size. `free` (never benched: its replayed step is
        not train_step) is `replays` standard steps (`free_step`)."""
        info = method_info(method)
        if info.step == "free":
            return self.free_step(replays or info.replays, b, world)
        smallest = min(self.world_sizes, default=1)
        for g in dict.fromkeys([world or smallest, smallest]):
            curve, used = self._curve_at(g, "train_step", method)
            if curve and used == g:
                return (*interpolate_cost(curve, b), "train_step", g)
            if (twin := self._twin(method, g)) is not None:
                return (*interpolate_cost(self._curve_at(g, "train_step", twin)[0], b), f"train_step({twin})", g)
            std, used = self._curve_at(g, "train_step", "standard")
            if std and used == g and info.step == "pgd":  # GradAlign's double backprop has no cheaper proxy
                t_std, e1 = interpolate_cost(std, b)
                t_pgd, e2 = self.pgd(info.steps, b, method, world=g)
                return t_std + t_pgd, e1 or e2, "pgd+standard", g
        needs = f"{method} or standard" if info.step == "pgd" else method
        raise EstimateError(
            f"bench data for {self.device} has no train_step rows for {needs} "
            f"(add them to bench.methods, or use basis lower_bound)"
        )

    def _twin(self, method: str, world: int) -> str | None:
        """A benched method (train_step rows at `world`) whose step makes the same passes as `method`: attack then
        weight step, the same number of attack steps (nfgsm, fgsm_rs, pgd1 ≈ fast). fast first, then by name."""
        info = method_info(method)
        if info.step != "pgd":  # free and gradalign steps make other passes than any pgd-style method
            return None
        steps = info.steps
        benched = {k[1] for k in self._times if k[0] == "train_step" and k[4] == world and k[1] != method}
        twins = [m for m in benched if _step_kind(m) == ("pgd", steps)]
        return min(twins, key=lambda m: (m != "fast", m)) if twins else None

    def free_step(self, replays: int, b: float, world: int | None = None) -> tuple[float, bool, str, int]:
        """One mini-batch of free training: `replays` weight steps, each one forward + one backward (the weight and
        the input gradient at once) + an optimizer step, i.e. a standard step each (workloads.training.free_step)."""
        t_std, extra, basis, g = self.train_step("standard", b, world)
        return replays * t_std, extra, f"{replays}x{basis}", g

    def allreduce(self, world: int, b: float) -> tuple[float, bool] | None:
        """Seconds of one gradient all-reduce across `world` ranks (`what == allreduce` rows): measured at that
        world size, else at the nearest benched one (flagged extrapolated); None without rows."""
        worlds = sorted({k[4] for k in self._times if k[0] == "allreduce"})
        if not worlds:
            return None
        g = min(worlds, key=lambda w: (abs(math.log(w / world)), -w))
        t, extra = interpolate_cost(self._curve("allreduce", world=g), b)
        return t, extra or g != world

    def data(self, split: str, b: float, world: int | None = None) -> tuple[float, bool] | None:
        """Seconds to load one batch of the "train" or "val" split (`what == data` rows), None without rows."""
        curve = self._curve("data", f"data_{split}", world=world)
        return interpolate_cost(curve, b) if curve else None

    def lower_bound_step(self, method: str, b: float, replays: int | None = None) -> tuple[float, bool]:
        """The paper's Fig. 1 proxy: K-step PGD, or one forward pass for standard training (one device); free:
        one forward per replay (each replay is a standard step)."""
        info = method_info(method)
        if info.step == "free":
            t, extra = self.forward(b)
            return (replays or info.replays) * t, extra
        return self.pgd(info.steps, b, method) if info.steps else self.forward(b)

    def eval_batch(
        self, steps: int, restarts: int, b: float, basis: str, world: int | None = None
    ) -> tuple[float, bool]:
        """Validation cost of one batch: clean forward + PGD (measured as `what == eval` when available)."""
        if basis == "train_step":
            curve = self._curve("eval", None, steps, restarts, world=world)
            if curve:
                return interpolate_cost(curve, b)
        else:
            world = None  # the paper's bound: one device's costs
        t_fwd, e1 = self.forward(b, world)
        if steps == 0:
            return t_fwd, e1
        t_pgd, e2 = self.pgd(steps, b, world=world)
        if basis == "lower_bound":
            return t_fwd + t_pgd, e1 or e2
        # clean + adversarial forward, and the per-restart scoring forward when restarts > 1
        forwards = 2 + (restarts if restarts > 1 else 0)
        return forwards * t_fwd + restarts * t_pgd, e1 or e2


def _step_kind(method: str) -> tuple[str, int] | None:
    """(step kind, attack steps) of a method name in bench rows; None for names the catalog does not know."""
    try:
        info = method_info(method)
    except ValueError:
        return None
    return info.step, info.steps


def _groups(bench: pd.DataFrame) -> list[str]:
    """The (model/dataset on device (precision[, channels_last])) groups a bench holds, for an error message."""
    out = set()
    for row in bench.to_dict("records"):
        text = f"{row['model']}/{row['dataset']} on {row['device']}"
        if "precision" in row:
            cl = str(row.get("channels_last", "")).lower() == "true"
            text += f" ({'fp32' if pd.isna(row['precision']) else row['precision']}{', channels_last' if cl else ''})"
        out.add(text)
    return sorted(out)


def select_costs(
    bench: pd.DataFrame,
    *,
    model: str,
    dataset: str,
    device: str | None = None,
    precision: str | None = None,
    channels_last: bool | None = None,
) -> BenchCosts:
    """The bench rows that match a cell; EstimateError (one line) when none or several devices match. The gradient
    all-reduce does not depend on precision or memory format (autocast and GradScaler keep fp32 parameters and
    gradients; the bench reduces a buffer of the parameters' dtype), so a selection without allreduce rows takes
    those of the same device, model and dataset measured with other settings."""
    sel = bench[(bench["model"] == model) & (bench["dataset"] == dataset)]
    what = f"model {model}, dataset {dataset}"
    if device is not None:
        sel = sel[sel["device"].astype(str).str.contains(device, case=False, regex=False)]
        what += f", device ~ {device!r}"
    group = sel
    if precision is not None and "precision" in sel.columns:
        sel = sel[sel["precision"].fillna("fp32") == precision]
        what += f", precision {precision}"
    if channels_last is not None and "channels_last" in sel.columns:
        sel = sel[sel["channels_last"].astype(str).str.lower().isin(["true"] if channels_last else ["false", "nan"])]
        what += f", channels_last {channels_last}"
    if sel.empty:
        raise EstimateError(f"no bench data for {what}; bench has: {'; '.join(_groups(bench)) or 'nothing'}")
    devices = sorted(sel["device"].astype(str).unique())
    if len(devices) > 1:
        raise EstimateError(f"bench data for {what} spans several devices ({'; '.join(devices)}); choose one")
    if "what" in sel.columns and not (sel["what"] == "allreduce").any():
        borrowed = group[(group["what"] == "allreduce") & (group["device"].astype(str) == devices[0])]
        sel = pd.concat([sel, borrowed], ignore_index=True) if not borrowed.empty else sel
    return BenchCosts(sel.reset_index(drop=True), devices[0])
