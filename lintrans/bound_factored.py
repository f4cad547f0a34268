"""Theorem 2 kernels, factored (mask ``demos``): ``C_t`` from a per-prompt factor, never as a ``d × d`` matrix.

Every token moves by ``A_{t-1} = I + W_{t-1}`` (Theorem 1, T3), so with ``X_i = h_i^0 h_i^0ᵀ`` (layer-0
tokens), ``P_t = W_V^t A``, ``R_t = (W_K^t A)ᵀ W_Q^t A``::

    g_{t,i} = s P_t X_i R_t,      G_t = s P_t S R_t  (S = Σ_i X_i),      ΔW_t = s P_t S (W_K^t A)ᵀ W_Q^t

and ``C_t = c_b N² s² (1/N) Σ_i vec(P_t Z_i R_t) vec(P_t Z_i R_t)ᵀ`` with ``Z_i = X_i − X̄``. Factor once per
prompt ``(1/N) Σ_i vec Z_i vec Z_iᵀ = Σ_j vec Y_j vec Y_jᵀ`` (SVD of the ``N × d`` centred ``vec Z_i/√N``:
``Y_j = σ_j v_j``, ``r0`` terms, ``r0`` = its rank with :func:`lintrans.bound.rank_tolerance` —
``d_in(d_in+1)/2`` for noiseless prompts); then ``C_t = Σ_j vec F_j vec F_jᵀ`` with
``F_j = √c_b N s · P_t Y_j R_t`` and the spectrum of ``C_t`` is that of the ``r0 × d`` factor
(:func:`lintrans.bound.spectrum_from_factor`): per prompt and layer ``O(r0·D³ + r0²·d)`` work,
independent of ``N``. Exact algebra, not an approximation (the direct path
:func:`lintrans.bound.term_stats` agrees to rounding; tested). The factor depends on the data only,
so nothing here depends on a threshold applied to the weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.attention import scale_factor
from lintrans.bound import TermStats, rank_tolerance, shot_factor, spectrum_from_factor
from lintrans.numerics import einsum, mm

__all__ = ["factor_rank", "max_factor_rank", "covariance_factor", "fast_term_stats", "batch_term_stats"]


def _token_moments(H):
    """``S = Σ_i X_i``, the singular values (descending) and right vectors of the centred ``vec Z_i/√N``."""
    n_demos = H.shape[1] - 1
    h = H[:, :n_demos]
    X = einsum("an,bn->nab", h, h)  # (N, D, D)
    D = H.shape[0]
    Z = (X - jnp.mean(X, axis=0)).reshape(n_demos, D * D) / np.sqrt(n_demos)
    _, sv, Vh = jnp.linalg.svd(Z, full_matrices=False)
    keep = sv > rank_tolerance(sv[0], Z.shape, Z.dtype)
    return jnp.sum(X, axis=0), jnp.where(keep, sv, 0.0), Vh, keep


def max_factor_rank(D: int, n_demos: int) -> int:
    """The largest possible ``r0`` for width ``D`` and ``N`` demonstrations: ``min(D(D+1)/2, N − 1)`` (static)."""
    return max(1, min(D * (D + 1) // 2, n_demos - 1))


def factor_rank(H: jax.Array) -> int:
    """``r0``: the largest rank over prompts ``H (B, D, N+1)`` of ``(1/N) Σ_i vec Z_i vec Z_iᵀ`` (eager)."""
    keep = jax.jit(jax.vmap(lambda h: _token_moments(h)[3]))(H)
    return max(1, int(jnp.max(jnp.sum(keep, axis=-1))))


def covariance_factor(H: jax.Array, r0: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(S, Y, E)`` for one prompt: ``S = Σ_i h_i h_iᵀ`` ``(D, D)``; ``Y`` ``(r0, D, D)`` with
    ``(1/N) Σ_i vec Z_i vec Z_iᵀ = Σ_j vec Y_j vec Y_jᵀ`` (terms beyond its rank are 0); and ``E`` ``(D, D)``,
    the part of ``S`` orthogonal to ``span{Y_j}``. ``r0`` static: :func:`factor_rank` (eager) or
    :func:`max_factor_rank` (from shapes, traceable).

    Since ``G_t = s P_t S R_t`` and ``F_j ∝ P_t Y_j R_t``, ``G_t − s P_t E R_t ∈ range F = supp C_t``: the
    residual of ``vec G_t`` outside the support is at most ``‖s P_t E R_t‖`` (``E = 0`` certifies every
    layer at once; it is, when ``N > r0`` generic tokens span the symmetric matrices on their span).
    """
    S, sv, Vh, keep = _token_moments(H)
    D = H.shape[0]
    r0 = min(int(r0), sv.shape[0])
    Y = (sv[:r0, None] * Vh[:r0]).reshape(r0, D, D)
    basis = jnp.where(keep[:, None], Vh, 0.0)
    e = S.reshape(-1) - mm(basis.T, mm(basis, S.reshape(-1)))
    return S, Y, e.reshape(D, D)


def _layer_update(weights, A, S, s):
    """``(G_t, ΔW_t, P_t, R_t)`` of one layer from ``A = I + W_{t-1}`` (Theorem 1, T4)."""
    w_k, w_q, w_v = weights
    P = mm(w_v, A)
    KA = mm(w_k, A)
    R = mm(KA.T, mm(w_q, A))
    dW = s * mm(mm(mm(P, S), KA.T), w_q)
    return mm(dW, A), dW, P, R


def _layer_stats(G, dW, P, R, A, Y, E, const, s):
    """:class:`TermStats` of one layer and prompt from the factor ``(Y, E)`` (the heavy part: the SVD).

    ``support_residual`` here is the upper bound ``‖s P E R‖/‖G_t‖`` (:func:`covariance_factor`)."""
    F = const * einsum("ab,jbc,cd->jad", P, Y, R)
    lam, rank, _ = spectrum_from_factor(F.reshape(F.shape[0], -1))
    resid = jnp.linalg.norm(s * mm(mm(P, E), R))
    norm_G = jnp.linalg.norm(G)
    return TermStats(
        sq_printed=jnp.sum(dW * dW) * jnp.sum(A * A),
        sq_proof=norm_G**2,
        trace=jnp.sum(F * F),
        eigvals=lam,
        rank=rank,
        support_residual=jnp.where(norm_G > 0, resid / jnp.where(norm_G > 0, norm_G, 1.0), 0.0),
    )


def _const(n_demos, b, scale):
    s = scale_factor(scale, n_demos)
    return s, np.sqrt(shot_factor(b, n_demos)) * n_demos * s


def fast_term_stats(params, S, Y, E, n_demos: int, b: int, scale: str = "1"):
    """:class:`lintrans.bound.TermStats` of every term of one prompt via the factor ``(S, Y, E)``.

    Returns ``(stats, A_L)``: fields ``(L, ...)`` (``eigvals`` ``(L, r0)``, the other ``d − r0``
    eigenvalues of ``C_t`` exactly 0) and ``A_L = I + W_L`` ``(D, D)``. Mask ``"demos"`` only.
    """
    s, const = _const(n_demos, b, scale)

    def step(A, weights):
        G, dW, P, R = _layer_update(weights, A, S, s)
        return A + G, _layer_stats(G, dW, P, R, A, Y, E, const, s)

    A_L, stats = jax.lax.scan(step, jnp.eye(S.shape[0], dtype=S.dtype), (params.w_k, params.w_q, params.w_v))
    return stats, A_L


def batch_term_stats(params, S, Y, E, n_demos: int, b: int, scale: str = "1", *, first_changed=0, reuse=None):
    """Stats ``(B, L, ...)`` and ``A_L`` ``(B, D, D)`` of a batch of factors: ``lax.scan`` over layers,
    ``vmap`` over prompts.

    With ``reuse`` (stats ``(L, B, ...)`` of the unpruned model) the terms ``t < first_changed``
    (0-based) are taken from it instead of recomputed — pruning layer ``k`` cannot change them (T6) —
    which skips the SVD there (a real branch: ``first_changed`` is not batched)."""
    s, const = _const(n_demos, b, scale)
    B, D = S.shape[0], S.shape[-1]
    upd = jax.vmap(_layer_update, in_axes=(None, 0, 0, None))
    heavy = jax.vmap(_layer_stats, in_axes=(0, 0, 0, 0, 0, 0, 0, None, None))

    def step(A, xs):
        weights, t, old = xs
        G, dW, P, R = upd(weights, A, S, s)
        if old is None:
            stats = heavy(G, dW, P, R, A, Y, E, const, s)
        else:
            stats = jax.lax.cond(t >= first_changed, lambda: heavy(G, dW, P, R, A, Y, E, const, s), lambda: old)
        return A + G, stats

    eye = jnp.broadcast_to(jnp.eye(D, dtype=S.dtype), (B, D, D))
    xs = ((params.w_k, params.w_q, params.w_v), jnp.arange(params.w_k.shape[0]), reuse)
    A_L, stats = jax.lax.scan(step, eye, xs)
    return jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), stats), A_L
