"""Stacked linear attention with residual connections (paper Eq. 1 and 3; SPEC §2).

One layer, on a prompt ``H`` of shape ``(D, N+1)`` (columns are tokens, the query last)::

    ΔW_t  = s · W_V^t H_s^{t-1} (W_K^t H_s^{t-1})^T W_Q^t          (D, D)
    h_j^t = h_j^{t-1} + ΔW_t h_j^{t-1}                              every token j

Symbols → code: ``W_K^t, W_Q^t, W_V^t`` → ``params.w_k[t-1]``, ``params.w_q[t-1]``,
``params.w_v[t-1]``; ``H_s`` → ``H[:, :N]``; ``s`` → :func:`scale_factor` of the option ``scale``;
``ρ`` → ``readout``.

Options: one :class:`AttentionOptions` value ``(mask, scale, readout)``, validated once when it is
made, with ``s(N)``; every function takes either that value (``options=``) or the three keywords.

* ``mask="demos"`` (default, the paper's ``M = diag(I_N, 0)``): keys and values come from the N
  demonstrations only, and every token, the query included, moves by the same ``I + ΔW_t``.
  ``mask="causal"``: demonstration ``i`` attends to demonstrations ``1..i``; the query attends to
  all N, so the query still moves by ``I + ΔW_t``. ``s`` is the same constant for every token.
* ``scale="1"`` (the paper's ``s = 1``, default) or ``scale="1/N"``.
* ``readout=+1`` (the paper's reading, default) or ``readout=-1`` (von Oswald et al.'s sign, which
  the gradient-descent construction of SPEC §4 needs): ``ŷ = ρ · (h^L_{N+1})[D-1]``. This is the
  only sign choice in the library.

The attention matrix ``(N+1) × (N+1)`` is never formed: a layer costs ``O(N·D² + D³)``, and with
the ``demos`` mask :func:`predict` costs one ``O(N·D²)`` Gram matrix plus ``O(D³)`` per layer.
All functions act on one prompt; batch with ``jax.vmap``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lintrans.numerics import einsum, mm
from lintrans.params import LinearAttentionParams

__all__ = [
    "MASKS",
    "SCALES",
    "READOUTS",
    "AttentionOptions",
    "resolve_options",
    "check_options",
    "scale_factor",
    "delta_w",
    "layer",
    "forward",
    "forward_states",
    "predict",
    "predict_tokens",
]

MASKS = ("demos", "causal")
SCALES = ("1", "1/N")
READOUTS = (1, -1)


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
    """The attention variant ``(mask, scale, readout)``, validated once here (hashable: a static jit argument).

    ``mask`` in :data:`MASKS`, ``scale`` in :data:`SCALES`, ``readout`` ``ρ`` in :data:`READOUTS`.
    """

    mask: str = "demos"
    scale: str = "1"
    readout: int = 1

    def __post_init__(self):
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {self.mask!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if isinstance(self.readout, bool) or self.readout not in READOUTS:
            raise ValueError(f"readout must be +1 or -1, got {self.readout!r}")

    def s(self, n_demos: int) -> float:
        """The attention scale ``s``: 1 for ``scale="1"``, ``1/N`` for ``scale="1/N"``."""
        return 1.0 if self.scale == "1" else 1.0 / n_demos


def resolve_options(options: AttentionOptions | None = None, mask: str = "demos", scale: str = "1",
                    readout: int = 1) -> AttentionOptions:
    """``options`` if given (already valid), else the options named by the keywords (validated now)."""
    if options is None:
        return AttentionOptions(mask, scale, readout)
    if not isinstance(options, AttentionOptions):
        raise TypeError(f"options must be an AttentionOptions, got {type(options).__name__}")
    return options


def check_options(mask: str = "demos", scale: str = "1", readout: int = 1) -> AttentionOptions:
    """The validated :class:`AttentionOptions`; ``ValueError`` naming the option when one is unknown."""
    return AttentionOptions(mask, scale, readout)


def scale_factor(scale: str, n_demos: int) -> float:
    """``s``: 1 for ``scale="1"``, ``1/N`` for ``scale="1/N"`` (:meth:`AttentionOptions.s`)."""
    return AttentionOptions(scale=scale).s(n_demos)


def delta_w(w_k: jax.Array, w_q: jax.Array, w_v: jax.Array, H_s: jax.Array, s: float) -> jax.Array:
    """The implicit update ``ΔW_t = s · W_V H_s (W_K H_s)^T W_Q`` of one layer (paper Eq. 3).

    Args:
      w_k, w_q, w_v: ``(D, D)`` weights of the layer.
      H_s: ``(D, N)`` demonstration tokens entering the layer, ``H_s^{t-1}``.
      s: attention scale.

    Returns:
      ``(D, D)``; rank ≤ min(N, D) (SPEC §3, T5).
    """
    values = mm(w_v, H_s)  # (D, N)
    keys = mm(w_k, H_s)  # (D, N)
    return s * mm(mm(values, keys.T), w_q)


def layer(w_k, w_q, w_v, H: jax.Array, s: float, mask: str = "demos") -> tuple[jax.Array, jax.Array]:
    """One residual linear-attention layer on all tokens.

    Args:
      w_k, w_q, w_v: ``(D, D)``.
      H: ``(D, N+1)`` tokens ``H^{t-1}``, query last.
      s: attention scale.
      mask: ``"demos"`` or ``"causal"``.

    Returns:
      ``(H^t, ΔW_t)``: ``(D, N+1)`` new tokens and the ``(D, D)`` update that moved the query.
    """
    n_demos = H.shape[1] - 1
    H_s = H[:, :n_demos]
    dw = delta_w(w_k, w_q, w_v, H_s, s)
    if mask == "demos":
        return H + mm(dw, H), dw
    # causal: token i ≤ N sees demonstrations 1..i, i.e. the partial sums of the outer products
    # (W_V h_j)(W_K h_j)^T; this costs O(N·D²) memory and never forms the attention matrix.
    values = mm(w_v, H_s)
    keys = mm(w_k, H_s)
    partial = jnp.cumsum(einsum("dn,en->nde", values, keys), axis=0)  # (N, D, D)
    queries = mm(w_q, H_s)  # (D, N)
    moved_demos = H_s + s * einsum("nde,en->dn", partial, queries)
    moved_query = H[:, n_demos:] + mm(dw, H[:, n_demos:])
    return jnp.concatenate([moved_demos, moved_query], axis=1), dw


def forward_states(
    params: LinearAttentionParams, H: jax.Array, *, mask: str = "demos", scale: str = "1",
    options: AttentionOptions | None = None,
) -> jax.Array:
    """All intermediate token states ``H^0 … H^L``: ``(L+1, D, N+1)``."""
    opts = resolve_options(options, mask, scale)
    s = opts.s(H.shape[1] - 1)

    def step(H_prev, weights):
        H_next, _ = layer(*weights, H_prev, s, opts.mask)
        return H_next, H_next

    _, states = jax.lax.scan(step, H, (params.w_k, params.w_q, params.w_v))
    return jnp.concatenate([H[None], states], axis=0)


def forward(params: LinearAttentionParams, H: jax.Array, *, mask: str = "demos", scale: str = "1",
            options: AttentionOptions | None = None) -> jax.Array:
    """Final tokens ``H^L``: ``(D, N+1)``."""
    opts = resolve_options(options, mask, scale)
    s = opts.s(H.shape[1] - 1)

    def step(H_prev, weights):
        return layer(*weights, H_prev, s, opts.mask)[0], None

    H_last, _ = jax.lax.scan(step, H, (params.w_k, params.w_q, params.w_v))
    return H_last


def predict_tokens(
    params: LinearAttentionParams, H: jax.Array, *, mask: str = "demos", scale: str = "1", readout: int = 1,
    options: AttentionOptions | None = None,
) -> jax.Array:
    """``ŷ = ρ · (h^L_{N+1})[D-1]`` through the explicit token-by-token forward pass (reference)."""
    opts = resolve_options(options, mask, scale, readout)
    return opts.readout * forward(params, H, options=opts)[-1, -1]


def predict(
    params: LinearAttentionParams, H: jax.Array, *, mask: str = "demos", scale: str = "1", readout: int = 1,
    options: AttentionOptions | None = None,
) -> jax.Array:
    """Query prediction ``ŷ = ρ · (h^L_{N+1})[D-1]`` (scalar), the fast way.

    With ``mask="demos"`` every token moves by the same ``I + ΔW_t``, so ``H^t = A_t H^0`` with
    ``A_t = I + W_t`` (Theorem 1, T3) and ``ΔW_t = s W_V A_{t-1} S A_{t-1}^T W_K^T W_Q`` with
    ``S = H^0_s (H^0_s)^T`` (T4): one ``O(N·D²)`` Gram matrix, then ``O(D³)`` per layer whatever
    N is, and ``ŷ = ρ · e_{D-1}^T A_L h^0_{N+1}``. With ``mask="causal"`` it falls back to
    :func:`predict_tokens`. Equal to :func:`predict_tokens` up to rounding (tested in float64).
    """
    opts = resolve_options(options, mask, scale, readout)
    if opts.mask != "demos":
        return predict_tokens(params, H, options=opts)
    n_demos = H.shape[1] - 1
    s = opts.s(n_demos)
    H_s = H[:, :n_demos]
    gram = mm(H_s, H_s.T)  # S, (D, D)
    eye = jnp.eye(H.shape[0], dtype=H.dtype)

    def step(A, weights):
        w_k, w_q, w_v = weights
        dw = s * mm(mm(mm(mm(w_v, A), gram), mm(w_k, A).T), w_q)
        return A + mm(dw, A), None

    A_last, _ = jax.lax.scan(step, eye, (params.w_k, params.w_q, params.w_v))
    return opts.readout * jnp.dot(A_last[-1], H[:, -1], precision="highest")
