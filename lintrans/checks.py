"""The checks T1–T6 of Theorem 1 (SPEC §3), as relative errors per layer.

Every check returns numbers, not booleans: ``rel_err = ‖lhs − rhs‖_F / max(‖lhs‖_F, ‖rhs‖_F,
tiny)`` (:func:`lintrans.numerics.rel_err`). A non-finite error means a non-finite state and is
never a pass; :func:`check_theorem1` also reports where the trajectory first went non-finite.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lintrans.attention import check_options
from lintrans.numerics import mm, numerical_rank, rel_err
from lintrans.params import LinearAttentionParams
from lintrans.trajectory import Trajectory, first_nonfinite, trajectory

__all__ = [
    "CHECKS",
    "Theorem1Report",
    "t1_query",
    "t2_product",
    "t3_all_tokens",
    "t4_closed_form",
    "t5_rank",
    "t6_locality",
    "identity_errors",
    "check_theorem1",
]

#: Check names in report order, with the masks under which they hold.
CHECKS = {
    "T1": ("demos", "causal"),
    "T2": ("demos", "causal"),
    "T3": ("demos",),
    "T4": ("demos",),
    "T5": ("demos", "causal"),
}


def t1_query(traj: Trajectory) -> jax.Array:
    """T1: ``h^t_{N+1} = (I + W_t) h^0_{N+1}`` for t = 1..L. Returns ``(L,)`` relative errors."""
    h0 = traj.states[0, :, -1]
    eye = jnp.eye(h0.shape[0], dtype=h0.dtype)
    predicted = jax.vmap(lambda W: mm(eye + W, h0))(traj.W)  # (L, D)
    return jax.vmap(rel_err)(traj.states[1:, :, -1], predicted)


def t2_product(traj: Trajectory) -> jax.Array:
    """T2: ``I + W_t = (I + ΔW_t)(I + ΔW_{t-1})···(I + ΔW_1)``, newest on the left. ``(L,)``."""
    D = traj.delta_w.shape[-1]
    eye = jnp.eye(D, dtype=traj.delta_w.dtype)

    def step(P, dw):
        P = mm(eye + dw, P)
        return P, P

    _, products = jax.lax.scan(step, eye, traj.delta_w)
    return jax.vmap(rel_err)(eye + traj.W, products)


def t3_all_tokens(traj: Trajectory) -> jax.Array:
    """T3 (mask ``"demos"``): every column moves together, ``H^t = (I + W_t) H^0``. ``(L,)``."""
    H0 = traj.states[0]
    eye = jnp.eye(H0.shape[0], dtype=H0.dtype)
    predicted = jax.vmap(lambda W: mm(eye + W, H0))(traj.W)
    return jax.vmap(rel_err)(traj.states[1:], predicted)


def t4_closed_form(params: LinearAttentionParams, traj: Trajectory, s: float) -> jax.Array:
    """T4 (mask ``"demos"``): ``ΔW_t = s · W_V^t A S A^T (W_K^t)^T W_Q^t``. ``(L,)``.

    ``A = I + W_{t-1}`` (``W_0 = 0``) and ``S = H^0_s (H^0_s)^T``, the ``(D, D)`` Gram matrix of
    the input demonstrations. ``s``: the attention scale the trajectory used.
    """
    H0_s = traj.states[0, :, :-1]
    S = mm(H0_s, H0_s.T)
    D = S.shape[0]
    eye = jnp.eye(D, dtype=S.dtype)
    W_prev = jnp.concatenate([jnp.zeros((1, D, D), S.dtype), traj.W[:-1]], axis=0)

    def closed(w_k, w_q, w_v, W):
        A = eye + W
        return s * mm(mm(mm(mm(w_v, A), S), mm(w_k, A).T), w_q)

    predicted = jax.vmap(closed)(params.w_k, params.w_q, params.w_v, W_prev)
    return jax.vmap(rel_err)(traj.delta_w, predicted)


def t5_rank(traj: Trajectory) -> tuple[jax.Array, int]:
    """T5: ``rank(ΔW_t) ≤ min(N, D)``. Returns the ``(L,)`` numerical ranks and the bound.

    Rank threshold: singular values above ``max(D, N) · eps · σ_max`` (NumPy's convention).
    """
    D, n_tokens = traj.states.shape[1:]
    n_demos = n_tokens - 1
    rtol = max(D, n_demos) * float(jnp.finfo(traj.delta_w.dtype).eps)
    ranks = jax.vmap(lambda a: numerical_rank(a, rtol))(traj.delta_w)
    return ranks, min(n_demos, D)


def t6_locality(before: Trajectory, after: Trajectory, k: int) -> dict[str, jax.Array]:
    """T6: changing layer ``k``'s weights (1-based) leaves ``ΔW_t, G_t, W_t`` for ``t < k``
    bitwise unchanged and changes those with ``t ≥ k`` (generically).

    Returns, per quantity ``delta_w``, ``G``, ``W``: ``"<q>_equal_before_k"`` (scalar bool, bitwise
    equality of layers ``1..k-1``) and ``"<q>_change"`` (``(L,)`` relative change per layer).
    """
    L = before.delta_w.shape[0]
    if not 1 <= k <= L:
        raise ValueError(f"k must be a layer in 1..{L}, got {k}")
    out = {}
    for name in ("delta_w", "G", "W"):
        a, b = getattr(before, name), getattr(after, name)
        out[f"{name}_equal_before_k"] = jnp.all(a[: k - 1] == b[: k - 1])
        out[f"{name}_change"] = jax.vmap(rel_err)(a, b)
    return out


class Theorem1Report(NamedTuple):
    """Per-layer results of T1–T5 for one prompt (``(L,)`` arrays; NaN where a check does not
    apply to the mask). ``nonfinite_layer``/``nonfinite_quantity``: see
    :func:`lintrans.trajectory.first_nonfinite`."""

    T1: jax.Array
    T2: jax.Array
    T3: jax.Array
    T4: jax.Array
    T5_rank: jax.Array
    T5_bound: jax.Array
    nonfinite_layer: jax.Array
    nonfinite_quantity: jax.Array


def _identities(params: LinearAttentionParams, traj: Trajectory, mask: str, s: float) -> list[jax.Array]:
    """T1–T4 of one trajectory, each ``(L,)`` (NaN where a check does not hold for ``mask``)."""
    nan = jnp.full((params.w_k.shape[0],), jnp.nan, traj.states.dtype)
    return [
        t1_query(traj),
        t2_product(traj),
        t3_all_tokens(traj) if mask == "demos" else nan,
        t4_closed_form(params, traj, s) if mask == "demos" else nan,
    ]


def identity_errors(
    params: LinearAttentionParams, H: jax.Array, *, mask: str = "demos", scale: str = "1"
) -> tuple[jax.Array, jax.Array]:
    """T1–T4 of one prompt with matrix products only: ``(4, L)`` relative errors and the first
    non-finite layer (``-1``: none).

    :func:`check_theorem1` without T5, whose ranks need a batched SVD: jaxlib 0.10's CPU LAPACK
    kernels can deadlock when several simulated devices run them at once (see
    :mod:`lintrans.sharding`), so sharded sweeps on simulated CPU devices use this one.
    """
    opts = check_options(mask, scale)
    traj = trajectory(params, H, options=opts)
    errors = _identities(params, traj, opts.mask, opts.s(H.shape[1] - 1))
    return jnp.stack(errors), first_nonfinite(traj)[0]


def check_theorem1(
    params: LinearAttentionParams, H: jax.Array, *, mask: str = "demos", scale: str = "1"
) -> Theorem1Report:
    """Run the trajectory of one prompt and every check T1–T5 on it (vmap over prompts)."""
    opts = check_options(mask, scale)
    traj = trajectory(params, H, options=opts)
    t1, t2, t3, t4 = _identities(params, traj, opts.mask, opts.s(H.shape[1] - 1))
    ranks, bound = t5_rank(traj)
    layer_idx, quantity = first_nonfinite(traj)
    return Theorem1Report(
        T1=t1,
        T2=t2,
        T3=t3,
        T4=t4,
        T5_rank=ranks,
        T5_bound=jnp.asarray(bound, jnp.int32),
        nonfinite_layer=layer_idx,
        nonfinite_quantity=quantity,
    )
