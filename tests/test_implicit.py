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


@functools.partial(jax.jit, static_argnums=1)
def _sample(key, n):
    return sample_linear(key, n, N, d, dtype=jnp.float64)


def _prompts(n=4, key=0):
    """``n`` noiseless prompts, sampled by one compiled function (op by op, every primitive compiles)."""
    return _sample(jax.random.PRNGKey(key), n)


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["1", "1/N"])
def test_linear_attention_is_exactly_affine_and_theorem1(scale):
    """Linear attention (lintrans.attention, random weights): W_t^J equals the trajectory's W_t,
    T1 residual, G-form residual and affinity residual all ≤ 1e-12 (float64), for every prompt of a
    batch through the jitted, vmapped probe_batch."""
    p = jax.jit(lambda k: init_params(k, L, D, 0.5, jnp.float64))(jax.random.PRNGKey(1))
    H = _prompts().H
    states = functools.partial(attention.forward_states, scale=scale)
    readouts = lambda params, h: states(params, h)[1:, -1, -1]
    dws = lambda params, h: trajectory(params, h, scale=scale).delta_w
    rep = I.probe_batch(readouts, states, dws, p, H, jax.random.PRNGKey(2), eta=0.05, lam=1.0, n_points=12)
    assert rep.affinity.shape == rep.t1.shape == (H.shape[0], L) and rep.w_eff.shape == (H.shape[0], L, d)
    assert float(np.max(rep.affinity)) <= 1e-12
    assert float(np.max(rep.t1)) <= 1e-12
    assert float(np.max(rep.g_form)) <= 1e-12

    @jax.jit
    def against_trajectory(H, w_eff):
        probe = jax.vmap(lambda h: I.theorem1_probe(states, p, h, dws))(H)
        W = jax.vmap(lambda h: trajectory(p, h, scale=scale).W)(H)
        # T1 also gives w_eff: ŷ_t = e_Dᵀ(I + W_t)[x_q; 0], so ∇_{x_q} ŷ_t = (e_Dᵀ(I + W_t))[:d]
        return jax.vmap(rel_err)(probe.W, W), jax.vmap(rel_err)(w_eff, W[:, :, -1, :d])

    err_W, err_w_eff = against_trajectory(H, rep.w_eff)
    assert float(np.max(err_W)) <= 1e-12
    assert float(np.max(err_w_eff)) <= 1e-12


def test_hand_checked_jacobian():
    """One GD-construction layer, d = 1, N = 1, s = 1, ρ = −1, W_K = W_Q = I_1 ⊕ 0, W_V = 0 ⊕ (−η).
    Demonstration (a, b) = (2, 3), η = 0.1: ΔW = W_V h₁ (W_K h₁)ᵀ W_Q = [[0, 0], [−η b a, 0]],
    so W_1^J = [[0, 0], [−0.6, 0]] and w_eff = ρ · (−0.6) = 0.6 = η a b, one GD step."""
    p = gd_construction([0.1], 1)
    H = jnp.array([[2.0, 5.0], [3.0, 0.0]])
    states = functools.partial(attention.forward_states, scale="1")
    f = lambda params, h: attention.predict(params, h, **gd_readout_settings)
    probe, w_eff = jax.jit(lambda p, H: (I.theorem1_probe(states, p, H), I.implicit_weight(f, p, H)))(p, H)
    assert np.allclose(np.asarray(probe.W[0]), [[0.0, 0.0], [-0.6, 0.0]], rtol=0, atol=1e-15)
    assert np.isnan(np.asarray(probe.g_form)).all()  # no delta_ws given
    assert abs(float(w_eff[0]) - 0.6) <= 1e-15


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
    probe = jax.jit(lambda p, H: I.theorem1_probe(lambda params, h: V.forward_states(v, params, h), p, H))(p, H)
    assert np.allclose(np.asarray(probe.W[0]), gelu_prime * np.outer(w_out, w_in), rtol=1e-13, atol=0)


@pytest.mark.slow
def test_probes_on_an_mlp_model_equal_finite_differences():
    """linear_attn_mlp, random weights: W_t^J, w_eff and the T1/G-form residuals computed from a
    central-difference Jacobian (step 1e-5, truncation error ~1e-10) agree with jacfwd to 1e-6; the
    affinity residual equals an independent NumPy least-squares fit to 1e-10."""
    v = V.get_variant("linear_attn_mlp")
    p = jax.jit(lambda k: V.init_variant(k, v, L, D, mlp_width=6, init_std=0.4, dtype=jnp.float64))(
        jax.random.PRNGKey(5))
    H = _prompts(1).H[0]
    readouts, states, dws = V.model_fns(v)
    key = jax.random.PRNGKey(6)
    step = 1e-5

    @jax.jit  # the probes and their finite-difference references, one compilation
    def probes_and_differences(p, H):
        probe = I.theorem1_probe(states, p, H, dws)
        h0 = H[:, -1]
        q_states = lambda h: states(p, H.at[:, -1].set(h))[1:, :, -1]
        cols = [(q_states(h0 + step * e) - q_states(h0 - step * e)) / (2 * step) for e in jnp.eye(D, dtype=H.dtype)]
        J_fd = jnp.stack(cols, axis=-1)  # (L, D, D)
        W_fd = J_fd - jnp.eye(D)
        t1_fd = jax.vmap(rel_err)(q_states(h0), J_fd @ h0)
        W_prev = jnp.concatenate([jnp.zeros((1, D, D)), W_fd[:-1]])
        g_fd = jax.vmap(rel_err)(W_fd - W_prev, dws(p, H) @ (jnp.eye(D) + W_prev))
        w_eff = I.implicit_weight(readouts, p, H)
        aff = I.affinity_residual(readouts, p, H, key, n_points=16)
        X = I.perturbations(key, H, 16, 1.0)
        Y = jax.vmap(lambda x: readouts(p, H.at[:-1, -1].set(x)))(X)
        return probe, W_fd, t1_fd, g_fd, w_eff, aff, X, Y

    probe, W_fd, t1_fd, g_fd, w_eff, aff, X, Y = jax.tree_util.tree_map(np.asarray, probes_and_differences(p, H))
    assert float(np.max(np.abs(probe.W - W_fd))) <= 1e-6
    assert float(np.max(np.abs(probe.t1 - t1_fd))) <= 1e-6
    assert float(np.max(np.abs(probe.g_form - g_fd))) <= 1e-6
    assert float(np.min(probe.t1)) > 1e-3  # the MLP's bias and curvature: not a trivial pass
    assert float(np.max(np.abs(w_eff - v.readout * W_fd[:, -1, :d]))) <= 1e-6
    A = np.hstack([np.ones((16, 1)), X])
    resid = Y - A @ np.linalg.lstsq(A, Y, rcond=None)[0]
    ref = np.linalg.norm(resid, axis=0) / np.linalg.norm(Y - Y.mean(0), axis=0)
    assert np.allclose(aff, ref, rtol=1e-10, atol=0)
    assert float(np.min(aff)) > 1e-4


def test_perturbations_scale_with_the_data():
    """δ_1 = 0; the perturbations' RMS coordinate is radius · σ_x up to sampling (σ_x: the demonstrations'
    RMS coordinate); rescaling the prompt's inputs rescales them; the same key gives the same set."""
    H = _prompts(1).H[0]
    perturb = jax.jit(lambda key, H: I.perturbations(key, H, 400, 0.5))  # one compilation for the three sets
    X = perturb(jax.random.PRNGKey(0), H)
    X_s, _, x_q = (np.asarray(a) for a in split_prompt(np.asarray(H)))
    sigma = float(np.sqrt(np.mean(X_s**2)))
    assert bool(np.all(np.asarray(X[0]) == x_q))
    rms = float(np.sqrt(np.mean((np.asarray(X[1:]) - x_q) ** 2)))
    assert abs(rms / (0.5 * sigma) - 1) <= 0.1  # 1197 draws: sampling error of an RMS ≈ 2 %
    H3 = np.asarray(H).copy()
    H3[:-1] *= 3.0
    X3 = perturb(jax.random.PRNGKey(0), H3)
    assert jax.jit(rel_err)(X3, 3 * X) <= 1e-14
    assert bool(np.all(np.asarray(perturb(jax.random.PRNGKey(0), H)) == np.asarray(X)))


def test_affinity_of_non_affine_and_constant_maps():
    """ŷ = x₁² is not affine on a symmetric set (residual ≫ 0); a constant map gives 0 (not 0/0)."""
    H = _prompts(1).H[0]
    key = jax.random.PRNGKey(1)
    affinity = jax.jit(lambda H: (I.affinity_residual(lambda p, h: h[0, -1] ** 2, None, H, key),  # one compilation
                                  I.affinity_residual(lambda p, h: jnp.asarray(3.0), None, H, key),
                                  I.affinity_residual(lambda p, h: 2.0 * h[1, -1] - h[0, -1] + 1.0, None, H, key)))
    square, constant, affine = (float(a) for a in affinity(H))
    assert square > 0.3
    assert constant == 0.0
    assert affine <= 1e-12


def test_reference_weights():
    """Noiseless N ≥ d: least squares and small-λ ridge recover the task vector w; GD gives gd_loop's
    w_1…w_L; alignment of a vector with itself is (1, 0) and with its negative (−1, 2)."""
    batch = _prompts(1)

    @jax.jit  # one compilation (op by op, every primitive compiles on its own)
    def errors(H, w):
        refs = I.reference_weights(H, eta=0.02, n_steps=L, lam=1e-9)
        X_s, y_s, _ = split_prompt(H)
        return (rel_err(refs["least_squares"], w), rel_err(refs["ridge"], w),
                rel_err(refs["gd"], gd_loop(X_s, y_s, jnp.full(L, 0.02))[1:]), I.alignment(w, w), I.alignment(-w, w))

    e_ls, e_ridge, e_gd, (cos, dist), (cos_neg, dist_neg) = errors(batch.H[0], batch.w[0])
    assert e_ls <= 1e-12
    assert e_ridge <= 1e-8
    assert e_gd == 0
    assert abs(float(cos) - 1) <= 1e-15 and float(dist) == 0
    assert abs(float(cos_neg) + 1) <= 1e-15 and abs(float(dist_neg) - 2) <= 1e-15


def test_bad_inputs():
    v = V.get_variant("linear_attn")
    p = jax.jit(lambda k: V.init_variant(k, v, 1, D, dtype=jnp.float64))(jax.random.PRNGKey(0))
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
