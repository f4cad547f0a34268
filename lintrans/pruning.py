"""SVD truncation by clipping rate, and condition numbers (SPEC §6).

Clipping rate ``ξ ∈ [0, 1)`` keeps the ``r`` largest singular values of an exact SVD::

    r = ⌊min(m, n) · (1 − ξ)⌋        (rule "exact": the floor in exact rational arithmetic)
    W(r) = U[:, :r] diag(σ[:r]) V[:, :r]^T

``ξ = 0`` returns the matrix unchanged (not a reconstruction); ``r = 0`` gives the zero matrix
unless ``min_rank`` is larger. The float expression ``int(m * (1 − ξ))`` is wrong at common rates
(m = 10, ξ = 0.9 gives 0, not 1), so ``ξ`` is read through ``Fraction(str(ξ))``, its decimal
spelling. Rule ``"laser"`` reproduces LASER's own float expression ``int(m·((10 − 10ξ)·0.1))``
(Sharma et al., ICLR 2024; their code's ``rate`` is ``10ξ``) for exact reproduction of its ranks.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.numerics import mm
from lintrans.io import require_int

__all__ = [
    "RANK_RULES",
    "PAPER_RATES",
    "check_rate",
    "kept_rank",
    "truncate_to_rank",
    "truncate_matrix",
    "condition_number",
]

RANK_RULES = ("exact", "laser")

#: The paper's candidate clipping rates (SPEC §6).
PAPER_RATES = (0.0, 0.1, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995)


def check_rate(xi) -> float:
    """Return ``ξ`` as a float after checking ``0 ≤ ξ < 1``; ``ValueError``/``TypeError`` otherwise."""
    if isinstance(xi, bool) or not isinstance(xi, (int, float, np.integer, np.floating)):
        raise TypeError(f"clipping rate xi must be a real number in [0, 1), got {xi!r}")
    xi = float(xi)
    if not (0.0 <= xi < 1.0):
        raise ValueError(f"clipping rate xi must lie in [0, 1), got {xi!r}")
    return xi


def kept_rank(m: int, n: int, xi: float, rule: str = "exact", min_rank: int = 0) -> int:
    """Rank ``r`` kept at clipping rate ``xi`` for an ``(m, n)`` matrix.

    Args:
      m, n: matrix shape.
      xi: clipping rate in ``[0, 1)``.
      rule: ``"exact"`` (``⌊min(m,n)(1 − ξ)⌋`` in rational arithmetic) or ``"laser"``.
      min_rank: lower bound on ``r`` (capped at ``min(m, n)``).
    """
    xi = check_rate(xi)
    if rule not in RANK_RULES:
        raise ValueError(f"rule must be one of {RANK_RULES}, got {rule!r}")
    for name, v in (("m", m), ("n", n)):
        require_int(name, v)
    require_int("min_rank", min_rank, 0)
    full = min(m, n)
    if rule == "exact":
        r = math.floor(full * (1 - Fraction(str(xi))))
    else:
        r = int(full * ((10 - 10 * xi) * 0.1))
    return int(min(full, max(r, min(min_rank, full))))


def truncate_to_rank(a: jax.Array, r) -> jax.Array:
    """Best rank-``r`` approximation of ``a`` (Eckart–Young) through an exact SVD.

    ``r`` may be a traced integer, so a sweep over ranks can be vmapped; ``r ≥ min(m, n)`` returns
    ``a`` itself, bit for bit. ``a``: ``(m, n)``.
    """
    full = min(a.shape[-2:])
    U, sv, Vt = jnp.linalg.svd(a, full_matrices=False)
    keep = jnp.arange(full) < r
    approx = mm(U * jnp.where(keep, sv, 0.0), Vt)
    return jnp.where(r >= full, a, approx)


def truncate_matrix(a: jax.Array, xi: float, rule: str = "exact", min_rank: int = 0) -> tuple[jax.Array, int]:
    """Clip ``a`` at rate ``xi``; returns ``(W(r), r)`` — always report ``r`` next to ``ξ``."""
    a = jnp.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"a must be a matrix (2-D), got shape {tuple(a.shape)}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"a must be a floating-point matrix, got dtype {a.dtype}")
    r = kept_rank(a.shape[0], a.shape[1], xi, rule, min_rank)
    if r == min(a.shape):
        return a, r
    return truncate_to_rank(a, r), r


def condition_number(a: jax.Array) -> jax.Array:
    """``σ_max / σ_min`` over the ``min(m, n)`` singular values; ``+∞`` for a singular matrix."""
    sv = jnp.linalg.svd(a, compute_uv=False)
    smax, smin = sv[..., 0], sv[..., -1]
    return jnp.where(smin > 0, smax / jnp.where(smin > 0, smin, 1.0), jnp.inf)
