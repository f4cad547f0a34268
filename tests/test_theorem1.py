"""Theorem 1 (SPEC §3): the identities T1–T6 as property tests, in float64 (tests/conftest.py).

Weights are drawn at ``init_scale ≤ 0.3·N^{-1/3}`` (std ``init_scale/√D``): ``‖ΔW_t‖`` grows like
``s·N·init_scale³`` (SPEC §3), so this keeps every state finite to L = 8 for N ≤ 50 — and every
test asserts finiteness before it trusts an error, because a non-finite state is never a pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lintrans.checks import CHECKS, check_theorem1, identity_errors, t1_query, t3_all_tokens, t4_closed_form, t5_rank, t6_locality
from lintrans.params import LinearAttentionParams
from lintrans.pruning import truncate_matrix
from lintrans.trajectory import Trajectory, trajectory

RTOL = 1e-12  # SPEC §3: float64 identities to 1e-12 relative error


def draw(seed, L, d_in, d_out, N, c, B=2):
    """Weights ``(L, D, D)`` of std ``c/√D`` and ``B`` prompts ``(B, D, N+1)`` of N(0, 1) tokens
    with the query label slot 0 — the distributions of ``init_params``/``random_prompts``, drawn
    with numpy so that a new shape costs no sampler compilation (hypothesis draws many shapes)."""
    rng = np.random.default_rng(seed)
    D = d_in + d_out
    params = LinearAttentionParams(*(jax.device_put(rng.normal(0.0, c / np.sqrt(D), (L, D, D))) for _ in range(3)))
    H = rng.normal(size=(B, D, N + 1))
    H[:, d_in:, -1] = 0.0
    return params, H  # numpy: H[0] is then no eager slice (one compilation per shape); jit takes it as is


sizes = dict(
    seed=st.integers(0, 2**31 - 1),
    d_in=st.integers(1, 8),
    d_out=st.integers(1, 3),
    N=st.integers(1, 50),
    L=st.integers(1, 8),
    c=st.floats(0.0, 0.3),
    scale=st.sampled_from(["1", "1/N"]),
)


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(**sizes, mask=st.sampled_from(["demos", "causal"]))
def test_t1_to_t5(seed, d_in, d_out, N, L, c, scale, mask):
    """T1, T2 for both masks; T3, T4 for mask demos; T5 for both."""
    params, H = draw(seed, L, d_in, d_out, N, c * N ** (-1 / 3))
    report = jax.jit(jax.vmap(lambda h: check_theorem1(params, h, mask=mask, scale=scale)))(H)
    assert np.all(np.asarray(report.nonfinite_layer) == -1), "states must stay finite at this weight scale"
    for name, masks in CHECKS.items():
        if name == "T5":
            continue
        err = np.asarray(getattr(report, name))
        if mask in masks:
            assert err.shape == (H.shape[0], L)
            assert np.all(err <= RTOL), f"{name} (mask={mask}, s={scale}): max rel. err {err.max():.2e} > rtol {RTOL}"
        else:
            assert np.all(np.isnan(err)), f"{name} does not apply to mask={mask}: must be NaN, not a number"
    D = d_in + d_out
    assert np.all(np.asarray(report.T5_bound) == min(N, D))
    assert np.all(np.asarray(report.T5_rank) <= min(N, D)), "T5: rank(ΔW_t) ≤ min(N, D)"


def _numpy_trajectory(params, H, s):
    """Independent float64 numpy: token-by-token states, ΔW_t from the current demonstrations,
    G_t = ΔW_t (I + W_{t-1}), W_t = W_{t-1} + G_t."""
    H = np.asarray(H, np.float64)
    D, N = H.shape[0], H.shape[1] - 1
    W = np.zeros((D, D))
    out = {"delta_w": [], "G": [], "W": [], "states": [H]}
    for w_k, w_q, w_v in zip(*(np.asarray(a) for a in params)):
        Hs = H[:, :N]
        dw = s * sum(np.outer(w_v @ Hs[:, i], w_k @ Hs[:, i]) @ w_q for i in range(N))
        G = dw @ (np.eye(D) + W)
        W = W + G
        H = np.stack([H[:, j] + dw @ H[:, j] for j in range(N + 1)], axis=1)
        for k, v in zip(("delta_w", "G", "W", "states"), (dw, G, W, H)):
            out[k].append(v)
    return {k: np.stack(v) for k, v in out.items()}


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), np.finfo(np.float64).tiny)


@pytest.mark.parametrize("scale", ["1", "1/N"])
def test_trajectory_and_closed_form_t4_against_independent_numpy(scale):
    """The library's ΔW_t, G_t, W_t, states equal an independent numpy loop; and the closed form
    T4 ``ΔW_t = s W_V^t A S A^T (W_K^t)^T W_Q^t`` (A = I + W_{t-1}, S = H^0_s H^0_s^T) holds for it."""
    L, d_in, N = 5, 4, 7
    params, H = draw(11, L, d_in, 1, N, 0.5, B=1)
    H = H[0]
    s = 1.0 if scale == "1" else 1.0 / N
    ref = _numpy_trajectory(params, H, s)
    traj = jax.jit(lambda p, h: trajectory(p, h, scale=scale))(params, H)
    for name in ("delta_w", "G", "W", "states"):
        assert rel(getattr(traj, name), ref[name]) <= RTOL, f"trajectory {name} vs numpy: rtol {RTOL}"
    Hs = np.asarray(H)[:, :N]
    S = Hs @ Hs.T
    D = d_in + 1
    W_prev = np.eye(D) * 0
    for t in range(L):
        A = np.eye(D) + W_prev
        w_k, w_q, w_v = (np.asarray(a[t]) for a in params)
        closed = s * w_v @ A @ S @ A.T @ w_k.T @ w_q
        assert rel(ref["delta_w"][t], closed) <= RTOL, f"T4 closed form, layer {t + 1}: rtol {RTOL}"
        W_prev = ref["W"][t]
    assert np.all(np.asarray(jax.jit(t4_closed_form)(params, traj, s)) <= RTOL)


def test_identities_detect_errors():
    """Each check is able to fail: T3/T4 under the causal mask (where they do not hold), T1 with
    a perturbed W, T5 with a rank above the bound."""
    params, H = draw(2, 3, 3, 1, 6, 0.5, B=1)

    @jax.jit  # one compilation (op by op, every primitive compiles on its own)
    def errors_of_wrong_claims(params, h):
        causal = trajectory(params, h, mask="causal")
        traj = trajectory(params, h)
        size = jnp.linalg.norm(jnp.eye(4) + traj.W, axis=(1, 2))
        bad = traj._replace(W=traj.W.at[:, 0, 0].add(1e-6 * size))
        return t3_all_tokens(causal), t4_closed_form(params, causal, 1.0), t1_query(bad)

    t3, t4, t1 = (np.asarray(e) for e in errors_of_wrong_claims(params, H[0]))
    assert np.all(t3 > 1e-6), "T3 must fail for the causal mask"
    assert np.all(t4[1:] > 1e-6), "T4 must fail for the causal mask (t ≥ 2)"
    assert np.all(t1 > 1e-9), "T1 must fail when W_t is off by 1e-6 relative"
    # a full-rank "ΔW" where the bound is N = 2 < D = 4
    D, N = 4, 2
    fake = Trajectory(
        delta_w=np.eye(D)[None], G=np.eye(D)[None], W=np.eye(D)[None], states=np.ones((2, D, N + 1))
    )
    ranks, bound = jax.jit(t5_rank)(fake)
    assert int(bound) == 2 and int(ranks[0]) == 4 > int(bound)


def test_t5_bound_is_attained_when_n_below_d():
    """rank(ΔW_t) = N exactly when N < D (generic weights): T5 is tight, not vacuous."""
    params, H = draw(4, 4, 7, 1, 3, 0.5, B=3)
    report = jax.jit(jax.vmap(lambda h: check_theorem1(params, h)))(H)
    assert np.all(np.asarray(report.T5_rank) == 3)
    assert np.all(np.asarray(report.T5_bound) == 3)


@settings(max_examples=6, deadline=None)
@given(
    **dict(sizes, c=st.floats(0.1, 0.3)),
    mask=st.sampled_from(["demos", "causal"]),
    target=st.sampled_from(["w_k", "w_q", "w_v", "attn"]),
    data=st.data(),
)
@pytest.mark.slow
def test_t6_locality(seed, d_in, d_out, N, L, c, scale, mask, target, data):
    """Truncating layer k (rate ξ = 0.5 via lintrans.pruning.truncate_matrix) leaves ΔW_t, G_t,
    W_t bitwise unchanged for t < k and changes every one with t ≥ k."""
    k = data.draw(st.integers(1, L), label="k")
    params, H = draw(seed, L, d_in, d_out, N, c * N ** (-1 / 3), B=1)
    names = ("w_k", "w_q", "w_v") if target == "attn" else (target,)
    ranks = []  # truncate_matrix's rank r, a Python int (fixed by the shape), recorded while tracing

    @jax.jit  # one compilation per drawn shape (op by op, every primitive of the SVD compiles on its own)
    def prune(params):
        new = {}
        for name in ("w_k", "w_q", "w_v"):
            arr = getattr(params, name)
            if name in names:
                clipped, r = truncate_matrix(arr[k - 1], 0.5)
                ranks.append(r)
                arr = arr.at[k - 1].set(clipped)
            new[name] = arr
        return LinearAttentionParams(**new)

    pruned = prune(params)
    assert ranks == [(d_in + d_out) // 2] * len(names)
    run = jax.jit(lambda p, h: trajectory(p, h, mask=mask, scale=scale))  # one compiled function for both
    before, after = run(params, H[0]), run(pruned, H[0])
    assert np.all(np.isfinite(np.asarray(before.states))) and np.all(np.isfinite(np.asarray(after.states)))
    out = jax.jit(lambda b, a: t6_locality(b, a, k))(before, after)
    for q in ("delta_w", "G", "W"):
        assert bool(out[f"{q}_equal_before_k"]), f"T6: {q}_t for t < k={k} must be bitwise unchanged"
        change = np.asarray(out[f"{q}_change"])
        assert np.all(change[: k - 1] == 0.0)
        assert np.all(change[k - 1 :] > 0.0), f"T6: {q}_t for t ≥ k={k} must change; relative change {change}"


def test_t6_rejects_bad_layer():
    params, H = draw(0, 2, 2, 1, 3, 0.2, B=1)
    traj = jax.jit(trajectory)(params, H[0])
    for k in (0, 3):
        with pytest.raises(ValueError, match="k must be a layer"):
            t6_locality(traj, traj, k)


@pytest.mark.parametrize("mask", ["demos", "causal"])
def test_identity_errors_are_check_theorem1_without_t5(mask):
    params, H = draw(3, 3, 4, 1, 7, 0.2, B=1)
    H = H[0]
    # each jitted on its own (one compilation each, not one per primitive)
    report = jax.jit(lambda p, h: check_theorem1(p, h, mask=mask, scale="1/N"))(params, H)
    errors, nonfinite_layer = jax.jit(lambda p, h: identity_errors(p, h, mask=mask, scale="1/N"))(params, H)
    expected = np.stack([np.asarray(getattr(report, c)) for c in ("T1", "T2", "T3", "T4")])
    np.testing.assert_array_equal(np.asarray(errors), expected, err_msg="identity_errors = T1–T4 of check_theorem1")
    assert int(nonfinite_layer) == int(report.nonfinite_layer)
