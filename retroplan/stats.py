"""Intervals for the numbers we report: across seeds (Student t) or, with one seed, over the
test instances (Wilson score interval for a proportion).

Paired comparisons of a condition A against a baseline B evaluated on the same items
(seed, instance): `paired_bootstrap`, exact/stratified `mcnemar`, `minimum_detectable_effect`
and `verdict`. Numpy and the standard library only (no scipy): the binomial tail is summed
exactly in integers, the normal quantile is the bisection inverse of `math.erfc`.

These tests hold the trained models fixed and treat the test instances as the random sample:
they answer "do these models differ on this distribution of instances", not "would retraining
with fresh seeds give the same ordering" (for that, compare per-seed means across seeds)."""

from __future__ import annotations

import math

import numpy as np

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


# --- paired comparisons -------------------------------------------------------------------


def norm_cdf(x: float) -> float:
    """Standard normal CDF, Φ(x) = erfc(-x/√2)/2 (accurate in both tails)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def norm_ppf(q: float) -> float:
    """Standard normal quantile Φ⁻¹(q), by bisection of `norm_cdf` on [-40, 40].

    100 halvings shrink the bracket below the spacing of doubles, so the result is as exact
    as `math.erfc` (≈1e-15 relative); a few hundred microseconds, which is fine here."""
    if not 0.0 < q < 1.0:
        if q == 0.0:
            return -math.inf
        if q == 1.0:
            return math.inf
        raise ValueError(f"quantile level must lie in [0, 1], got {q}")
    lo, hi = -40.0, 40.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if norm_cdf(mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def binom_sign_test(k: int, n: int) -> float:
    """Exact two-sided sign test: 2·P(X ≤ min(k, n-k)) for X ~ Bin(n, 1/2), capped at 1.

    The tail is an exact integer sum Σ_{i≤m} C(n, i) divided by 2ⁿ (Python's int/int true
    division rounds correctly, so this stays exact for any n). With p = 1/2 the distribution
    is symmetric, so doubling the smaller tail equals the 'sum of outcomes no more likely
    than the observed one' definition."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    m = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(m + 1))
    return min(1.0, 2 * tail / 2**n)


def _paired_arrays(a, b, strata):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D of the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("a and b are empty")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite")
    if strata is None:
        s = np.zeros(a.size, dtype=int)
    else:
        s = np.asarray(strata)
        if s.shape != a.shape:
            raise ValueError(f"strata must match a in shape, got {s.shape} and {a.shape}")
    return a, b, s


def _binary(x, name):
    if not np.isin(x, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold only 0/1 (correct/incorrect)")


def paired_bootstrap(a, b, strata=None, resamples: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Paired bootstrap of Δ = mean(a) − mean(b) over items (e.g. (seed, instance) pairs).

    a[i], b[i] are the scores (0/1 correctness) of condition A and baseline B on item i. Each
    resample draws items with replacement, keeping a[i] and b[i] together; with `strata` (e.g.
    the training seed of each item) it draws within each stratum, so every stratum keeps its
    count and the resampled Δ = Σ_s Σ_{i∈s} d*_i / n with d = a − b.

    Implementation: drawing n_s items with replacement from stratum s only matters through how
    often each distinct value of d appears, which is Multinomial(n_s, observed shares); we draw
    those counts directly (identical in distribution to drawing indices, O(resamples) memory).

    Returned interval: the equal-tailed percentile interval (np.quantile, linear interpolation)
    at `level`. Returned p: the two-sided percentile-bootstrap p-value
        p = min(1, 2·(1 + min(#{Δ* ≤ 0}, #{Δ* ≥ 0})) / (resamples + 1)),
    i.e. doubled share of resampled deltas on the far side of 0 (ties at 0 count on both
    sides; the +1 keeps p > 0 and is the usual Monte-Carlo correction). It is the smallest α at
    which the equal-tailed (1−α) percentile interval excludes 0, so it agrees with the
    interval up to interpolation. Identical a and b give Δ* ≡ 0 and p = 1. Deterministic
    given `seed` (numpy default_rng)."""
    a, b, s = _paired_arrays(a, b, strata)
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    rng = np.random.default_rng(seed)
    d = a - b
    n = d.size
    total = np.zeros(resamples)
    labels = np.unique(s)
    for label in labels:
        ds = d[s == label]
        values, counts = np.unique(ds, return_counts=True)
        draws = rng.multinomial(ds.size, counts / ds.size, size=resamples)
        total += draws @ values
    deltas = total / n
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    far = min(int(np.sum(deltas <= 0)), int(np.sum(deltas >= 0)))
    p = min(1.0, 2.0 * (1 + far) / (resamples + 1))
    return {
        "delta": float(d.mean()),
        "ci": (float(low), float(high)),
        "level": level,
        "p": p,
        "n": int(n),
        "strata": int(labels.size) if strata is not None else None,
        "resamples": int(resamples),
        "seed": seed,
        "method": "paired percentile bootstrap" + (" within strata" if strata is not None else ""),
    }


def mcnemar(a, b, strata=None) -> dict:
    """Exact McNemar test of A against B on paired 0/1 outcomes.

    b01 = #{a=0, b=1} (only B right), b10 = #{a=1, b=0} (only A right); concordant pairs carry
    no information about the difference. Δ = mean(a) − mean(b) = (b10 − b01)/n. Under
    H0 (A and B exchangeable on every pair), each discordant pair favours A with probability
    1/2 independently, so b10 | (b01 + b10) ~ Bin(b01 + b10, 1/2) and
        p = min(1, 2·P(X ≤ min(b01, b10))),  X ~ Bin(b01 + b10, 1/2)     (exact, two-sided).

    Several strata (seeds): the discordant pairs are pooled, i.e. the exact conditional test
    on B10 = Σ_s b10_s given D = Σ_s (b01_s + b10_s). Justification: McNemar is the
    Mantel–Haenszel test with every pair as its own stratum, so grouping pairs into seeds adds
    no nuisance parameter; under H0 each discordant pair is a fair coin whatever its stratum,
    the sum of independent Bin(D_s, 1/2) is Bin(D, 1/2), and the test stays exact. (Pooling
    the 2×2 *tables* of different seeds would not be valid in general; pooling the pairs is.)
    Per-stratum counts and exact p-values are returned under "per_stratum" for inspection.

    "chi2" is the uncorrected McNemar statistic (b01 − b10)²/(b01 + b10), as in Agresti; the
    p-value reported is the exact one, not the χ² approximation."""
    a, b, s = _paired_arrays(a, b, strata)
    _binary(a, "a")
    _binary(b, "b")
    only_b = (a == 0) & (b == 1)
    only_a = (a == 1) & (b == 0)
    b01, b10 = int(only_b.sum()), int(only_a.sum())
    disc = b01 + b10
    out = {
        "b01": b01,
        "b10": b10,
        "n_discordant": disc,
        "n": int(a.size),
        "delta": (b10 - b01) / a.size,
        "chi2": (b01 - b10) ** 2 / disc if disc else 0.0,
        "p": binom_sign_test(b10, disc),
        "method": "exact McNemar (binomial sign test on discordant pairs)",
    }
    if strata is not None:
        per = {}
        for label in np.unique(s):
            m = s == label
            s01, s10 = int(only_b[m].sum()), int(only_a[m].sum())
            key = label.item() if hasattr(label, "item") else label
            per[key] = {"b01": s01, "b10": s10, "n": int(m.sum()),
                        "p": binom_sign_test(s10, s01 + s10)}
        out["per_stratum"] = per
        out["method"] = ("stratified exact McNemar (discordant pairs pooled over strata; "
                         "binomial sign test)")
    return out


def minimum_detectable_effect(n: int, p: float, alpha: float = 0.05, power: float = 0.8,
                              paired: bool = True) -> float:
    """Smallest |Δ accuracy| a two-sided level-α test on n items detects with the given power
    (normal approximation, z_q = Φ⁻¹(q)):

      paired=True  (McNemar / paired bootstrap; p = expected share of discordant pairs):
          MDE = (z_{1−α/2} + z_{power}) · √(p / n)
        from Var(a_i − b_i) = p_disc − Δ² ≈ p_disc for small Δ (slightly conservative);
      paired=False (two independent groups of n each; p = baseline accuracy):
          MDE = (z_{1−α/2} + z_{power}) · √(2·p·(1 − p) / n).

    Both shrink like 1/√n. With α = 0.05 and power 0.8, z_{0.975} + z_{0.8} ≈ 2.8016."""
    if n <= 0:
        raise ValueError("n must be positive")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError("alpha and power must lie in (0, 1)")
    z = norm_ppf(1.0 - alpha / 2.0) + norm_ppf(power)
    var = p if paired else 2.0 * p * (1.0 - p)
    return z * math.sqrt(var / n)


def verdict(delta_ci, p: float, alpha: float = 0.05) -> str:
    """"helps" iff p < alpha and the whole interval lies above 0; "hurts" iff p < alpha and it
    lies below 0; otherwise (including NaNs, or p and interval disagreeing)
    "no detectable difference at this n"."""
    low, high = (float(x) for x in delta_ci)
    if p < alpha and low > 0 and high > 0:
        return "helps"
    if p < alpha and low < 0 and high < 0:
        return "hurts"
    return "no detectable difference at this n"
