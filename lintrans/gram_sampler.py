"""Regression prompts drawn as their sufficient statistic: the demonstrations' Gram matrix (Bartlett).

Under the ``demos`` mask the linear model sees a prompt only through ``S = Σ_{i≤k} h_i h_iᵀ``
(``h_i = [x_i; y_i]``, SPEC §3, T4) and its query token, so training needs ``S``, not the
``k × d`` demonstrations. For the Gaussian task of :func:`lintrans.tasks.sample_linear`
(``x = C z``, ``y = wᵀx + σ ε``, ``z ~ N(0, I_d)``, ``ε ~ N(0, 1)``) ``S`` can be drawn exactly in
``O(d²)`` per prompt instead of ``O(k·d)``:

* ``h_i = A B g_i`` with ``g_i = [z_i; ε_i] ~ N(0, I_D)``, ``B = diag(C, σ)`` and
  ``A = [[I_d, 0], [wᵀ, 1]]``, so ``S = A B (Σ_i g_i g_iᵀ) Bᵀ Aᵀ``.
* ``Σ_i g_i g_iᵀ = GᵀG`` for the ``k × D`` Gaussian matrix ``G``, and ``GᵀG`` has the law of
  ``RᵀR`` where ``R`` is the ``R`` factor of a Householder QR of ``G`` (Bartlett's decomposition,
  extended to ``k < D``): upper triangular, ``R_jj ~ χ(k − j)`` for rows ``j < k`` (0-based),
  ``R_jl ~ N(0, 1)`` for ``l > j`` in those rows, rows ``j ≥ k`` zero, all independent. (The first
  Householder reflection depends only on the first column; by rotation invariance the reflected
  other columns are again i.i.d. Gaussian, which gives the first row and a ``(k−1) × (D−1)``
  Gaussian matrix for the rest.)

So ``S = F Fᵀ`` with ``F = A B Rᵀ``: ``D(D+1)/2`` normals and ``D`` chi variates per prompt, and
two ``D × D`` products, whatever ``k`` is. Same law as the token sampler, different draws: a run
with ``sampler="wishart"`` is reproducible from its seed but not equal draw for draw to a run with
``sampler="tokens"``. Tested against the exact Wishart moments ``E S = kΣ`` and
``Var S_jl = k(Σ_jl² + Σ_jj Σ_ll)``, ``Σ = A B Bᵀ Aᵀ``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.numerics import einsum
from lintrans.tasks import check_task_args

__all__ = ["GramBatch", "sample_linear_gram"]


class GramBatch(NamedTuple):
    """Regression prompts as sufficient statistics.

    Attributes:
      gram: ``(B, D, D)`` the demonstrations' Gram matrix ``S = Σ_{i≤k} h_i h_iᵀ``.
      query: ``(B, D)`` the query token ``[x_q; 0]``.
      y_query: ``(B,)`` the query's true label (noise included).
      w: ``(B, d_in)`` the task vectors.
    """

    gram: jax.Array
    query: jax.Array
    y_query: jax.Array
    w: jax.Array


def sample_linear_gram(
    key: jax.Array,
    n_prompts: int,
    n_demos: int,
    d_in: int,
    *,
    n_true: jax.Array | None = None,
    noise_std: float = 0.0,
    cov_sqrt: jax.Array | None = None,
    w: jax.Array | None = None,
    dtype=jnp.float32,
) -> GramBatch:
    """Draw ``n_prompts`` regression prompts' ``(S, h_q, y_q)`` with the law of :func:`lintrans.tasks.sample_linear`.

    Symbols → code: ``k`` → ``n_true`` (or ``n_demos``), ``C`` → ``cov_sqrt``, ``σ`` →
    ``noise_std``, ``R`` → ``R``, ``F = A B Rᵀ`` → ``F`` (module docstring).

    Args:
      key: JAX PRNG key (split into w, R, chi and query keys; none is reused).
      n_prompts, n_demos, d_in: ``B``, ``N``, ``d``.
      n_true: ``None`` (every prompt has ``N`` demonstrations) or ``(B,)`` integers in ``0..N``.
      noise_std: label noise ``σ ≥ 0``.
      cov_sqrt: ``(d, d)`` matrix ``C = Σ^{1/2}``, or ``None`` for ``I``.
      w: ``None`` (draw ``w ~ N(0, I_d)`` per prompt) or ``(B, d)`` task vectors to use.
      dtype: float dtype of the outputs.

    Returns:
      :class:`GramBatch` with ``gram (B, D, D)``, ``query (B, D)``, ``y_query (B,)``, ``w (B, d)``.
    """
    check_task_args(n_prompts, n_demos, d_in, noise_std=noise_std, cov_sqrt=cov_sqrt)
    if n_true is not None and tuple(np.shape(n_true)) != (n_prompts,):
        raise ValueError(f"n_true must be None or have shape ({n_prompts},), got {np.shape(n_true)}")
    if w is not None and tuple(np.shape(w)) != (n_prompts, d_in):
        raise ValueError(f"w must be None or have shape ({n_prompts}, {d_in}), got {np.shape(w)}")
    B, d, D = n_prompts, d_in, d_in + 1
    k_w, k_r, k_chi, k_q, k_qnoise = jax.random.split(key, 5)
    k = jnp.full((B,), n_demos, jnp.int32) if n_true is None else jnp.asarray(n_true, jnp.int32)

    w = jax.random.normal(k_w, (B, d), dtype) if w is None else jnp.asarray(w, dtype)
    # Bartlett factor R (B, D, D): row j is present iff j < k; R_jj ~ χ(k − j) = √(2 Γ((k−j)/2)).
    j = jnp.arange(D)
    present = j[None, :] < k[:, None]  # (B, D)
    shape = jnp.maximum(k[:, None] - j[None, :], 1).astype(dtype) / 2
    chi = jnp.sqrt(2 * jax.random.gamma(k_chi, shape, dtype=dtype))
    upper = j[:, None] < j[None, :]
    R = jnp.where(upper[None] & present[:, :, None], jax.random.normal(k_r, (B, D, D), dtype), 0.0)
    R = R + jax.vmap(jnp.diag)(jnp.where(present, chi, 0.0))

    # F = A B Rᵀ, B = diag(C, σ): rows 0..d−1 are C (Rᵀ)[:d], row d is wᵀ(those rows) + σ (Rᵀ)[d].
    Rt = jnp.swapaxes(R, 1, 2)
    Fx = Rt[:, :d, :] if cov_sqrt is None else einsum("ij,bjl->bil", jnp.asarray(cov_sqrt, dtype), Rt[:, :d, :])
    Fy = einsum("bi,bil->bl", w, Fx) + noise_std * Rt[:, d, :]
    F = jnp.concatenate([Fx, Fy[:, None, :]], axis=1)
    gram = einsum("bil,bjl->bij", F, F)

    x_q = jax.random.normal(k_q, (B, d), dtype)
    if cov_sqrt is not None:
        x_q = einsum("bj,ij->bi", x_q, jnp.asarray(cov_sqrt, dtype))
    y_q = einsum("bi,bi->b", w, x_q)
    if not (isinstance(noise_std, (int, float)) and noise_std == 0):
        y_q = y_q + noise_std * jax.random.normal(k_qnoise, (B,), dtype)
    query = jnp.concatenate([x_q, jnp.zeros((B, 1), dtype)], axis=1)
    return GramBatch(gram=gram, query=query, y_query=y_q, w=w)
