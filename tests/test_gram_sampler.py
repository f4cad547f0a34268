"""The Gram-matrix (Bartlett) sampler, lintrans.gram_sampler, and training with sampler="wishart".

Law: for fixed ``w`` the demonstrations' Gram matrix is Wishart, ``S ~ W_D(Σ, k)`` with
``Σ = A B Bᵀ Aᵀ`` (module docstring), so ``E S = kΣ`` and ``Var S_jl = k(Σ_jl² + Σ_jj Σ_ll)``
exactly. Moments are checked over independent prompts at 5 standard errors (means) or 6 % (variances,
whose sampling error at 40,000 prompts is below 2 % here); with fixed keys the tests are deterministic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans.batched import demo_gram, linear_predict_batch
from lintrans.gram_sampler import sample_linear_gram
from lintrans.tasks import sample_linear_xy
from lintrans.train import TrainConfig, batch_loss, init_state, make_train_step, sample_batch, seed_keys

F64 = jnp.float64
B, N, D_IN, SIGMA = 40_000, 6, 3, 0.5
C = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 2.0]])
W = np.array([0.7, -1.2, 0.4])


def _sigma_u(noise_std, cov_sqrt=C, w=W):
    """Covariance of one token h = [x; y] = A B g: Σ = A B Bᵀ Aᵀ."""
    d = len(w)
    A = np.eye(d + 1)
    A[d, :d] = w
    Bm = np.zeros((d + 1, d + 1))
    Bm[:d, :d] = cov_sqrt
    Bm[d, d] = noise_std
    return A @ Bm @ Bm.T @ A.T


@pytest.mark.slow
@pytest.mark.parametrize("k, static", [(6, False), (2, False), (6, True), (2, True)])
def test_wishart_moments_match_exact_formulas(k, static):
    """static: every prompt has k = n_demos demonstrations (``n_true=None``), so the chi columns have
    static degrees of freedom and are drawn by sums (k = 2: columns of 2, 1, 0, 0); otherwise the
    per-prompt counts ``n_true`` take the Marsaglia–Tsang path."""
    n_demos, n_true = (k, None) if static else (N, jnp.full((B,), k))
    g = jax.jit(lambda key: sample_linear_gram(
        key, B, n_demos, D_IN, n_true=n_true, noise_std=SIGMA, cov_sqrt=jnp.asarray(C),
        w=jnp.broadcast_to(jnp.asarray(W), (B, D_IN)), dtype=F64))(jax.random.PRNGKey(0))
    S = np.asarray(g.gram)
    sig = _sigma_u(SIGMA)
    mean_expected = k * sig
    var_expected = k * (sig**2 + np.outer(np.diag(sig), np.diag(sig)))
    se = np.sqrt(var_expected / B)
    np.testing.assert_array_less(np.abs(S.mean(0) - mean_expected), 5 * se,
                                 err_msg=f"E S = kΣ (k={k}), 5 standard errors")
    np.testing.assert_allclose(S.var(0), var_expected, rtol=0.06,
                               err_msg=f"Var S_jl = k(Σ_jl² + Σ_jj Σ_ll) (k={k}), rtol 6 %")
    np.testing.assert_allclose(S, np.swapaxes(S, 1, 2), rtol=0, atol=1e-12, err_msg="S symmetric")


@pytest.mark.slow
def test_same_law_as_token_sampler_marginal_over_w():
    # w drawn inside both samplers: compare the mean and spread of every entry of S.
    k_g, k_t = jax.random.split(jax.random.PRNGKey(1))
    n = 20_000
    S1 = np.asarray(jax.jit(lambda key: sample_linear_gram(key, n, N, D_IN, noise_std=SIGMA, dtype=F64).gram)(k_g))
    X, y, _ = jax.jit(lambda key: sample_linear_xy(key, n, N, D_IN, noise_std=SIGMA, dtype=F64))(k_t)
    S2 = np.asarray(jax.jit(demo_gram)(X[:, :N], y[:, :N]))
    se = np.sqrt(S1.var(0) / n + S2.var(0) / n)
    np.testing.assert_array_less(np.abs(S1.mean(0) - S2.mean(0)), 5 * se,
                                 err_msg="E S: Wishart sampler vs token sampler, 5 standard errors")
    np.testing.assert_allclose(S1.std(0), S2.std(0), rtol=0.1, err_msg="sd of S entries, rtol 10 %")


@pytest.mark.slow
def test_rank_zero_demonstrations_and_query():
    n_true = jnp.array([0, 1, 2, 3, 6])
    g = jax.jit(lambda key: sample_linear_gram(key, 5, N, D_IN, n_true=n_true, noise_std=0.0, dtype=F64))(
        jax.random.PRNGKey(2))  # one compilation, not one per primitive
    S = np.asarray(g.gram)
    np.testing.assert_array_equal(S[0], 0.0, err_msg="k = 0: no demonstrations, S = 0 exactly")
    ranks = [np.linalg.matrix_rank(s, tol=1e-10 * max(np.abs(s).max(), 1e-300)) for s in S]
    # noiseless: y = wᵀx, so rank S = min(k, d)
    assert ranks == [0, 1, 2, 3, 3], f"rank S = min(k, d_in) for noiseless prompts, got {ranks}"
    # noiseless labels are exactly linear: the label row of S is wᵀ times the x rows
    w = np.asarray(g.w)
    np.testing.assert_allclose(S[:, D_IN, :D_IN], np.einsum("bi,bij->bj", w, S[:, :D_IN, :D_IN]),
                               rtol=1e-12, atol=1e-12, err_msg="S_yx = wᵀ S_xx (noiseless)")
    np.testing.assert_array_equal(np.asarray(g.query)[:, D_IN], 0.0, err_msg="query label slot is 0")
    np.testing.assert_allclose(np.asarray(g.y_query), np.einsum("bi,bi->b", w, np.asarray(g.query)[:, :D_IN]),
                               rtol=1e-12, err_msg="y_q = wᵀx_q (noiseless)")


@pytest.mark.slow
def test_deterministic_and_validated():
    f = jax.jit(lambda key: sample_linear_gram(key, 8, N, D_IN, noise_std=0.1, dtype=F64))
    a, b = f(jax.random.PRNGKey(3)), f(jax.random.PRNGKey(3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg="same key, same draws")
    with pytest.raises(ValueError, match="n_prompts"):
        sample_linear_gram(jax.random.PRNGKey(0), 0, N, D_IN)
    with pytest.raises(ValueError, match="noise_std"):
        sample_linear_gram(jax.random.PRNGKey(0), 4, N, D_IN, noise_std=-1.0)
    with pytest.raises(ValueError, match="cov_sqrt"):
        sample_linear_gram(jax.random.PRNGKey(0), 4, N, D_IN, cov_sqrt=jnp.eye(2))
    with pytest.raises(ValueError, match="n_true"):
        sample_linear_gram(jax.random.PRNGKey(0), 4, N, D_IN, n_true=jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="w must"):
        sample_linear_gram(jax.random.PRNGKey(0), 4, N, D_IN, w=jnp.ones((4, 2)))


@pytest.mark.slow
def test_gram_of_token_batch_equals_token_gram():
    # The token sampler's Gram (computed from the draws, zeroed demonstrations left out) is the
    # H_s H_sᵀ of its token array, so the batched path reads the same prompt either way.
    cfg = TrainConfig(model="linear", d_in=4, n_demos=9, n_layers=2, batch_size=16, k_min=2, dtype="float64")
    batch = jax.jit(lambda key: sample_batch(cfg, key, 1))(jax.random.PRNGKey(4))

    @jax.jit  # the references and the loss, one compilation
    def gram_and_losses(params, batch):
        p = jax.tree_util.tree_map(lambda a: a[0], params)
        H_s = batch.H[:, :, :-1]
        ref = jnp.mean((linear_predict_batch(p, batch.H, batch.n_true, scale=cfg.scale, readout=1)
                        - batch.targets) ** 2) / cfg.d_in
        return jnp.einsum("bdn,ben->bde", H_s, H_s), batch.H[:, :, -1], batch_loss(cfg, p, batch), ref

    token_gram, token_query, loss, ref = gram_and_losses(init_state(cfg).params, batch)
    np.testing.assert_allclose(np.asarray(batch.gram), np.asarray(token_gram),
                               rtol=1e-12, atol=1e-12, err_msg="Batch.gram = H_s H_sᵀ, rtol 1e-12")
    np.testing.assert_array_equal(np.asarray(batch.query), np.asarray(token_query), err_msg="Batch.query")
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-12,
                               err_msg="loss via (gram, query) = loss via the token array, rtol 1e-12")


@pytest.mark.slow
def test_training_with_wishart_sampler_learns_and_matches_token_training():
    # Same model and optimizer; only the sampler differs. Both reach the same test error band.
    out = {}
    eval_cfg = TrainConfig(model="linear", d_in=4, n_demos=12, n_layers=1, batch_size=8192, dtype="float64")
    test = jax.jit(lambda key: sample_batch(eval_cfg, key, 1))(jax.random.PRNGKey(99))
    test_error = jax.jit(lambda params: batch_loss(eval_cfg, jax.tree_util.tree_map(lambda a: a[0], params), test))
    for sampler in ("tokens", "wishart"):
        cfg = TrainConfig(model="linear", d_in=4, n_demos=12, n_layers=1, batch_size=256, steps=300,
                          warmup_steps=20, lr=1e-2, sampler=sampler, dtype="float64")
        state = init_state(cfg)
        step_fn = make_train_step(cfg)
        params, opt_state, bad = state.params, state.opt_state, -jnp.ones((1, 2), jnp.int32)
        keys = seed_keys(cfg)[1]
        for t in range(1, cfg.steps + 1):
            params, opt_state, loss, _, bad = step_fn(params, opt_state, keys, jnp.asarray(t, jnp.int32), bad)
        assert int(bad.max()) == -1, f"non-finite step with sampler={sampler}"
        out[sampler] = float(test_error(params))  # the same test prompts for both samplers
    # one-step GD at its optimal rate: (d+1)/(N+d+1) = 5/17 ≈ 0.294 for a 1-layer model
    for sampler, err in out.items():
        assert err < 0.33, f"sampler={sampler}: test error {err:.3f} after 300 steps (one-step GD optimum 0.294)"
    assert abs(out["tokens"] - out["wishart"]) < 0.02, f"the two samplers train alike: {out}"


@pytest.mark.slow
def test_wishart_sampler_errors():
    with pytest.raises(ValueError, match="sampler must be one of"):
        TrainConfig(sampler="bartlett")
    with pytest.raises(ValueError, match="model='linear' and mask='demos'"):
        TrainConfig(model="softmax", sampler="wishart")
    with pytest.raises(ValueError, match="model='linear' and mask='demos'"):
        TrainConfig(mask="causal", sampler="wishart")
    cfg = TrainConfig(model="linear", d_in=3, n_demos=5, n_layers=1, batch_size=4, sampler="wishart", dtype="float64")
    batch = jax.jit(lambda key: sample_batch(cfg, key, 1))(jax.random.PRNGKey(0))  # one compilation
    assert batch.H is None
    params = init_state(cfg).params
    with pytest.raises(ValueError, match="sampler='wishart' does not draw"):
        jax.jit(lambda p: batch_loss(cfg, jax.tree_util.tree_map(lambda a: a[0], p), batch, path="tokens"))(params)


@pytest.mark.slow
def test_wishart_batch_with_curriculum_and_variable_k():
    # Curriculum: inactive input coordinates are zero, so their rows and columns of S vanish;
    # zeroed demonstrations: rank S ≤ k (noiseless: min(k, d_active)).
    from lintrans.train import Curriculum

    cfg = TrainConfig(model="linear", d_in=5, n_demos=8, n_layers=1, batch_size=64, k_min=1, sampler="wishart",
                      curriculum=Curriculum(d_start=3, d_step=1, n_start=4, n_step=2, every=10), dtype="float64")
    batch = jax.jit(lambda key: sample_batch(cfg, key, 1))(jax.random.PRNGKey(5))
    assert int(batch.d_active) == 3 and int(batch.n_active) == 4
    S, k = np.asarray(batch.gram), np.asarray(batch.n_true)
    assert k.min() >= 1 and k.max() <= 4, "k ~ U{k_min..n_active}"
    np.testing.assert_array_equal(S[:, 3:5, :], 0.0, err_msg="inactive coordinates: rows of S are 0")
    np.testing.assert_array_equal(np.asarray(batch.query)[:, 3:], 0.0, err_msg="inactive query coordinates are 0")
    ranks = np.array([np.linalg.matrix_rank(s, tol=1e-10 * np.abs(s).max()) for s in S])
    np.testing.assert_array_equal(ranks, np.minimum(k, 3), err_msg="rank S = min(k, d_active), noiseless")


# --- the cheap exact draws (issue 14) ------------------------------------------------------------


def test_words_and_transforms_are_jax_random_on_the_same_bits():
    # random_words: the threefry2x32 counter stream (jax.extend.random.threefry_2x32), two words a block.
    from jax.extend.random import threefry_2x32

    from lintrans.gram_sampler import normals_from_words, random_words, unit_uniforms_from_words

    @jax.jit  # every draw in one compilation (op by op, each primitive compiles on its own)
    def draws(key):
        # The transforms are jax.random's own: on jax.random.bits they give jax.random.normal / uniform bitwise.
        bits32 = jax.random.bits(key, (1000,), jnp.uint32)[:, None]
        bits64 = jax.random.bits(key, (1000,), jnp.uint64)
        words = jnp.stack([(bits64 >> 32).astype(jnp.uint32), bits64.astype(jnp.uint32)], axis=-1)
        return dict(words=(random_words(key, 9), threefry_2x32(key, jnp.arange(9, dtype=jnp.uint32))),
                    normal32=(normals_from_words(bits32, jnp.float32), jax.random.normal(key, (1000,), jnp.float32)),
                    uniform32=(unit_uniforms_from_words(bits32, jnp.float32),
                               jax.random.uniform(key, (1000,), jnp.float32)),
                    normal64=(normals_from_words(words, F64), jax.random.normal(key, (1000,), F64)))

    out = draws(jax.random.PRNGKey(7))
    for name, msg in (("words", "random_words = threefry_2x32 on the counters"), ("normal32", "float32 normal"),
                      ("uniform32", "float32 uniform"), ("normal64", "float64 normal")):
        np.testing.assert_array_equal(np.asarray(out[name][0]), np.asarray(out[name][1]), err_msg=msg)
    with pytest.raises(ValueError, match="float32 or float64"):
        normals_from_words(np.zeros((1000, 1), np.uint32), jnp.float16)


def _assert_chi_squared_law(sq, columns, col_chi2):
    """Columns ``j`` of ``sq`` (``n`` draws each) follow χ²(ν) for ``(j, ν)`` in ``columns``: E = ν within
    5 standard errors, Var = 2ν within 6 %, and column ``col_chi2`` (ν = 2) has the CDF 1 − e^{−t/2} at
    three points (5 standard errors)."""
    n = sq.shape[0]
    for j, nu in columns:
        se = np.sqrt(2 * nu / n)
        assert abs(sq[:, j].mean() - nu) < 5 * se, f"E χ²({nu}) = {nu}: {sq[:, j].mean():.4f}, 5 s.e. {5 * se:.4f}"
        np.testing.assert_allclose(sq[:, j].var(), 2 * nu, rtol=0.06, err_msg=f"Var χ²({nu}) = 2ν, rtol 6 %")
    for t in (0.5, 2.0, 5.0):
        p = 1 - np.exp(-t / 2)
        assert abs((sq[:, col_chi2] <= t).mean() - p) < 5 * np.sqrt(p * (1 - p) / n), f"P(χ²(2) ≤ {t}) = 1 − e^(−t/2)"


@pytest.mark.slow
@pytest.mark.parametrize("forced_retry", [False, True])
def test_chi_variates_have_the_chi_law(forced_retry):
    """E χ² = ν, Var χ² = 2ν (5 standard errors / 6 %), and for ν = 2 the CDF 1 − e^{−t/2} at three
    points (5 standard errors). forced_retry: every first proposal of ν ≥ 2 is rejected (z = −10⁴
    makes v = (1 + cz)³ < 0), so those values all come from the while-loop's retry rounds."""
    from lintrans.gram_sampler import chi_variates

    n = 100_000
    dofs = np.array([0, 1, 2, 3, 7, 20])
    dof = jnp.asarray(np.repeat(dofs[None, :], n, axis=0))
    kz, ku, kr = jax.random.split(jax.random.PRNGKey(11), 3)
    z = jax.random.normal(kz, dof.shape, F64)
    if forced_retry:  # ν = 1 is |z| (no rejection step), so only ν ≥ 2 are forced into the retries
        z = jnp.where(dof >= 2, -1e4, z)
    u = jax.random.uniform(ku, dof.shape, F64)
    chi = np.asarray(jax.jit(chi_variates)(kr, dof, z, u))
    assert np.all(np.isfinite(chi)) and np.all(chi >= 0)
    np.testing.assert_array_equal(chi[:, 0], 0.0, err_msg="χ(0) = 0")
    _assert_chi_squared_law(chi**2, list(enumerate(dofs))[1:], list(dofs).index(2))


def test_chi_by_sums_has_the_chi_law_and_refuses_a_mismatched_stream():
    """χ²(f) by sums (−2 Σ log(1 − u) + [f odd] z²): E χ² = f within 5 standard errors, Var χ² = 2f
    within 6 % (s.e. of a variance at n = 10⁵ ≈ 1.5 %·√(1 + 6/f)), for every f the sampler uses
    (0 … SUM_MAX_DOF), and the χ(2) CDF 1 − e^{−t/2} at three points (5 standard errors)."""
    from lintrans.gram_sampler import SUM_MAX_DOF, chi_by_sums

    n, dofs = 100_000, list(range(SUM_MAX_DOF + 1))
    ku, kz = jax.random.split(jax.random.PRNGKey(12))
    u = jax.random.uniform(ku, (n, sum(f // 2 for f in dofs)), F64)
    z = jax.random.normal(kz, (n, sum(f % 2 for f in dofs)), F64)
    chi = np.asarray(jax.jit(chi_by_sums, static_argnums=0)(tuple(dofs), u, z))
    assert chi.shape == (n, len(dofs)) and np.all(np.isfinite(chi)) and np.all(chi >= 0)
    np.testing.assert_array_equal(chi[:, 0], 0.0, err_msg="χ(0) = 0")
    _assert_chi_squared_law(chi**2, list(enumerate(dofs))[1:], list(dofs).index(2))
    with pytest.raises(ValueError, match="need 1 uniforms and 1 normals"):
        chi_by_sums((3,), u[:, :2], z[:, :1])
    with pytest.raises(ValueError, match="dofs must be integers >= 0"):
        chi_by_sums((-1,), u[:, :0], z[:, :0])
