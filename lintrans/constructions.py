"""Weights built from theory: L linear-attention layers that are L steps of gradient descent.

SPEC §4 (von Oswald et al., ICML 2023, in this project's conventions). With ``d_out = 1``, block
form over tokens ``[x; y]``, ``s = 1`` and readout ``ρ = −1``::

    W_K^t = W_Q^t = [[I_{d_in}, 0], [0, 0]],      W_V^t = [[0, 0], [0, −η_t]]

gives ``ΔW_t = [[0, 0], [−(w_t − w_{t−1})ᵀ, 0]]`` with
``w_t = w_{t−1} + η_t Σ_i (y_i − w_{t−1}ᵀ x_i) x_i``: gradient descent on ``½ Σ_i (wᵀx_i − y_i)²``
from ``w_0 = 0``. Each demonstration's label slot holds its residual ``y_i − w_tᵀ x_i`` and the
query's holds ``−w_tᵀ x_q``, so ``ŷ = ρ · (−w_Lᵀ x_q) = w_Lᵀ x_q`` and ``W_L = [[0, 0], [−w_Lᵀ, 0]]``.
The sign of ``W_V`` makes the label slot a residual; ``ρ = −1`` reads the prediction back out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.numerics import mm
from lintrans.params import LinearAttentionParams
from lintrans.io import require_int

__all__ = ["gd_construction", "gd_loop", "gd_readout_settings"]

#: The options under which :func:`gd_construction` equals gradient descent.
gd_readout_settings = {"mask": "demos", "scale": "1", "readout": -1}


def gd_construction(etas, d_in: int, dtype=jnp.float64) -> LinearAttentionParams:
    """Weights of ``L = len(etas)`` layers implementing L steps of GD with rates ``η_t``.

    Args:
      etas: ``(L,)`` step sizes ``η_1 … η_L`` (one per layer).
      d_in: input dimension; ``D = d_in + 1``.

    Returns:
      :class:`LinearAttentionParams` with arrays ``(L, D, D)``. Use with
      :data:`gd_readout_settings` (``mask="demos"``, ``scale="1"``, ``readout=-1``).
    """
    etas = np.asarray(etas, dtype=np.float64)
    if etas.ndim != 1 or etas.size < 1:
        raise ValueError(f"etas must be a non-empty 1-D sequence of step sizes, got shape {etas.shape}")
    if not np.all(np.isfinite(etas)):
        raise ValueError("etas must be finite")
    require_int("d_in", d_in)
    L, D = etas.size, d_in + 1
    kq = np.zeros((D, D))
    kq[:d_in, :d_in] = np.eye(d_in)
    w_v = np.zeros((L, D, D))
    w_v[:, d_in, d_in] = -etas
    w_kq = np.broadcast_to(kq, (L, D, D))
    return LinearAttentionParams(
        w_k=jnp.asarray(w_kq, dtype), w_q=jnp.asarray(w_kq, dtype), w_v=jnp.asarray(w_v, dtype)
    )


def gd_loop(X_s: jax.Array, y_s: jax.Array, etas: jax.Array) -> jax.Array:
    """Explicit gradient descent on ``½ Σ_i (wᵀx_i − y_i)²`` from ``w_0 = 0``.

    ``w_t = w_{t−1} + η_t Σ_i (y_i − w_{t−1}ᵀ x_i) x_i`` (a sum, not a mean: the construction's
    ``s = 1``).

    Args:
      X_s: ``(N, d_in)`` demonstration inputs.
      y_s: ``(N,)`` labels.
      etas: ``(L,)`` step sizes.

    Returns:
      ``(L+1, d_in)``: ``w_0 … w_L``.
    """
    w0 = jnp.zeros(X_s.shape[1], X_s.dtype)

    def step(w, eta):
        residual = y_s - mm(X_s, w)
        w = w + eta * mm(X_s.T, residual)
        return w, w

    _, ws = jax.lax.scan(step, w0, jnp.asarray(etas, X_s.dtype))
    return jnp.concatenate([w0[None], ws], axis=0)
