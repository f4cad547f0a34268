"""Truncation of parameter pytrees (SPEC §6): ranks, Eckart–Young error, locality, generic fields."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lintrans.params import LinearAttentionParams, init_params
from lintrans.pruning import PAPER_RATES, kept_rank
from lintrans.transformer import SoftmaxConfig, SoftmaxParams, param_shapes
from lintrans.truncation import (
    TARGETS,
    condition_numbers,
    target_fields,
    truncate_params,
    truncate_params_to_rank,
)

RTOL = 1e-12


def _params(L=3, D=5, seed=0):
    return init_params(jax.random.PRNGKey(seed), L, D, 1.0, jnp.float64)


def _copy(params):
    return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), params)


def _bitwise_equal(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_xi_zero_is_identity_bit_for_bit():
    p = _params()
    for target in ("K", "Q", "V", "attn"):
        for k in (1, 3):
            new, ranks = truncate_params(p, k, target, 0.0)
            assert all(r == 5 for r in ranks.values()), "ξ = 0 keeps full rank min(m, n)"
            for f in ("w_k", "w_q", "w_v"):
                assert _bitwise_equal(getattr(new, f), getattr(p, f)), f"ξ = 0 must leave {f} unchanged bit for bit"


@settings(max_examples=15, deadline=None)
@given(
    xi=st.sampled_from(PAPER_RATES + (0.3, 0.6, 0.8)),
    D=st.integers(2, 6),
    k=st.integers(1, 3),
    target=st.sampled_from(["K", "Q", "V", "attn"]),
    rule=st.sampled_from(["exact", "laser"]),
)
@pytest.mark.slow
def test_rank_rule_spectral_error_and_locality(xi, D, k, target, rule):
    """Kept rank = kept_rank(rule); ‖W − W(r)‖₂ = σ_{r+1} (Eckart–Young); only layer k of the target moves."""
    p = _params(L=3, D=D, seed=D)
    before = _copy(p)
    new, ranks = truncate_params(p, k, target, xi, rule=rule)
    fields = TARGETS[target]
    assert set(ranks) == set(fields)
    for f in ("w_k", "w_q", "w_v"):
        orig, cut = np.asarray(getattr(p, f)), np.asarray(getattr(new, f))
        assert _bitwise_equal(orig, getattr(before, f)), "the original pytree is untouched"
        for t in range(3):
            if f not in fields or t != k - 1:
                assert _bitwise_equal(cut[t], orig[t]), f"{f} layer {t + 1} must be unchanged bit for bit"
        if f in fields:
            r = ranks[f]
            assert r == kept_rank(D, D, xi, rule), "rank follows the rule"
            sv = np.linalg.svd(orig[k - 1], compute_uv=False)
            assert np.linalg.matrix_rank(cut[k - 1], tol=1e-9 * sv[0]) == r, "W(r) has rank r"
            err = np.linalg.norm(orig[k - 1] - cut[k - 1], 2)
            expected = sv[r] if r < D else 0.0
            assert err == pytest.approx(expected, rel=1e-10, abs=1e-13 * sv[0]), "spectral error = σ_{r+1}"


def test_traced_truncation_vmaps_over_layer_and_rank():
    p = _params(L=3, D=4)
    fields = ("w_k", "w_q", "w_v")
    layers = jnp.array([0, 1, 2, 2])
    ranks = jnp.array([[1, 4, 4], [2, 2, 2], [0, 3, 4], [4, 4, 4]])
    batched = jax.jit(jax.vmap(lambda l, r: truncate_params_to_rank(p, l, fields, r)))(layers, ranks)
    for j in range(4):
        ref = p
        for f, r in zip(fields, np.asarray(ranks[j])):
            stacked = getattr(ref, f)
            U, s, Vt = np.linalg.svd(np.asarray(stacked[layers[j]]))
            cut = (U[:, :r] * s[:r]) @ Vt[:r]
            ref = ref._replace(**{f: stacked.at[layers[j]].set(cut if r < 4 else stacked[layers[j]])})
        for f in fields:
            a, b = np.asarray(getattr(batched, f)[j]), np.asarray(getattr(ref, f))
            assert np.allclose(a, b, rtol=RTOL, atol=1e-13), f"vmapped truncation = reference ({f}, point {j})"
    # full rank leaves the stack bit for bit
    assert _bitwise_equal(batched.w_k[3], p.w_k)


@pytest.mark.slow
def test_generic_over_fields_softmax_and_custom_pytrees():
    cfg = SoftmaxConfig(d_in=3, n_demos_max=4, n_layers=2, width=8, n_heads=2, mlp_width=16)
    rng = np.random.default_rng(1)
    sp = SoftmaxParams(**{k: jnp.asarray(rng.standard_normal(v)) for k, v in param_shapes(cfg).items()})
    new, ranks = truncate_params(sp, 2, "mlp", 0.5)
    assert ranks == {"w_in": 4, "w_out": 4}, "min(m, n) = 8 for (8, 16) and (16, 8) → r = 4 at ξ = 0.5"
    assert np.linalg.matrix_rank(np.asarray(new.w_in[1])) == 4
    assert _bitwise_equal(new.w_in[0], sp.w_in[0]) and _bitwise_equal(new.w_q, sp.w_q)
    new, ranks = truncate_params(sp, 1, "O", 0.75)
    assert ranks == {"w_o": 2} and np.linalg.matrix_rank(np.asarray(new.w_o[0])) == 2

    class Custom(NamedTuple):
        w_in: jax.Array
        w_out: jax.Array
        other: jax.Array

    c = Custom(jnp.ones((2, 3, 5)) + jnp.eye(3, 5), jnp.ones((2, 5, 3)), jnp.zeros(3))
    new, ranks = truncate_params(c, 1, "mlp", 0.9)
    assert ranks == {"w_in": 0, "w_out": 0}
    assert np.all(np.asarray(new.w_in[0]) == 0) and _bitwise_equal(new.other, c.other)
    cond = condition_numbers(sp, "attn")
    assert set(cond) == {"w_k", "w_q", "w_v"} and cond["w_k"].shape == (2,)


def test_condition_numbers_match_numpy_and_singular_is_inf():
    p = _params(L=3, D=4)
    p = p._replace(w_v=p.w_v.at[1].set(jnp.diag(jnp.array([1.0, 2.0, 3.0, 0.0]))))
    cond = condition_numbers(p)
    assert set(cond) == {"w_k", "w_q", "w_v"}
    for f in ("w_k", "w_q"):
        np.testing.assert_allclose(cond[f], np.linalg.cond(np.asarray(getattr(p, f))), rtol=1e-10)
    assert np.isinf(cond["w_v"][1]), "a singular matrix has κ = +∞ (SPEC §6)"


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"layer": 0}, ValueError, "1..3"),
        ({"layer": 4}, ValueError, "1..3"),
        ({"layer": 1.0}, TypeError, "layer"),
        ({"xi": 1.0}, ValueError, r"\[0, 1\)"),
        ({"xi": -0.1}, ValueError, r"\[0, 1\)"),
        ({"target": "X"}, ValueError, "target must be one of"),
        ({"target": "O"}, ValueError, "does not have"),
        ({"target": "mlp"}, ValueError, "does not have"),
        ({"rule": "floor"}, ValueError, "rule"),
    ],
)
def test_bad_inputs(kwargs, exc, match):
    args = {"layer": 1, "target": "attn", "xi": 0.5}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        truncate_params(_params(), args.pop("layer"), args.pop("target"), args.pop("xi"), **args)


def test_target_fields_rejects_non_pytrees():
    with pytest.raises(TypeError, match="NamedTuple or dataclass"):
        target_fields({"w_k": jnp.zeros((1, 2, 2))}, "K")
    bad = LinearAttentionParams(jnp.zeros((1, 2, 2)), jnp.zeros((1, 2, 2)), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="stacked"):
        target_fields(bad, "attn")
