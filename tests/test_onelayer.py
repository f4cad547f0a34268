"""The one-layer closed form (lintrans.onelayer) against Monte Carlo, and its clip search."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans import onelayer
from lintrans.attention import predict
from lintrans.params import LinearAttentionParams
from lintrans.shift import parse_shift
from lintrans.tasks import LinearTask

D_IN = 3


@jax.jit  # one compilation (op by op, every primitive compiles on its own)
def _weights(key, scale=0.4):
    k = jax.random.split(key, 3)
    D = D_IN + 1
    return LinearAttentionParams(*(scale * jax.random.normal(kk, (1, D, D), jnp.float64) for kk in k))


@functools.lru_cache(maxsize=None)
def _mc_errors(task, scale, readout, n):
    """Per-prompt errors of ``n`` sampled prompts, one compiled function per task and options
    (the weights and the key are arguments, so both draws share it)."""
    @jax.jit
    def errors(params, key):
        b = task.sample(key, n, dtype=jnp.float64)
        yhat = jax.vmap(lambda h: predict(params, h, scale=scale, readout=readout))(b.H)
        return (yhat - b.y_query) ** 2 / task.d_in
    return errors


def _mc(params, task, scale, readout, key, n=40_000):
    e = np.asarray(_mc_errors(task, scale, readout, n)(params, key))
    return e.mean(), e.std(ddof=1) / np.sqrt(n)


@pytest.mark.parametrize("draw", [0, pytest.param(1, marks=pytest.mark.slow)])
@pytest.mark.parametrize("shift,scale,readout", [("none", "1", 1), ("noise=0.7,shots=3", "1/N", -1),
                                                 ("spectrum=2:1/4,x_scale=1.5", "1", 1)])
def test_closed_form_matches_monte_carlo_within_3_se(draw, shift, scale, readout):
    """E(ŷ−y)²/d (closed form, exact) lies within 3 Monte-Carlo standard errors (4e4 prompts) at random weights."""
    params = _weights(jax.random.PRNGKey(draw))
    task = parse_shift(shift).task(D_IN, 6)
    exact = onelayer.expected_error(params, task, scale=scale, readout=readout)
    mean, se = _mc(params, task, scale, readout, jax.random.PRNGKey(100 + draw))
    assert abs(exact - mean) <= 3 * se, (exact, mean, se)


def test_gd_construction_hand_value():
    """One step of GD with step γ on Σ = I, σ = 0: E err = 1 − 2γN + γ²N(N + d + 1) (hand-computed, rtol 1e-12)."""
    D = D_IN + 1
    gamma, n = 0.13, 5
    w_k = np.zeros((1, D, D))  # built in numpy: no eager JAX op to compile
    w_k[0, :D_IN, :D_IN] = np.eye(D_IN)
    w_q = np.eye(D)[None]
    w_v = np.zeros((1, D, D))
    w_v[0, D_IN, D_IN] = gamma
    task = LinearTask(D_IN, n)
    got = onelayer.expected_error(LinearAttentionParams(w_k, w_q, w_v), task, scale="1")
    want = 1 - 2 * gamma * n + gamma**2 * n * (n + D_IN + 1)
    assert got == pytest.approx(want, rel=1e-12)


def test_clip_errors_and_optimum():
    """Clip errors: ξ = 0 equals the unpruned value exactly; the optimum is the minimum over cells."""
    params = _weights(jax.random.PRNGKey(5))
    task = LinearTask(D_IN, 4, noise_std=0.5)
    res = onelayer.clip_errors(params, task, scale="1/N")
    zero = [c for c in res["cells"] if c["xi"] == 0.0]
    assert all(c["error"] == res["unpruned"] for c in zero)
    best = onelayer.optimal_clip(params, task, scale="1/N")
    assert best["error"] == min([res["unpruned"]] + [c["error"] for c in res["cells"]])


def test_refuses_sparse_tasks_and_deep_models():
    params = _weights(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="sparsity"):
        onelayer.expected_error(params, LinearTask(D_IN, 4, sparsity=1))
    deep = LinearAttentionParams(*(jnp.concatenate([a, a]) for a in params))
    with pytest.raises(ValueError, match="one layer"):
        onelayer.expected_error(deep, LinearTask(D_IN, 4))
