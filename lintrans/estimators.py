"""Classical in-context regression baselines and the ICL error measure (SPEC §5; Garg et al., 2022).

Every estimator has one signature, on ONE prompt::

    predict(X_s (N, d), y_s (N,), x_q (d,), **opts) -> ŷ (scalar)

and is batched with ``jax.vmap`` at the call site, or through :func:`predict_batch`, which takes
prompts ``H`` of shape ``(B, D, N+1)`` in the SPEC layout (``D = d + 1``, query last) and splits
them with :func:`lintrans.tasks.split_prompt`. :data:`ESTIMATORS` maps names to estimators.

Conventions. ``d = d_in``; ``X`` is ``X_s`` with rows ``x_iᵀ``; ``y`` is ``y_s``. Gradient descent is
on ``½ Σ_i (wᵀx_i − y_i)²`` — a **sum** over demonstrations, not a mean, as in the GD construction
of SPEC §4 (:func:`lintrans.constructions.gd_loop`), so a step size here is a step size there. Ridge's
``λ`` also multiplies the sum: ``ŵ = argmin Σ_i (wᵀx_i − y_i)² + λ‖w‖²``.

Zero-padded demonstrations (``x_i = 0, y_i = 0``) change nothing for ``zero``, ``least_squares``,
``ridge`` and ``gd_Lstep`` (they add nothing to ``XᵀX`` or ``Xᵀy``), but they do change
``averaging`` (the ``1/N``), ``knn3`` (a zero input is a neighbour) and ``gd_1step_opt`` (η* depends
on ``N``): to score those at ``k`` examples, slice the prompt to ``k`` demonstrations.

Error (SPEC §5): ``icl_error(ŷ, y, d) = (ŷ − y)² / d``; the zero estimator scores
``E y_q² / d = (d + σ²)/d ≈ 1`` on the isotropic task.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.constructions import gd_loop
from lintrans.numerics import mm
from lintrans.tasks import sample_linear, split_prompt
from lintrans.io import require_int
from lintrans.stats import Interval, prompt_interval

__all__ = [
    "zero",
    "least_squares",
    "ridge",
    "averaging",
    "knn",
    "knn3",
    "gd_one_step",
    "gd_steps",
    "gd_one_step_optimal",
    "gd_one_step_optimal_eta",
    "gd_one_step_optimal_error",
    "ESTIMATORS",
    "predict_batch",
    "icl_error",
    "MeanCI",
    "mean_ci95",
    "GDTuning",
    "gd_validation_error",
    "tune_gd_eta",
]


# --------------------------------------------------------------------------------------------
# Estimators on one prompt
# --------------------------------------------------------------------------------------------


def zero(X_s: jax.Array, y_s: jax.Array, x_q: jax.Array) -> jax.Array:
    """``ŷ = 0``. Its ICL error is ``y_q²/d``, mean ``(d + σ²)/d`` on the isotropic task."""
    return jnp.zeros((), jnp.result_type(X_s, y_s, x_q))


def _svd(X_s: jax.Array):
    return jnp.linalg.svd(X_s, full_matrices=False)


def least_squares(X_s: jax.Array, y_s: jax.Array, x_q: jax.Array) -> jax.Array:
    """Minimum-norm least squares: ``ŷ = ŵᵀx_q``, ``ŵ = X⁺ y``, through an SVD.

    ``X = U diag(s) Vᵀ`` (thin SVD, ``U (N, r), s (r,), V (d, r)``, ``r = min(N, d)``),
    ``ŵ = V diag(1/s_j if s_j > c else 0) Uᵀ y`` with cutoff ``c = max(N, d) · eps · s_max``
    (NumPy's ``lstsq``/``matrix_rank`` convention, the one of
    :func:`lintrans.numerics.numerical_rank`).

    Why an SVD with this cutoff: rounding ``X`` to working precision perturbs it by about
    ``eps·‖X‖``, which by Weyl's inequality moves each singular value by as much; a singular value
    below ``c`` is indistinguishable from 0, and inverting it would amplify rounding noise by up to
    ``1/c``. Dropping it gives the minimum-norm solution of the numerically rank-deficient problem
    and is backward stable. The normal equations ``(XᵀX)⁻¹Xᵀy`` (or ``Xᵀ(XXᵀ)⁻¹y`` for ``N < d``)
    square the condition number and fail near ``N = d``, where Gaussian ``X`` is worst conditioned.

    For ``N ≥ d`` and ``X`` of full rank this is the exact least-squares solution (noiseless data:
    ``ŵ = w``); for ``N < d`` it interpolates the demonstrations with the smallest ``‖ŵ‖``
    (``ŵ`` lies in the row space of ``X``). ``N = 0`` gives ``ŵ = 0``.

    Shapes: ``X_s (N, d)``, ``y_s (N,)``, ``x_q (d,)`` → scalar.
    """
    U, s, Vt = _svd(X_s)
    N, d = X_s.shape
    cutoff = max(N, d) * jnp.finfo(s.dtype).eps * (jnp.max(s) if s.size else 0.0)
    keep = s > cutoff
    inv_s = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    w_hat = mm(Vt.T, inv_s * mm(U.T, y_s))
    return jnp.dot(w_hat, x_q)


def ridge(X_s: jax.Array, y_s: jax.Array, x_q: jax.Array, lam: float | jax.Array = 1.0) -> jax.Array:
    """Ridge regression: ``ŵ = (XᵀX + λ I)⁻¹ Xᵀ y = V diag(s_j / (s_j² + λ)) Uᵀ y``, ``ŷ = ŵᵀx_q``.

    ``λ > 0`` multiplies the sum of squares (not a mean). Through the SVD so that both limits are
    exact: ``λ → 0`` gives the minimum-norm least-squares solution (also for ``N < d``), ``λ → ∞``
    gives ``ŵ → 0``. For ``w ~ N(0, I)`` and noise ``σ`` the Bayes-optimal choice is ``λ = σ²``.

    Shapes: ``X_s (N, d)``, ``y_s (N,)``, ``x_q (d,)``, ``lam`` scalar → scalar.
    """
    if isinstance(lam, (int, float, np.integer, np.floating)) and not lam > 0:
        raise ValueError(f"ridge: lam must be > 0, got {lam!r}")
    U, s, Vt = _svd(X_s)
    w_hat = mm(Vt.T, (s / (s * s + lam)) * mm(U.T, y_s))
    return jnp.dot(w_hat, x_q)


def averaging(X_s: jax.Array, y_s: jax.Array, x_q: jax.Array) -> jax.Array:
    """Averaging estimator (Garg et al.): ``ŵ = (1/N) Σ_i y_i x_i``, ``ŷ = ŵᵀx_q``; ``N = 0`` → 0.

    Shapes: ``X_s (N, d)``, ``y_s (N,)``, ``x_q (d,)`` → scalar.
    """
    N = X_s.shape[0]
    if N == 0:
        return zero(X_s, y_s, x_q)
    return jnp.dot(mm(y_s, X_s), x_q) / N


def knn(X_s: jax.Array, y_s: jax.Array, x_q: jax.Array, k: int = 3) -> jax.Array:
    """``k``-nearest neighbours: mean label of the ``min(k, N)`` demonstrations closest to ``x_q``.

    Euclidean distance; ties are broken towards the earlier demonstration (``lax.top_k`` order).
    Fewer than ``k`` demonstrations: the mean of all of them; ``N = 0`` → 0. ``k`` is static.

    Shapes: ``X_s (N, d)``, ``y_s (N,)``, ``x_q (d,)`` → scalar.
    """
    require_int("knn: k", k)
    N = X_s.shape[0]
    m = min(int(k), N)
    if m == 0:
        return zero(X_s, y_s, x_q)
    diff = X_s - x_q[None, :]
    sq_dist = jnp.sum(diff * diff, axis=1)
    _, idx = jax.lax.top_k(-sq_dist, m)
    return jnp.mean(y_s[idx])


def knn3(X_s: jax.Array, y_s: jax.Array, x_q: jax.Array) -> jax.Array:
    """3-nearest neighbours (Garg et al.'s baseline): :func:`knn` with ``k = 3``."""
    return knn(X_s, y_s, x_q, k=3)


def gd_one_step(X_s: jax.Array, y_s: jax.Array, x_q: jax.Array, eta: float | jax.Array) -> jax.Array:
    """One step of GD from ``w_0 = 0``: ``ŵ = η Σ_i y_i x_i = η Xᵀy``, ``ŷ = ŵᵀx_q``.

    Shapes: ``X_s (N, d)``, ``y_s (N,)``, ``x_q (d,)``, ``eta`` scalar → scalar.
    """
    return eta * jnp.dot(mm(y_s, X_s), x_q)


def gd_steps(
    X_s: jax.Array, y_s: jax.Array, x_q: jax.Array, eta: float | jax.Array, n_steps: int
) -> jax.Array:
    """``L = n_steps`` steps of GD with constant ``η`` from ``w_0 = 0``; ``ŷ = w_Lᵀx_q``.

    ``w_t = w_{t−1} + η Σ_i (y_i − w_{t−1}ᵀx_i) x_i`` (:func:`lintrans.constructions.gd_loop`, the
    algorithm that ``L`` layers of the SPEC §4 construction implement exactly). ``n_steps`` is
    static; ``eta`` may be traced (so it can be vmapped/tuned). GD diverges for
    ``η > 2/λ_max(XᵀX)``. From ``w_0 = 0`` the iterates stay in the row space of ``X``, so for
    ``0 < η < 2/λ_max`` and ``L → ∞`` they converge to the minimum-norm least-squares solution.

    Shapes: ``X_s (N, d)``, ``y_s (N,)``, ``x_q (d,)``, ``eta`` scalar → scalar.
    """
    require_int("gd_steps: n_steps", n_steps)
    dtype = jnp.result_type(X_s, y_s, x_q)
    etas = jnp.full((int(n_steps),), eta, dtype)
    w_L = gd_loop(X_s.astype(dtype), y_s.astype(dtype), etas)[-1]
    return jnp.dot(w_L, x_q)


def gd_one_step_optimal_eta(n_demos: int, d_in: int, noise_std: float = 0.0) -> float:
    """Error-optimal one-step GD rate for ``w ~ N(0, I_d)``, ``x ~ N(0, I_d)``, noise ``σ``.

    ``η* = 1 / (N + d + 1 + σ²)``  (``σ = 0``: ``1/(N + d + 1)``).

    Derivation. ``y = Xw + σε``, ``A = XᵀX`` (Wishart), ``ŵ = η Xᵀy = η A w + η σ Xᵀε``. With
    ``E A = N I`` and ``E A² = Σ_{i≠j} E x_i x_iᵀ x_j x_jᵀ + Σ_i E ‖x_i‖² x_i x_iᵀ
    = N(N−1) I + N(d+2) I = N(N + d + 1) I``, and ``E ‖Xᵀε‖² = Σ_i E‖x_i‖² ε_i² = N d``::

        E ‖ŵ − w‖² / d = E tr((ηA − I)²)/d + η² σ² N
                        = η² N (N + d + 1 + σ²) − 2 η N + 1,

    a parabola in ``η``, minimal at ``η*`` with value ``(d + 1 + σ²) / (N + d + 1 + σ²)``. The
    query error adds the noise of ``y_q``: ``E (ŷ − y_q)² = E‖ŵ − w‖² + σ²`` (``x_q`` is
    independent and isotropic), so ``η*`` also minimises the ICL error
    (:func:`gd_one_step_optimal_error`). ``N`` is the number of demonstrations.
    """
    _check_sizes(n_demos, d_in, noise_std, allow_zero_demos=True)
    return 1.0 / (n_demos + d_in + 1.0 + float(noise_std) ** 2)


def gd_one_step_optimal_error(n_demos: int, d_in: int, noise_std: float = 0.0) -> float:
    """Expected ICL error ``E (ŷ − y_q)²/d`` of one-step GD at ``η*`` (see :func:`gd_one_step_optimal_eta`).

    ``(d + 1 + σ²)/(N + d + 1 + σ²) + σ²/d``; noiseless ``(d + 1)/(N + d + 1)``
    (``d = 20, N = 40``: ``21/61 = 0.3443``).
    """
    _check_sizes(n_demos, d_in, noise_std, allow_zero_demos=True)
    s2 = float(noise_std) ** 2
    return (d_in + 1.0 + s2) / (n_demos + d_in + 1.0 + s2) + s2 / d_in


def gd_one_step_optimal(X_s: jax.Array, y_s: jax.Array, x_q: jax.Array, noise_std: float = 0.0) -> jax.Array:
    """One-step GD at the error-optimal ``η* = 1/(N + d + 1 + σ²)`` for the isotropic task.

    ``N, d`` are read from ``X_s``'s static shape; ``noise_std`` is the task's ``σ`` (the
    estimator is told it, as ridge is told ``λ``). Shapes as :func:`gd_one_step`.
    """
    N, d = X_s.shape
    return gd_one_step(X_s, y_s, x_q, gd_one_step_optimal_eta(N, d, noise_std))


def _check_sizes(n_demos, d_in, noise_std, allow_zero_demos=False) -> None:
    lo = 0 if allow_zero_demos else 1
    require_int("n_demos", n_demos, lo)
    require_int("d_in", d_in)
    if not (isinstance(noise_std, (int, float, np.integer, np.floating)) and np.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")


#: Named estimators, all ``f(X_s, y_s, x_q, **opts) -> ŷ``. Options: ``ridge`` takes ``lam``;
#: ``gd_1step_opt`` takes ``noise_std``; ``gd_Lstep`` needs ``eta`` and ``n_steps`` (use
#: :func:`tune_gd_eta` for the best constant ``η``); ``gd_1step`` needs ``eta``.
ESTIMATORS: dict[str, Callable[..., jax.Array]] = {
    "zero": zero,
    "least_squares": least_squares,
    "ridge": ridge,
    "averaging": averaging,
    "knn3": knn3,
    "gd_1step": gd_one_step,
    "gd_1step_opt": gd_one_step_optimal,
    "gd_Lstep": gd_steps,
}


def predict_batch(estimator: str | Callable[..., jax.Array], H: jax.Array, **opts) -> jax.Array:
    """Apply an estimator to every prompt of a batch.

    Args:
      estimator: a name in :data:`ESTIMATORS` or a function ``f(X_s, y_s, x_q, **opts)``.
      H: ``(B, D, N+1)`` prompts (SPEC layout, ``d_out = 1``, query last).
      **opts: keyword options of the estimator (``lam``, ``eta``, ``n_steps``, ``noise_std``).

    Returns:
      ``(B,)`` query predictions. Traceable: jit the caller (options that set shapes, such as
      ``n_steps``, must then be static).
    """
    if isinstance(estimator, str):
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {sorted(ESTIMATORS)}")
        fn = ESTIMATORS[estimator]
    elif callable(estimator):
        fn = estimator
    else:
        raise TypeError(f"estimator must be a name in {sorted(ESTIMATORS)} or a callable, got {estimator!r}")
    if getattr(H, "ndim", None) != 3 or H.shape[1] < 2 or H.shape[2] < 1:
        raise ValueError(f"H must have shape (B, D, N+1) with D >= 2, got {getattr(H, 'shape', None)}")
    return jax.vmap(lambda h: fn(*split_prompt(h), **opts))(H)


# --------------------------------------------------------------------------------------------
# Error measure and intervals
# --------------------------------------------------------------------------------------------


def icl_error(y_hat: jax.Array, y: jax.Array, d_in: int) -> jax.Array:
    """SPEC §5 error: ``(ŷ − y)² / d``, elementwise (any matching shapes). Zero estimator ≈ 1."""
    require_int("d_in", d_in)
    diff = jnp.asarray(y_hat) - jnp.asarray(y)
    return diff * diff / d_in


#: The interval :func:`mean_ci95` returns: :class:`lintrans.stats.Interval` (``mean``, ``half_width``, ``low``, ``high``, ``n``).
MeanCI = Interval


def mean_ci95(values, axis: int = 0) -> MeanCI:
    """Mean and 95 % interval half-width ``z_{0.975} · s / √n`` along ``axis`` (``s``: sample std, ddof 1).

    A view of :func:`lintrans.stats.prompt_interval` (the one rule: ``n < 2`` gives a NaN
    half-width, never 0; non-finite values are refused). The interval is the CLT one; per-prompt
    squared errors are skewed (χ²-like), so use ``n ≳ 100`` (the figures use ≥ 1000).
    """
    return prompt_interval(values, axis=axis, level=0.95)


# --------------------------------------------------------------------------------------------
# Best constant step size for L-step GD
# --------------------------------------------------------------------------------------------


class GDTuning(NamedTuple):
    """Result of :func:`tune_gd_eta`.

    Attributes:
      eta: the best constant step size found.
      val_error: mean ICL error at ``eta`` on the validation batch.
      grid: ``(n_grid,)`` the coarse log-spaced grid of step sizes.
      grid_errors: ``(n_grid,)`` validation errors on the grid (``inf`` where GD diverged).
      at_edge: the best grid point is the first or last one: the optimum may lie outside
        ``eta_range``; widen it.
    """

    eta: float
    val_error: float
    grid: np.ndarray
    grid_errors: np.ndarray
    at_edge: bool


def gd_validation_error(eta: jax.Array, H: jax.Array, y_query: jax.Array, n_steps: int) -> jax.Array:
    """Mean ICL error of ``n_steps``-step GD at rate ``eta`` over prompts ``H (B, D, N+1)``, ``y_query (B,)``.

    A pure function of ``eta`` (vmappable over a grid); non-finite errors (divergence) stay
    non-finite so callers see them.
    """
    d_in = H.shape[1] - 1
    y_hat = jax.vmap(lambda h: gd_steps(*split_prompt(h), eta, n_steps))(H)
    return jnp.mean(icl_error(y_hat, y_query, d_in))


def tune_gd_eta(
    key: jax.Array,
    n_steps: int,
    n_demos: int,
    d_in: int,
    *,
    noise_std: float = 0.0,
    n_prompts: int = 4096,
    n_grid: int = 48,
    n_golden: int = 40,
    eta_range: tuple[float, float] | None = None,
    dtype=None,
) -> GDTuning:
    """Best constant ``η`` for ``n_steps``-step GD on the isotropic linear task, on a fixed batch.

    Samples one validation batch of ``n_prompts`` prompts from ``key``
    (:func:`lintrans.tasks.sample_linear`, same ``σ``), evaluates the mean ICL error on a
    log-spaced grid of ``n_grid`` rates (one compiled program, ``lax.map`` over the grid), then refines between the best grid
    point's neighbours with ``n_golden`` golden-section steps in ``log η`` (which assumes the error
    is unimodal inside that bracket: exact for the parabola of one step; measured unimodal on the
    grid for L = 1, 2, 4, 8 at d = 20, N = 40). Divergent rates score ``+inf``.

    Default range: ``[η₁*/10, 4/(√N + √d)²]`` where ``η₁* = 1/(N + d + 1 + σ²)`` is the one-step
    optimum and ``(√N + √d)²`` the typical ``λ_max(XᵀX)``; GD diverges above ``2/λ_max``.
    Measure the test error on a fresh batch from a different key. ``dtype``: of the validation
    prompts; ``None`` means float64 when ``jax_enable_x64`` is on, else float32.
    """
    _check_sizes(n_demos, d_in, noise_std)
    require_int("n_steps", n_steps)
    for name, v, lo in (("n_prompts", n_prompts, 2), ("n_grid", n_grid, 3), ("n_golden", n_golden, 0)):
        require_int(name, v, lo)
    if eta_range is None:
        eta_lo = gd_one_step_optimal_eta(n_demos, d_in, noise_std) / 10.0
        eta_hi = 4.0 / (np.sqrt(n_demos) + np.sqrt(d_in)) ** 2
    else:
        eta_lo, eta_hi = (float(v) for v in eta_range)
        if not (0 < eta_lo < eta_hi and np.isfinite(eta_hi)):
            raise ValueError(f"eta_range must be (lo, hi) with 0 < lo < hi < inf, got {eta_range!r}")
    if dtype is None:
        dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    batch = sample_linear(key, n_prompts, n_demos, d_in, noise_std=noise_std, dtype=dtype)
    grid, grid_err, eta, err = _tune(
        batch.H, batch.y_query, jnp.log(eta_lo), jnp.log(eta_hi), int(n_steps), int(n_grid), int(n_golden)
    )
    grid_err = np.asarray(grid_err)
    if not np.any(np.isfinite(grid_err)):
        raise ValueError(f"{n_steps}-step GD diverged at every rate in [{eta_lo:.3g}, {eta_hi:.3g}]; lower eta_range")
    best = int(np.argmin(grid_err))
    return GDTuning(
        eta=float(eta), val_error=float(err), grid=np.asarray(grid), grid_errors=grid_err,
        at_edge=best in (0, n_grid - 1),
    )


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _tune(H, y_query, log_lo, log_hi, n_steps, n_grid, n_golden):
    def err_at(log_eta):
        e = gd_validation_error(jnp.exp(log_eta), H, y_query, n_steps)
        return jnp.where(jnp.isfinite(e), e, jnp.inf)

    log_grid = jnp.linspace(log_lo, log_hi, n_grid)
    grid_err = jax.lax.map(err_at, log_grid)
    i = jnp.argmin(grid_err)
    a = log_grid[jnp.maximum(i - 1, 0)]
    b = log_grid[jnp.minimum(i + 1, n_grid - 1)]
    g = (np.sqrt(5.0) - 1.0) / 2.0

    def golden(_, carry):
        a, b, c, d_, fc, fd = carry
        left = fc <= fd  # minimum lies in [a, d]
        a2 = jnp.where(left, a, c)
        b2 = jnp.where(left, d_, b)
        c2 = jnp.where(left, b2 - g * (b2 - a2), d_)
        d2 = jnp.where(left, c, a2 + g * (b2 - a2))
        x_new = jnp.where(left, c2, d2)
        f_new = err_at(x_new)
        fc2 = jnp.where(left, f_new, fd)
        fd2 = jnp.where(left, fc, f_new)
        return a2, b2, c2, d2, fc2, fd2

    c = b - g * (b - a)
    d_ = a + g * (b - a)
    a, b, c, d_, fc, fd = jax.lax.fori_loop(0, n_golden, golden, (a, b, c, d_, err_at(c), err_at(d_)))
    x_best = jnp.where(fc <= fd, c, d_)
    f_best = jnp.minimum(fc, fd)
    # The bracket search cannot do worse than the grid it started from.
    use_grid = grid_err[i] < f_best
    return (
        jnp.exp(log_grid),
        grid_err,
        jnp.where(use_grid, jnp.exp(log_grid[i]), jnp.exp(x_best)),
        jnp.where(use_grid, grid_err[i], f_best),
    )
