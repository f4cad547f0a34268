"""The linear model's query prediction on a whole batch of regression prompts (training fast path).

Under the ``demos`` mask every token moves by the same ``I + ΔW_t`` (SPEC §3, T3), so a prompt
enters the query prediction only through its demonstrations' Gram matrix ``S = H_s H_sᵀ`` and its
query token: :func:`demo_gram` computes ``S`` straight from the sampled inputs and labels (no token
array), :func:`linear_predict_batch` runs the T4 recursion on it for the whole batch, and
:func:`linear_query_predict` is the one-prompt form on the token array (the paths it is tested
against). Used by :mod:`lintrans.train`; the module docstring there explains zeroed
demonstrations (variable ``k``) and the ``√(N/k)`` scaling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lintrans import attention
from lintrans.numerics import einsum
from lintrans.params import LinearAttentionParams

__all__ = ["demo_gram", "attention_scale", "linear_query_predict", "linear_predict_batch", "linear_predict_gram",
           "batch_matmul", "implicit_layers", "TINY_MATMUL_MAX_DIM",
           "FORWARD_FUSED_MAX_DIM", "IMPLICIT_MAX_LAYERS", "IMPLICIT_MAX_LAYERS_TINY"]

#: Batched products ``(B, I, J) @ (B, J, K)`` with ``J ≤`` this are written as ``J`` fused
#: multiply-adds instead of a batched GEMM (:func:`batch_matmul`). Why, measured on the 2-core CPU
#: (issue 14, under load): XLA's CPU batched dot runs one tiny GEMM per prompt, 5.8 ms for
#: ``B = 4000, D = 6`` against 0.22 ms for the fused sum; the 3-layer value-and-grad of
#: :func:`linear_predict_gram` (``B = 4000``) went from 62 ms to 15 ms at ``D = 6`` and 59 to 33 ms
#: at ``D = 7``; at ``B = 2048`` it was even at ``D = 8`` (25.8 vs 25.3 ms) and slower from ``D = 9``
#: (41 → 55 ms; ``D = 11``: 43 → 60 ms; ``D = 21``, ``B = 256``: 20 → 24 ms): the fused form costs
#: ``J`` passes over the output. Hence the crossover at 8.
TINY_MATMUL_MAX_DIM = 8
#: The same crossover for products that are not differentiated (the samplers): forward alone, the
#: fused form was faster at every size measured (issue 14, under load): ``RᵀR`` of ``(B, D, D)``
#: triangular factors 6.2 → 0.46 ms (``B = 4000, D = 6``), 4.2 → 0.56 ms (``2048, 11``),
#: 1.0 → 0.57 ms (``256, 21``). Not measured beyond 21; the cost grows as ``J`` passes.
FORWARD_FUSED_MAX_DIM = 24
#: :func:`linear_predict_gram` applies at most this many middle layers' Gram matrices ``M_t``
#: implicitly, as ``3^j`` matrix-vector products with the last one formed (:func:`_gram_apply`),
#: instead of forming each with two batched ``D × D`` products per prompt. Measured on the 2-core
#: CPU (issue 14, float32 value-and-grad, quiet), formed vs implicit: ``L = 4, D = 21, B = 256``
#: 16.9–24.5 → 7.0–7.8 ms (two runs); ``L = 3``: 10.2 → 1.8 ms; ``L = 3, D = 11, B = 2048``:
#: 42.9 → 8.9 ms. At
#: ``L = 5, D = 21`` three implicit layers (22.3 ms) beat four (28.4) and none (27.9); at ``L = 6``
#: three (18.2) beat four (18.7) and none (24.4): the cost grows as ``3^j``, so the rest are formed.
IMPLICIT_MAX_LAYERS = 3
#: The same cap for ``D ≤`` :data:`TINY_MATMUL_MAX_DIM`, where forming ``M_t`` is cheap fused
#: multiply-adds: at ``L = 4, D = 6, B = 4000`` two implicit layers (23.7 ms) beat three (26.6)
#: and none (36.9); at ``L = 3`` one (11.0) and two (11.8) are alike, none 19.4.
IMPLICIT_MAX_LAYERS_TINY = 2


def _fused_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    # Σ_j a[:, :, j] ⊗ b[:, j, :]: elementwise ops XLA fuses into one loop over the batch.
    return sum(a[:, :, j, None] * b[:, None, j, :] for j in range(a.shape[2]))


@jax.custom_vjp
def _tiny_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return _fused_matmul(a, b)


def _tiny_matmul_fwd(a, b):
    return _fused_matmul(a, b), (a, b)


def _tiny_matmul_bwd(res, g):
    # C = A B: dA = G Bᵀ, dB = Aᵀ G, again as fused sums (autodiff of the sum would give
    # reductions over non-minor axes, measured slower than the batched GEMM).
    a, b = res
    return _fused_matmul(g, jnp.swapaxes(b, 1, 2)), _fused_matmul(jnp.swapaxes(a, 1, 2), g)


_tiny_matmul.defvjp(_tiny_matmul_fwd, _tiny_matmul_bwd)


def batch_matmul(a: jax.Array, b: jax.Array, *, differentiated: bool = True) -> jax.Array:
    """``a @ b`` for every prompt: ``(B, I, J) @ (B, J, K) -> (B, I, K)``, the same product either way.

    ``J ≤`` :data:`TINY_MATMUL_MAX_DIM` (``differentiated=False``, a product no gradient flows
    through: :data:`FORWARD_FUSED_MAX_DIM`): ``J`` fused multiply-adds (with a matching custom
    gradient); otherwise a full-precision batched einsum. The two differ by summation order only.
    """
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"batch_matmul needs (B, I, J) and (B, J, K), got {a.shape} and {b.shape}")
    if a.shape[2] <= (TINY_MATMUL_MAX_DIM if differentiated else FORWARD_FUSED_MAX_DIM):
        return _tiny_matmul(a, b)
    return einsum("bij,bjk->bik", a, b)


def demo_gram(X_s: jax.Array, y_s: jax.Array, keep: jax.Array | None = None) -> jax.Array:
    """The demonstrations' Gram matrix ``S = Σ_i κ_i h_i h_iᵀ`` with ``h_i = [x_i; y_i]`` (SPEC §3, T4).

    Symbols → code: ``x_i`` → ``X_s[:, i]``, ``y_i`` → ``y_s[:, i]``, ``κ_i`` → ``keep[:, i]``
    (1 for a demonstration present, 0 for a zeroed one; ``None``: all present).

    Equal to ``H_s H_sᵀ`` of the token array ``H_s = [X_sᵀ; y_sᵀ]`` (zeroed columns removed) up to
    summation order, computed block by block (``XᵀX``, ``Xᵀy``, ``yᵀy``) from the sampler's
    ``(B, N, d)`` layout, so the ``(B, D, N)`` token array is never built.

    Args:
      X_s: ``(B, N, d_in)`` demonstration inputs.
      y_s: ``(B, N)`` demonstration labels.
      keep: ``None`` or ``(B, N)`` weights in ``{0, 1}``.

    Returns:
      ``(B, D, D)`` with ``D = d_in + 1``.
    """
    Xk = X_s if keep is None else X_s * keep[:, :, None]
    yk = y_s if keep is None else y_s * keep
    s_xx = einsum("bnd,bne->bde", Xk, X_s)
    s_xy = einsum("bnd,bn->bd", Xk, y_s)
    s_yy = einsum("bn,bn->b", yk, y_s)
    top = jnp.concatenate([s_xx, s_xy[:, :, None]], axis=2)
    bottom = jnp.concatenate([s_xy, s_yy[:, None]], axis=1)[:, None, :]
    return jnp.concatenate([top, bottom], axis=1)


def linear_query_predict(params: LinearAttentionParams, H: jax.Array, n_true, *, mask: str, scale: str,
                         readout: int, path: str = "gram") -> jax.Array:
    """Query prediction of ONE prompt ``H (D, N+1)`` whose demonstrations after ``n_true`` are zero.

    ``n_true = None``: all ``N`` are real. With ``scale="1/N"`` and ``n_true = k`` the demonstrations
    are scaled by ``√(N/k)``, which equals ``s = 1/k`` exactly (module docstring). ``path="tokens"``:
    :func:`lintrans.attention.predict_tokens`; otherwise :func:`lintrans.attention.predict`.
    """
    N = H.shape[1] - 1
    if n_true is not None and scale == "1/N":
        c = jnp.sqrt(N / n_true.astype(H.dtype))
        H = H.at[:, :N].multiply(c)
    fn = attention.predict_tokens if path == "tokens" else attention.predict
    return fn(params, H, mask=mask, scale=scale, readout=readout)


def linear_predict_batch(params: LinearAttentionParams, H: jax.Array, n_true=None, *, scale: str,
                         readout: int, gram: jax.Array | None = None) -> jax.Array:
    """Query predictions of a whole batch, ``mask="demos"``: the T4 recursion on the demonstrations' Gram.

    Under the ``demos`` mask every token moves by the same ``I + ΔW_t`` (SPEC §3, T3), so the
    demonstration states' Gram matrix ``M_t = s H_s^t (H_s^t)ᵀ`` (``D × D``, the scale folded in)
    and the query state ``q_t = h^t_{N+1}`` carry everything::

        M_0 = s S = s H_s H_sᵀ,   q_0 = h_{N+1}
        ΔW_t = W_V^t M_{t-1} (W_K^tᵀ W_Q^t)                       (paper Eq. 3 / T4)
        q_t  = q_{t-1} + ΔW_t q_{t-1}
        M_t  = (I + ΔW_t) M_{t-1} (I + ΔW_t)ᵀ
        ŷ    = ρ · q_L[D-1]

    Symbols → code: ``S`` → ``gram``, ``M_t`` → ``M``, ``W_K^tᵀ W_Q^t`` → ``kq``, ``ρ`` → ``readout``;
    ``s = 1``, ``1/N`` or, with ``n_true = k`` (zeroed demonstrations), ``1/k`` per prompt.
    Why not ``vmap(attention.predict)``: the same recursion, but written on the batch so that the
    products with a layer's weights are single large matrix products. The last layer needs only
    the label row ``e_yᵀ ΔW_L = (e_yᵀ W_V^L) M_{L-1} kq``, so ``M_{L-1}`` is only applied to one
    vector; so are the :func:`implicit_layers` (up to :data:`IMPLICIT_MAX_LAYERS`) middle layers
    before it, through ``M_t x = T_t M_{t-1} T_tᵀ x`` (``T = I + ΔW``) as matrix-vector products
    with the last ``M_t`` formed; the earlier layers form ``M_t`` with two batched ``D × D``
    products per prompt (``T M``, ``(T M) Tᵀ``, through :func:`batch_matmul`, fused multiply-adds
    at small ``D``). Measured about 3× faster for value-and-grad than ``vmap(attention.predict)``
    at ``L = 4, D = 21, B = 256`` on a CPU with every ``M_t`` formed, and 2× faster again with
    the implicit layers. Equal to
    :func:`lintrans.attention.predict` and :func:`~lintrans.attention.predict_tokens` up to rounding
    (tested in float64 at 1e-12).

    Args:
      params: ``L`` layers, arrays ``(L, D, D)``.
      H: ``(B, D, N+1)`` prompts, query last.
      n_true: ``None`` or ``(B,)`` demonstrations really present (the rest zero).
      scale, readout: the model's options.
      gram: ``None`` or ``(B, D, D)``, the unscaled ``S = H_s H_sᵀ`` if already known
        (:func:`demo_gram`); then only the query column of ``H`` is read. The recursion itself is
        :func:`linear_predict_gram`.

    Returns:
      ``(B,)`` predictions.
    """
    N = H.shape[2] - 1
    if gram is None:
        gram = einsum("bdn,ben->bde", H[:, :, :N], H[:, :, :N])
    return linear_predict_gram(params, gram, H[:, :, N], attention_scale(scale, N, n_true, H.shape[0], H.dtype),
                               readout=readout)


def attention_scale(scale: str, n_demos: int, n_true, n_prompts: int, dtype) -> jax.Array:
    """Per-prompt ``s``: ``1`` for ``scale="1"``; ``1/N`` for ``"1/N"``, or ``1/k`` with ``n_true = k``. ``(B,)``."""
    if scale == "1/N" and n_true is not None:
        return 1.0 / n_true.astype(dtype)
    return jnp.full((n_prompts,), attention.scale_factor(scale, n_demos), dtype)


def linear_predict_gram(params: LinearAttentionParams, gram: jax.Array, query: jax.Array, s: jax.Array, *,
                        readout: int) -> jax.Array:
    """The recursion of :func:`linear_predict_batch` on ``(S, h_q, s)``: the prompt's sufficient statistics.

    Args:
      params: ``L`` layers, arrays ``(L, D, D)``.
      gram: ``(B, D, D)`` unscaled ``S = H_s H_sᵀ``.
      query: ``(B, D)`` query tokens ``h_{N+1}``.
      s: ``(B,)`` attention scale per prompt (:func:`attention_scale`).
      readout: ``ρ = ±1``.

    Returns:
      ``(B,)`` predictions.
    """
    B, D = query.shape
    if gram.shape != (B, D, D):
        raise ValueError(f"gram must have shape {(B, D, D)}, got {gram.shape}")
    if s.shape != (B,):
        raise ValueError(f"s must have shape ({B},), got {s.shape}")
    M = gram * s[:, None, None]
    kq = einsum("lji,ljk->lik", params.w_k, params.w_q)  # W_K^tᵀ W_Q^t, all layers
    L = kq.shape[0]
    n_implicit = implicit_layers(L, D)
    n_explicit = L - 1 - n_implicit
    q = query
    if n_explicit:
        M, q = _materialised_layers(M, q, kq[:n_explicit], params.w_v[:n_explicit])
    implicit = tuple(zip(kq[n_explicit:-1], params.w_v[n_explicit:-1]))
    for t, (kq_t, w_v) in enumerate(implicit):
        q = q + _vec(w_v, _gram_apply(M, implicit[:t], _vec(kq_t, q)))  # q_t = T_t q_{t-1}
    # Last layer: only the label row of ΔW_L is read, e_yᵀΔW_L = (e_yᵀW_V) M_{L-1} kq = (M_{L-1} W_Vᵀe_y)ᵀ kq
    # since M_{L-1} is symmetric, so no D×D product per prompt is needed.
    row = einsum("bk,kl->bl", _gram_apply(M, implicit, params.w_v[-1, -1]), kq[-1])
    return readout * (q[:, -1] + jnp.sum(row * q, axis=1))


def implicit_layers(n_layers: int, d: int) -> int:
    """How many of the middle layers :func:`linear_predict_gram` applies without forming ``M_t``.

    ``min(L - 1, cap)``, ``cap`` = :data:`IMPLICIT_MAX_LAYERS`, or :data:`IMPLICIT_MAX_LAYERS_TINY`
    for token size ``D = d ≤`` :data:`TINY_MATMUL_MAX_DIM`: the last layer never forms ``M_L``
    (only ``M_{L-1} w`` is read), the ``j`` layers before it form neither, and the first
    ``L - 1 - j`` form ``M_t`` with batched products. Only speed depends on it, not the values
    (equal up to rounding; tested in float64).
    """
    cap = IMPLICIT_MAX_LAYERS_TINY if d <= TINY_MATMUL_MAX_DIM else IMPLICIT_MAX_LAYERS
    return max(min(n_layers - 1, cap), 0)


def _vec(w: jax.Array, x: jax.Array) -> jax.Array:
    # W x for every prompt's vector x (B, D), one (B, D) × (D, D) product, or for one shared x (D,).
    return einsum("ij,...j->...i", w, x)


def _vec_t(w: jax.Array, x: jax.Array) -> jax.Array:
    return einsum("ji,...j->...i", w, x)


def _gram_apply(M: jax.Array, layers: tuple, x: jax.Array) -> jax.Array:
    """``M_{m+j} x`` from the formed ``M_m``, through the ``j`` layers ``(kq_t, W_V^t)`` after it.

    ``M_t x = T_t M_{t-1} T_tᵀ x`` with ``T_t x = x + W_V^t M_{t-1} (kq_t x)`` and
    ``T_tᵀ x = x + kq_tᵀ M_{t-1} (W_V^tᵀ x)`` (``M_{t-1}`` symmetric), so each level is three
    applications of the one below: ``3^j`` matrix-vector products with ``M_m`` per prompt. ``M``
    ``(B, D, D)``; ``x`` ``(B, D)``, or ``(D,)`` shared by every prompt (the label row ``W_Vᵀe_y``),
    whose first chain of products then stays shared down to one ``(B·D, D) × (D,)`` product.
    """
    if not layers:
        # Contracting M's minor axis reads it in place (M symmetric); contracting its middle axis
        # made XLA transpose-copy it, forward and backward: 0.53 → 0.37 ms value-and-grad at
        # L = 1, D = 11, B = 2048 (quiet).
        return einsum("bij,j->bi", M, x) if x.ndim == 1 else einsum("bij,bj->bi", M, x)
    *below, (kq_t, w_v) = layers
    below = tuple(below)
    y = x + _vec_t(kq_t, _gram_apply(M, below, _vec_t(w_v, x)))  # T_tᵀ x
    z = _gram_apply(M, below, y)
    return z + _vec(w_v, _gram_apply(M, below, _vec(kq_t, z)))  # T_t z


def _materialised_layers(M: jax.Array, q: jax.Array, kq: jax.Array, w_v: jax.Array):
    """``(M_m, q_m)`` from ``(M_0, q_0)`` through ``m`` layers, forming each ``M_t = T_t M_{t-1} T_tᵀ``."""
    D = q.shape[1]
    eye = jnp.eye(D, dtype=M.dtype)
    tiny = D <= TINY_MATMUL_MAX_DIM

    def layer(carry, weights):
        M, q = carry
        kq_t, w_v = weights
        T = einsum("bik,kl->bil", einsum("ij,bjk->bik", w_v, M), kq_t) + eye  # I + ΔW_t
        q = batch_matmul(T, q[:, :, None])[:, :, 0]
        TM = batch_matmul(T, M)
        # M_t = (T M) Tᵀ: as products, fewer passes than M + P + Pᵀ + P ΔWᵀ (measured 19.2 → 17.0 ms
        # at L = 4, D = 21, B = 256 and 19.2 → 16.8 ms at L = 3, D = 6, B = 4000, value-and-grad).
        M = batch_matmul(TM, jnp.swapaxes(T, 1, 2)) if tiny else einsum("bij,bkj->bik", TM, T)
        return (M, q), None

    # Unrolled when the products are einsums (D > TINY_MATMUL_MAX_DIM): measured 17.0 → 14.3 ms at
    # L = 4, D = 21 (and 67 → 59 ms at D = 11) when all L - 1 layers were formed here, before the
    # implicit layers; at D = 6 unrolling was slower (16.8 → 24.5 ms). Compilation grows with the
    # layer count when unrolled.
    unroll = 1 if tiny else max(kq.shape[0], 1)
    (M, q), _ = jax.lax.scan(layer, (M, q), (kq, w_v), unroll=unroll)
    return M, q
