"""Full-precision products, the project's relative-error measure, and non-finite detection.

Every matrix product in the library goes through :func:`mm` / :func:`einsum`, which ask XLA for
``Precision.HIGHEST``. On GPUs JAX's default float32 product uses reduced-precision tensor cores
(SPEC §3: identity error 5e-4 at the default against 3.9e-7 at HIGHEST on an H200, L = 12); the
identities this library checks are only meaningful at full precision. On CPUs it changes nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at full precision on every backend."""
    return jnp.matmul(a, b, precision=HIGHEST)


def einsum(subscripts: str, *operands: jax.Array) -> jax.Array:
    """``jnp.einsum`` at full precision on every backend."""
    return jnp.einsum(subscripts, *operands, precision=HIGHEST)


def rel_err(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """Relative error of an identity ``lhs = rhs`` (SPEC §3).

    ``‖lhs − rhs‖_F / max(‖lhs‖_F, ‖rhs‖_F, tiny)`` over all axes, so two exact zeros give 0 and a
    non-finite side gives NaN or Inf (never a small number). ``tiny`` is the dtype's smallest
    normal number.
    """
    lhs = jnp.asarray(lhs)
    rhs = jnp.asarray(rhs)
    dtype = jnp.result_type(lhs, rhs)
    tiny = jnp.finfo(dtype).tiny
    num = jnp.linalg.norm((lhs - rhs).ravel())
    den = jnp.maximum(jnp.maximum(jnp.linalg.norm(lhs.ravel()), jnp.linalg.norm(rhs.ravel())), tiny)
    return num / den


def all_finite(x: jax.Array) -> jax.Array:
    """Scalar bool: every entry of ``x`` is finite."""
    return jnp.all(jnp.isfinite(x))


def numerical_rank(a: jax.Array, rtol: float | None = None) -> jax.Array:
    """Number of singular values of ``a`` above ``rtol · σ_max``.

    The default ``rtol = max(m, n) · eps`` is NumPy's ``matrix_rank`` convention. ``a``: ``(m, n)``.
    """
    m, n = a.shape[-2:]
    if rtol is None:
        rtol = max(m, n) * float(jnp.finfo(a.dtype).eps)
    sv = jnp.linalg.svd(a, compute_uv=False)
    return jnp.sum(sv > rtol * sv[..., :1], axis=-1)
