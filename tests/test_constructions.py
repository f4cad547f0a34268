"""The gradient-descent construction (SPEC §4): L stacked layers equal L steps of GD, exactly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lintrans.attention import predict
from lintrans.constructions import gd_construction, gd_loop, gd_readout_settings
from lintrans.tasks import sample_linear, split_prompt
from lintrans.trajectory import trajectory

RTOL = 1e-12  # SPEC §4: "checked in float64 to ~1e-16"; the project's tolerance is 1e-12


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), np.finfo(np.float64).tiny)


def close(a, b, size):
    """``‖a − b‖ ≤ RTOL · size``: an absolute test on the natural size of the quantity, for
    quantities that may legitimately be ~0 (a converged residual, a vanishing GD step)."""
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) <= RTOL * size


def stable_etas(X_s, fractions):
    """Step sizes ``η_t = f_t / λ_max(X_sᵀX_s)`` with ``f_t ∈ (0, 1]``: GD converges (η < 2/λ_max)."""
    lam = float(np.linalg.eigvalsh(np.asarray(X_s).T @ np.asarray(X_s))[-1])
    return np.asarray(fractions) / lam


def numpy_gd(X_s, y_s, etas):
    """The GD recursion of SPEC §4 written out in numpy: w_t = w_{t-1} + η_t Σ_i (y_i − w_{t-1}ᵀx_i) x_i."""
    X_s, y_s = np.asarray(X_s), np.asarray(y_s)
    w = np.zeros(X_s.shape[1])
    ws = [w]
    for eta in etas:
        w = w + eta * sum((y_s[i] - w @ X_s[i]) * X_s[i] for i in range(len(y_s)))
        ws.append(w)
    return np.stack(ws)


def _construction_outputs(H, etas):
    """Everything the checks compare, in one jitted call (compiled once per shape)."""
    d_in = H.shape[0] - 1
    X_s, y_s, _ = split_prompt(H)
    params = gd_construction_traced(etas, d_in)
    traj = trajectory(params, H, mask=gd_readout_settings["mask"], scale=gd_readout_settings["scale"])
    y_hat = predict(params, H, **gd_readout_settings)
    return gd_loop(X_s, y_s, etas), traj, y_hat


def gd_construction_traced(etas, d_in):
    """:func:`gd_construction` with traced step sizes (same block form; checked against it below)."""
    D = d_in + 1
    kq = jnp.zeros((D, D)).at[:d_in, :d_in].set(jnp.eye(d_in))
    L = etas.shape[0]
    w_v = jnp.zeros((L, D, D)).at[:, d_in, d_in].set(-etas)
    w_kq = jnp.broadcast_to(kq, (L, D, D))
    return type(gd_construction([1.0], 1))(w_k=w_kq, w_q=w_kq, w_v=w_v)


_outputs = jax.jit(_construction_outputs)


def check_construction(H, etas):
    d_in = H.shape[0] - 1
    N = H.shape[1] - 1
    L = len(etas)
    X_s, y_s, x_q = split_prompt(H)
    # numpy copies: indexing them below compiles nothing (an eager slice compiles once per shape and index)
    ws, traj, y_hat = jax.tree_util.tree_map(np.asarray, _outputs(H, jnp.asarray(etas)))
    assert rel(ws, numpy_gd(X_s, y_s, etas)) <= RTOL, "gd_loop vs the GD recursion written out"
    assert np.all(np.isfinite(np.asarray(traj.states)))
    # ŷ = w_Lᵀ x_q through the readout ρ = −1
    w_L = ws[-1]
    assert abs(float(y_hat) - float(w_L @ np.asarray(x_q))) <= RTOL * max(
        1.0, float(np.linalg.norm(w_L) * np.linalg.norm(x_q))
    ), "ŷ = w_L^T x_q"
    X_np, y_np = np.asarray(X_s), np.asarray(y_s)
    size = max(1.0, np.linalg.norm(y_np) + np.linalg.norm(X_np) * np.abs(ws).max() * np.sqrt(d_in))
    for t in range(1, L + 1):
        w_t, w_prev = ws[t], ws[t - 1]
        # ΔW_t = [[0, 0], [−(w_t − w_{t−1})ᵀ, 0]]
        expected_dw = np.zeros((d_in + 1, d_in + 1))
        expected_dw[d_in, :d_in] = -(w_t - w_prev)
        assert close(traj.delta_w[t - 1], expected_dw, size), f"ΔW_{t} = [[0,0],[-(w_t - w_(t-1))^T, 0]]"
        # W_t = [[0, 0], [−w_tᵀ, 0]]
        expected_W = np.zeros((d_in + 1, d_in + 1))
        expected_W[d_in, :d_in] = -w_t
        assert close(traj.W[t - 1], expected_W, size), f"W_{t} = [[0,0],[-w_t^T, 0]]"
        # label slots: residuals y_i − w_tᵀ x_i, the query's −w_tᵀ x_q; inputs untouched
        state = np.asarray(traj.states[t])
        residuals = y_np - X_np @ w_t
        assert close(state[d_in, :N], residuals, size), f"layer {t}: demonstration label slots hold residuals"
        q = -w_t @ np.asarray(x_q)
        assert close(state[d_in, N], q, size), f"layer {t}: query label slot holds -w_t^T x_q"
        np.testing.assert_array_equal(state[:d_in], np.asarray(H)[:d_in])


@functools.lru_cache(maxsize=None)
def _sampler(N, d_in):
    """The library sampler for one prompt of this shape, compiled once (eagerly, every primitive compiles)."""
    return jax.jit(lambda key: sample_linear(key, 1, N, d_in, noise_std=0.1, dtype=jnp.float64).H[0])


def prompt(seed, N, d_in):
    """One noisy linear-task prompt ``(d_in+1, N+1)``, as a numpy array."""
    return np.asarray(_sampler(N, d_in)(jax.random.PRNGKey(seed)))


def test_one_step():
    H = prompt(0, 10, 4)
    X_s, _, _ = split_prompt(H)
    check_construction(H, stable_etas(X_s, [0.7]))


def test_l_steps_same_eta():
    H = prompt(1, 12, 5)
    X_s, _, _ = split_prompt(H)
    check_construction(H, stable_etas(X_s, [0.5] * 8))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), fractions=st.lists(st.floats(0.01, 1.0), min_size=6, max_size=6))
def test_per_layer_eta(seed, fractions):
    """Six layers with six different rates; sizes fixed (compiled once), values drawn."""
    H = prompt(seed, 9, 4)
    X_s, _, _ = split_prompt(H)
    check_construction(H, stable_etas(X_s, fractions))


@pytest.mark.parametrize("N,d_in", [(1, 1), (2, 8), (30, 3)])
def test_sizes_including_underdetermined(N, d_in):
    """N = 1 (one demonstration), N < d_in (GD converges to an interpolant: residuals → 0) and N ≫ d_in."""
    H = prompt(N + d_in, N, d_in)
    X_s, _, _ = split_prompt(H)
    check_construction(H, stable_etas(X_s, [1.0, 0.5, 0.9]))


def test_traced_construction_equals_gd_construction():
    etas = [0.1, 0.2, 0.3]
    a, b = gd_construction(etas, 3), jax.jit(gd_construction_traced, static_argnums=1)(jnp.asarray(etas), 3)
    for name in ("w_k", "w_q", "w_v"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_weights_block_form():
    params = gd_construction([0.1, 0.2, 0.3], 2)
    assert params.w_k.shape == (3, 3, 3)
    kq = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0]])
    for t, eta in enumerate([0.1, 0.2, 0.3]):
        np.testing.assert_array_equal(params.w_k[t], kq)
        np.testing.assert_array_equal(params.w_q[t], kq)
        np.testing.assert_array_equal(params.w_v[t], np.diag([0.0, 0.0, -eta]))


def test_gd_diverges_with_large_eta_and_so_does_the_construction():
    """Above 2/λ_max GD diverges; the construction follows it (it is GD, not a stabilised copy)."""
    H = prompt(3, 10, 3)
    X_s, y_s, x_q = split_prompt(H)
    etas = stable_etas(X_s, [3.0] * 12)  # |1 − 3| = 2: the top direction doubles each step
    ws = np.asarray(jax.jit(gd_loop)(X_s, y_s, jnp.asarray(etas)))
    assert np.linalg.norm(ws[-1]) > 100 * np.linalg.norm(ws[1])
    y_hat = float(jax.jit(lambda p, H: predict(p, H, **gd_readout_settings))(gd_construction(etas, 3), H))
    assert y_hat == pytest.approx(float(ws[-1] @ np.asarray(x_q)), rel=1e-9)
