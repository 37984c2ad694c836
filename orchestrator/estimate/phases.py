"""What one mini-batch of a training recipe costs (orchestrator.estimate.model sums it over the run).

- A method's step: the bench's train_step rows (or what `BenchCosts.train_step` derives them from: a twin with
  the same passes, nfgsm ≈ fast; the standard step plus the method's PGD), plus what each weight step adds on
  several GPUs when the rows were measured on fewer (the all-reduce), plus what data loading adds (`data_cost`).
- free with m replays (workloads.training.free_step): m weight steps per mini-batch, each one forward + one backward +
  an optimizer step, i.e. m standard steps and m all-reduces; the data are loaded once. The grid's `epochs` is
  what runs (the recipe divides the epoch budget by m in the grid file; the trainer changes nothing), so the run
  costs epochs × batches × m standard steps.
- method_schedule (workloads.training.recipe): each epoch trains with one phase's method (`phase_method`: the epoch's
  middle before `until` × epochs); all epochs have the same number of iterations, so a phase's share of the
  iterations is its share of the epochs, and the per-batch cost is the shares' weighted sum.
- The eps warm-up changes eps, not the number of passes: no cost.
Reads bench rows through BenchCosts only; never imports torch.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.estimate.bench_costs import BenchCosts, EstimateError, is_gpu_device
from workloads.catalog import method_info
from workloads.spec import Phase, RunSpec
from workloads.training.recipe import phase_method

PERFECT_SCALING = "+perfect_scaling"  # basis suffix: a multi-GPU step without any communication cost


@dataclass(frozen=True)
class BatchCost:
    """One training mini-batch of one method on one rank."""

    seconds: float  # compute + communication + what data loading adds
    extrapolated: bool
    basis: str
    world: int  # world size of the bench rows the step came from (1 for the lower bound)


def data_cost(t_data: float, t_compute: float, *, overlapped: bool) -> float:
    """Seconds one batch's loading adds to its step: all of it when serial (CPU, in-process loading), what
    the compute does not hide when loader workers overlap with it (CUDA)."""
    return max(0.0, t_data - t_compute) if overlapped else t_data


def weight_steps(method: str, replays: int | None = None) -> int:
    """Optimizer steps (and gradient all-reduces) per mini-batch: free's replays, else 1."""
    info = method_info(method)
    return (replays or info.replays) if info.step == "free" else 1


def phase_shares(method: str, schedule: Sequence[tuple[str, float]], epochs: int) -> list[tuple[str, float]]:
    """(method, share of the run's iterations) in training order: workloads.training.recipe.phase_method applied to
    every
    epoch; a method that trains no epoch is left out. Without a schedule: [(method, 1.0)]."""
    if not schedule:
        return [(method, 1.0)]
    spec = RunSpec(epochs=epochs, method=method, method_schedule=[Phase(m, until) for m, until in schedule])
    counts = Counter(phase_method(spec, epoch) for epoch in range(1, epochs + 1))
    order = dict.fromkeys([*(m for m, _ in schedule), method])
    return [(m, counts[m] / epochs) for m in order if counts[m]]


def parse_schedule(text: object) -> tuple[tuple[str, float], ...]:
    """runs.csv's method_schedule column ("fast@0.6;pgd3@0.8", empty without) as (method, until) pairs."""
    if not isinstance(text, str) or not text.strip():
        return ()
    try:
        pairs = [part.rsplit("@", 1) for part in text.split(";") if part.strip()]
        return tuple((m.strip(), float(until)) for m, until in pairs)
    except ValueError:  # a pair without @, or an until that is no number
        raise EstimateError(f"method_schedule: expected method@until;...; got {text!r}") from None


def batch_cost(
    costs: BenchCosts,
    method: str,
    b: float,
    gpus: int,
    *,
    basis: str,
    replays: int | None = None,
    allreduce_s: float | None = None,
) -> BatchCost:
    """One mini-batch of `method` at per-GPU batch b on `gpus` GPUs (orchestrator.estimate.model's rules)."""
    world, comm = 1, 0.0
    if basis == "train_step":
        t_step, extra, used, world = costs.train_step(method, b, gpus, replays)
        if gpus > 1 and world != gpus:  # the step was benched on fewer ranks: add the communication
            measured = costs.allreduce(gpus, b) if allreduce_s is None else None
            if measured is not None:
                comm, extra, used = measured[0], extra or measured[1], used + "+allreduce"
            elif allreduce_s is not None:
                comm, used = allreduce_s, used + "+allreduce_s"
            else:
                used += PERFECT_SCALING  # nothing measured at or across several ranks: no communication counted
        comm *= weight_steps(method, replays)
    else:
        (t_step, extra), used = costs.lower_bound_step(method, b, replays), "lower_bound"
    loading = costs.data("train", b, gpus if basis == "train_step" else None)  # the bound: one device's costs
    d_train = 0.0
    if loading is not None:
        d_train, extra = data_cost(loading[0], t_step, overlapped=is_gpu_device(costs.device)), extra or loading[1]
    return BatchCost(t_step + d_train + comm, extra, used, world)


def recipe_cost(
    costs: BenchCosts,
    shares: Sequence[tuple[str, float]],
    b: float,
    gpus: int,
    *,
    basis: str,
    replays: int | None = None,
    allreduce_s: float | None = None,
) -> BatchCost:
    """The mean mini-batch of a run whose phases train `shares` of its iterations (`phase_shares`); the basis
    names each phase's share when there are several."""
    parts = [batch_cost(costs, m, b, gpus, basis=basis, replays=replays, allreduce_s=allreduce_s) for m, _ in shares]
    seconds = sum(share * part.seconds for (_, share), part in zip(shares, parts, strict=True))
    extrapolated = any(part.extrapolated for part in parts)
    if len(parts) == 1:
        return BatchCost(seconds, extrapolated, parts[0].basis, parts[0].world)
    bases = dict.fromkeys(part.basis for part in parts)
    if len(bases) == 1:  # one token (no spaces): the table's basis column stays one word
        used = f"{parts[0].basis}[" + ",".join(f"{m}={share:.0%}" for m, share in shares) + "]"
    else:
        used = ";".join(f"{m}={share:.0%}:{part.basis}" for (m, share), part in zip(shares, parts, strict=True))
    return BatchCost(seconds, extrapolated, used, parts[-1].world)


def recipe_notes(bases: Sequence[str]) -> list[str]:
    """format_estimate's footnotes for the derived bases that occur: what was not benched and what stands in."""
    notes = []
    if any("train_step(" in b for b in bases):
        notes.append(
            "train_step(M): the bench has no train_step rows of the cell's method; those of M, whose step makes the "
            "same passes (one attack pass, then the weight step: nfgsm, fgsm_rs, pgd1 ~ fast), are used"
        )
    if any(re.search(r"(^|[:;\[])\d+x", b) for b in bases):
        notes.append(
            "Nx...: free replays each mini-batch N times, one standard step each (forward + backward + optimizer "
            "step, and its all-reduce); the bench cannot time free (not a train_step), so N x the standard rows"
        )
    if any("%" in b for b in bases):
        notes.append("M=a%: a method_schedule's phase; each phase's step weighted by its share of the iterations")
    return notes
