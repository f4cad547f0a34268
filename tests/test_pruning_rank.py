"""SVD truncation by clipping rate (SPEC §6): the exact rank rule, ξ = 0, Eckart–Young, LASER's rule."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lintrans.pruning import PAPER_RATES, check_rate, condition_number, kept_rank, truncate_matrix, truncate_to_rank


def matrix(seed, m, n):
    return jax.random.normal(jax.random.PRNGKey(seed), (m, n), jnp.float64)


def test_xi_09_on_10x10_keeps_rank_1():
    # the float expression int(10 * (1 - 0.9)) = int(0.9999999999999998) = 0 is the bug SPEC §6 warns about
    assert int(10 * (1 - 0.9)) == 0
    assert kept_rank(10, 10, 0.9) == 1
    a = matrix(0, 10, 10)
    a_r, r = truncate_matrix(a, 0.9)
    assert r == 1
    sv = np.linalg.svd(np.asarray(a_r), compute_uv=False)
    assert sv[1] <= 1e-12 * sv[0], "exactly one singular value survives"


def test_xi_0_returns_matrix_unchanged_bitwise():
    a = matrix(1, 7, 5)
    a_r, r = truncate_matrix(a, 0.0)
    assert r == 5
    np.testing.assert_array_equal(np.asarray(a_r), np.asarray(a))
    # truncate_to_rank at full rank returns the input itself, not a reconstruction
    np.testing.assert_array_equal(np.asarray(truncate_to_rank(a, 5)), np.asarray(a))


@pytest.mark.parametrize("shape", [(10, 10), (12, 20), (30, 14)])
@pytest.mark.parametrize("xi", [0.1, 0.5, 0.75, 0.9])
def test_eckart_young(shape, xi):
    """‖A − A_r‖_2 = σ_{r+1} and ‖A − A_r‖_F² = Σ_{i>r} σ_i² (best rank-r approximation)."""
    a = matrix(2, *shape)
    a_r, r = truncate_matrix(a, xi)
    sv = np.linalg.svd(np.asarray(a), compute_uv=False)
    diff = np.asarray(a) - np.asarray(a_r)
    spectral = np.linalg.norm(diff, 2)
    assert 0 < r < min(shape)
    assert abs(spectral - sv[r]) <= 1e-12 * sv[0], f"spectral error {spectral} vs σ_(r+1) {sv[r]} (rtol 1e-12)"
    frob = np.linalg.norm(diff)
    assert abs(frob - np.sqrt(np.sum(sv[r:] ** 2))) <= 1e-12 * sv[0]
    assert np.linalg.matrix_rank(np.asarray(a_r)) == r


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 300), n=st.integers(1, 300), xi=st.sampled_from(PAPER_RATES + (0.3, 0.7, 0.25)))
def test_exact_rule_is_the_rational_floor(m, n, xi):
    r = kept_rank(m, n, xi)
    assert r == math.floor(min(m, n) * (1 - Fraction(str(xi))))
    assert 0 <= r <= min(m, n)


def test_laser_rule_and_min_rank():
    # LASER's float expression int(m * ((10 - 10ξ) * 0.1)) loses one rank where the exact rule does not
    assert kept_rank(100, 100, 0.99, rule="exact") == 1
    assert kept_rank(100, 100, 0.99, rule="laser") == int(100 * ((10 - 10 * 0.99) * 0.1)) == 0
    assert kept_rank(10, 10, 0.9, rule="laser") == 1
    assert kept_rank(100, 100, 0.99, rule="laser", min_rank=1) == 1
    assert kept_rank(4, 4, 0.5, min_rank=10) == 4, "min_rank is capped at min(m, n)"


def test_rank_zero_gives_zero_matrix():
    a = matrix(3, 4, 4)
    a_r, r = truncate_matrix(a, 0.9)  # ⌊4 · 0.1⌋ = 0
    assert r == 0
    np.testing.assert_array_equal(np.asarray(a_r), np.zeros((4, 4)))
    a_r, r = truncate_matrix(a, 0.9, min_rank=1)
    assert r == 1


def test_truncate_to_rank_traced_under_vmap():
    a = matrix(4, 6, 6)
    ranks = jnp.arange(7)
    out = jax.vmap(lambda r: truncate_to_rank(a, r))(ranks)
    for r in range(7):
        np.testing.assert_allclose(out[r], truncate_to_rank(a, r), rtol=0, atol=1e-13)
        assert np.linalg.matrix_rank(np.asarray(out[r]), tol=1e-9) == r


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_bad_rates_raise_value_error(bad):
    with pytest.raises(ValueError, match="clipping rate"):
        check_rate(bad)
    with pytest.raises(ValueError, match="clipping rate"):
        kept_rank(4, 4, bad)


@pytest.mark.parametrize("bad", ["0.5", None, True, [0.5]])
def test_bad_rate_types_raise_type_error(bad):
    with pytest.raises(TypeError, match="clipping rate"):
        check_rate(bad)


def test_condition_number():
    assert float(condition_number(jnp.diag(jnp.array([4.0, 2.0, 0.5])))) == pytest.approx(8.0, rel=1e-14)
    # numerically singular: σ_min is rounding noise (or exactly 0 → +∞)
    assert float(condition_number(jnp.array([[1.0, 2.0], [2.0, 4.0]]))) > 1e15
    assert float(condition_number(jnp.zeros((3, 3)))) == np.inf
