"""Theorem 1: the implicit gradient-descent trajectory ``ΔW_t, G_t, W_t`` (SPEC §3).

Symbols → code (one prompt, ``L`` layers, token width ``D``, ``N`` demonstrations):

* ``ΔW_t`` → ``Trajectory.delta_w[t-1]``: ``(D, D)``, paper Eq. 3, from the states ``H^{t-1}``.
* ``G_t = ΔW_t (I + W_{t-1})`` → ``Trajectory.G[t-1]``: ``(D, D)``, Theorem 1.
* ``W_t = W_{t-1} + G_t``, ``W_0 = 0`` → ``Trajectory.W[t-1]``: ``(D, D)``, the implicit parameter.
* ``H^t`` → ``Trajectory.states[t]``: ``(D, N+1)``, ``states[0] = H^0`` the input prompt.

The paper writes ``1`` for the identity; its ``Σ_j G_t`` is a typo for ``Σ_j G_j`` (SPEC §3).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lintrans.attention import AttentionOptions, layer, resolve_options
from lintrans.numerics import mm
from lintrans.params import LinearAttentionParams

__all__ = ["Trajectory", "trajectory", "QUANTITIES", "first_nonfinite"]

#: The per-layer quantities in the order a layer computes them; ``first_nonfinite`` reports an
#: index into this tuple.
QUANTITIES = ("delta_w", "G", "W", "states")


class Trajectory(NamedTuple):
    """Theorem 1's trajectory for one prompt (add a leading batch axis under ``vmap``).

    Attributes:
      delta_w: ``(L, D, D)``, ``ΔW_t`` for t = 1..L.
      G: ``(L, D, D)``, ``G_t``.
      W: ``(L, D, D)``, ``W_t``.
      states: ``(L+1, D, N+1)``, ``H^0 … H^L``.
    """

    delta_w: jax.Array
    G: jax.Array
    W: jax.Array
    states: jax.Array


def trajectory(
    params: LinearAttentionParams, H: jax.Array, *, mask: str = "demos", scale: str = "1",
    options: AttentionOptions | None = None,
) -> Trajectory:
    """Run the forward pass and record ``ΔW_t``, ``G_t``, ``W_t`` and every state (Theorem 1).

    Each layer computes ``ΔW_t`` from the current demonstration states (never from the closed
    form), moves every token by the layer's rule (:func:`lintrans.attention.layer`), and updates
    ``G_t = ΔW_t (I + W_{t-1})``, ``W_t = W_{t-1} + G_t``; the identities T1–T5 are then checks, not
    tautologies. ``lax.scan`` over layers.

    Args:
      params: ``(L, D, D)`` stacked weights.
      H: ``(D, N+1)`` prompt, query last.
      mask, scale: see :mod:`lintrans.attention`; or ``options``, an already validated
        :class:`~lintrans.attention.AttentionOptions`.
    """
    opts = resolve_options(options, mask, scale)
    D, n_tokens = H.shape
    s = opts.s(n_tokens - 1)
    eye = jnp.eye(D, dtype=H.dtype)

    def step(carry, weights):
        H_prev, W_prev = carry
        H_next, dw = layer(*weights, H_prev, s, opts.mask)
        G = mm(dw, eye + W_prev)
        W = W_prev + G
        return (H_next, W), (dw, G, W, H_next)

    init = (H, jnp.zeros((D, D), H.dtype))
    _, (dws, Gs, Ws, states) = jax.lax.scan(step, init, (params.w_k, params.w_q, params.w_v))
    return Trajectory(dws, Gs, Ws, jnp.concatenate([H[None], states], axis=0))


def first_nonfinite(traj: Trajectory) -> tuple[jax.Array, jax.Array]:
    """Where a trajectory first stops being finite.

    Returns:
      ``(layer, quantity)`` as int32 scalars (jit- and vmap-safe). ``layer`` is 1-based (``0``
      means the input prompt ``H^0`` itself) and ``-1`` when everything is finite; ``quantity``
      indexes :data:`QUANTITIES` in the order a layer computes them (``-1`` when finite).
    """
    per_layer = jnp.stack(
        [
            ~jnp.all(jnp.isfinite(traj.delta_w), axis=(1, 2)),
            ~jnp.all(jnp.isfinite(traj.G), axis=(1, 2)),
            ~jnp.all(jnp.isfinite(traj.W), axis=(1, 2)),
            ~jnp.all(jnp.isfinite(traj.states[1:]), axis=(1, 2)),
        ],
        axis=1,
    )  # (L, 4)
    input_bad = ~jnp.all(jnp.isfinite(traj.states[0]))
    flat = per_layer.reshape(-1)
    any_bad = jnp.any(flat)
    first = jnp.argmax(flat)
    layer_idx = jnp.where(any_bad, first // 4 + 1, -1)
    quantity = jnp.where(any_bad, first % 4, -1)
    layer_idx = jnp.where(input_bad, 0, layer_idx)
    quantity = jnp.where(input_bad, 3, quantity)
    return layer_idx.astype(jnp.int32), quantity.astype(jnp.int32)
