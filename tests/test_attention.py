"""The stacked linear-attention forward pass (SPEC §2): a hand-computed case, invariances,
batching/jit consistency, the ΔW form against a naive attention-matrix reference, the fast
prediction path, and non-finite detection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lintrans.attention import forward, forward_states, predict, predict_tokens
from lintrans.params import LinearAttentionParams
from lintrans.trajectory import QUANTITIES, first_nonfinite, trajectory

RTOL = 1e-12  # float64 identities (SPEC §3)


# ---------------------------------------------------------------------------------------------
# The naive reference: builds the (N+1)×(N+1) masked attention matrix explicitly. It lives here
# (and in experiments/bench_core.py), never in lintrans/.


def naive_mask(n_tokens: int, mask: str) -> np.ndarray:
    """``M[i, j] = 1`` when token ``j`` attends to key/value token ``i``."""
    N = n_tokens - 1
    M = np.zeros((n_tokens, n_tokens))
    M[:N, :] = 1.0  # keys and values are demonstrations only; the query attends to all N
    if mask == "causal":
        M[:N, :N] = np.triu(np.ones((N, N)))  # demonstration j sees demonstrations i <= j
    return M


def naive_forward_states(params, H, mask="demos", scale="1"):
    """``H ← H + s · (W_V H)((W_K H)^T (W_Q H) ∘ M)`` layer by layer, in numpy float64."""
    H = np.asarray(H, np.float64)
    N = H.shape[1] - 1
    s = 1.0 if scale == "1" else 1.0 / N
    M = naive_mask(N + 1, mask)
    states = [H]
    for w_k, w_q, w_v in zip(*(np.asarray(a, np.float64) for a in params)):
        K, Q, V = w_k @ H, w_q @ H, w_v @ H
        H = H + s * V @ ((K.T @ Q) * M)
        states.append(H)
    return np.stack(states)


# Jitted once per shape and options (eagerly, every primitive compiles on its own). test_jit_equals_eager
# runs the eager path itself.
_forward = jax.jit(forward, static_argnames=("mask", "scale"))
_predict = jax.jit(predict, static_argnames=("mask", "scale", "readout"))
_first_nonfinite = jax.jit(lambda p, h: first_nonfinite(trajectory(p, h)))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), np.finfo(np.float64).tiny)


def make(seed, L, d_in, N, init_scale=0.3, d_out=1, B=None):
    """Weights of std ``init_scale/√D`` (as ``init_params``) and N(0, 1) prompts with the query
    label slot 0 (as ``random_prompts``), drawn with numpy: a new shape costs no compilation."""
    rng = np.random.default_rng(seed)
    D = d_in + d_out
    params = LinearAttentionParams(
        *(jax.device_put(rng.normal(0.0, init_scale / np.sqrt(D), (L, D, D))) for _ in range(3))
    )
    H = rng.normal(size=(B or 1, D, N + 1))
    H[:, d_in:, -1] = 0.0
    return params, jax.device_put(H if B else H[0])


# ---------------------------------------------------------------------------------------------
# Hand-computed case: D = 2, N = 2, L = 1.
#   H = [[1, 2, 3], [1, -1, 0]]  (x = 1, 2; labels 1, -1; query x = 3, label slot 0)
#   W_K = [[1, 2], [0, 1]], W_Q = [[1, 0], [0, 2]], W_V = [[1, 0], [0, 2]], s = 1
#   keys k_i = W_K h_i: k_1 = [3, 1], k_2 = [0, -1]; values v_1 = [1, 2], v_2 = [2, -2]
#   ΔW = W_V H_s (W_K H_s)^T W_Q = [[1, 2], [2, -2]] [[3, 1], [0, -1]] [[1, 0], [0, 2]]
#      = [[3, -1], [6, 4]] [[1, 0], [0, 2]] = [[3, -2], [6, 8]]
#   query: [3, 0] + ΔW [3, 0] = [3, 0] + [9, 18] = [12, 18]   → ŷ = 18 (readout +1)
#   demo 1: [1, 1] + [1, 14] = [2, 15];   demo 2: [2, -1] + [8, 4] = [10, 3]
#   causal: demo 1 sees only itself: q_1 = W_Q h_1 = [1, 2], k_1·q_1 = 5 → [1, 1] + 5 v_1 = [6, 11];
#           demo 2 sees both (= the demos result [10, 3]); the query sees both ([12, 18]).
#   s = 1/N = 1/2 halves ΔW: query [3, 0] + [4.5, 9] = [7.5, 9].

HAND_H = jnp.array([[1.0, 2.0, 3.0], [1.0, -1.0, 0.0]])
HAND_PARAMS = LinearAttentionParams(
    w_k=jnp.array([[[1.0, 2.0], [0.0, 1.0]]]),
    w_q=jnp.array([[[1.0, 0.0], [0.0, 2.0]]]),
    w_v=jnp.array([[[1.0, 0.0], [0.0, 2.0]]]),
)


def test_hand_computed_demos():
    @jax.jit  # one compilation
    def hand(p, H):
        return (forward(p, H), trajectory(p, H), predict(p, H), predict(p, H, readout=-1), predict_tokens(p, H))

    out, traj, y, y_neg, y_tokens = jax.tree_util.tree_map(np.asarray, hand(HAND_PARAMS, HAND_H))
    np.testing.assert_allclose(out, [[2.0, 10.0, 12.0], [15.0, 3.0, 18.0]], rtol=0, atol=1e-14)
    np.testing.assert_allclose(traj.delta_w[0], [[3.0, -2.0], [6.0, 8.0]], rtol=0, atol=1e-14)
    # W_0 = 0, so G_1 = ΔW_1 and W_1 = ΔW_1
    np.testing.assert_allclose(traj.G[0], traj.delta_w[0], rtol=0, atol=0)
    np.testing.assert_allclose(traj.W[0], traj.delta_w[0], rtol=0, atol=0)
    assert float(y) == pytest.approx(18.0, abs=1e-13)
    assert float(y_neg) == pytest.approx(-18.0, abs=1e-13)
    assert float(y_tokens) == pytest.approx(18.0, abs=1e-13)


def test_hand_computed_causal_and_scale():
    out = _forward(HAND_PARAMS, HAND_H, mask="causal")
    np.testing.assert_allclose(out, [[6.0, 10.0, 12.0], [11.0, 3.0, 18.0]], rtol=0, atol=1e-14)
    out = np.asarray(_forward(HAND_PARAMS, HAND_H, scale="1/N"))
    np.testing.assert_allclose(out[:, -1], [7.5, 9.0], rtol=0, atol=1e-14)


def test_hand_case_matches_naive_reference():
    for mask in ("demos", "causal"):
        ref = naive_forward_states(HAND_PARAMS, HAND_H, mask)[-1]
        np.testing.assert_allclose(_forward(HAND_PARAMS, HAND_H, mask=mask), ref, rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# ΔW form against the naive attention matrix, both masks and scales.


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    d_in=st.integers(1, 5),
    d_out=st.integers(1, 2),
    N=st.integers(1, 12),
    L=st.integers(1, 4),
    mask=st.sampled_from(["demos", "causal"]),
    scale=st.sampled_from(["1", "1/N"]),
)
def test_delta_w_form_equals_naive_attention_matrix(seed, d_in, d_out, N, L, mask, scale):
    params, H = make(seed, L, d_in, N, init_scale=0.3 * N ** (-1 / 3), d_out=d_out)
    states = np.asarray(jax.jit(lambda p, h: forward_states(p, h, mask=mask, scale=scale))(params, H))
    ref = naive_forward_states(params, H, mask, scale)
    assert np.all(np.isfinite(ref))
    for t in range(L + 1):
        assert rel(states[t], ref[t]) <= RTOL, f"ΔW-form state t={t} vs naive, mask={mask}, s={scale}: rtol {RTOL}"


# ---------------------------------------------------------------------------------------------
# Invariances and consistency


def test_permuting_demonstrations_leaves_query_unchanged():
    params, H = make(3, 4, 3, 9, init_scale=0.4)
    perm = np.random.default_rng(0).permutation(9)
    H_perm = np.concatenate([np.asarray(H)[:, perm], np.asarray(H)[:, -1:]], axis=1)
    out, out_perm = np.asarray(_forward(params, H)), np.asarray(_forward(params, H_perm))
    q, q_perm = out[:, -1], out_perm[:, -1]
    assert rel(q, q_perm) <= RTOL, f"query output under a permutation of demos: rtol {RTOL}"
    # the demonstrations themselves are permuted along (mask demos acts column-wise)
    assert rel(out[:, :-1][:, perm], out_perm[:, :-1]) <= RTOL
    y, y_perm = float(_predict(params, H)), float(_predict(params, H_perm))
    assert abs(y - y_perm) <= RTOL * abs(y)


def test_causal_mask_is_order_sensitive():
    # the permutation invariance above is a property of the demos mask, not of the test
    params, H = make(3, 2, 3, 6, init_scale=0.6)
    perm = np.arange(6)[::-1]
    H_perm = np.concatenate([np.asarray(H)[:, perm], np.asarray(H)[:, -1:]], axis=1)
    assert rel(np.asarray(_forward(params, H, mask="causal"))[:, -1],
               np.asarray(_forward(params, H_perm, mask="causal"))[:, -1]) > 1e-6


def test_vmap_equals_python_loop():
    params, H = make(5, 3, 4, 7, B=5)
    one = jax.jit(lambda h: trajectory(params, h))
    batched = jax.tree_util.tree_map(np.asarray, jax.jit(jax.vmap(lambda h: trajectory(params, h)))(H))
    for b in range(H.shape[0]):
        traj = one(np.asarray(H)[b])  # a numpy slice: no eager slice to compile
        for name in ("delta_w", "G", "W", "states"):
            assert rel(getattr(batched, name)[b], getattr(traj, name)) <= 1e-14, f"vmap vs loop: {name}, prompt {b}"


@pytest.mark.parametrize("mask", ["demos", "causal"])
def test_jit_equals_eager(mask):
    params, H = make(6, 3, 3, 5)
    eager = forward_states(params, H, mask=mask, scale="1/N")
    jitted = jax.jit(lambda p, h: forward_states(p, h, mask=mask, scale="1/N"))(params, H)
    assert rel(eager, jitted) <= 1e-14, "jit vs eager forward_states: rtol 1e-14"
    y_e = predict(params, H, mask=mask, readout=-1)
    y_j = jax.jit(lambda p, h: predict(p, h, mask=mask, readout=-1))(params, H)
    assert abs(float(y_e) - float(y_j)) <= 1e-14 * max(1.0, abs(float(y_e)))


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    d_in=st.integers(1, 6),
    N=st.integers(1, 30),
    L=st.integers(1, 6),
    mask=st.sampled_from(["demos", "causal"]),
    scale=st.sampled_from(["1", "1/N"]),
    readout=st.sampled_from([1, -1]),
)
def test_predict_equals_predict_tokens(seed, d_in, N, L, mask, scale, readout):
    params, H = make(seed, L, d_in, N, init_scale=0.3 * N ** (-1 / 3))

    @jax.jit
    def all_three(p, h):
        return (
            predict(p, h, mask=mask, scale=scale, readout=readout),
            predict_tokens(p, h, mask=mask, scale=scale, readout=readout),
            forward(p, h, mask=mask, scale=scale)[:, -1],
        )

    fast, ref, query = (np.asarray(v) for v in all_three(params, H))
    fast, ref = float(fast), float(ref)
    # predict reads the label slot of the final query token, with the readout sign
    assert ref == pytest.approx(readout * float(query[-1]), rel=1e-15, abs=1e-300)
    # absolute tolerance relative to the size of the final query token (ŷ itself may be ~0)
    size = float(np.linalg.norm(query))
    assert abs(fast - ref) <= RTOL * size, f"predict vs predict_tokens: |Δ| {abs(fast - ref):.2e} > {RTOL}·{size:.2e}"


# ---------------------------------------------------------------------------------------------
# Non-finite detection


def _numpy_first_nonfinite(params, H, scale="1"):
    """Independent float64 numpy run of the trajectory: (1-based layer, quantity) of the first
    non-finite value, in the order ΔW_t, G_t, W_t, H^t within a layer; (-1, -1) if finite."""
    H = np.asarray(H, np.float64)
    N = H.shape[1] - 1
    s = 1.0 if scale == "1" else 1.0 / N
    D = H.shape[0]
    W = np.zeros((D, D))
    with np.errstate(all="ignore"):
        for t, (w_k, w_q, w_v) in enumerate(zip(*(np.asarray(a) for a in params)), start=1):
            Hs = H[:, :N]
            dw = s * (w_v @ Hs) @ (w_k @ Hs).T @ w_q
            G = dw @ (np.eye(D) + W)
            W = W + G
            H = H + dw @ H
            for q, value in enumerate((dw, G, W, H)):
                if not np.all(np.isfinite(value)):
                    return t, q
    return -1, -1


@pytest.mark.parametrize("seed,init_scale", [(0, 3.0), (1, 8.0), (2, 2.0)])
def test_nonfinite_detection_names_the_first_layer(seed, init_scale):
    params, H = make(seed, 10, 3, 6, init_scale=init_scale)
    expected = _numpy_first_nonfinite(params, H)
    assert expected[0] > 1, "the weights must overflow, and not in the first layer, for this test to mean something"
    layer, qty = _first_nonfinite(params, H)
    assert (int(layer), QUANTITIES[int(qty)]) == (expected[0], QUANTITIES[expected[1]])


def test_nonfinite_detection_finite_and_input():
    params, H = make(0, 3, 2, 4)
    layer, qty = _first_nonfinite(params, H)
    assert (int(layer), int(qty)) == (-1, -1)
    H_nan = np.array(H)
    H_nan[0, 1] = np.nan
    layer, qty = _first_nonfinite(params, H_nan)
    assert int(layer) == 0, "a non-finite input prompt is reported as layer 0"


def test_float32_stays_float32_under_x64():
    """x64 is on in the tests: samplers and the forward pass must keep float32 inputs float32
    (an np.float64 scalar would silently promote them).

    JAX fixes every dtype while tracing, so ``jax.eval_shape`` (tracing, no compilation) gives the
    dtypes a run would produce."""
    from lintrans.params import init_params
    from lintrans.tasks import random_prompts, sample_linear

    key = jax.random.PRNGKey(0)
    params = jax.eval_shape(lambda k: init_params(k, 2, 4, 0.5, jnp.float32), key)
    assert {a.dtype for a in params} == {jnp.dtype(jnp.float32)}
    H = jax.eval_shape(lambda k: random_prompts(k, 1, 5, 3, 1, jnp.float32)[0], key)
    assert H.dtype == jnp.float32
    batch = jax.eval_shape(lambda k: sample_linear(k, 2, 5, 3, noise_std=0.1, dtype=jnp.float32), key)
    assert batch.H.dtype == jnp.float32
    traj = jax.eval_shape(lambda p, h: trajectory(p, h), params, H)
    assert {a.dtype for a in traj} == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(lambda p, h: predict(p, h), params, H).dtype == jnp.float32
