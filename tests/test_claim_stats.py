"""The claims ledger's statistics (src/normrepro/claim_stats.py): effects, CIs and p-values
against scipy.stats and statsmodels *and* against the formulas written out here (t intervals,
Welch-Satterthwaite, two one-sided tests, Holm's step-down, power by simulation).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from normrepro import claim_stats as cs

RNG_SEED = 20240917


def rng():
    return np.random.default_rng(RNG_SEED)


# ---------------------------------------------------------------------------- statistics


def t_interval(d: np.ndarray, level: float) -> tuple[float, float]:
    """mean ± t(1 - (1 - level)/2, n - 1) * sd / sqrt(n), written out."""
    n = len(d)
    half = stats.t.ppf(1 - (1 - level) / 2, n - 1) * np.std(d, ddof=1) / math.sqrt(n)
    return d.mean() - half, d.mean() + half


def welch_parts(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(standard error, Welch-Satterthwaite df) of mean(a) - mean(b)."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return math.sqrt(va + vb), df


def test_paired_difference_matches_scipy_and_the_t_interval():
    r = rng()
    a = r.normal(14, 0.5, 6)
    b = a - 1.2 + r.normal(0, 0.3, 6)  # seed-paired: shares a's per-seed offsets
    res = cs.run_test("difference", a, b, paired=True)
    d = a - b
    assert res["method"] == "paired t"
    assert res["effect"] == pytest.approx(d.mean())
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(t_interval(d, 0.95))
    assert res["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert res["sd"] == pytest.approx(np.std(d, ddof=1))


def test_welch_difference_matches_scipy_and_the_satterthwaite_interval():
    r = rng()
    a, b = r.normal(14, 0.3, 5), r.normal(13, 0.9, 7)
    res = cs.run_test("difference", a, b, paired=False)
    se, df = welch_parts(a, b)
    diff = a.mean() - b.mean()
    half = stats.t.ppf(0.975, df) * se
    assert res["method"] == "Welch t"
    assert res["effect"] == pytest.approx(diff)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((diff - half, diff + half))
    assert res["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert res["p"] == pytest.approx(2 * stats.t.sf(abs(diff / se), df))


def two_one_sided(diff: float, se: float, df: float, m: float) -> float:
    """TOST written out: H0 diff <= -m rejected by t1 = (diff + m)/se large, H0 diff >= m by
    t2 = (diff - m)/se small; the TOST p is the larger of the two one-sided p-values."""
    return max(stats.t.sf((diff + m) / se, df), stats.t.cdf((diff - m) / se, df))


@pytest.mark.parametrize("paired", [True, False])
def test_tost_matches_two_one_sided_tests_and_statsmodels(paired):
    r = rng()
    m = 1.0
    a = r.normal(14, 0.4, 8)
    b = a + r.normal(0.2, 0.3, 8) if paired else r.normal(14.3, 0.6, 6)
    res = cs.run_test("equivalence", a, b, paired=paired, margin=m)
    if paired:
        d = a - b
        se, df = np.std(d, ddof=1) / math.sqrt(len(d)), len(d) - 1
        diff, ci = d.mean(), t_interval(d, 0.90)
        sm = ttost_paired(a, b, -m, m)[0]
    else:
        se, df = welch_parts(a, b)
        diff = a.mean() - b.mean()
        half = stats.t.ppf(0.95, df) * se
        ci = (diff - half, diff + half)
        sm = ttost_ind(a, b, -m, m, usevar="unequal")[0]
    assert res["p"] == pytest.approx(two_one_sided(diff, se, df, m))
    assert res["p"] == pytest.approx(sm)
    assert res["ci_level"] == 0.90
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(ci)
    # TOST rejects at 5% exactly when the 90% CI lies inside (-m, m)
    assert (res["p"] < 0.05) == (-m < ci[0] and ci[1] < m)


def test_value_claim_is_a_one_sample_tost_against_the_published_value():
    r = rng()
    x, value, m = r.normal(10.5, 0.3, 5), 10.72, 1.0
    res = cs.run_test("value", x, value, paired=False, margin=m)
    se = np.std(x, ddof=1) / math.sqrt(len(x))
    assert res["effect"] == pytest.approx(x.mean() - value)
    assert res["p"] == pytest.approx(two_one_sided(x.mean() - value, se, len(x) - 1, m))
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(t_interval(x - value, 0.90))


def test_identical_differences_are_known_exactly():
    # Every run of an arm diverged to chance: no variance, no t-test; the difference is exact.
    a, b = np.full(3, 90.0), np.full(3, 12.0)
    res = cs.run_test("difference", a, b, paired=True)
    assert (res["effect"], res["ci_low"], res["ci_high"], res["p"]) == (78.0, 78.0, 78.0, 0.0)
    assert cs.run_test("value", a, 89.86, paired=False, margin=2.0)["p"] == 0.0
    assert cs.run_test("value", a, 80.0, paired=False, margin=2.0)["p"] == 1.0


def test_holm_matches_a_step_down_written_here():
    r = rng()
    p = list(r.uniform(0, 0.2, 9)) + [math.nan, 0.001]
    got = cs.holm(p)
    tested = [(v, i) for i, v in enumerate(p) if not math.isnan(v)]
    tested.sort()
    m, running, want = len(tested), 0.0, {}
    for rank, (v, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * v))  # step-down: monotone, capped at 1
        want[i] = running
    for i, v in enumerate(p):
        if math.isnan(v):
            assert math.isnan(got[i])
        else:
            assert got[i] == pytest.approx(want[i])


def power_two_sided(solver, size: float, n: int, alpha: float) -> float:
    key = "nobs" if isinstance(solver, TTestPower) else "nobs1"
    return solver.power(effect_size=size, alpha=alpha, alternative="two-sided", **{key: n})


@pytest.mark.parametrize(("paired", "sd", "delta"), [(True, 0.5, 0.4), (False, 0.8, 1.0)])
def test_seeds_to_resolve_a_difference_is_the_least_n_with_80_percent_power(paired, sd, delta):
    alpha = 0.05 / 7
    n = cs.seeds_to_resolve("difference", paired, sd, delta, None, alpha)
    solver = TTestPower() if paired else TTestIndPower()
    assert power_two_sided(solver, delta / sd, n, alpha) >= 0.8
    assert power_two_sided(solver, delta / sd, n - 1, alpha) < 0.8
    # REFERENCES.md's formula n = k (q(1 - a/2) + q(0.8))^2 sd^2 / delta^2 (k = 1 paired, 2
    # unpaired): below the answer with normal quantiles, within a seed of it with t quantiles
    k, df = (1, n - 1) if paired else (2, 2 * n - 2)
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(0.8)
    t = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(0.8, df)
    assert k * z**2 * sd**2 / delta**2 < n
    assert abs(k * t**2 * sd**2 / delta**2 - n) <= 1.5


def tost_power(n: int, sd: float, m: float, reps: int = 20000) -> float:
    """Monte Carlo power of a paired TOST at a true difference of zero, the two one-sided tests
    written out on vectorized samples."""
    d = np.random.default_rng(RNG_SEED).normal(0.0, sd, size=(reps, n))
    se = d.std(axis=1, ddof=1) / math.sqrt(n)
    p = np.maximum(
        stats.t.sf((d.mean(1) + m) / se, n - 1), stats.t.cdf((d.mean(1) - m) / se, n - 1)
    )
    return float((p < 0.05).mean())


def test_seeds_to_resolve_an_equivalence_assumes_no_true_difference():
    sd, m = 1.0, 1.0
    n = cs.seeds_to_resolve("equivalence", True, sd, 0.0, m, 0.05)
    assert tost_power(n, sd, m) >= 0.8 > tost_power(n - 1, sd, m)
    # each one-sided test at power 0.9 (statsmodels' power class)
    solver = TTestPower()
    assert solver.power(effect_size=m / sd, nobs=n, alpha=0.05, alternative="larger") >= 0.9
    # no published effect, or no spread: no answer rather than a made-up one
    assert cs.seeds_to_resolve("difference", True, sd, None, None) is None
    assert cs.seeds_to_resolve("difference", True, 0.0, 1.0, None) is None
