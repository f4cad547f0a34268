"""Theorem 2: the mutual-information generalization bound of the implicit learner (SPEC §7).

The N demonstrations are the training set; the implicit learner outputs ``W_L`` (Theorem 1).
**To get the bound of a model, call** :func:`lintrans.bound_eval.theorem2_bound`; this module holds
the kernels it (and the sweep, :mod:`lintrans.bound_sweep`) is built from, all public.

Symbols → code (one prompt; ``L`` layers, width ``D``, ``d = D²``, ``N`` demonstrations, ``b`` shots):

* ``g_{t,i} = s (W_V^t h_i^{t-1})(W_K^t h_i^{t-1})^T W_Q^t (I + W_{t-1})`` → ``contributions(...)[t-1, i-1]``,
  ``(L, N, D, D)``; ``Σ_i g_{t,i} = G_t`` (Theorem 1's ``G_t``, checked against
  :mod:`lintrans.trajectory` in the tests).
* ``∇ℓ_i := N·vec(g_{t,i})`` → :func:`demo_gradients`, ``(L, N, d)``, so ``mean_i ∇ℓ_i = vec(G_t)``.
  ``vec`` is the row-major flattening, a fixed permutation of the column-major one; no quantity
  here depends on the choice.
* ``C_t = (N − b)/(b(N − 1)) · ((1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ − vec(G_t) vec(G_t)ᵀ)`` → :func:`noise_covariance`,
  ``(d, d)``: the covariance of the mean of ``b`` of the ``∇ℓ_i`` drawn without replacement.
  ``c_b = (N − b)/(b(N − 1))`` → :func:`shot_factor`; ``C_t = 0`` at ``b = N``.

Bound (Theorem 2 as printed; ``R`` the sub-Gaussian constant of the loss, ``E`` over prompts)::

    gen ≤ sqrt( R²/N · Σ_t E[ d·log((‖ΔW_t‖_F² ‖I + W_{t-1}‖_F² + tr C_t)/d) − log det C_t ] )   "printed"
    gen ≤ sqrt( R²/N · Σ_t [ d·log(E[‖G_t‖_F² + tr C_t]/d) − E log det C_t ] )                "proof"

The second is what the proof establishes; the first moves ``E`` out of the log (lower, by Jensen)
and replaces ``‖G_t‖²`` by the larger ``‖ΔW_t‖²‖I + W_{t-1}‖²``. Every summand is ``≥ 0`` (AM–GM:
``log det C ≤ d log(tr C/d)``) and unchanged under ``(G_t, C_t) → (cG_t, c²C_t)``.

Forms (registry: :mod:`lintrans.bound_forms`; only finite, continuous ones are reported as the bound).
``C_t`` is singular in this model: ``rank C_t ≤`` :func:`structural_rank_bound`, so ``−log det C_t = +∞``
and both forms as stated are ``+∞`` (``*_raw``, reported as ``inf`` with the reason).

* ``*_ridge`` — **the reported bound.** The proof's argument bounds ``I(W_t; S | W_{t-1})`` for the
  learner ``W_t = W_{t-1} + G_t + ν_t`` with Gaussian noise ``ν_t ~ N(0, Σ_t)`` by
  ``½[d log(E‖G_t + ν_t‖²/d) − E log det Σ_t]`` (Gaussian maximises entropy at fixed second moment;
  ``E‖G + ν‖² = ‖G‖² + tr Σ``). With ``Σ_t = C_t + ε_t I`` (extra isotropic noise) every term is finite::

      summand_t = d·log((q_t + tr C_t + d ε_t)/d) − Σ_{j≤k} log(λ_j + ε_t) − (d − k) log ε_t

  (``q_t`` the squared norm of the form, ``λ_j`` the ``k`` eigenvalues of ``C_t`` that are not
  structurally 0). ``ε_t = ε·E[tr C_t]/d`` — ``ε`` (:data:`lintrans.bound_forms.EPS_DEFAULT`) times the
  mean per-coordinate variance of the SGD noise itself, one value per layer for the batch of prompts —
  so the summand keeps the ``(cG, c²C)`` invariance. It bounds the noisier learner, not the
  deterministic ``W_L``; as ``ε → 0`` it grows like ``Σ_t (d − r_t) log(1/ε)`` (the ε sweep shows it).
  **Continuity.** ``q_t``, ``tr C_t`` and the eigenvalues of ``C_t`` (Weyl: ``|Δλ| ≤ ‖ΔC‖``) are
  continuous in the weights, and ``ε_t > 0`` wherever ``E tr C_t > 0``; no threshold enters, so the
  form is continuous in the weights, at structured weights (weight noise exactly 0) and after
  clipping. A layer with ``ΔW_t = 0`` and ``C_t = 0`` (e.g. one clipped to rank 0) passes no
  information: summand 0 in every form (a jump from the scale-invariant value next to it, at a rank
  change of the clipped matrix).
* ``*_support`` — THIS PROJECT'S DERIVATION, NOT THE PAPER'S, and a diagnostic only: the entropy
  argument in the support of ``C_t`` (``d → r_t = rank C_t``, ``log det → log pdet``), valid when
  ``vec G_t`` lies in that support (relative projection residual ``≤ support_tol``; otherwise ``+∞``
  with the reason). ``r_t`` is a numerical rank: the form jumps when structured weights are perturbed
  (see the registry), so it is never reported as the bound. In the proof form prompts with different
  ``r_t`` are grouped (Jensen within groups).

Ranks. ``C_t = Fᵀ F`` with an explicit factor ``F`` (``k × d``: the centred ``∇ℓ_i`` here, the
token-moment factor in :mod:`lintrans.bound_factored`); its eigenvalues are the squared singular
values of ``F`` (QR, then ``svd`` of the square factor: absolute accuracy ``≈ ε_mach·σ_max`` in ``σ``, i.e. eigenvalues resolved down
to ``≈ ε_mach²·λ_max``, where ``eigh`` of ``C_t`` stops at ``ε_mach·λ_max``). ``rank C_t`` = the number
of ``σ_j > σ_ref·max(k, d)·ε_mach`` (:func:`rank_tolerance`: the rule of ``numpy.linalg.matrix_rank``,
``σ_ref = σ_max`` on the factored path; on the direct path ``σ_ref`` bounds ``‖F‖`` from the
magnitudes of the states, since they can cancel), reported beside :func:`structural_rank_bound`.
Weight directions at relative ``1e-7…1e-10`` give eigenvalues at ``1e-14…1e-20`` of ``λ_max``, which
``eigh`` of ``C_t`` cannot resolve and this rule counts.

Eigenvalues and logs need float64 (:func:`require_x64`). Nothing is ``±∞``/NaN silently:
:func:`describe_bounds` gives each a reason.

Risks, with the loss ``ℓ(W, [x; y]) = (ρ e_yᵀ (I + W) [x; 0] − y)²`` (``e_y`` the label coordinate,
``ρ`` the readout sign): ``L_S(W_L)`` mean over the N demonstrations, ``L_μ(W_L)`` over fresh samples
of the same task ``w`` — in closed form for Gaussian inputs ``x = Σ^{1/2} z``, ``y = wᵀx + σε``:
``L_μ = ‖Σ^{1/2ᵀ}(v − w)‖² + σ²`` with ``v = ρ (I + W)[D−1, :d_in]``. Under ``μ`` the loss is
``τ² χ²_1`` with ``τ² = L_μ``, so ``Var ℓ = 2 L_μ²``. Strictly no finite ``R`` exists (a scaled ``χ²_1``
is sub-exponential, not sub-Gaussian); :func:`estimate_R` uses ``R̂ = (E_prompts Var ℓ)^{1/2}``, the
smallest value any ``R`` could take (an ``R``-sub-Gaussian variable has variance ``≤ R²``), so the
bound with ``R̂`` is optimistic. ``bound / R`` is reported beside it.

Reference: Yao et al., NeurIPS 2024, Theorem 2 and its proof; SPEC §7.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.attention import check_options, scale_factor
from lintrans.bound_forms import EPS_GRID, FORMS, names
from lintrans.io import require_int
from lintrans.numerics import einsum, mm
from lintrans.params import LinearAttentionParams
from lintrans.trajectory import trajectory

__all__ = [
    "SUPPORT_TOL",
    "EPS_GRID",
    "require_x64",
    "shot_factor",
    "check_shots",
    "contributions",
    "demo_gradients",
    "noise_covariance",
    "rank_tolerance",
    "spectrum_from_factor",
    "structural_rank_bound",
    "TermStats",
    "term_stats",
    "ridge_terms",
    "bound_summands",
    "bound_value",
    "describe_bounds",
    "implicit_predictor",
    "loss",
    "empirical_risk",
    "population_risk",
    "population_risk_mc",
    "Risks",
    "prompt_risks",
    "risks",
    "estimate_R",
]

#: ``vec(G_t)`` is in the support of ``C_t`` when its relative projection residual is at most this.
SUPPORT_TOL = 1e-6


def require_x64() -> None:
    """``ValueError`` unless jax x64 is on: the bound needs float64 eigenvalues and logs."""
    if not jax.config.jax_enable_x64:
        raise ValueError(
            "the Theorem 2 bound is computed in float64: enable it with "
            "jax.config.update('jax_enable_x64', True) before creating arrays (or set JAX_ENABLE_X64=1)"
        )


def shot_factor(b: int, n_demos: int) -> float:
    """``c_b = (N − b)/(b(N − 1))``, the finite-population factor (``1 ≤ b ≤ N``, ``N ≥ 2``)."""
    require_int("n_demos", n_demos, 2)
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= n_demos:
        raise ValueError(f"b (shot count) must be an integer in 1..N={n_demos}, got {b!r}")
    return (n_demos - b) / (b * (n_demos - 1))


def check_shots(b: int, n_demos: int) -> int:
    """A shot count for the bound: ``1 ≤ b < N`` (at ``b = N``, ``C_t = 0`` and the bound is undefined)."""
    shot_factor(b, n_demos)
    if b >= n_demos:
        raise ValueError(
            f"b (shot count) must be < N = {n_demos} for the bound: at b = N the noise covariance "
            f"C_t is 0 and -log det C_t is infinite; got b = {b}"
        )
    return int(b)


def contributions(
    params: LinearAttentionParams, H: jax.Array, *, mask: str = "demos", scale: str = "1"
) -> jax.Array:
    """Per-demonstration contributions ``g_{t,i}``: ``(L, N, D, D)`` for one prompt ``H (D, N+1)``.

    ``g_{t,i} = s (W_V^t h_i^{t-1})(W_K^t h_i^{t-1})^T W_Q^t (I + W_{t-1})`` with ``h_i^{t-1}`` the
    demonstration states entering layer ``t`` (from :func:`lintrans.trajectory.trajectory`, so the
    ``causal`` mask works too); ``Σ_i g_{t,i} = G_t``.
    """
    return _contributions(params, trajectory(params, H, mask=mask, scale=scale), H.shape[1] - 1, scale)


def _contributions(params, traj, n_demos, scale):
    s = scale_factor(scale, n_demos)
    D = traj.W.shape[-1]
    h = traj.states[:-1, :, :n_demos]  # (L, D, N): h_i^{t-1}
    A = jnp.eye(D, dtype=traj.W.dtype) + jnp.concatenate([jnp.zeros_like(traj.W[:1]), traj.W[:-1]])
    values = einsum("tab,tbn->tna", params.w_v, h)
    keys = einsum("tab,tbn->tna", params.w_k, h)
    tail = mm(params.w_q, A)  # W_Q^t (I + W_{t-1})
    return s * einsum("tna,tnc,tcb->tnab", values, keys, tail)


def demo_gradients(g: jax.Array) -> jax.Array:
    """``∇ℓ_i = N·vec(g_{t,i})``: ``(..., N, D, D) → (..., N, D²)``; their mean over ``i`` is ``vec(G_t)``."""
    n_demos, D = g.shape[-3], g.shape[-1]
    return n_demos * g.reshape(g.shape[:-2] + (D * D,))


def noise_covariance(g_t: jax.Array, b: int) -> jax.Array:
    """``C_t`` for one layer from its contributions ``g_t (N, D, D)``: ``(D², D²)``.

    ``C_t = c_b ((1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ − vec(G_t) vec(G_t)ᵀ)``, computed in the equal centred form
    ``c_b (1/N) Σ_i (∇ℓ_i − vec G_t)(∇ℓ_i − vec G_t)ᵀ`` so it is positive semi-definite to rounding.
    """
    c_b = shot_factor(b, g_t.shape[0])
    u = demo_gradients(g_t)
    centred = u - jnp.mean(u, axis=0)
    return c_b * mm(centred.T, centred) / g_t.shape[0]


# ----------------------------------------------------------------------------- ranks


def rank_tolerance(sigma_ref: jax.Array, shape: tuple[int, int], dtype=jnp.float64) -> jax.Array:
    """``σ_ref · max(m, n) · ε_mach``: singular values of an ``m × n`` factor above it count towards the rank.

    The rule of ``numpy.linalg.matrix_rank`` (``σ_ref = σ_max``): an SVD's backward error is a modest
    multiple of ``ε_mach·σ_max`` (Golub & Van Loan, *Matrix Computations*, §5.4), so structurally zero
    singular values come out below it, while genuine ones of size ``≳ max(m, n)·ε_mach·σ_max`` are kept.
    Where the factor itself was formed with cancellation, ``σ_ref`` is an a-priori bound of its norm
    from the magnitudes of its operands (:func:`term_stats`), the scale its rounding is relative to.
    """
    return sigma_ref * max(shape) * jnp.finfo(dtype).eps


def spectrum_from_factor(F: jax.Array, sigma_ref=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(eigvals, rank, Vh)`` of ``C = Fᵀ F`` for a factor ``F`` ``(n, d)`` (``C`` is ``d × d``).

    ``eigvals`` ``(k,)`` ascending, ``k = min(n, d)`` (the other ``d − k`` are exactly 0), computed as the
    squared singular values of ``F``; ``rank`` with :func:`rank_tolerance` at ``max(σ_max, sigma_ref)``;
    ``Vh`` ``(k, d)`` the right singular vectors in the same (ascending) order.
    """
    # QR first, then the SVD of the small square R: the same backward stability (Householder QR), and
    # XLA's CPU SVD of a 210 × 441 matrix is ≈ 5× slower than QR + SVD of 210 × 210 (measured).
    n, d = F.shape
    if n >= d:
        Q, R = jnp.linalg.qr(F)  # F = Q R, R (d, d): F's right singular vectors are R's
        _, sv, Vh = jnp.linalg.svd(R)
    else:
        Q, R = jnp.linalg.qr(F.T)  # Fᵀ = Q R, R (n, n): F = Rᵀ Qᵀ, right singular vectors (Q U)ᵀ
        U, sv, _ = jnp.linalg.svd(R)
        Vh = mm(Q, U).T
    ref = sv[0] if sigma_ref is None else jnp.maximum(sv[0], sigma_ref)
    rank = jnp.sum(sv > rank_tolerance(ref, F.shape, F.dtype))
    return (sv * sv)[::-1], rank, Vh[::-1]


def structural_rank_bound(H: jax.Array, n_layers: int, *, mask: str = "demos") -> jax.Array:
    """The structural upper bound on ``rank C_t`` for one prompt ``H (D, N+1)``: ``(L,)`` int.

    Every ``g_{t,i}`` is the image of the symmetric ``h_i h_iᵀ`` under a linear map fixed by the weights,
    and ``C_t`` is a covariance of ``N`` centred vectors, so ``rank C_t ≤ min(m(m+1)/2, N − 1)`` with ``m``
    the dimension of the span of the states entering layer ``t``. Under ``demos`` they are
    ``(I + W_{t-1}) h_i^0``, so ``m = k`` := rank of the demonstrations ``[x_i; y_i]`` (``d_in`` noiseless,
    ``D`` with label noise, when ``N`` is large enough) at every layer. Under ``causal`` each token moves
    by its own matrix, so from layer 2 on ``m = D``. ``k`` is counted with :func:`rank_tolerance` on
    the singular values of the ``D × N`` demonstrations. Reached for generic weights; the exact GD
    construction reaches only ``d_in``, a clipped matrix less.
    """
    check_options(mask)
    D, n_demos = H.shape[0], H.shape[1] - 1
    sv = jnp.linalg.svd(H[:, :n_demos], compute_uv=False)
    k = jnp.sum(sv > rank_tolerance(sv[0], (D, n_demos), H.dtype))
    first = jnp.minimum(k * (k + 1) // 2, n_demos - 1)
    later = first if mask == "demos" else jnp.minimum(D * (D + 1) // 2, n_demos - 1)
    return jnp.concatenate([first[None], jnp.full((n_layers - 1,), later)]) if n_layers > 1 else first[None]


# ----------------------------------------------------------------------------- per-term statistics


class TermStats(NamedTuple):
    """What the bound needs from term ``t`` of one prompt (leading ``(L,)``, then batch axes).

    Attributes:
      sq_printed: ``‖ΔW_t‖_F² ‖I + W_{t-1}‖_F²``.
      sq_proof: ``‖G_t‖_F²``.
      trace: ``tr C_t``.
      eigvals: ``(k,)`` eigenvalues (ascending) of ``C_t`` that are not structurally zero (the squared
        singular values of a ``k``-column factor; the other ``d − k`` are exactly 0).
      rank: ``rank C_t`` (int; :func:`rank_tolerance` on the factor's singular values).
      support_residual: ``‖(I − P_t) vec G_t‖ / ‖vec G_t‖`` (0 when ``G_t = 0``), ``P_t`` the orthogonal
        projector onto the ``rank`` leading eigenvectors of ``C_t`` (an upper bound of it on the
        factored path).
    """

    sq_printed: jax.Array
    sq_proof: jax.Array
    trace: jax.Array
    eigvals: jax.Array
    rank: jax.Array
    support_residual: jax.Array


def term_stats(
    params: LinearAttentionParams, H: jax.Array, b: int, *, mask: str = "demos", scale: str = "1"
) -> tuple[TermStats, jax.Array]:
    """:class:`TermStats` of every term of one prompt the direct way (SVD of the ``N × d`` factor of ``C_t``).

    The reference path, for any mask (:mod:`lintrans.bound_factored` has the fast one for ``demos``).
    Returns ``(stats, W_L)`` with ``stats`` fields ``(L, ...)`` (``eigvals`` ``(L, min(N, d))``) and
    ``W_L`` ``(D, D)``. Traceable (``b``, ``mask``, ``scale`` static): usable inside ``jit``/``vmap``.
    """
    check_options(mask, scale)
    shot_factor(b, H.shape[1] - 1)
    return _term_stats(params, H, int(b), mask=mask, scale=scale)


@partial(jax.jit, static_argnames=("b", "mask", "scale"))
def _term_stats(params, H, b, *, mask, scale):
    n_demos = H.shape[1] - 1
    c_b = shot_factor(b, n_demos)
    traj = trajectory(params, H, mask=mask, scale=scale)
    g = _contributions(params, traj, n_demos, scale)  # (L, N, D, D)
    D = H.shape[0]
    u = demo_gradients(g)
    F = np.sqrt(c_b / n_demos) * (u - jnp.mean(u, axis=1, keepdims=True))  # (L, N, d): C_t = F_tᵀ F_t
    W_prev = jnp.concatenate([jnp.zeros_like(traj.W[:1]), traj.W[:-1]])
    A = jnp.eye(D, dtype=H.dtype) + W_prev
    # The rank's reference scale: ‖row of F‖ ≤ √(c_b/N)·N|s|·‖W_V‖‖W_K‖‖W_Q A‖·max_i‖h_i‖², the magnitude
    # the rounding of the states is relative to. It matters when the states cancel (a converging GD
    # construction's label slots hold residuals → 0): measured at d_in = 3, N = 64, L = 8 (256 prompts,
    # weight noise 0…1e-2), structurally zero σ ≤ 0.7·ε·σ_ref, genuine σ ≥ 2.7e7·ε·σ_ref.
    h_sq = jnp.max(jnp.sum(traj.states[:-1, :, :n_demos] ** 2, axis=1), axis=-1)  # (L,)
    ref = (np.sqrt(c_b / n_demos) * n_demos * abs(scale_factor(scale, n_demos))
           * jnp.sqrt(_sq(params.w_v) * _sq(params.w_k) * _sq(mm(params.w_q, A))) * h_sq)
    lam, rank, Vh = jax.vmap(spectrum_from_factor)(F, ref)
    G = traj.G.reshape(-1, D * D)
    k = lam.shape[-1]
    supp = jnp.arange(k) >= k - rank[:, None]  # the `rank` largest (ascending order)
    coef = jnp.where(supp, einsum("tjd,td->tj", Vh, G), 0.0)
    resid = jnp.linalg.norm(G - einsum("tjd,tj->td", Vh, coef), axis=-1)
    norm_G = jnp.linalg.norm(G, axis=-1)
    stats = TermStats(
        sq_printed=_sq(traj.delta_w) * _sq(A),
        sq_proof=norm_G**2,
        trace=jnp.sum(F * F, axis=(-2, -1)),
        eigvals=lam,
        rank=rank,
        support_residual=jnp.where(norm_G > 0, resid / jnp.where(norm_G > 0, norm_G, 1.0), 0.0),
    )
    return stats, traj.W[-1]


def _sq(a):
    return jnp.sum(a * a, axis=(-2, -1))


# ----------------------------------------------------------------------------- summands


def ridge_terms(stats: TermStats, d: int, eps) -> dict[str, jax.Array]:
    """The ridged summands (the reported bound) from the stats of ``B`` prompts (fields ``(B, L, ...)``).

    ``eps`` ``(E,)`` relative ridges (a traced array is fine). Returns ``eps_t`` ``(E, L)``
    (``ε·E[tr C_t]/d``), ``printed_ridge_prompt`` ``(E, B, L)``, ``printed_ridge`` and ``proof_ridge`` ``(E, L)``.
    Traceable; no threshold.
    """
    lam = jnp.maximum(stats.eigvals, 0.0)
    k = lam.shape[-1]
    q_pr, q_pf, tr = stats.sq_printed, stats.sq_proof, stats.trace
    eps = jnp.atleast_1d(jnp.asarray(eps, lam.dtype))
    eps_t = eps[:, None] * jnp.mean(tr, axis=0)[None, :] / d  # (E, L)
    e = eps_t[:, None, :]  # (E, 1, L)
    safe_e = jnp.where(e > 0, e, 1.0)
    logdet = jnp.sum(jnp.log(lam[None] + safe_e[..., None]), axis=-1) + (d - k) * jnp.log(safe_e)

    def per_prompt(q):
        val = d * jnp.log((q + tr + d * e) / d) - logdet
        return jnp.where(e > 0, val, jnp.where(q == 0, 0.0, jnp.inf))

    out = {"eps_t": eps_t, "printed_ridge_prompt": per_prompt(q_pr)}
    out["printed_ridge"] = jnp.mean(out["printed_ridge_prompt"], axis=1)
    val = d * jnp.log(jnp.mean(q_pf + tr + d * e, axis=1) / d) - jnp.mean(logdet, axis=1)
    out["proof_ridge"] = jnp.where(eps_t > 0, val, jnp.where(jnp.all(q_pf == 0, axis=0), 0.0, jnp.inf))
    return out


def bound_summands(stats: TermStats, d: int, *, eps=EPS_GRID, support_tol: float = SUPPORT_TOL) -> dict[str, jax.Array]:
    """Per-term summands of every form of :data:`lintrans.bound_forms.FORMS`, from the stats of ``B`` prompts.

    Args:
      stats: :class:`TermStats` with leading ``(B, L)``.
      d: ``D²``, the dimension of ``vec W``.
      eps: relative ridges ``ε`` (``ε_t = ε·E[tr C_t]/d``), ``(E,)`` (static: a tuple of floats).
      support_tol: largest relative projection residual of ``vec G_t`` counted as in the support.

    Returns (``E`` = ``len(eps)``), every array over terms ``t = 1..L`` on its last axis: one entry per
    registry form — ``printed_raw``, ``proof_raw``, ``printed_support``, ``proof_support`` ``(L,)``;
    ``printed_ridge``, ``proof_ridge`` ``(E, L)`` — and ``rank`` ``(B, L)`` int; ``in_support`` ``(B, L)``;
    ``smallest_kept_rel``, ``largest_dropped_rel`` ``(B, L)``: the eigenvalues either side of the rank cut
    over ``λ_max`` (``inf``/``-inf`` when there is none); ``printed_*_prompt`` per-prompt printed summands
    (``(B, L)``, ``(E, B, L)``) for intervals and the ``≥ 0`` check; ``eps_t`` ``(E, L)``.
    """
    eps = tuple(float(e) for e in np.atleast_1d(np.asarray(eps, dtype=np.float64)))
    out = _bound_summands(stats, int(d), eps=eps, support_tol=float(support_tol))
    missing = [f for f in FORMS if f not in out]
    assert not missing, f"bound_summands computes every registry form; missing {missing}"
    return out


@partial(jax.jit, static_argnames=("d", "eps", "support_tol"))
def _bound_summands(stats, d, *, eps, support_tol):
    lam = jnp.maximum(stats.eigvals, 0.0)
    k = lam.shape[-1]
    q_pr, q_pf, tr = stats.sq_printed, stats.sq_proof, stats.trace
    r = stats.rank
    lam_max = lam[..., -1]
    supp = jnp.arange(k) >= k - r[..., None]
    rr = jnp.maximum(r, 1)
    logpdet = jnp.sum(jnp.log(jnp.where(supp, lam, 1.0)), axis=-1)
    in_support = stats.support_residual <= support_tol
    rel = lam / jnp.where(lam_max > 0, lam_max, 1.0)[..., None]
    out = {
        "rank": r,
        "in_support": in_support,
        "smallest_kept_rel": jnp.min(jnp.where(supp, rel, jnp.inf), axis=-1),
        "largest_dropped_rel": jnp.max(jnp.where(supp, -jnp.inf, rel), axis=-1),
    }

    # support form (our derivation, a diagnostic): r log((q + tr C)/r) − log pdet C; a layer with C = 0
    # passes no information only when its update is 0 as well.
    def support_pp(q):
        val = jnp.where(r > 0, r * jnp.log((q + tr) / rr) - logpdet, jnp.where(q == 0, 0.0, jnp.inf))
        return jnp.where(in_support, val, jnp.inf)

    out["printed_support_prompt"] = support_pp(q_pr)
    out["printed_support"] = jnp.mean(out["printed_support_prompt"], axis=0)
    onehot = r[..., None] == jnp.arange(k + 1)  # (B, L, k+1): r ≤ k
    count = jnp.sum(onehot, axis=0)
    total = jnp.sum(jnp.where(onehot, (q_pf + tr)[..., None], 0.0), axis=0)
    rho = jnp.arange(k + 1)
    p = count / r.shape[0]
    grp = jnp.where(
        rho > 0,
        p * rho * jnp.log(total / jnp.maximum(count, 1) / jnp.maximum(rho, 1)),
        jnp.where(total == 0, 0.0, jnp.inf),
    )
    proof_support = jnp.sum(jnp.where(count > 0, grp, 0.0), axis=-1) - jnp.mean(logpdet, axis=0)
    out["proof_support"] = jnp.where(jnp.all(in_support, axis=0), proof_support, jnp.inf)

    out.update(ridge_terms(stats, d, jnp.asarray(eps, lam.dtype)))

    # as printed: finite only when C_t has full rank d, 0 for an inactive layer.
    full = r == d
    inactive_pr = (q_pr == 0) & (tr == 0)
    raw_pp = jnp.where(full, d * jnp.log((q_pr + tr) / d) - logpdet, jnp.where(inactive_pr, 0.0, jnp.inf))
    out["printed_raw"] = jnp.mean(raw_pp, axis=0)
    raw_pf = d * jnp.log(jnp.mean(q_pf + tr, axis=0) / d) - jnp.mean(logpdet, axis=0)
    inactive_pf = jnp.all((q_pf == 0) & (tr == 0), axis=0)
    out["proof_raw"] = jnp.where(jnp.all(full, axis=0), raw_pf, jnp.where(inactive_pf, 0.0, jnp.inf))
    return out


def bound_value(summands, n_demos: int, R: float = 1.0):
    """``sqrt(R²/N · Σ_t summand_t)`` over the last axis (``+∞`` if any summand is)."""
    total = np.sum(np.asarray(summands, dtype=np.float64), axis=-1)
    return np.sqrt(R**2 / n_demos * total)


def describe_bounds(summed: dict[str, float], *, d: int, rank_min: int, rank_max: int, n_out: int = 0) -> dict:
    """Reason strings for every non-finite bound value in ``summed`` (``{form or form@ε: Σ_t summand}``).

    ``n_out``: number of (prompt, term) pairs with ``vec G_t`` outside the support of ``C_t``.
    """
    reasons = {}
    for key, v in summed.items():
        if np.isfinite(v):
            continue
        cov = FORMS[key.split("@")[0]].covariance
        if np.isnan(v):
            reasons[key] = "NaN: non-finite states (see nonfinite counts)"
        elif cov == "raw":
            reasons[key] = (
                f"C_t singular: rank r_t in [{rank_min}, {rank_max}] < d = {d}, so -log det C_t = +inf "
                "(SPEC §7); see the ridged form"
            )
        elif cov == "support":
            reasons[key] = (
                f"vec G_t outside the support of C_t for {n_out} (prompt, term) pairs: the support-restricted "
                "argument (this project's derivation) does not apply there"
            )
        else:
            reasons[key] = "C_t = 0 at a layer with a nonzero update, or non-finite states"
    return reasons


# ----------------------------------------------------------------------------- risks


def implicit_predictor(W: jax.Array, readout: int = 1) -> jax.Array:
    """``v = ρ (I + W)[D−1, :d_in]``: the linear predictor ``x ↦ vᵀx`` of the implicit parameter ``W``."""
    return readout * W[-1, :-1]


def loss(W: jax.Array, x: jax.Array, y: jax.Array, readout: int = 1) -> jax.Array:
    """``ℓ(W, [x; y]) = (ρ e_yᵀ (I + W) [x; 0] − y)²`` (SPEC §7); ``x (..., d_in)``, ``y (...)``."""
    return (einsum("...i,i->...", x, implicit_predictor(W, readout)) - y) ** 2


def empirical_risk(W: jax.Array, H: jax.Array, readout: int = 1) -> jax.Array:
    """``L_S(W) = (1/N) Σ_i ℓ(W, h_i)`` over the demonstrations of ``H (D, N+1)``."""
    return jnp.mean(loss(W, H[:-1, :-1].T, H[-1, :-1], readout))


def population_risk(W, w, *, noise_std=0.0, cov_sqrt=None, readout: int = 1) -> jax.Array:
    """``L_μ(W) = ‖Σ^{1/2ᵀ}(v − w)‖² + σ²``: the exact mean of ``ℓ`` over fresh ``x = Σ^{1/2} z``, ``y = wᵀx + σε``."""
    a = implicit_predictor(W, readout) - w
    if cov_sqrt is not None:
        a = mm(jnp.asarray(cov_sqrt, a.dtype).T, a)
    return jnp.sum(a * a) + noise_std**2


def population_risk_mc(key, W, w, n_samples: int, *, noise_std=0.0, cov_sqrt=None, readout: int = 1):
    """Monte-Carlo ``L_μ(W)`` from ``n_samples`` fresh samples of the task ``w`` (checks the closed form)."""
    k_x, k_e = jax.random.split(key)
    x = jax.random.normal(k_x, (n_samples, w.shape[0]), W.dtype)
    if cov_sqrt is not None:
        x = einsum("nj,ij->ni", x, jnp.asarray(cov_sqrt, W.dtype))
    y = x @ w + noise_std * jax.random.normal(k_e, (n_samples,), W.dtype)
    return jnp.mean(loss(W, x, y, readout))


class Risks(NamedTuple):
    """Per-prompt risks of ``W_L`` (each ``(B,)``): ``L_S``, ``L_mu``, ``gap = L_mu − L_S``,
    ``test_error = (ŷ − y_q)²/d_in`` (SPEC §5, the model's query prediction), ``loss_var = Var_μ ℓ = 2 L_mu²``."""

    L_S: jax.Array
    L_mu: jax.Array
    gap: jax.Array
    test_error: jax.Array
    loss_var: jax.Array


def prompt_risks(W, H, w, y_query, noise_std, cov_sqrt, readout: int = 1) -> Risks:
    """:class:`Risks` of one prompt from its ``W_L`` (traceable; ``noise_std``, ``cov_sqrt`` may be arrays)."""
    L_S = empirical_risk(W, H, readout)
    L_mu = population_risk(W, w, noise_std=noise_std, cov_sqrt=cov_sqrt, readout=readout)
    y_hat = readout * jnp.dot((jnp.eye(W.shape[0], dtype=W.dtype) + W)[-1], H[:, -1], precision="highest")
    d_in = H.shape[0] - 1
    return Risks(L_S, L_mu, L_mu - L_S, (y_hat - y_query) ** 2 / d_in, 2.0 * L_mu**2)


def risks(params, batch, *, noise_std=0.0, cov_sqrt=None, mask="demos", scale="1", readout=1) -> Risks:
    """:class:`Risks` of a batch (``RegressionBatch`` or ``(H, y_query, w)``), vmapped over prompts."""
    check_options(mask, scale, readout)
    H, y_query, w = batch
    return _risks_batch(params, H, y_query, w, noise_std, cov_sqrt, mask=mask, scale=scale, readout=readout)


@partial(jax.jit, static_argnames=("mask", "scale", "readout"))
def _risks_batch(params, H, y_query, w, noise_std, cov_sqrt, *, mask, scale, readout):
    W_L = jax.vmap(lambda h: trajectory(params, h, mask=mask, scale=scale).W[-1])(H)
    return jax.vmap(prompt_risks, in_axes=(0, 0, 0, 0, None, None, None))(
        W_L, H, w, y_query, noise_std, cov_sqrt, readout
    )


def estimate_R(loss_var) -> float:
    """``R̂ = (mean over prompts of Var_μ ℓ(W_L, ·))^{1/2}`` — a lower estimate of any valid ``R``."""
    return float(np.sqrt(np.mean(np.asarray(loss_var, dtype=np.float64))))
