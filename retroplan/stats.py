"""Intervals for the numbers we report: across seeds (Student t) or, with one seed, over the
test instances (Wilson score interval for a proportion).

Paired comparisons of a condition A against a baseline B evaluated on the same items
(seed, instance): `paired_bootstrap`, exact/stratified `mcnemar` and `mcnemar_mde` hold the
trained models fixed and treat the test instances as the random sample: they answer "do these
models differ on this distribution of instances", not "would retraining with fresh seeds give
the same ordering". The verdict of a study needs the second question, so its unit is the
training seed: `paired_t` over per-seed deltas, `tost` for equivalence, `seed_mde`, `holm`
across a study's comparisons, then `verdict`. Numpy and the standard library only (no scipy):
the binomial tail is summed exactly in integers, Student's t distribution is the closed form
for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4), quantiles are bisections.
"""

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
    # the bounds at 0/n and n/n are exactly 0 and 1 (in floats centre ± half can miss them by an ulp)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def rate_ci(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a rate across seeds: the 95% t-interval of `mean_ci`, clipped to
    [0, 1]. Clipping only removes values no rate can take, so it never changes whether the
    interval covers the true rate (its coverage is that of the t-interval); with 3 seeds the
    t-interval is wide and would otherwise print e.g. 0.254 [-0.250, 0.758]."""
    m, lo, hi = mean_ci(values)
    if m != m:
        return m, lo, hi
    return m, min(1.0, max(0.0, lo)), min(1.0, max(0.0, hi))


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


def mcnemar_mde(n: int, discordant: int = 0, alpha: float = 0.05) -> float:
    """The smallest |Δ accuracy| an exact two-sided McNemar test on n pairs can call
    significant (p < alpha), keeping the observed number of discordant pairs.

    Δ = (b10 − b01)/n with b10 + b01 discordant pairs. For an imbalance j = b10 − b01 the
    discordant count is max(discordant, j), plus one when its parity differs from j's (the
    split must be whole), and the test's p is `binom_sign_test(b01, b01 + b10)`. The answer is
    the least such j/n with p < alpha (nan when even j = n cannot reach it). Exact, with no
    power assumption: it is the boundary of what the test can see at all. With n = 100 and no
    discordant pair, 5 one-sided pairs give p = 2/32 = 0.0625 and 6 give 2/64 = 0.031: nothing
    below 0.06 can be detected (a normal approximation with the discordant share floored at 1/n
    said 0.028)."""
    if n <= 0 or not 0 <= discordant <= n:
        raise ValueError(f"need n > 0 and 0 <= discordant <= n, got n={n}, discordant={discordant}")
    for j in range(1, n + 1):
        total = max(discordant, j)
        total += (total - j) % 2
        if total > n:
            break
        if binom_sign_test((total - j) // 2, total) < alpha:
            return j / n
    return float("nan")


# --- the training seed as the unit: Student's t, paired t, TOST, Holm -----------------------


def t_abs_cdf(t, df: int):
    """P(|T| <= |t|) for Student's T with integer df >= 1, in closed form (Abramowitz & Stegun
    26.7.3 and 26.7.4), with θ = atan(|t|/√df), c = cos θ, s = sin θ:
        df odd:  (2/π)·(θ + s·(c + (2/3)c³ + (2·4)/(3·5)c⁵ + … + c^(df−2) term))   (df = 1: 2θ/π)
        df even: s·(1 + (1/2)c² + (1·3)/(2·4)c⁴ + … + c^(df−2) term)
    (df = 2: |t|/√(2 + t²)). Works elementwise on numpy arrays; t = ±inf gives 1."""
    if int(df) != df or df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    df = int(df)
    theta = np.arctan(np.abs(np.asarray(t, dtype=float)) / math.sqrt(df))
    c, s = np.cos(theta), np.sin(theta)
    if df % 2:
        series, term = np.zeros_like(c), c.copy()
        for k in range(1, (df - 1) // 2 + 1):  # c, (2/3)c³, ... up to c^(df−2)
            series = series + term
            term = term * c * c * (2 * k) / (2 * k + 1)
        return 2.0 / math.pi * (theta + s * series)
    series, term = np.zeros_like(c), np.ones_like(c)
    for k in range(1, df // 2 + 1):  # 1, (1/2)c², ... up to c^(df−2)
        series = series + term
        term = term * c * c * (2 * k - 1) / (2 * k)
    return s * series


def t_sf(x, df: int):
    """Upper tail P(T > x) of Student's t with integer df (elementwise)."""
    x = np.asarray(x, dtype=float)
    return 0.5 * (1.0 - np.sign(x) * t_abs_cdf(x, df))


def t_ppf(q: float, df: int) -> float:
    """Student's t quantile: the x with P(T <= x) = q, by bisection of θ = atan(x/√df) on
    (0, π/2) (100 halvings: exact to the double)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must lie in (0, 1), got {q}")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    target = 2.0 * q - 1.0  # P(|T| <= x)
    lo, hi = 0.0, math.pi / 2
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(t_abs_cdf(math.sqrt(df) * math.tan(mid), df)) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan(0.5 * (lo + hi))


def _seed_moments(deltas):
    d = np.asarray(deltas, dtype=float)
    s = d.shape[-1]
    if s < 2:
        raise ValueError(f"a test over seeds needs at least 2 per-seed deltas, got {s}")
    mean = d.mean(axis=-1)
    sd = d.std(axis=-1, ddof=1)
    return mean, sd, sd / math.sqrt(s), s - 1


def _scalar(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x


def paired_t(deltas, alpha: float = 0.05) -> dict:
    """Paired t-test of mean(Δ) = 0 over per-seed deltas Δ_s = acc(variant, s) − acc(baseline,
    s): t = mean/(sd/√S), df = S − 1, two-sided p = 1 − P(|T| <= |t|), and the (1 − alpha)
    t-interval of the mean. The unit is the training seed: retraining noise is in sd, which a
    test over pooled instances leaves out. With sd = 0 the deltas are all equal: p = 0 if they
    are not 0, else 1. Vectorised over leading axes (deltas shaped (..., S))."""
    mean, sd, se, df = _seed_moments(deltas)
    with np.errstate(divide="ignore", invalid="ignore"):
        equal = np.where(mean == 0, 0.0, np.sign(mean) * np.inf)  # sd = 0: all deltas equal
        t = np.where(se > 0, mean / np.where(se > 0, se, 1.0), equal)
    p = 1.0 - t_abs_cdf(t, df)
    half = t_ppf(1.0 - alpha / 2.0, df) * se
    return {"mean": _scalar(mean), "sd": _scalar(sd), "t": _scalar(t), "df": df, "p": _scalar(p),
            "ci": (_scalar(mean - half), _scalar(mean + half)), "level": 1.0 - alpha}


def tost(deltas, margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided t-tests (Schuirmann) over per-seed deltas for equivalence within ±margin:
    H0a mean <= −margin (p_low = P(T > (mean + margin)/se)) and H0b mean >= +margin (p_high =
    P(T < (mean − margin)/se)), df = S − 1; p = max(p_low, p_high). p < alpha is the same as the
    (1 − 2·alpha) t-interval of the mean lying inside (−margin, +margin). Vectorised like
    `paired_t`."""
    if not margin > 0:
        raise ValueError(f"the equivalence margin must be positive, got {margin}")
    mean, sd, se, df = _seed_moments(deltas)
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.where(se > 0, se, 1.0)
        low = np.where(se > 0, (mean + margin) / safe, np.where(mean > -margin, np.inf, -np.inf))
        high = np.where(se > 0, (margin - mean) / safe, np.where(mean < margin, np.inf, -np.inf))
    p = np.maximum(t_sf(low, df), t_sf(high, df))
    return {"p": _scalar(p), "margin": margin}


def seed_mde(sd: float, seeds: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest mean per-seed Δ a two-sided level-alpha paired t over `seeds` seeds detects
    with the given power, at per-seed delta SD `sd`:
        MDE = (t_{1−alpha/2, S−1} + t_{power, S−1}) · sd / √S
    (the usual t approximation to the noncentral-t power; slightly optimistic at small S)."""
    if seeds < 2:
        return float("nan")
    return (t_ppf(1.0 - alpha / 2.0, seeds - 1) + t_ppf(power, seeds - 1)) * sd / math.sqrt(seeds)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment: sort the m finite p-values ascending, adjusted p_(i) =
    max_{j<=i} min(1, (m − j + 1)·p_(j)); returned in the input order. NaN entries stay NaN and
    do not count in m. Controls the family-wise error rate under any dependence."""
    p = [float(x) for x in pvalues]
    finite = sorted((v, i) for i, v in enumerate(p) if v == v)
    m = len(finite)
    out = [float("nan")] * len(p)
    running = 0.0
    for rank, (v, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * v))
        out[i] = running
    return out


def verdict(mean: float, p_difference: float, p_equivalence: float, margin: float,
            alpha: float = 0.05) -> str:
    """The verdict words, from the seed-level (Holm-adjusted) p-values: "helps" / "hurts" when
    the paired t rejects Δ = 0 (p_difference < alpha; the sign of the mean says which), else
    "equivalent within ±margin" when TOST rejects |Δ| >= margin, else "inconclusive" (NaNs
    included)."""
    if p_difference < alpha and mean == mean and mean != 0:
        return "helps" if mean > 0 else "hurts"
    if p_equivalence < alpha:
        return f"equivalent within ±{margin:g}"
    return "inconclusive"
