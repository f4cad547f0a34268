"""lintrans.stats: the one rule for intervals, verdicts and rank correlations."""

import jax
import numpy as np
import pytest

from lintrans import stats


def test_t_interval_hand_case():
    iv = stats.interval([1.0, 2.0, 3.0])
    # mean 2, s = 1, se = 1/√3, t_{0.975, 2} = 4.302653
    assert iv.mean == pytest.approx(2.0, abs=1e-15)
    assert iv.se == pytest.approx(1 / np.sqrt(3), rel=1e-12)
    assert iv.half_width == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)  # t quantile by bisection, 1e-6


def test_one_sample_has_no_spread_and_no_verdict():
    iv = stats.interval([0.7])
    assert np.isnan(iv.se) and np.isnan(iv.half_width)
    assert not stats.excludes_zero(iv)
    assert stats.verdict(iv, positive="up", negative="down").startswith("inconclusive: ")


def test_verdicts_follow_the_interval():
    up = stats.interval([1.0, 1.1, 0.9, 1.05])
    assert stats.verdict(up, positive="up", negative="down").startswith("up (")
    down = stats.interval([-1.0, -1.1, -0.9])
    assert stats.verdict(down, positive="up", negative="down").startswith("down (")
    both = stats.interval([-1.0, 1.0, 0.1])
    assert "contains 0" in stats.verdict(both, positive="up", negative="down")


def test_nonfinite_refused():
    with pytest.raises(ValueError, match="NaN/Inf"):
        stats.interval([1.0, np.nan])


def test_prompt_interval_is_normal():
    v = np.random.default_rng(0).normal(size=4000)
    iv = stats.prompt_interval(v)
    assert iv.half_width == pytest.approx(1.959964 * v.std(ddof=1) / np.sqrt(v.size), rel=1e-6)


def test_spearman_ties_and_bootstrap():
    assert stats.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0, abs=1e-15)
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0, abs=1e-15)
    # ties: ranks (1.5, 1.5, 3) vs (1, 2, 3): ρ = 0.866025…
    assert stats.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2, rel=1e-12)
    x = np.arange(30.0)
    out = stats.spearman_interval(jax.random.PRNGKey(0), x, x + np.random.default_rng(1).normal(0, 3, 30))
    assert out["low"] <= out["rho"] <= out["high"] <= 1.0
    again = stats.spearman_interval(jax.random.PRNGKey(0), x, x + np.random.default_rng(1).normal(0, 3, 30))
    assert again == out, "same key, same interval"
