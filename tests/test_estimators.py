"""Estimator identities, hand cases, the optimal one-step rate, and the ICL error (SPEC §5).

Statistical tests state their sample size and use a tolerance of a few standard errors estimated
from the same sample (prompts are i.i.d., so per-prompt quantities are the independent units).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lintrans import estimators as E
from lintrans.numerics import rel_err
from lintrans.tasks import sample_linear, split_prompt

F64 = jnp.float64


def _prompt(seed, n, d):
    """Generic Gaussian (X_s, y_s, x_q); numpy draws (no JAX compile per shape) as float64 arrays."""
    rng = np.random.default_rng(seed)
    return tuple(jax.device_put(a) for a in (rng.normal(size=(n, d)), rng.normal(size=n), rng.normal(size=d)))


def _linear_prompts(seed, B, n, d, noise_std=0.0):
    """Isotropic linear-task prompts H (B, d+1, N+1) and query labels, drawn with numpy.

    The statistical tests here are about the estimators, not the sampler (tests/test_tasks.py
    checks sample_linear); numpy draws avoid a JAX compilation per shape.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(B, d))
    X = rng.normal(size=(B, n + 1, d))
    y = np.einsum("bnd,bd->bn", X, w) + noise_std * rng.normal(size=(B, n + 1))
    H = np.concatenate([np.swapaxes(X, 1, 2), y[:, None, :]], axis=1)
    H[:, d, n] = 0.0
    return jax.device_put(H), y[:, n]


def _w_hat(estimator, X, y, x_q, **opts):
    """The linear estimators predict ŵᵀx_q, so ŵ = ∂ŷ/∂x_q."""
    return jax.grad(lambda xq: estimator(X, y, xq, **opts))(x_q)


#: predict_batch jitted (one compilation per estimator, options and shape; eagerly, every primitive
#: compiles on its own). test_predict_batch_equals_loop compares it with the eager call.
_predict = jax.jit(E.predict_batch, static_argnums=0, static_argnames=("lam", "eta", "n_steps", "noise_std"))
#: rel_err jitted: one compilation per pair of shapes
_rel = jax.jit(rel_err)


# ---------------------------------------------------------------- least squares and ridge


@pytest.mark.parametrize("n_demos", [8, 16])
def test_least_squares_exact_for_n_at_least_d(n_demos):
    d = 8
    H, y_q = _linear_prompts(0, 64, n_demos, d)
    y_hat = _predict("least_squares", H)
    err = float(_rel(y_hat, y_q))
    assert err <= 1e-10, f"noiseless least squares at N={n_demos} >= d={d}: ŷ = y_q, rel err {err:.2e} > 1e-10"


_w_hat_ls = jax.jit(lambda X, y, q: _w_hat(E.least_squares, X, y, q))


@settings(max_examples=12, deadline=None)
@given(shape=st.sampled_from([(1, 4), (3, 4), (5, 9), (8, 9)]), seed=st.integers(0, 2**31 - 1))
def test_least_squares_minimum_norm_when_underdetermined(shape, seed):
    n, d = shape  # N < d; few shapes so the jitted ŵ compiles at most four times
    X, y, x_q = _prompt(seed, n, d)
    w = np.asarray(_w_hat_ls(X, y, x_q))
    Xn, yn = np.asarray(X), np.asarray(y)
    w_pinv = np.linalg.pinv(Xn) @ yn
    assert _rel(w, w_pinv) <= 1e-12, "min-norm LS: ŵ = X⁺y (rtol 1e-12)"
    assert _rel(Xn @ w, yn) <= 1e-12, "min-norm LS interpolates: Xŵ = y (rtol 1e-12)"
    # Minimum norm ⇔ ŵ ⟂ null(X): every other interpolant ŵ + z is longer.
    null = np.linalg.svd(Xn)[2][n:].T  # (d, d - n)
    assert np.linalg.norm(null.T @ w) <= 1e-12 * np.linalg.norm(w), "min-norm LS: ŵ ⟂ null(X) (atol 1e-12‖ŵ‖)"
    z = null @ np.random.default_rng(seed).normal(size=d - n)
    assert np.linalg.norm(w + z) > np.linalg.norm(w), "an interpolant ŵ + z, z ∈ null(X), is longer"


def test_least_squares_rank_deficient_and_empty():
    X, y, x_q = (np.array(a) for a in _prompt(1, 6, 4))  # writable copies
    X[:, 3] = X[:, 0] + X[:, 1]  # rank 3 with N > d: the cutoff must drop σ_min ≈ 0
    w, empty = jax.jit(lambda X, y, x_q: (_w_hat(E.least_squares, X, y, x_q),  # one compilation
                                          E.least_squares(X[:0], y[:0], x_q)))(X, y, x_q)
    assert _rel(w, np.linalg.pinv(X) @ y) <= 1e-10, "rank-deficient LS = pinv (rtol 1e-10)"
    assert float(empty) == 0.0, "N = 0: ŵ = 0"


def test_ridge_closed_form_and_limits():
    lam = 0.7
    # the four predictions of a prompt in one compilation (per shape)
    predictions = jax.jit(lambda X, y, x_q: (E.ridge(X, y, x_q, lam=lam), E.least_squares(X, y, x_q),
                                             E.ridge(X, y, x_q, lam=1e-10), E.ridge(X, y, x_q, lam=1e12)))
    for n, d in ((12, 5), (3, 7)):
        X, y, x_q = _prompt(n, n, d)
        Xn, yn, xq = map(np.asarray, (X, y, x_q))
        w_ref = np.linalg.solve(Xn.T @ Xn + lam * np.eye(d), Xn.T @ yn)
        ridge, ls, ridge_small, ridge_big = predictions(X, y, x_q)
        assert _rel(ridge, w_ref @ xq) <= 1e-12, "ridge = (XᵀX+λI)⁻¹Xᵀy (rtol 1e-12)"
        assert _rel(ridge_small, ls) <= 1e-7, f"ridge → min-norm LS as λ → 0 (N={n}, d={d})"
        big = abs(float(ridge_big))
        assert big <= 1e-9 * abs(float(ls)) + 1e-12, f"ridge → 0 as λ → ∞: |ŷ(λ=1e12)| = {big:.2e}"
    with pytest.raises(ValueError, match="lam"):
        E.ridge(X, y, x_q, lam=0.0)


# ---------------------------------------------------------------- averaging, nearest neighbours


def test_averaging_hand_case():
    X = np.array([[1.0, 0.0], [0.0, 2.0]])
    y = np.array([3.0, 4.0])
    both = jax.jit(lambda X, y, x_q: (E.averaging(X, y, x_q), E.averaging(X[:0], y[:0], x_q)))  # one compilation
    full, empty = both(X, y, np.array([1.0, 1.0]))
    # ŵ = ½(3·[1, 0] + 4·[0, 2]) = [1.5, 4]; ŷ = ŵ·[1, 1] = 5.5
    assert float(full) == 5.5
    assert float(empty) == 0.0, "N = 0 → 0"


def test_knn3_hand_cases():
    X = np.array([[0.0], [1.0], [2.0], [10.0], [-5.0]])
    y = np.array([1.0, 2.0, 4.0, 100.0, -100.0])
    x_q = np.array([1.2])  # distances 1.2, 0.2, 0.8, 8.8, 6.2 → demos 2, 3, 1
    # Ties go to the earlier demonstration: x = 0 and x = 2 are both at distance 1 from 1.
    Xt = np.array([[5.0], [0.0], [2.0], [1.0], [2.0]])
    yt = np.array([9.0, 1.0, 2.0, 3.0, 7.0])

    @jax.jit  # every case in one compilation (op by op, every primitive compiles on its own per N)
    def cases(X, y, x_q, Xt, yt):
        return [E.knn3(X[:n], y[:n], x_q) for n in (5, 2, 1, 0)] + [E.knn3(Xt, yt, jnp.array([1.0]))]

    five, two, one, none, tie = (float(v) for v in cases(X, y, x_q, Xt, yt))
    assert five == pytest.approx((2.0 + 4.0 + 1.0) / 3, abs=1e-15)
    assert two == pytest.approx(1.5, abs=1e-15), "N = 2 < 3: mean of both"
    assert one == 1.0, "N = 1: its label"
    assert none == 0.0, "N = 0 → 0"
    assert tie == pytest.approx((3.0 + 1.0 + 2.0) / 3, abs=1e-15)
    with pytest.raises(ValueError, match="k must be"):
        E.knn(X, y, x_q, k=0)


# ---------------------------------------------------------------- gradient descent


def test_gd_steps_one_step_equals_one_step_gd():
    X, y, x_q = _prompt(3, 9, 4)
    eta = 0.037
    eta_star = E.gd_one_step_optimal_eta(9, 4, noise_std=0.5)
    assert eta_star == 1.0 / (9 + 4 + 1 + 0.25)

    @jax.jit  # one compilation (op by op, every primitive compiles on its own)
    def errors(X, y, x_q):
        one = E.gd_one_step(X, y, x_q, eta)
        return (rel_err(E.gd_steps(X, y, x_q, eta, 1), one), rel_err(one, eta * (y @ X) @ x_q),
                rel_err(E.gd_one_step_optimal(X, y, x_q, noise_std=0.5), E.gd_steps(X, y, x_q, eta_star, 1)))

    steps, closed, optimal = errors(X, y, x_q)
    assert steps <= 1e-12, "1-step gd_steps = η (Xᵀy)ᵀx_q (rtol 1e-12)"
    assert closed <= 1e-12
    assert optimal <= 1e-12


@pytest.mark.parametrize("n,d", [(3, 8), (24, 4)])
def test_gd_converges_to_min_norm_least_squares(n, d):
    """From w_0 = 0 the iterates stay in the row space of X, so GD → X⁺y (also for N < d)."""
    X, y, x_q = _prompt(n, n, d)
    s = np.linalg.svd(np.asarray(X), compute_uv=False)
    eta = 1.0 / s[0] ** 2  # contraction factor 1 − (s_min/s_max)² per step on the row space
    steps = int(np.ceil(40 / (s[-1] / s[0]) ** 2))
    err = jax.jit(lambda X, y, x_q: rel_err(E.gd_steps(X, y, x_q, eta, steps), E.least_squares(X, y, x_q)))(X, y, x_q)
    assert err <= 1e-12, (
        f"GD with η = 1/σ_max², {steps} steps → min-norm LS (rtol 1e-12)"
    )


# ---------------------------------------------------------------- batching


@pytest.mark.parametrize(
    "name,opts",
    [("zero", {}), ("least_squares", {}), ("ridge", {"lam": 0.3}), ("averaging", {}), ("knn3", {}),
     ("gd_1step", {"eta": 0.05}), ("gd_1step_opt", {"noise_std": 0.1}), ("gd_Lstep", {"eta": 0.05, "n_steps": 3})],
)
def test_predict_batch_equals_loop(name, opts):
    H, _ = _linear_prompts(4, 5, 7, 3, noise_std=0.1)
    batched = np.asarray(E.predict_batch(name, H, **opts))
    one_prompt = jax.jit(lambda h: E.ESTIMATORS[name](*split_prompt(h), **opts))  # compiled once for the loop
    loop = np.array([float(one_prompt(h)) for h in np.asarray(H)])
    np.testing.assert_allclose(batched, loop, rtol=1e-12, atol=1e-14, err_msg=f"vmap = loop for {name} (rtol 1e-12)")
    jitted = jax.jit(lambda H: E.predict_batch(name, H, **opts))(H)
    np.testing.assert_allclose(jitted, batched, rtol=1e-12, atol=1e-14, err_msg=f"jit = eager for {name}")


def test_predict_batch_errors():
    H, _ = _linear_prompts(0, 2, 3, 2)
    with pytest.raises(ValueError, match="unknown estimator"):
        E.predict_batch("ols", H)
    with pytest.raises(TypeError, match="estimator must be"):
        E.predict_batch(3, H)
    with pytest.raises(ValueError, match=r"H must have shape \(B, D, N\+1\)"):
        E.predict_batch("zero", H[0])
    with pytest.raises(ValueError, match="n_steps"):
        E.predict_batch("gd_Lstep", H, eta=0.1, n_steps=0)
    assert E.predict_batch(lambda X, y, q: jnp.sum(y), H).shape == (2,), "a callable is accepted"


# ---------------------------------------------------------------- error measure, statistics


def test_icl_error_and_interval_hand_cases():
    assert np.asarray(E.icl_error(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]), 2)).tolist() == [0.5, 2.0]
    ci = E.mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert ci.mean == 2.5 and ci.n == 4
    # z_{0.975} = 1.959964 (bisection on erf to 1e-12)
    assert ci.half_width == pytest.approx(1.959964 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-6)
    assert ci.low < ci.mean < ci.high
    np.testing.assert_allclose(E.mean_ci95(np.arange(6.0).reshape(3, 2)).mean, [2.0, 3.0])
    with pytest.raises(ValueError, match="NaN/Inf"):
        E.mean_ci95([1.0, np.nan, 2.0])
    assert np.isnan(E.mean_ci95([1.0]).half_width), "one prompt: no spread estimate (lintrans.stats' rule), never 0"
    with pytest.raises(ValueError, match="d_in"):
        E.icl_error(1.0, 0.0, 0)


def test_zero_estimator_error_is_one():
    B, d = 4096, 4
    # through the library sampler, jitted (one compilation)
    batch = jax.jit(lambda key: sample_linear(key, B, 15, d, dtype=F64))(jax.random.PRNGKey(5))
    ci = E.mean_ci95(jax.jit(lambda H, y: E.icl_error(E.predict_batch("zero", H), y, d))(batch.H, batch.y_query))
    # E y_q²/d = 1; SE = √(2 + 6/d)/√B ≈ 0.029 (y_q² = ‖w‖²z², E = d, E y⁴ = 3(d² + 2d)). 4 SE.
    assert abs(ci.mean - 1.0) <= 4 * ci.half_width / 1.96, f"zero estimator: mean error {ci.mean:.4f} ≈ 1 (4 SE, B={B})"


@pytest.mark.parametrize("noise_std", [0.0, 1.0])
def test_optimal_one_step_eta_against_grid_search(noise_std):
    """η* = 1/(N+d+1+σ²) and E err(η) = η²N(N+d+1+σ²) − 2ηN + 1 + σ²/d, checked on B = 16384 prompts."""
    B, N, d = 16384, 20, 10
    H, yq = _linear_prompts(6, B, N, d, noise_std=noise_std)
    g = np.asarray(_predict("gd_1step", H, eta=1.0))  # (Xᵀy)ᵀx_q: ŷ(η) = η g
    eta_star = E.gd_one_step_optimal_eta(N, d, noise_std)
    grid = eta_star * np.linspace(0.5, 1.5, 401)
    errs = ((grid[:, None] * g[None, :] - yq[None, :]) ** 2).mean(axis=1) / d
    eta_grid = grid[np.argmin(errs)]
    # The sample minimiser is mean(g y)/mean(g²); its delta-method standard error:
    u, v = g * yq, g * g
    eta_hat = u.mean() / v.mean()
    se_eta = np.std(u - eta_hat * v, ddof=1) / np.sqrt(B) / v.mean()
    tol = 4 * se_eta + (grid[1] - grid[0])
    assert abs(eta_grid - eta_star) <= tol, (
        f"grid argmin η = {eta_grid:.5f} vs η* = {eta_star:.5f}: tolerance 4 SE + grid step = {tol:.5f} (B={B})"
    )
    assert se_eta / eta_star < 0.02, "the test must be able to fail: SE of the minimiser below 2 % of η*"
    for eta in (0.5 * eta_star, eta_star, 1.5 * eta_star):
        per_prompt = (eta * g - yq) ** 2 / d
        expected = eta**2 * N * (N + d + 1 + noise_std**2) - 2 * eta * N + 1 + noise_std**2 / d
        se = per_prompt.std(ddof=1) / np.sqrt(B)
        assert abs(per_prompt.mean() - expected) <= 4 * se, (
            f"E err(η={eta:.4f}) = {expected:.4f} vs sample {per_prompt.mean():.4f} ± {se:.4f} (4 SE, B={B})"
        )
    assert E.gd_one_step_optimal_error(N, d, noise_std) == pytest.approx(
        N * eta_star**2 * (N + d + 1 + noise_std**2) - 2 * eta_star * N + 1 + noise_std**2 / d, rel=1e-12
    ), "optimal error = the parabola at η*"


def test_optimal_one_step_eta_resolves_the_noise_term():
    """η* = 1/(N+d+1+σ²) is told apart from the noiseless 1/(N+d+1) (a shift of 0.00101 at N=20, d=10, σ=1).

    Rao–Blackwellised over the query: for ŵ = η Xᵀy, E_{x_q}(ŷ − y_q)² = ‖ηXᵀy − w‖² + σ², so the sample
    minimiser is η̂ = mean(⟨Xᵀy, w⟩)/mean(‖Xᵀy‖²) (B = 16384 prompts, delta-method s.e. ≈ 7.7e-5, a
    third of the grid test's, whose x_q noise makes its tolerance 0.00109 exceed the shift).
    """
    B, N, d, sigma = 16384, 20, 10, 1.0
    rng = np.random.default_rng(11)
    X, w = rng.normal(size=(B, N, d)), rng.normal(size=(B, d))
    y = np.einsum("bnd,bd->bn", X, w) + sigma * rng.normal(size=(B, N))
    x0 = jnp.zeros(d, F64)
    g = np.asarray(jax.jit(jax.vmap(lambda X_s, y_s: _w_hat(E.gd_one_step, X_s, y_s, x0, eta=1.0)))(
        jax.device_put(X), jax.device_put(y)))  # ŵ(η = 1) = Xᵀy through the library estimator
    u, v = np.sum(g * w, axis=1), np.sum(g * g, axis=1)
    eta_hat = u.mean() / v.mean()
    se = np.std(u - eta_hat * v, ddof=1) / np.sqrt(B) / v.mean()
    eta_star, eta_wrong = E.gd_one_step_optimal_eta(N, d, sigma), E.gd_one_step_optimal_eta(N, d, 0.0)
    assert abs(eta_wrong - eta_star) >= 8 * se, f"power: shift {eta_wrong - eta_star:.5f} ≥ 8 s.e. ({se:.1e})"
    assert abs(eta_hat - eta_star) <= 4 * se, f"η̂ = {eta_hat:.5f} vs η* = 1/(N+d+1+σ²) = {eta_star:.5f} (4 s.e.)"
    assert abs(eta_hat - eta_wrong) > 4 * se, f"η̂ = {eta_hat:.5f} must differ from 1/(N+d+1) = {eta_wrong:.5f}"


def test_optimal_error_reference_value():
    assert E.gd_one_step_optimal_error(40, 20) == pytest.approx(21 / 61, rel=1e-15)
    with pytest.raises(ValueError, match="noise_std"):
        E.gd_one_step_optimal_eta(4, 2, noise_std=-1.0)


@pytest.mark.slow
def test_tune_gd_eta():
    key = jax.random.PRNGKey(7)
    N, d, B = 10, 5, 1024
    one = E.tune_gd_eta(key, 1, N, d, n_prompts=B, n_grid=24, n_golden=25)
    # For one step the validation error is an exact parabola in η with minimiser mean(gy)/mean(g²)
    # on the same batch (tune_gd_eta samples it from `key` with sample_linear).
    batch = jax.jit(lambda key: sample_linear(key, B, N, d, dtype=F64))(key)  # one compilation
    g = np.asarray(_predict("gd_1step", batch.H, eta=1.0))
    eta_hat = (g * np.asarray(batch.y_query)).mean() / (g * g).mean()
    assert abs(one.eta - eta_hat) <= 1e-4 * eta_hat, f"tuned η {one.eta:.6f} = batch minimiser {eta_hat:.6f} (rtol 1e-4)"
    assert one.val_error <= np.min(one.grid_errors), "golden-section refinement never worse than the grid"
    two = E.tune_gd_eta(key, 2, N, d, n_prompts=B, n_grid=24, n_golden=25)
    assert two.val_error <= np.min(two.grid_errors)
    assert two.val_error < one.val_error, "two tuned steps beat one"
    recomputed = float(jax.jit(E.gd_validation_error, static_argnums=3)(two.eta, batch.H, batch.y_query, 2))
    assert recomputed == pytest.approx(two.val_error, rel=1e-12), "val_error is the error at the returned η"
    assert not one.at_edge and not two.at_edge
    low = E.tune_gd_eta(key, 1, N, d, n_prompts=B, n_grid=24, n_golden=25, eta_range=(1e-4, 1e-3))
    assert low.at_edge and low.eta == pytest.approx(1e-3), "optimum above the range: reported at its edge"
    with pytest.raises(ValueError, match="diverged at every rate"):
        E.tune_gd_eta(key, 1, N, d, n_prompts=B, n_grid=24, n_golden=25, eta_range=(1e200, 1e201))
    with pytest.raises(ValueError, match="eta_range"):
        E.tune_gd_eta(key, 1, N, d, eta_range=(0.1, 0.01))
