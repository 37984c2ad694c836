"""The gradient-masking flag (‡): PGD's accuracy overstates a model's robustness when AutoAttack, on the same
examples, finds it much less robust. The rule (one owner; the time-to-target and robustness tables use it):

    flag when gap > threshold  and  gap > 2 SE,   gap = PGD accuracy - AutoAttack accuracy (points),
    SE = sqrt(g (1 - g) / n) with g the gap as a fraction and n the evaluated examples

SE is the standard error of the mean per-example difference when the examples AutoAttack leaves robust are a
subset of those PGD leaves robust (the stronger attack breaks everything the weaker one does, and then some): the
difference is then 1 on a fraction g of the examples, 0 elsewhere. At n = 32 one image is 3.1 points, over a
3-point threshold but within 2 SE (6.2 points); at n = 1000 the same 3.1 points is over 2 SE (1.1 points). Without
n (an older robustness.csv) only the threshold is applied. Torch-free, no pandas.
"""

from __future__ import annotations

import math

SE_FACTOR = 2.0  # the gap must exceed this many standard errors of the difference


def se_points(gap_points: float, n: int) -> float:
    """Standard error, in points, of a PGD - AutoAttack gap of `gap_points` measured on n examples."""
    g = min(max(gap_points / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(g * (1.0 - g) / n)


def masked(gap_points: float | None, n: int | None, threshold: float) -> bool:
    """The flag: the gap exceeds the threshold and, when n is known, SE_FACTOR standard errors."""
    if gap_points is None or gap_points <= threshold:
        return False
    return n is None or n <= 0 or gap_points > SE_FACTOR * se_points(gap_points, n)


def rule_text(threshold: float) -> str:
    """The rule in words, for the tables' footnotes."""
    return (f"‡: PGD − AutoAttack over {threshold:g} points and over {SE_FACTOR:g} SE of the difference at that n "
            "(SE = sqrt(g (1 − g) / n), g the gap): PGD overstates this model's robustness (gradient masking), "
            "trust the AutoAttack number")  # fmt: skip
