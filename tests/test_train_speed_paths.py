"""The training step's speed paths (issue 14): fused tiny products, the automatic sampler, the breakdown.

Identities in float64 (tests/conftest.py enables x64) at rtol 1e-12; the two forms of a product
differ by summation order only, so the bound is rounding of a few terms (float64 eps ~ 2e-16).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans import attention
from lintrans import batched as lb
from lintrans.batched import TINY_MATMUL_MAX_DIM, batch_matmul, implicit_layers
from lintrans.numerics import einsum, rel_err
from lintrans.params import init_params
from lintrans.train import TrainConfig, init_state, make_train_step, sample_batch, seed_keys, train
from lintrans.train_config import resolve_sampler, sampler_blocks

RTOL = 1e-12
F64 = jnp.float64


def _tree_rel_err(a, b):
    return max(float(rel_err(x, y)) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.slow
@pytest.mark.parametrize("J", [1, 3, TINY_MATMUL_MAX_DIM, TINY_MATMUL_MAX_DIM + 1])
def test_batch_matmul_equals_einsum_with_gradients(J):
    """Both branches (fused multiply-adds for J ≤ TINY_MATMUL_MAX_DIM, batched einsum above) are
    a @ b per prompt, and so is the custom gradient of the fused form: rtol 1e-12."""
    ka, kb, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    a = jax.random.normal(ka, (7, 4, J), F64)
    b = jax.random.normal(kb, (7, J, 5), F64)
    g = jax.random.normal(kg, (7, 4, 5), F64)

    def ref(a, b):
        return einsum("bij,bjk->bik", a, b)

    assert float(rel_err(batch_matmul(a, b), ref(a, b))) <= RTOL, "batch_matmul == einsum, rtol 1e-12"
    got = jax.vjp(batch_matmul, a, b)[1](g)
    want = jax.vjp(ref, a, b)[1](g)
    assert _tree_rel_err(got, want) <= RTOL, "vjp of batch_matmul == vjp of einsum, rtol 1e-12"
    # second order (the custom rule is differentiable again): the Hessian-vector form through jvp of the vjp
    hv = jax.jvp(lambda a: jax.vjp(batch_matmul, a, b)[1](g)[1], (a,), (a,))[1]
    hv_ref = jax.jvp(lambda a: jax.vjp(ref, a, b)[1](g)[1], (a,), (a,))[1]
    assert float(rel_err(hv, hv_ref)) <= RTOL, "second-order derivative through the custom rule, rtol 1e-12"


def test_batch_matmul_rejects_bad_shapes():
    with pytest.raises(ValueError, match="batch_matmul needs"):
        batch_matmul(jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4)))


# Loss and gradients of the batched path against the token reference on both sides of the size rule:
# tests/test_train.py::test_fast_loss_and_gradients_equal_token_reference.


@pytest.mark.slow
def test_implicit_layers_rule():
    """The Gram path's split (lintrans.batched.implicit_layers): L - 1 middle layers at most, capped by D."""
    assert [implicit_layers(L, TINY_MATMUL_MAX_DIM + 1) for L in range(1, 7)] == [0, 1, 2, 3, 3, 3]
    assert [implicit_layers(L, TINY_MATMUL_MAX_DIM) for L in range(1, 7)] == [0, 1, 2, 2, 2, 2]
    assert lb.IMPLICIT_MAX_LAYERS == 3 and lb.IMPLICIT_MAX_LAYERS_TINY == 2


@pytest.mark.parametrize("n_layers, dim", [(1, 5), (2, 10), (4, 5), (4, 10), (5, 5), (5, 10)])
def test_gram_path_with_implicit_layers_equals_token_forward(n_layers, dim):
    """linear_predict_batch (j = implicit_layers(L, D) middle layers applied as matrix-vector products,
    the first L - 1 - j formed) == vmap(attention.predict_tokens), values and gradients, float64, rtol 1e-12.

    The cases cover every split: no middle layer (L = 1), all implicit (L = 2; L = 4 at D = 10), and
    formed followed by implicit (L = 4, 5 at D = 5; L = 5 at D = 10), on both sides of
    TINY_MATMUL_MAX_DIM (fused products vs einsums in the formed layers)."""
    k_p, k_h, k_y = jax.random.split(jax.random.key(n_layers * 100 + dim), 3)
    params = init_params(k_p, n_layers, dim, 0.5, F64)
    H = jax.random.normal(k_h, (6, dim, 8), F64)
    y = jax.random.normal(k_y, (6,), F64)

    def loss(predict, p):
        return jnp.mean((predict(p) - y) ** 2)

    fast = jax.jit(jax.value_and_grad(lambda p: loss(
        lambda q: lb.linear_predict_batch(q, H, scale="1/N", readout=-1), p)))
    ref = jax.jit(jax.value_and_grad(lambda p: loss(
        lambda q: jax.vmap(lambda h: attention.predict_tokens(q, h, scale="1/N", readout=-1))(H), p)))
    (v_fast, g_fast), (v_ref, g_ref) = fast(params), ref(params)
    assert np.isfinite(float(v_ref)) and float(v_ref) > 0
    where = f"L={n_layers}, D={dim}: Gram path vs token forward, rtol 1e-12"
    assert float(rel_err(v_fast, v_ref)) <= RTOL, f"loss, {where}"
    assert _tree_rel_err(g_fast, g_ref) <= RTOL, f"gradients, {where}"


@pytest.mark.parametrize("k, static", [(6, False), (2, False), (6, True), (2, True)])
def test_noiseless_wishart_draws_have_the_exact_moments(k, static):
    """σ = 0: the sampler draws only the inputs' d × d Bartlett factor (issue 14: fewer random words),
    and S is still Wishart, ``E S = kΣ``, ``Var S_jl = k(Σ_jl² + Σ_jj Σ_ll)`` with ``Σ = A Bᵀ B Aᵀ``,
    ``B = diag(C, 0)``: means within 5 standard errors, variances within 6 % (sampling error < 2 % at
    40,000 prompts), the label row exactly ``S_xy = S_xx w``, ``S_yy = wᵀ S_xx w`` (rtol 1e-12)."""
    from lintrans.gram_sampler import sample_linear_gram

    B, N, d = 40_000, 6, 3
    C = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 2.0]])
    w = np.array([0.7, -1.2, 0.4])
    # static: k = n_demos for every prompt (chi columns by sums), else per-prompt counts (Marsaglia–Tsang).
    n_demos, n_true = (k, None) if static else (N, jnp.full((B,), k))
    g = jax.jit(lambda key: sample_linear_gram(key, B, n_demos, d, n_true=n_true, noise_std=0.0,
                                               cov_sqrt=jnp.asarray(C), w=jnp.broadcast_to(jnp.asarray(w), (B, d)),
                                               dtype=F64))(jax.random.PRNGKey(0))
    S = np.asarray(g.gram)
    A = np.eye(d + 1)
    A[d, :d] = w
    Bm = np.zeros((d + 1, d + 1))
    Bm[:d, :d] = C
    sig = A @ Bm @ Bm.T @ A.T
    var = k * (sig**2 + np.outer(np.diag(sig), np.diag(sig)))
    np.testing.assert_array_less(np.abs(S.mean(0) - k * sig), 5 * np.sqrt(var / B) + 1e-12,
                                 err_msg=f"E S = kΣ (k={k}), 5 standard errors")
    np.testing.assert_allclose(S.var(0)[:d, :d], var[:d, :d], rtol=0.06, err_msg=f"Var S_xx (k={k}), rtol 6 %")
    np.testing.assert_allclose(S[:, :d, d], np.einsum("bij,j->bi", S[:, :d, :d], w), rtol=1e-12,
                               atol=1e-12 * np.abs(S[:, :d, d]).max(),
                               err_msg="noiseless: S_xy = S_xx w")
    np.testing.assert_allclose(S[:, d, d], np.einsum("bi,bij,j->b", np.broadcast_to(w, (B, d)), S[:, :d, :d], w),
                               rtol=1e-12, atol=1e-12 * np.abs(S[:, d, d]).max(),
                               err_msg="noiseless: S_yy = wᵀ S_xx w (atol: 1e-12 of the largest, for near-0 entries)")
    if k < d:
        ranks = np.linalg.matrix_rank(S[:100, :d, :d], tol=1e-10 * np.abs(S).max())
        np.testing.assert_array_equal(ranks, k, err_msg="rank S_xx = k < d")


def test_auto_sampler_rule():
    # The peers' configurations: fewer threefry blocks with the Wishart draws.
    for d, N in ((10, 10), (5, 20), (20, 40)):
        cfg = TrainConfig(d_in=d, n_demos=N)
        assert sampler_blocks(cfg, "wishart") < sampler_blocks(cfg, "tokens")
        assert resolve_sampler(cfg, "batched") == "wishart"
    # d = 20, N = 2, noiseless: 80 token values against 116 blocks of Bartlett draws (190 upper-triangle
    # normals, chi columns of 2 and 1 degrees of freedom by sums, one word each, w and the query): tokens.
    cfg = TrainConfig(d_in=20, n_demos=2)
    assert (sampler_blocks(cfg, "tokens"), sampler_blocks(cfg, "wishart")) == (80.0, 116.0)
    assert resolve_sampler(cfg, "batched") == "tokens"
    # Paths that read tokens, a batch for every path (None), models that read tokens, the causal mask.
    cfg = TrainConfig(d_in=5, n_demos=20)
    assert [resolve_sampler(cfg, p) for p in ("gram", "tokens", None)] == ["tokens"] * 3
    assert resolve_sampler(TrainConfig(mask="causal"), "batched") == "tokens"
    assert resolve_sampler(TrainConfig(model="softmax", d_in=3, n_demos=6, width=8, n_heads=2), "batched") == "tokens"
    # An explicit sampler is kept.
    assert resolve_sampler(dataclasses.replace(cfg, sampler="tokens"), "batched") == "tokens"
    assert TrainConfig().sampler == "auto"
    with pytest.raises(ValueError, match="sampler must be 'tokens' or 'wishart'"):
        sampler_blocks(cfg, "auto")


@pytest.mark.slow
def test_default_step_trains_on_wishart_draws_and_the_token_paths_still_run():
    cfg = TrainConfig(d_in=3, n_demos=6, n_layers=2, batch_size=8, steps=4, warmup_steps=1, dtype="float64")
    key = jax.random.fold_in(seed_keys(cfg)[1][0], 1)
    b_default = jax.jit(lambda k: sample_batch(cfg, k, 1, "batched"))(key)
    b_wishart = jax.jit(lambda k: sample_batch(dataclasses.replace(cfg, sampler="wishart"), k, 1))(key)
    assert b_default.H is None, "auto on the batched path: no tokens drawn"
    np.testing.assert_array_equal(np.asarray(b_default.gram), np.asarray(b_wishart.gram),
                                  err_msg="auto == wishart draws here, bitwise")
    assert jax.jit(lambda k: sample_batch(cfg, k, 1))(key).H is not None, "path=None: a batch with tokens"
    state = init_state(cfg)
    args = (state.params, state.opt_state, seed_keys(cfg)[1], jnp.int32(1), jnp.full((1, 2), -1, jnp.int32))
    loss_default = make_train_step(cfg)(*args)[2]
    loss_wishart = make_train_step(dataclasses.replace(cfg, sampler="wishart"))(*args)[2]
    np.testing.assert_array_equal(np.asarray(loss_default), np.asarray(loss_wishart), err_msg="same step, bitwise")
    loss_tokens = make_train_step(cfg, "tokens")(*args)[2]  # auto resolves to tokens for the token path
    loss_ref = make_train_step(dataclasses.replace(cfg, sampler="tokens"), "batched")(*args)[2]
    assert float(rel_err(loss_tokens, loss_ref)) <= RTOL, "token path == batched path on the token draws"


@pytest.mark.slow
def test_auto_sampler_seed_index_draws_equal_one_seed_draws_and_reproduce():
    """Under vmap over seeds (the step's seed axis) the Wishart draws, retry loop included, are
    elementwise in the keys: seed index i == a one-seed draw from its key — the query (a draw)
    bitwise, the Gram matrix and the label (products of draws, compiled differently under vmap) to
    rounding, float64 rtol 1e-12."""
    cfg = TrainConfig(d_in=3, n_demos=6, n_layers=1, batch_size=512, steps=4, warmup_steps=1, seed=3, seeds=3,
                      dtype="float64")
    keys = seed_keys(cfg)[1]

    def draw(k):
        b = sample_batch(cfg, jax.random.fold_in(k, 5), 5, "batched")
        return b.gram, b.query, b.targets

    together = jax.jit(jax.vmap(draw))(keys)
    for i in range(3):
        alone = jax.jit(draw)(keys[i])
        np.testing.assert_array_equal(np.asarray(together[1])[i], np.asarray(alone[1]),
                                      err_msg=f"seed index {i}: query (drawn), bitwise")
        for name, a, b in zip(("Gram matrix", "label"), (together[0], together[2]), (alone[0], alone[2])):
            assert float(rel_err(a[i], b)) <= RTOL, f"seed index {i}: {name} (computed), rtol 1e-12"
    one = dataclasses.replace(cfg, seeds=1, steps=3)
    a, b = train(one, quiet=True).state, train(one, quiet=True).state
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg="same config, same numbers (bitwise)")
