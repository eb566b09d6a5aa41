"""Statistics for "A beats B": textbook and hand-computed values."""

import math

import numpy as np
import pytest

from retroplan.stats import (
    binom_sign_test,
    holm,
    mcnemar,
    mcnemar_mde,
    mean_ci,
    norm_cdf,
    norm_ppf,
    paired_bootstrap,
    paired_t,
    rate_ci,
    seed_mde,
    t_abs_cdf,
    t_ppf,
    t_sf,
    tost,
    verdict,
    wilson,
)


def pairs(n11=0, n10=0, n01=0, n00=0):
    """Paired 0/1 arrays (a, b) from the 2x2 table: n10 = A right only, n01 = B right only."""
    a = [1] * n11 + [1] * n10 + [0] * n01 + [0] * n00
    b = [1] * n11 + [0] * n10 + [1] * n01 + [0] * n00
    return np.array(a), np.array(b)


# --- existing intervals ----------------------------------------------------------------------

def test_wilson_known_values():
    # 0/10: (0, 0.2775); 5/10: (0.2366, 0.7634) -- standard tables of the Wilson score interval
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27754, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    lo, hi = wilson(10, 10)
    assert lo == pytest.approx(1 - 0.27754, abs=1e-4) and hi == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_mean_ci_t_interval():
    # 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5), t_{0.975,4} = 2.776 -> 3 -/+ 1.9629
    m, lo, hi = mean_ci([1, 2, 3, 4, 5])
    assert m == 3
    assert lo == pytest.approx(3 - 2.776 * math.sqrt(0.5), abs=1e-9)
    assert hi == pytest.approx(4.9629, abs=1e-3)
    assert mean_ci([0.7]) == (0.7, 0.7, 0.7)
    assert mean_ci([None, 2.0, 4.0])[0] == 3.0


# --- distributions ---------------------------------------------------------------------------

@pytest.mark.parametrize("q, z", [(0.5, 0.0), (0.975, 1.959963984540054), (0.8, 0.8416212335729143),
                                  (0.995, 2.5758293035489004), (0.025, -1.959963984540054),
                                  (1e-10, -6.361340902404056)])
def test_norm_ppf_known_quantiles(q, z):
    assert norm_ppf(q) == pytest.approx(z, abs=1e-12)
    assert norm_cdf(norm_ppf(q)) == pytest.approx(q, rel=1e-12)


def test_norm_ppf_edges():
    assert norm_ppf(0.0) == -math.inf and norm_ppf(1.0) == math.inf
    with pytest.raises(ValueError):
        norm_ppf(1.5)


def test_sign_test_hand_computed():
    # 1 vs 9: 2 * P(X <= 1 | Bin(10, 1/2)) = 2 * 11/1024
    assert binom_sign_test(9, 10) == pytest.approx(22 / 1024, rel=1e-15)
    assert binom_sign_test(1, 10) == binom_sign_test(9, 10)
    # 0 vs 5: 2/32; 5 vs 5 and 0 vs 0: nothing to see
    assert binom_sign_test(0, 5) == pytest.approx(2 / 32)
    assert binom_sign_test(5, 10) == 1.0 and binom_sign_test(0, 0) == 1.0
    # 2 vs 8: 2 * (1 + 10 + 45)/1024
    assert binom_sign_test(2, 10) == pytest.approx(112 / 1024)


# --- McNemar ---------------------------------------------------------------------------------

def test_mcnemar_small_exact():
    a, b = pairs(n11=20, n10=9, n01=1, n00=5)
    r = mcnemar(a, b)
    assert (r["b01"], r["b10"], r["n_discordant"], r["n"]) == (1, 9, 10, 35)
    assert r["p"] == pytest.approx(0.021484375, rel=1e-12)
    assert r["delta"] == pytest.approx((9 - 1) / 35)
    assert r["delta"] == pytest.approx(a.mean() - b.mean())
    # swapping A and B flips the sign, not the p-value
    s = mcnemar(b, a)
    assert (s["b01"], s["b10"]) == (9, 1) and s["delta"] == pytest.approx(-r["delta"])
    assert s["p"] == r["p"]


def test_mcnemar_agresti_presidential_approval():
    # Agresti, Categorical Data Analysis: approval at two surveys 794 / 150 / 86 / 570.
    # First survey = A, second = B; 150 approve->disapprove (A only), 86 the reverse.
    a, b = pairs(n11=794, n10=150, n01=86, n00=570)
    r = mcnemar(a, b)
    assert (r["b10"], r["b01"], r["n"]) == (150, 86, 1600)
    assert r["chi2"] == pytest.approx(17.36, abs=0.005)  # (150-86)^2 / 236 = 17.356
    assert r["delta"] == pytest.approx(64 / 1600)  # 0.59 - 0.55 = 0.04
    # exact two-sided p = 2 * sum_{k<=86} C(236,k) / 2^236 (checked independently by lgamma sums)
    assert r["p"] == pytest.approx(3.7159361395714e-05, rel=1e-9)
    # it lies between the uncorrected and continuity-corrected chi-square p-values
    p_chi = math.erfc(math.sqrt(17.356 / 2))
    p_cc = math.erfc(math.sqrt((64 - 1) ** 2 / 236 / 2))
    assert p_chi < r["p"] < p_cc


def test_mcnemar_no_discordant_pairs():
    a, b = pairs(n11=4, n00=3)
    r = mcnemar(a, b)
    assert r["p"] == 1.0 and r["delta"] == 0.0 and r["chi2"] == 0.0


def test_mcnemar_stratified_pools_discordant_pairs():
    # seed 0: b01=1, b10=3 ; seed 1: b01=0, b10=5  -> pooled 1 vs 8: 2 * (1 + 9) / 512
    a0, b0 = pairs(n11=6, n10=3, n01=1, n00=2)
    a1, b1 = pairs(n11=2, n10=5, n01=0, n00=1)
    a, b = np.concatenate([a0, a1]), np.concatenate([b0, b1])
    seeds = np.array([0] * a0.size + [1] * a1.size)
    r = mcnemar(a, b, strata=seeds)
    assert (r["b01"], r["b10"]) == (1, 8)
    assert r["p"] == pytest.approx(20 / 512, rel=1e-12)
    assert r["delta"] == pytest.approx(7 / 20)
    assert r["per_stratum"][0] == {"b01": 1, "b10": 3, "n": 12, "p": pytest.approx(10 / 16)}
    assert r["per_stratum"][1] == {"b01": 0, "b10": 5, "n": 8, "p": pytest.approx(2 / 32)}
    assert "stratified" in r["method"]


def test_mcnemar_rejects_non_binary_and_mismatch():
    with pytest.raises(ValueError):
        mcnemar([0, 1, 2], [0, 1, 1])
    with pytest.raises(ValueError):
        mcnemar([0, 1], [0, 1, 1])


# --- paired bootstrap ------------------------------------------------------------------------

def test_bootstrap_identical_gives_zero_and_p_one():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 200)
    r = paired_bootstrap(a, a.copy(), resamples=2000)
    assert r["delta"] == 0.0 and r["ci"] == (0.0, 0.0) and r["p"] == 1.0
    assert r["n"] == 200 and r["seed"] == 0


def test_bootstrap_strongly_better_a():
    a, b = pairs(n11=100, n10=60, n01=5, n00=35)
    r = paired_bootstrap(a, b, resamples=4000, seed=3)
    assert r["delta"] == pytest.approx(55 / 200)
    assert r["p"] < 0.01
    assert 0 < r["ci"][0] < r["delta"] < r["ci"][1]
    # normal-theory check: sd of d = sqrt(p_disc - delta^2), half-width ~ 1.96 sd / sqrt(n)
    half = 1.96 * math.sqrt(65 / 200 - (55 / 200) ** 2) / math.sqrt(200)
    assert (r["ci"][1] - r["ci"][0]) / 2 == pytest.approx(half, rel=0.1)
    s = paired_bootstrap(b, a, resamples=4000, seed=3)
    assert s["ci"][1] < 0 and s["p"] < 0.01


def test_bootstrap_balanced_discordance_is_not_significant():
    a, b = pairs(n11=50, n10=20, n01=20, n00=10)
    r = paired_bootstrap(a, b, resamples=4000, seed=0)
    assert r["delta"] == 0.0 and r["ci"][0] < 0 < r["ci"][1] and r["p"] > 0.5


def test_bootstrap_deterministic_by_seed():
    a, b = pairs(n11=30, n10=12, n01=7, n00=11)
    r1 = paired_bootstrap(a, b, resamples=1000, seed=7)
    r2 = paired_bootstrap(a, b, resamples=1000, seed=7)
    r3 = paired_bootstrap(a, b, resamples=1000, seed=8)
    assert r1 == r2
    assert r1["ci"] != r3["ci"]


def test_bootstrap_stratified_keeps_stratum_counts():
    # stratum 0: 30 items where only A is right; stratum 1: 10 where only B is right.
    # Within-strata resampling keeps 30 and 10, so every resampled delta is (30 - 10) / 40.
    a = np.array([1] * 30 + [0] * 10)
    b = np.array([0] * 30 + [1] * 10)
    seeds = np.array([0] * 30 + [1] * 10)
    r = paired_bootstrap(a, b, strata=seeds, resamples=500)
    assert r["ci"] == (pytest.approx(0.5), pytest.approx(0.5))
    assert r["strata"] == 2 and r["p"] == pytest.approx(2 / 501)
    # unstratified, the mix of the two kinds varies between resamples
    u = paired_bootstrap(a, b, resamples=500)
    assert u["ci"][1] - u["ci"][0] > 0.2


def test_bootstrap_matches_index_resampling_in_distribution():
    # multinomial-count shortcut vs plain index resampling: same mean and sd of deltas
    a, b = pairs(n11=40, n10=15, n01=8, n00=17)
    d = a - b
    rng = np.random.default_rng(0)
    idx = rng.integers(0, d.size, size=(20000, d.size))
    plain = d[idx].mean(axis=1)
    r = paired_bootstrap(a, b, resamples=20000, seed=1)
    lo, hi = np.quantile(plain, [0.025, 0.975])
    assert r["ci"][0] == pytest.approx(lo, abs=0.0126)
    assert r["ci"][1] == pytest.approx(hi, abs=0.0126)


# --- rates inside [0, 1] -----------------------------------------------------------------------

def test_rate_intervals_stay_inside_the_unit_interval():
    # the path-star study's lookahead seeds: the t-interval is [-0.250, 0.758]; a rate's is clipped
    m, lo, hi = mean_ci([0.474, 0.214, 0.074])
    assert lo == pytest.approx(-0.250, abs=1e-3)
    assert rate_ci([0.474, 0.214, 0.074]) == (pytest.approx(0.254), 0.0, pytest.approx(0.758, abs=1e-3))
    assert rate_ci([0.99, 0.95, 1.0])[2] == 1.0
    rng = np.random.default_rng(0)
    for _ in range(2000):
        values = list(rng.beta(0.3, 0.3, size=int(rng.integers(1, 6))))
        m, lo, hi = rate_ci(values)
        assert 0.0 <= lo <= m <= hi <= 1.0
    for n in (1, 7, 100):
        for k in range(n + 1):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0


# --- Student's t, scipy-free ---------------------------------------------------------------------

@pytest.mark.parametrize("q, df, x", [(0.975, 1, 12.706204736174696), (0.975, 2, 4.302652729749464),
                                      (0.95, 2, 2.919985580353724), (0.8, 2, 1.0606601717798212),
                                      (0.975, 4, 2.7764451051977987), (0.95, 4, 2.1318467863266495),
                                      (0.975, 30, 2.0422724563012373), (0.975, 200, 1.9718962236339090)])
def test_t_quantiles_match_the_tables(q, df, x):
    # x: Student's t quantiles to 16 digits, from mpmath's regularized incomplete beta (30 digits)
    assert t_ppf(q, df) == pytest.approx(x, rel=1e-9)
    assert t_ppf(1 - q, df) == pytest.approx(-x, rel=1e-9)
    assert float(t_sf(x, df)) == pytest.approx(1 - q, rel=1e-7)


def test_t_distribution_closed_forms():
    for t in (0.0, 0.3, 1.0, 2.5, 40.0):
        assert float(t_abs_cdf(t, 1)) == pytest.approx(2 / math.pi * math.atan(t), abs=1e-15)  # Cauchy
        assert float(t_abs_cdf(t, 2)) == pytest.approx(t / math.sqrt(2 + t * t), abs=1e-15)
        # df = 4: sin θ (1 + cos²θ / 2) with tan θ = t / 2
        assert float(t_abs_cdf(t, 4)) == pytest.approx(
            t / math.sqrt(t * t + 4) * (1 + 0.5 * 4 / (t * t + 4)), abs=1e-15)
    assert float(t_abs_cdf(math.inf, 3)) == 1.0 and float(t_abs_cdf(-1.0, 3)) == float(t_abs_cdf(1.0, 3))
    # large df tends to the normal
    assert float(t_sf(1.959963984540054, 400)) == pytest.approx(0.025, abs=5e-4)
    with pytest.raises(ValueError):
        t_abs_cdf(1.0, 0)


def test_paired_t_on_known_deltas():
    # the lookahead seeds: mean -0.262, sd^2 = (0.21^2 + 0.016^2 + 0.194^2) / 2
    r = paired_t([-0.052, -0.278, -0.456])
    sd = math.sqrt((0.21 ** 2 + 0.016 ** 2 + 0.194 ** 2) / 2)
    t = -0.262 / (sd / math.sqrt(3))
    assert r["mean"] == pytest.approx(-0.262) and r["sd"] == pytest.approx(sd) and r["df"] == 2
    assert r["t"] == pytest.approx(t)
    assert r["p"] == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-12)  # df 2 closed form
    assert r["p"] == pytest.approx(0.154, abs=5e-4)                             # as the review found
    assert r["ci"][0] == pytest.approx(-0.765, abs=1e-3) and r["ci"][1] == pytest.approx(0.241, abs=1e-3)
    # 1..5: t = 3 / sqrt(0.5); df 4; interval 3 -/+ t_{0.975,4} sqrt(0.5)
    r = paired_t([1, 2, 3, 4, 5])
    t = 3 / math.sqrt(0.5)
    assert r["p"] == pytest.approx(1 - t / math.sqrt(t * t + 4) * (1 + 2 / (t * t + 4)), rel=1e-12)
    assert r["ci"][1] == pytest.approx(3 + 2.7764451051977987 * math.sqrt(0.5), rel=1e-12)
    # equal deltas: no spread, p = 0 unless they are 0
    assert paired_t([0.4, 0.4, 0.4])["p"] == 0.0 and paired_t([0.0, 0.0, 0.0])["p"] == 1.0
    # vectorised over leading axes: rows tested independently
    both = paired_t(np.array([[-0.052, -0.278, -0.456], [1, 2, 3]]))
    assert both["p"][0] == pytest.approx(0.1543, abs=1e-4) and both["p"].shape == (2,)
    with pytest.raises(ValueError):
        paired_t([0.1])


def test_tost_on_a_constructed_case():
    # deltas within +-0.02 of 0, margin 0.05: se = sqrt(2.5e-4 / 5), each one-sided t = 0.05 / se
    deltas = [0.01, -0.01, 0.0, 0.02, -0.02]
    se = math.sqrt(2.5e-4 / 5)
    t = 0.05 / se
    one_sided = (1 - t / math.sqrt(t * t + 4) * (1 + 2 / (t * t + 4))) / 2   # df 4 closed form
    r = tost(deltas, 0.05)
    assert r["p"] == pytest.approx(one_sided, rel=1e-9) and r["p"] < 0.05
    # the same as the 90% t-interval inside (-0.05, 0.05): 0 -/+ 2.1318 se = -/+0.0151
    assert 2.1318467863266495 * se < 0.05
    # a margin inside that interval is not shown: 0.01 < 0.0151
    assert tost(deltas, 0.01)["p"] > 0.05
    # a mean on the margin can never be shown equivalent; an asymmetric case takes the worse side
    assert tost([0.04, 0.06, 0.05], 0.05)["p"] >= 0.5
    shifted = tost([0.03, 0.01, 0.02, 0.04, 0.0], 0.05)
    se2 = math.sqrt(2.5e-4 / 5)
    t_high = (0.05 - 0.02) / se2
    assert shifted["p"] == pytest.approx((1 - t_high / math.sqrt(t_high ** 2 + 4)
                                          * (1 + 2 / (t_high ** 2 + 4))) / 2, rel=1e-9)
    # no spread: equivalent iff |mean| < margin
    assert tost([0.0, 0.0, 0.0], 0.05)["p"] == 0.0 and tost([0.1, 0.1, 0.1], 0.05)["p"] == 1.0
    with pytest.raises(ValueError):
        tost(deltas, 0.0)


def test_holm_on_a_known_p_vector():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is no test: it stays NaN and does not count in m
    out = holm([0.02, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []
    # the path-star review: 9 comparisons, lookahead's p = 0.154 does not survive; neither would 0.01
    assert holm([0.154] + [1e-6] * 8)[0] == pytest.approx(0.154)
    assert holm([0.01] + [0.5] * 8)[0] == pytest.approx(0.09)


def test_exact_mcnemar_mde():
    # n = 100, no discordant pair: 5 one-sided pairs give p = 2/32, 6 give 2/64 -> 0.06
    assert binom_sign_test(0, 5) == pytest.approx(0.0625) and binom_sign_test(0, 6) == pytest.approx(0.03125)
    assert mcnemar_mde(100, 0) == pytest.approx(0.06)
    assert mcnemar_mde(1000, 0) == pytest.approx(0.006)
    # 100 discordant of 1000: 60 vs 40 gives p = 0.057; 61 vs 40 (101 discordant) gives 0.047
    assert binom_sign_test(40, 100) > 0.05 > binom_sign_test(40, 101)
    assert mcnemar_mde(1000, 100) == pytest.approx(0.021)
    # fewer than 6 pairs can never be significant
    assert math.isnan(mcnemar_mde(5, 0))
    with pytest.raises(ValueError):
        mcnemar_mde(10, 11)


def test_seed_mde_formula():
    # (t_{0.975,2} + t_{0.8,2}) sd / sqrt(3) and (t_{0.975,4} + t_{0.8,4}) sd / sqrt(5)
    assert seed_mde(0.1, 3) == pytest.approx((4.302652729749464 + 1.0606601717798212) * 0.1 / math.sqrt(3))
    assert seed_mde(0.1, 5) == pytest.approx((2.7764451051977987 + t_ppf(0.8, 4)) * 0.1 / math.sqrt(5))
    assert seed_mde(0.1, 5) < 0.55 * seed_mde(0.1, 3)  # 5 seeds instead of 3: the MDE x 0.54
    assert math.isnan(seed_mde(0.1, 1))


def test_verdict_words():
    assert verdict(0.1, 0.01, 0.9, 0.05) == "helps"
    assert verdict(-0.1, 0.01, 0.9, 0.05) == "hurts"
    assert verdict(0.001, 0.3, 0.01, 0.05) == "equivalent within ±0.05"
    assert verdict(0.001, 0.3, 0.2, 0.05) == "inconclusive"
    assert verdict(0.1, 0.06, 0.9, 0.05) == "inconclusive"
    assert verdict(0.1, 0.04, 0.9, 0.05, alpha=0.01) == "inconclusive"
    nan = float("nan")
    assert verdict(nan, nan, nan, 0.05) == "inconclusive"
