"""Prompt samplers: Garg-style in-context linear regression, and generic random tokens (SPEC §1, §5).

Layout (SPEC §1): a prompt is ``H`` of shape ``(D, N+1)``, columns are tokens
``h_i = [x_i; y_i]``, the query ``[x_q; 0]`` is the last column (label slot zeroed); a batch is
``(B, D, N+1)``. Every sampler takes a JAX key first, is a pure function of it and runs under jit.

Regression task ``linear`` (Garg et al., 2022): ``w ~ N(0, I_d)``, ``x ~ N(0, I_d)``,
``y = wᵀx + σ ε``; options: label noise ``σ`` (``noise_std``), ``k``-sparse ``w`` (``sparsity``:
``k`` coordinates kept, chosen uniformly), anisotropic inputs ``x = Σ^{1/2} z`` (``cov_sqrt``,
a ``(d, d)`` matrix). ``d = d_in``, ``d_out = 1``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.io import load_npz, require_float_array, require_int
from lintrans.numerics import einsum

__all__ = ["RegressionBatch", "LinearDraws", "sample_linear", "sample_linear_xy", "sample_linear_split", "tokens_from_xy", "split_prompt", "random_prompts", "load_prompts", "LinearTask"]


class RegressionBatch(NamedTuple):
    """A batch of regression prompts.

    Attributes:
      H: ``(B, D, N+1)`` prompts, ``D = d_in + 1``, query last with label slot 0.
      y_query: ``(B,)`` the query's true label (noise included).
      w: ``(B, d_in)`` the task vector of each prompt.
    """

    H: jax.Array
    y_query: jax.Array
    w: jax.Array


def tokens_from_xy(X: jax.Array, y: jax.Array) -> jax.Array:
    """``(N+1, d_in)`` inputs and ``(N+1,)`` labels → ``(D, N+1)`` prompt with the query label zeroed."""
    y = y.at[-1].set(0.0)
    return jnp.concatenate([X.T, y[None, :]], axis=0)


def split_prompt(H: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(D, N+1)`` prompt (``d_out = 1``) → ``(X_s (N, d_in), y_s (N,), x_q (d_in,))``."""
    return H[:-1, :-1].T, H[-1, :-1], H[:-1, -1]


def _standard_normal_parts(key: jax.Array, n_prompts: int, n_demos: int, d_in: int, dtype):
    """``jax.random.normal(key, (B, N+1, d))`` split into demonstrations ``(B, N, d)`` and query ``(B, d)``.

    The same transform as ``jax.random.normal`` (``√2 · erfinv(u)``, ``u`` uniform on
    ``(−1, 1)``; bitwise equal in jax 0.10 and 0.11), applied to the two slices of ``u`` separately:
    when one normal array feeds both a Gram product and a slice, XLA materialises two intermediate
    arrays of the transform and computes it twice, which doubled the sampling time at N = 400.
    """
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
    u = jax.random.uniform(key, (n_prompts, n_demos + 1, d_in), dtype, lo, np.array(1.0, dtype))
    sqrt2 = np.array(np.sqrt(2.0), dtype)
    return sqrt2 * jax.lax.erf_inv(u[:, :n_demos]), sqrt2 * jax.lax.erf_inv(u[:, n_demos])


def check_task_args(n_prompts, n_demos, d_in, *, noise_std=0.0, sparsity=None, cov_sqrt=None) -> None:
    """``ValueError`` naming the argument unless the regression task's arguments are in range.

    Shared by every regression sampler (:func:`sample_linear_split` and its views,
    :func:`lintrans.gram_sampler.sample_linear_gram`).
    """
    for name, v in (("n_prompts", n_prompts), ("n_demos", n_demos), ("d_in", d_in)):
        require_int(name, v)
    if isinstance(noise_std, (int, float)) and not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    if sparsity is not None and not (1 <= sparsity <= d_in):
        raise ValueError(f"sparsity must be None or an integer in 1..d_in={d_in}, got {sparsity!r}")
    if cov_sqrt is not None and tuple(np.shape(cov_sqrt)) != (d_in, d_in):
        raise ValueError(f"cov_sqrt must have shape ({d_in}, {d_in}), got {np.shape(cov_sqrt)}")


class LinearDraws(NamedTuple):
    """The draws of :func:`sample_linear`, demonstrations and query apart.

    Attributes:
      X_s: ``(B, N, d)`` demonstration inputs; y_s: ``(B, N)`` their labels.
      x_q: ``(B, d)`` query input; y_q: ``(B,)`` its true label.
      w: ``(B, d)`` task vectors.
    """

    X_s: jax.Array
    y_s: jax.Array
    x_q: jax.Array
    y_q: jax.Array
    w: jax.Array

    def joined(self) -> tuple[jax.Array, jax.Array]:
        """``X (B, N+1, d)`` and ``y (B, N+1)``, the query last."""
        return (jnp.concatenate([self.X_s, self.x_q[:, None, :]], axis=1),
                jnp.concatenate([self.y_s, self.y_q[:, None]], axis=1))


def sample_linear_split(
    key: jax.Array,
    n_prompts: int,
    n_demos: int,
    d_in: int,
    *,
    noise_std: float = 0.0,
    sparsity: int | None = None,
    cov_sqrt: jax.Array | None = None,
    dtype=jnp.float32,
) -> LinearDraws:
    """The regression task's draws, demonstrations and query apart (the samplers' one implementation).

    ``w ~ N(0, I_d)`` (``sparsity``: ``k`` coordinates kept), ``x = C z`` with ``z`` drawn as
    ``jax.random.normal(k_x, (B, N+1, d))`` (:func:`_standard_normal_parts`), ``y = wᵀx + σ ε``.
    No ``(B, N+1, d)`` array is built, which is what a consumer of the Gram matrix wants;
    :func:`sample_linear_xy` and :func:`sample_linear` are views of these draws.
    """
    check_task_args(n_prompts, n_demos, d_in, noise_std=noise_std, sparsity=sparsity, cov_sqrt=cov_sqrt)
    k_w, k_x, k_noise, k_support = jax.random.split(key, 4)
    w = jax.random.normal(k_w, (n_prompts, d_in), dtype)
    if sparsity is not None:
        # k coordinates uniformly at random: the k smallest of d i.i.d. uniforms.
        u = jax.random.uniform(k_support, (n_prompts, d_in))
        ranks = jnp.argsort(jnp.argsort(u, axis=1), axis=1)
        w = jnp.where(ranks < sparsity, w, 0.0)
    X_s, x_q = _standard_normal_parts(k_x, n_prompts, n_demos, d_in, dtype)
    if cov_sqrt is not None:
        c = jnp.asarray(cov_sqrt, dtype)
        X_s, x_q = einsum("bnj,ij->bni", X_s, c), einsum("bj,ij->bi", x_q, c)
    y_s, y_q = einsum("bnd,bd->bn", X_s, w), einsum("bd,bd->b", x_q, w)
    # A Python 0 skips the draw (a third of a training step at N = 400); the noise key is its own
    # branch, so w and X are the same either way. A traced noise_std always draws.
    if not (isinstance(noise_std, (int, float)) and noise_std == 0):
        eps = jax.random.normal(k_noise, (n_prompts, n_demos + 1), dtype)
        y_s, y_q = y_s + noise_std * eps[:, :n_demos], y_q + noise_std * eps[:, n_demos]
    return LinearDraws(X_s, y_s, x_q, y_q, w)


def sample_linear_xy(
    key: jax.Array,
    n_prompts: int,
    n_demos: int,
    d_in: int,
    *,
    noise_std: float = 0.0,
    sparsity: int | None = None,
    cov_sqrt: jax.Array | None = None,
    dtype=jnp.float32,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The draws of :func:`sample_linear` before they are laid out as tokens.

    Returns ``X (B, N+1, d)`` (query last), ``y (B, N+1)`` (the query's true label included) and
    ``w (B, d)``; ``sample_linear`` with the same arguments gives ``H = [Xᵀ; yᵀ]`` per prompt with
    the query label zeroed. The same draws as :func:`sample_linear_split`, joined.
    """
    draws = sample_linear_split(key, n_prompts, n_demos, d_in, noise_std=noise_std, sparsity=sparsity,
                                cov_sqrt=cov_sqrt, dtype=dtype)
    X, y = draws.joined()
    return X, y, draws.w


def sample_linear(
    key: jax.Array,
    n_prompts: int,
    n_demos: int,
    d_in: int,
    *,
    noise_std: float = 0.0,
    sparsity: int | None = None,
    cov_sqrt: jax.Array | None = None,
    dtype=jnp.float32,
) -> RegressionBatch:
    """Sample ``n_prompts`` linear-regression prompts with ``n_demos`` demonstrations each.

    Args:
      key: JAX PRNG key (split into w, x, noise and support keys; none is reused).
      n_prompts, n_demos, d_in: ``B``, ``N``, ``d``.
      noise_std: label noise ``σ ≥ 0``.
      sparsity: ``k`` non-zero coordinates of ``w`` (``1 ≤ k ≤ d``), or ``None`` for dense.
      cov_sqrt: ``(d, d)`` matrix ``Σ^{1/2}`` for anisotropic inputs, or ``None`` for ``I``.
    """
    X, y, w = sample_linear_xy(key, n_prompts, n_demos, d_in, noise_std=noise_std, sparsity=sparsity,
                               cov_sqrt=cov_sqrt, dtype=dtype)
    H = jax.vmap(tokens_from_xy)(X, y)
    return RegressionBatch(H=H, y_query=y[:, -1], w=w)


def random_prompts(
    key: jax.Array, n_prompts: int, n_demos: int, d_in: int, d_out: int = 1, dtype=jnp.float32
) -> jax.Array:
    """``(B, D, N+1)`` prompts of i.i.d. ``N(0, 1)`` tokens, ``D = d_in + d_out``, query labels 0.

    Generic inputs for the identities of Theorem 1, which hold for any prompt.
    """
    for name, v in (("n_prompts", n_prompts), ("n_demos", n_demos), ("d_in", d_in), ("d_out", d_out)):
        require_int(name, v)
    H = jax.random.normal(key, (n_prompts, d_in + d_out, n_demos + 1), dtype)
    return H.at[:, d_in:, -1].set(0.0)


def load_prompts(path, dtype=None) -> jax.Array:
    """Read an npz with array ``H`` of shape ``(B, D, N+1)`` (query last); validate it."""
    arrays = load_npz(path, required=("H",))
    try:
        H = require_float_array("H", arrays["H"], ndim=3)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{path}: {e}") from None
    B, D, T = H.shape
    if B < 1 or D < 2 or T < 2:
        raise ValueError(f"{path}: H must have shape (B, D, N+1) with B >= 1, D >= 2, N >= 1; got {H.shape}")
    return jnp.asarray(H, dtype=dtype)


@dataclasses.dataclass(frozen=True)
class LinearTask:
    """The regression task with its sampler options, one value for training and evaluation (issue 10).

    ``w ~ N(0, I_d)`` (``sparsity``: k coordinates kept), ``x = C z`` with ``C = cov_sqrt``
    (``None``: ``I``), ``y = wᵀx + σε``; prompts of ``n_demos`` demonstrations. ``cov_sqrt`` is
    held as a tuple of rows so the task is hashable (a static argument of a jitted function).
    """

    d_in: int
    n_demos: int
    noise_std: float = 0.0
    sparsity: int | None = None
    cov_sqrt: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self):
        check_task_args(1, self.n_demos, self.d_in, noise_std=self.noise_std, sparsity=self.sparsity,
                        cov_sqrt=self.cov_sqrt)

    def cov_sqrt_array(self, dtype=jnp.float64) -> np.ndarray | None:
        """``Σ^{1/2}`` as a ``(d, d)`` array, or ``None`` for isotropic inputs."""
        return None if self.cov_sqrt is None else np.asarray(self.cov_sqrt, dtype=dtype)

    def sigma(self) -> np.ndarray:
        """``Σ = C Cᵀ``, the input covariance ``(d, d)`` (float64)."""
        c = self.cov_sqrt_array(np.float64)
        return np.eye(self.d_in) if c is None else c @ c.T

    def sample(self, key: jax.Array, n_prompts: int, dtype=jnp.float32) -> RegressionBatch:
        """``n_prompts`` prompts of this task (:func:`sample_linear`)."""
        cov = self.cov_sqrt_array(dtype)
        return sample_linear(key, n_prompts, self.n_demos, self.d_in, noise_std=self.noise_std,
                             sparsity=self.sparsity, cov_sqrt=None if cov is None else jnp.asarray(cov, dtype), dtype=dtype)
