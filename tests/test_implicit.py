"""Probes of implicit gradient descent (lintrans.implicit, issue 16), float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans import attention, implicit as I, variants as V
from lintrans.constructions import gd_construction, gd_loop, gd_readout_settings
from lintrans.numerics import rel_err
from lintrans.params import init_params
from lintrans.tasks import sample_linear, split_prompt
from lintrans.trajectory import trajectory

d, N, L = 3, 8, 3
D = d + 1


def _prompts(n=4, key=0):
    return sample_linear(jax.random.PRNGKey(key), n, N, d, dtype=jnp.float64)


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["1", "1/N"])
def test_linear_attention_is_exactly_affine_and_theorem1(scale):
    """Linear attention (lintrans.attention, random weights): W_t^J equals the trajectory's W_t,
    T1 residual, G-form residual and affinity residual all ≤ 1e-12 (float64), for every prompt of a
    batch through the jitted, vmapped probe_batch."""
    p = init_params(jax.random.PRNGKey(1), L, D, 0.5, jnp.float64)
    H = _prompts().H
    states = functools.partial(attention.forward_states, scale=scale)
    readouts = lambda params, h: states(params, h)[1:, -1, -1]
    dws = lambda params, h: trajectory(params, h, scale=scale).delta_w
    rep = I.probe_batch(readouts, states, dws, p, H, jax.random.PRNGKey(2), eta=0.05, lam=1.0, n_points=12)
    assert rep.affinity.shape == rep.t1.shape == (H.shape[0], L) and rep.w_eff.shape == (H.shape[0], L, d)
    assert float(jnp.max(rep.affinity)) <= 1e-12
    assert float(jnp.max(rep.t1)) <= 1e-12
    assert float(jnp.max(rep.g_form)) <= 1e-12
    probe = jax.jit(jax.vmap(lambda h: I.theorem1_probe(states, p, h, dws)))(H)
    W = jax.jit(jax.vmap(lambda h: trajectory(p, h, scale=scale).W))(H)
    assert float(jnp.max(jax.vmap(rel_err)(probe.W, W))) <= 1e-12
    # T1 also gives w_eff: ŷ_t = e_Dᵀ(I + W_t)[x_q; 0], so ∇_{x_q} ŷ_t = (e_Dᵀ(I + W_t))[:d]
    assert float(jnp.max(jax.vmap(rel_err)(rep.w_eff, W[:, :, -1, :d]))) <= 1e-12


@pytest.mark.slow
def test_hand_checked_jacobian():
    """One GD-construction layer, d = 1, N = 1, s = 1, ρ = −1, W_K = W_Q = I_1 ⊕ 0, W_V = 0 ⊕ (−η).
    Demonstration (a, b) = (2, 3), η = 0.1: ΔW = W_V h₁ (W_K h₁)ᵀ W_Q = [[0, 0], [−η b a, 0]],
    so W_1^J = [[0, 0], [−0.6, 0]] and w_eff = ρ · (−0.6) = 0.6 = η a b, one GD step."""
    p = gd_construction([0.1], 1)
    H = jnp.array([[2.0, 5.0], [3.0, 0.0]])
    states = functools.partial(attention.forward_states, scale="1")
    probe = I.theorem1_probe(states, p, H)
    assert np.allclose(np.asarray(probe.W[0]), [[0.0, 0.0], [-0.6, 0.0]], rtol=0, atol=1e-15)
    assert np.isnan(np.asarray(probe.g_form)).all()  # no delta_ws given
    f = lambda params, h: attention.predict(params, h, **gd_readout_settings)
    assert abs(float(I.implicit_weight(f, p, H)[0]) - 0.6) <= 1e-15


@pytest.mark.slow
def test_hand_checked_jacobian_of_an_mlp_layer():
    """A layer with W_V = 0 (no attention) and a one-unit MLP: h ↦ h + w_out gelu(w_inᵀh + b) + b_out,
    so ∂h¹/∂h⁰ − I = w_out gelu'(z) w_inᵀ, z = w_inᵀh + b, with the tanh-GELU derivative written out."""
    v = V.get_variant("linear_attn_mlp")
    w_in, w_out, b = np.array([0.5, -1.0]), np.array([2.0, 0.25]), 0.3
    zeros = jnp.zeros((1, 2, 2))
    p = V.AttnMLPParams(zeros, zeros, zeros, jnp.asarray(w_in)[None, None, :], jnp.array([[b]]),
                        jnp.asarray(w_out)[None, :, None], jnp.zeros((1, 2)))
    H = jnp.array([[1.0, 0.7], [2.0, 0.0]])
    z = w_in @ np.array([0.7, 0.0]) + b
    c = np.sqrt(2 / np.pi)
    t = np.tanh(c * (z + 0.044715 * z**3))
    gelu_prime = 0.5 * (1 + t) + 0.5 * z * (1 - t**2) * c * (1 + 3 * 0.044715 * z**2)
    probe = I.theorem1_probe(lambda params, h: V.forward_states(v, params, h), p, H)
    assert np.allclose(np.asarray(probe.W[0]), gelu_prime * np.outer(w_out, w_in), rtol=1e-13, atol=0)


@pytest.mark.slow
def test_probes_on_an_mlp_model_equal_finite_differences():
    """linear_attn_mlp, random weights: W_t^J, w_eff and the T1/G-form residuals computed from a
    central-difference Jacobian (step 1e-5, truncation error ~1e-10) agree with jacfwd to 1e-6; the
    affinity residual equals an independent NumPy least-squares fit to 1e-10."""
    v = V.get_variant("linear_attn_mlp")
    p = V.init_variant(jax.random.PRNGKey(5), v, L, D, mlp_width=6, init_std=0.4, dtype=jnp.float64)
    H = _prompts(1).H[0]
    readouts, states, dws = V.model_fns(v)
    probe = jax.jit(lambda h: I.theorem1_probe(states, p, h, dws))(H)
    h0 = H[:, -1]
    step = 1e-5
    q_states = jax.jit(lambda h: states(p, H.at[:, -1].set(h))[1:, :, -1])
    cols = [(q_states(h0 + step * e) - q_states(h0 - step * e)) / (2 * step) for e in jnp.eye(D)]
    J_fd = jnp.stack(cols, axis=-1)  # (L, D, D)
    W_fd = J_fd - jnp.eye(D)
    assert float(jnp.max(jnp.abs(probe.W - W_fd))) <= 1e-6
    h = q_states(h0)
    t1_fd = jax.vmap(rel_err)(h, J_fd @ h0)
    assert float(jnp.max(jnp.abs(probe.t1 - t1_fd))) <= 1e-6
    W_prev = jnp.concatenate([jnp.zeros((1, D, D)), W_fd[:-1]])
    g_fd = jax.vmap(rel_err)(W_fd - W_prev, jax.jit(dws)(p, H) @ (jnp.eye(D) + W_prev))
    assert float(jnp.max(jnp.abs(probe.g_form - g_fd))) <= 1e-6
    assert float(jnp.min(probe.t1)) > 1e-3  # the MLP's bias and curvature: not a trivial pass
    w_eff = jax.jit(lambda h: I.implicit_weight(readouts, p, h))(H)
    assert float(jnp.max(jnp.abs(w_eff - v.readout * W_fd[:, -1, :d]))) <= 1e-6
    key = jax.random.PRNGKey(6)
    aff = jax.jit(lambda h: I.affinity_residual(readouts, p, h, key, n_points=16))(H)
    X = np.asarray(I.perturbations(key, H, 16, 1.0))
    Y = np.asarray(jax.jit(jax.vmap(lambda x: readouts(p, H.at[:-1, -1].set(x))))(jnp.asarray(X)))
    A = np.hstack([np.ones((16, 1)), X])
    resid = Y - A @ np.linalg.lstsq(A, Y, rcond=None)[0]
    ref = np.linalg.norm(resid, axis=0) / np.linalg.norm(Y - Y.mean(0), axis=0)
    assert np.allclose(np.asarray(aff), ref, rtol=1e-10, atol=0)
    assert float(jnp.min(aff)) > 1e-4


@pytest.mark.slow
def test_perturbations_scale_with_the_data():
    """δ_1 = 0; the perturbations' RMS coordinate is radius · σ_x up to sampling (σ_x: the demonstrations'
    RMS coordinate); rescaling the prompt's inputs rescales them; the same key gives the same set."""
    H = _prompts(1).H[0]
    X = I.perturbations(jax.random.PRNGKey(0), H, 400, 0.5)
    X_s, _, x_q = split_prompt(H)
    sigma = float(jnp.sqrt(jnp.mean(X_s**2)))
    assert bool(jnp.all(X[0] == x_q))
    rms = float(jnp.sqrt(jnp.mean((X[1:] - x_q) ** 2)))
    assert abs(rms / (0.5 * sigma) - 1) <= 0.1  # 1197 draws: sampling error of an RMS ≈ 2 %
    X3 = I.perturbations(jax.random.PRNGKey(0), H.at[:-1].multiply(3.0), 400, 0.5)
    assert rel_err(X3, 3 * X) <= 1e-14
    assert bool(jnp.all(I.perturbations(jax.random.PRNGKey(0), H, 400, 0.5) == X))


@pytest.mark.slow
def test_affinity_of_non_affine_and_constant_maps():
    """ŷ = x₁² is not affine on a symmetric set (residual ≫ 0); a constant map gives 0 (not 0/0)."""
    H = _prompts(1).H[0]
    key = jax.random.PRNGKey(1)
    assert float(I.affinity_residual(lambda p, h: h[0, -1] ** 2, None, H, key)) > 0.3
    assert float(I.affinity_residual(lambda p, h: jnp.asarray(3.0), None, H, key)) == 0.0
    assert float(I.affinity_residual(lambda p, h: 2.0 * h[1, -1] - h[0, -1] + 1.0, None, H, key)) <= 1e-12


def test_reference_weights():
    """Noiseless N ≥ d: least squares and small-λ ridge recover the task vector w; GD gives gd_loop's
    w_1…w_L; alignment of a vector with itself is (1, 0) and with its negative (−1, 2)."""
    batch = _prompts(1)
    H, w = batch.H[0], batch.w[0]
    refs = I.reference_weights(H, eta=0.02, n_steps=L, lam=1e-9)
    assert rel_err(refs["least_squares"], w) <= 1e-12
    assert rel_err(refs["ridge"], w) <= 1e-8
    X_s, y_s, _ = split_prompt(H)
    assert rel_err(refs["gd"], gd_loop(X_s, y_s, jnp.full(L, 0.02))[1:]) == 0
    cos, dist = I.alignment(w, w)
    assert abs(float(cos) - 1) <= 1e-15 and float(dist) == 0
    cos, dist = I.alignment(-w, w)
    assert abs(float(cos) + 1) <= 1e-15 and abs(float(dist) - 2) <= 1e-15


@pytest.mark.slow
def test_bad_inputs():
    v = V.get_variant("linear_attn")
    p = V.init_variant(jax.random.PRNGKey(0), v, 1, D, dtype=jnp.float64)
    r, s, dw = V.model_fns(v)
    H = _prompts(2).H
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="H must be a batch"):
        I.probe_batch(r, s, dw, p, H[0], key, eta=0.1, lam=1.0)
    with pytest.raises(ValueError, match="n_points must exceed"):
        I.probe_batch(r, s, dw, p, H, key, eta=0.1, lam=1.0, n_points=d + 1)
    with pytest.raises(ValueError, match="n_points"):
        I.probe_batch(r, s, dw, p, H, key, eta=0.1, lam=1.0, n_points=0)
    for name in ("eta", "lam", "radius"):
        kw = dict(eta=0.1, lam=1.0, radius=1.0)
        kw[name] = 0.0
        with pytest.raises(ValueError, match=name):
            I.probe_batch(r, s, dw, p, H, key, **kw)
    with pytest.raises(TypeError, match="readouts"):
        I.probe_batch("predict", s, dw, p, H, key, eta=0.1, lam=1.0)
    with pytest.raises(TypeError, match="delta_ws"):
        I.probe_batch(r, s, 3, p, H, key, eta=0.1, lam=1.0)
    with pytest.raises(TypeError, match="floating"):
        I.probe_batch(r, s, dw, p, H.astype(jnp.int32), key, eta=0.1, lam=1.0)
