"""The statistics of the claims ledger (src/normrepro/claims.py): one claim's test, the ledger's
Holm adjustment, the verdict, and the seeds a claim would need to be resolved.

Every number is in error points (percent). Arms are arrays of per-run errors; a paired test gets
them aligned by seed. The tests are the maintained implementations (scipy.stats for the t-tests
and their confidence intervals, statsmodels for TOST, Holm and power); this module only chooses
between them and handles the one case they leave undefined (every difference identical).

    difference    two-sided t-test of a − b (paired on per-seed differences, else Welch);
                  the 95% CI of a − b
    equivalence   TOST of a − b against ±margin (paired or Welch); the 90% CI of a − b
    value         TOST of a − published value against ±margin (one-sample); the 90% CI
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

ALPHA = 0.05  # every test of the ledger, before Holm
POWER = 0.8  # seeds to resolve: the seeds per cell at which a test has this power
TESTS = ("difference", "equivalence", "value")
VERDICTS = ("reproduced", "contradicted", "inconclusive", "not run")
# A TOST's 1 − 2α interval is the one that lies inside ±margin exactly when TOST rejects.
CI_LEVEL = {"difference": 1 - ALPHA, "equivalence": 1 - 2 * ALPHA, "value": 1 - 2 * ALPHA}


def run_test(test: str, a, b, paired: bool, margin: float | None = None) -> dict:
    """{"method", "effect", "ci_low", "ci_high", "ci_level", "p", "sd"} of a − b.

    `b` is a number (the published value) for a value claim, else an array (aligned with `a`
    when `paired`). `sd`: the standard deviation a power calculation needs (of the per-seed
    differences; of the one sample; for Welch the root mean square of the two arms' SDs)."""
    a = np.asarray(a, dtype=float)
    if test == "value":
        b = np.full(len(a), float(b))
        paired = True  # a − value, one sample
    else:
        b = np.asarray(b, dtype=float)
    if test not in TESTS:
        raise ValueError(f"test: got {test!r}; allowed: {', '.join(TESTS)}")
    if test != "difference" and not (margin and margin > 0):
        raise ValueError(f"an {test} test needs a margin > 0; got {margin!r}")
    level = CI_LEVEL[test]
    method = "one-sample t" if test == "value" else ("paired t" if paired else "Welch t")
    if test != "difference":
        method = f"TOST ({method})"
    d = a - b if paired else None
    effect = float(np.mean(d)) if paired else float(np.mean(a) - np.mean(b))
    sd = float(np.std(d, ddof=1)) if paired else _rms_sd(a, b)
    out = {"method": method, "effect": effect, "ci_level": level, "sd": sd}
    if sd == 0:
        # Every difference identical (e.g. each arm's runs all diverged to chance): a t-test
        # is undefined, and the difference is known exactly.
        exact = _exact(test, effect, margin)
        out.update(ci_low=effect, ci_high=effect, p=exact, method=method + ", exact")
        return out
    res = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(level)
    out.update(ci_low=float(ci.low), ci_high=float(ci.high))
    if test == "difference":
        out["p"] = float(res.pvalue)
    elif paired:
        out["p"] = float(ttost_paired(a, b, -margin, margin)[0])
    else:
        out["p"] = float(ttost_ind(a, b, -margin, margin, usevar="unequal")[0])
    return out


def _rms_sd(a: np.ndarray, b: np.ndarray) -> float:
    """sqrt((sd_a² + sd_b²) / 2): the SD that makes Cohen's d of two equal arms."""
    return float(math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2))


def _exact(test: str, effect: float, margin: float | None) -> float:
    """p of a difference known without error: 0 when it lies in the test's rejection region."""
    if test == "difference":
        return 0.0 if effect != 0 else 1.0
    return 0.0 if abs(effect) < margin else 1.0


def holm(p: list[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels) over the non-NaN entries; NaN stays NaN. The family
    is every p passed: the whole ledger."""
    p = np.asarray(p, dtype=float)
    out = np.full(len(p), math.nan)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = multipletests(p[tested], method="holm")[1]
    return out.tolist()


def verdict(test: str, effect: float, ci: tuple[float, float], p_holm: float, margin) -> str:
    """reproduced: the claim's test rejects at ALPHA after Holm (a difference in the claim's
    direction: `effect` > 0). contradicted: a difference against it, significant after Holm; or
    an equivalence / value claim whose CI lies wholly outside ±margin. Else inconclusive."""
    if math.isnan(p_holm):
        return "not run"
    if test == "difference":
        if p_holm < ALPHA:
            return "reproduced" if effect > 0 else "contradicted"
        return "inconclusive"
    if p_holm < ALPHA:
        return "reproduced"
    low, high = ci
    if low > margin or high < -margin:
        return "contradicted"
    return "inconclusive"


def seeds_to_resolve(
    test: str, paired: bool, sd: float, delta, margin, alpha: float = ALPHA
) -> int | None:
    """Seeds per cell at which the claim's test has POWER at level `alpha` (the ledger passes
    ALPHA / family: Bonferroni, Holm's strictest step, so a resolved claim survives Holm), given
    the observed SD and the true difference assumed: the *published* effect `delta` for a
    difference claim, zero for an equivalence or value claim. None when that is unknown (no
    published effect, SD 0 or NaN). At least 2 (a t-test needs 2 seeds).

    Difference: a two-sided t-test at effect size |delta| / sd (TTestPower on the per-seed
    differences when paired, else TTestIndPower with equal arms), through its upper tail at
    alpha / 2. Equivalence at a true
    difference of zero: TOST rejects when both one-sided tests do, and they fail on opposite
    tails, so each one-sided test at effect size margin / sd needs power 1 − (1 − POWER) / 2."""
    if not (sd > 0 and math.isfinite(sd)):
        return None
    if test == "difference":
        if delta is None or delta == 0 or not math.isfinite(delta):
            return None
        # The two-sided test's power less its opposite tail (< alpha / 2), which statsmodels'
        # noncentral t returns as NaN far out (large effects at a few seeds).
        size, power, level = abs(delta) / sd, POWER, alpha / 2
    else:
        size, power, level = margin / sd, 1 - (1 - POWER) / 2, alpha
    one_sample = paired or test == "value"
    solver, n_key = (TTestPower(), "nobs") if one_sample else (TTestIndPower(), "nobs1")
    kw = {"effect_size": size, "alpha": level, "alternative": "larger"}
    # solve_power searches n >= 2; an effect already detected at 2 seeds has no root there.
    if solver.power(**kw, **{n_key: 2}) >= power:
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; a bad solution is checked
            n = float(solver.solve_power(power=power, **kw))
    except (ValueError, RuntimeError, ArithmeticError):
        return None
    if not math.isfinite(n) or n <= 0:
        return None
    return max(2, math.ceil(n))
