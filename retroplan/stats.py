"""Intervals for the numbers we report: across seeds (Student t) or, with one seed, over the
test instances (Wilson score interval for a proportion)."""

from __future__ import annotations

import math

# two-sided 95% critical values of Student's t by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t95(df: int) -> float:
    if df in _T95:
        return _T95[df]
    smaller = [d for d in _T95 if d <= df]
    return _T95[max(smaller)] if df <= 30 else 1.96


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): a 95% t-interval of the mean across seeds (collapses for one)."""
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan"), float("nan")
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, m, m
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    half = t95(len(values) - 1) * sd / math.sqrt(len(values))
    return m, m - half, m + half


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
