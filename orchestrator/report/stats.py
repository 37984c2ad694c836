"""The statistics a comparison of recipes rests on: medians and their spread over replicates, bootstrap intervals
(fixed RNG seed: the same CSVs give the same report), ratios of medians paired by seed where both recipes have the
same seeds, binomial standard errors, and the rule that names a winner only when the interval excludes a tie.

A run that never reached the target has time +inf: it sorts last, a median over it is inf when it is the middle
one, and intervals are read off sorted values (never interpolated), so inf stays inf and never becomes NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.report.labels import DASH

BOOTSTRAP_SEED = 0  # the resampling RNG's seed (numpy default_rng)
BOOTSTRAP_DRAWS = 2000
LEVEL = 0.95
BOOTSTRAP_FROM = 5  # n >= this: a bootstrap interval of the median; fewer: the min-max range


def median(values: Sequence[float]) -> float:
    """The median (mean of the two middle values for even n; inf when a middle value is inf)."""
    v = sorted(values)
    if not v:
        return math.nan
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def quantile_sorted(values: Sequence[float], q: float) -> float:
    """The q-quantile as an order statistic: the value at rank ceil(q n) (1-based) of the sorted values."""
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    kind: str  # "min-max" | "bootstrap 95 %" | "" (no interval: one value)

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def _rng() -> np.random.Generator:
    return np.random.default_rng(BOOTSTRAP_SEED)


def bootstrap_median(values: Sequence[float], draws: int = BOOTSTRAP_DRAWS) -> Interval:
    """Percentile bootstrap interval (LEVEL) of the median: `draws` resamples with replacement, fixed seed."""
    x = np.asarray(values, dtype=float)
    idx = _rng().integers(0, len(x), size=(draws, len(x)))
    medians = [median(list(row)) for row in x[idx]]
    tail = (1 - LEVEL) / 2
    return Interval(quantile_sorted(medians, tail), quantile_sorted(medians, 1 - tail), "bootstrap 95 %")


def spread(values: Sequence[float]) -> Interval:
    """Min-max for n < BOOTSTRAP_FROM, else the bootstrap interval of the median."""
    if len(values) < 2:
        return Interval(values[0], values[0], "") if values else Interval(math.nan, math.nan, "")
    if len(values) < BOOTSTRAP_FROM:
        return Interval(min(values), max(values), "min-max")
    return bootstrap_median(values)


def _ratio(a: float, b: float) -> float:
    if b == 0 or math.isinf(b):
        return math.nan if math.isinf(a) or b == 0 else 0.0
    return a / b


@dataclass(frozen=True)
class Ratio:
    value: float  # median(recipe) / median(baseline)
    interval: Interval
    paired: bool


def ratio_of_medians(
    recipe: Mapping[int, float], baseline: Mapping[int, float], draws: int = BOOTSTRAP_DRAWS
) -> Ratio | None:
    """median(recipe) / median(baseline) with a bootstrap interval over seeds (keys): paired (one resample of the
    seeds for both) when both have the same seeds, else each resampled on its own. None with fewer than 2 runs on
    either side: one seed says nothing about noise."""
    if len(recipe) < 2 or len(baseline) < 2:
        return None
    value = _ratio(median(list(recipe.values())), median(list(baseline.values())))
    rng = _rng()
    paired = set(recipe) == set(baseline)
    ratios = []
    if paired:
        seeds = sorted(recipe)
        a, b = np.array([recipe[s] for s in seeds]), np.array([baseline[s] for s in seeds])
        for idx in rng.integers(0, len(seeds), size=(draws, len(seeds))):
            ratios.append(_ratio(median(list(a[idx])), median(list(b[idx]))))
    else:
        a, b = np.array(list(recipe.values())), np.array(list(baseline.values()))
        ia = rng.integers(0, len(a), size=(draws, len(a)))
        ib = rng.integers(0, len(b), size=(draws, len(b)))
        ratios = [_ratio(median(list(a[i])), median(list(b[j]))) for i, j in zip(ia, ib, strict=True)]
    finite = [r for r in ratios if not math.isnan(r)]
    if not finite:
        return Ratio(value, Interval(math.nan, math.nan, ""), paired)
    tail = (1 - LEVEL) / 2
    return Ratio(value, Interval(quantile_sorted(finite, tail), quantile_sorted(finite, 1 - tail), "bootstrap 95 %"),
                 paired)  # fmt: skip


def verdict(ratio: Ratio | None, better: str = "faster", worse: str = "slower") -> str:
    """`better` only when the whole interval is below 1, `worse` only when above; else a tie within noise."""
    if ratio is None:
        return "no interval (fewer than 2 seeds)"
    iv = ratio.interval
    if math.isnan(iv.low) or math.isnan(iv.high) or iv.contains(1.0):
        return "tie within noise"
    return better if iv.high < 1 else worse


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent images."""
    return math.sqrt(p * (1 - p) / n) if n > 0 else math.nan


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value)."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def accuracy_text(value: float | None, n: int | None) -> str:
    """An accuracy in percent with its binomial SE and n ("67.6 ± 2.1, n=500"); without n the value alone."""
    if value is None:
        return DASH
    return f"{value * 100:.1f}" + (f" ± {binomial_se(value, n) * 100:.1f}, n={n}" if n else "")
