"""The expected ICL error of ONE linear-attention layer with arbitrary weights, in closed form (issue 13).

Model (paper Eq. 1, one layer, SPEC §2; the query's label slot is 0, so only ``ΔW h_q`` reaches the
readout, and with one layer the mask does not matter — keys and values are the input tokens)::

    ŷ = ρ e_Dᵀ (I + ΔW) h_q = ρ s · vᵀ S B x_q,     S = Σ_i h_i h_iᵀ (N' demonstrations)

with ``v = W_Vᵀ e_D`` (the last row of ``W_V``, ``(D,)``), ``M = W_Kᵀ W_Q`` and ``B = M[:, :d]``
(``(D, d)``), ``s`` the attention scale at the prompt's own ``N'`` (``1`` or ``1/N'``).

Prompts (Gaussian; :class:`lintrans.tasks.LinearTask` without sparsity): ``w ~ N(0, I_d)``,
``x = Σ^{1/2} z``, ``y = wᵀx + σε``; the tokens ``h_i = [x_i; y_i]`` are i.i.d. ``N(0, Λ_w)`` given ``w``::

    Λ_w = [[Σ, g], [gᵀ, q + σ²]],   g = Σw,  q = wᵀΣw.

Error ``E(ŷ − y_q)²/d = (E ŷ² − 2 E ŷ y_q + E y_q²)/d`` with every expectation over ``X_s, w, ε``:

* ``E y_q² = tr Σ + σ² =: m₁``.
* ``E[ŷ y_q | w] = ρ s N' vᵀ Λ_w B Σ w`` (``E[S | w] = N'Λ_w``, ``E x_q x_qᵀ = Σ``, ``x_q ⊥ S``). Write
  ``v = [v_x; v_y]``, ``B = [B_x; b_yᵀ]``; the terms odd in ``w`` vanish and ``E wwᵀ = I`` gives
  ``E ŷ y_q = ρ s N' (v_y tr(Σ B_x Σ) + v_xᵀ Σ² b_y)``.
* ``E[ŷ² | w, S] = s² vᵀ S K S v`` with ``K = B Σ Bᵀ`` (``E_{x_q}``). Over ``S`` (``N'`` i.i.d. tokens):
  pairs ``i ≠ j`` give ``vᵀΛKΛv``; ``i = j`` gives, by Isserlis (``E[(aᵀh)(bᵀh)(hᵀKh)] = (aᵀΛb) tr(KΛ) +
  2 aᵀΛKΛb``), ``(vᵀΛv) tr(KΛ) + 2 vᵀΛKΛv``. So
  ``E[ŷ² | w] = s² (N'(N'+1) T₁ + N' T₂)``, ``T₁ = uᵀKu`` (``u = Λ_w v``), ``T₂ = (vᵀΛ_w v) tr(KΛ_w)``.
* Over ``w ~ N(0, I)`` (Isserlis again: ``E q = tr Σ``, ``E (q + σ²)² = m₁² + 2 tr Σ²``,
  ``E (aᵀw)(bᵀw) = aᵀb``, odd moments 0), with ``α = Σ v_x``, ``K = [[K_xx, k_xy], [k_xyᵀ, k_yy]]``::

    E T₁ = αᵀK_xxα + v_y² tr(Σ K_xx Σ) + 2 v_y (αᵀΣ k_xy + m₁ k_xyᵀα) + k_yy (αᵀα + v_y² (m₁² + 2 tr Σ²))
    E T₂ = (c₀ + v_y² m₁)(e₀ + k_yy m₁) + 2 v_y² k_yy tr Σ² + 4 v_y αᵀΣ k_xy,   c₀ = v_xᵀΣv_x,  e₀ = tr(K_xxΣ)

Everything is exact (no approximation); tested against Monte Carlo at several random weight draws
(``tests/test_onelayer.py``). Symbols → code: ``N'`` → ``n_demos``; ``Σ`` → ``sigma``; ``σ`` →
``noise_std``; ``ρ`` → ``readout``; ``s`` → ``attention.scale_factor(scale, n_demos)``.

:func:`clip_errors` evaluates the closed form at every clip (target, ξ) of the layer in one vmapped
call, and :func:`optimal_clip` returns the error-optimal one: the theory's answer to "which clip of
a one-layer model helps under this shift". Not valid for ``sparsity`` (a sparse ``w`` is not
Gaussian: its fourth moments differ) — :func:`check_task` refuses it.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.attention import check_options, scale_factor
from lintrans.params import FIELDS, LinearAttentionParams, validate_params
from lintrans.pruning import check_rate, kept_rank
from lintrans.tasks import LinearTask
from lintrans.truncation import TARGETS, truncate_params_to_rank

__all__ = ["check_task", "expected_error_weights", "expected_error", "clip_errors", "optimal_clip"]


def check_task(task: LinearTask) -> None:
    """``ValueError`` for a task the closed form does not cover (sparse ``w``)."""
    if not isinstance(task, LinearTask):
        raise TypeError(f"task must be a lintrans.tasks.LinearTask, got {type(task).__name__}")
    if task.sparsity is not None:
        raise ValueError("the one-layer closed form needs Gaussian task vectors; sparsity (k-sparse w) is not covered")


def expected_error_weights(w_k, w_q, w_v, sigma, noise_std, s, readout, n_demos):
    """The closed form for one layer's ``(D, D)`` weights; pure jnp (jit/vmap-safe). Returns ``E(ŷ−y)²/d``."""
    D = w_k.shape[-1]
    d = D - 1
    v = w_v[D - 1]
    B = (w_k.T @ w_q)[:, :d]
    vx, vy = v[:d], v[d]
    Bx, by = B[:d], B[d]
    K = B @ sigma @ B.T
    Kxx, kxy, kyy = K[:d, :d], K[:d, d], K[d, d]
    tr_s = jnp.trace(sigma)
    tr_s2 = jnp.sum(sigma * sigma.T)
    m1 = tr_s + noise_std**2
    alpha = sigma @ vx
    ET1 = (alpha @ Kxx @ alpha + vy**2 * jnp.trace(sigma @ Kxx @ sigma)
           + 2 * vy * (alpha @ sigma @ kxy + m1 * kxy @ alpha)
           + kyy * (alpha @ alpha + vy**2 * (m1**2 + 2 * tr_s2)))
    c0 = vx @ sigma @ vx
    e0 = jnp.trace(Kxx @ sigma)
    ET2 = (c0 + vy**2 * m1) * (e0 + kyy * m1) + 2 * vy**2 * kyy * tr_s2 + 4 * vy * alpha @ sigma @ kxy
    n = n_demos
    Eyy = s**2 * (n * (n + 1) * ET1 + n * ET2)
    Eyq = readout * s * n * (vy * jnp.trace(sigma @ Bx @ sigma) + vx @ sigma @ sigma @ by)
    return (Eyy - 2 * Eyq + m1) / d


def _check(params, task, scale, readout):
    validate_params(params)
    check_options(scale=scale, readout=readout)
    check_task(task)
    if params.n_layers != 1:
        raise ValueError(f"the closed form is for one layer; params have L = {params.n_layers}")
    if params.dim != task.d_in + 1:
        raise ValueError(f"params have D = {params.dim} but the task has d_in + 1 = {task.d_in + 1}")


def expected_error(params: LinearAttentionParams, task: LinearTask, *, scale: str = "1", readout: int = 1) -> float:
    """Exact ``E (ŷ − y_q)²/d_in`` of a one-layer model on prompts of ``task`` (float64)."""
    _check(params, task, scale, readout)
    p = [jnp.asarray(getattr(params, f)[0], jnp.float64) for f in FIELDS]
    return float(_expected(*p, jnp.asarray(task.sigma()), task.noise_std, scale_factor(scale, task.n_demos),
                           readout, task.n_demos))


_expected = jax.jit(expected_error_weights, static_argnames=("readout", "n_demos"))


@partial(jax.jit, static_argnames=("readout", "n_demos"))
def _clip_errors(params, ranks, sigma, noise_std, s, readout, n_demos):
    def one(r):
        p = truncate_params_to_rank(params, 0, FIELDS, r)
        return expected_error_weights(p.w_k[0], p.w_q[0], p.w_v[0], sigma, noise_std, s, readout, n_demos)
    return jax.vmap(one)(ranks)


def clip_errors(params: LinearAttentionParams, task: LinearTask, *, scale: str = "1", readout: int = 1,
                targets=("K", "Q", "V", "attn"), rates=(0.0, 0.1, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995),
                rule: str = "exact") -> dict:
    """Closed-form error of every clip ``(target, ξ)`` of a one-layer model: one compiled, vmapped call.

    Returns ``{"unpruned": e0, "cells": [{"target", "xi", "rank", "error"}, ...]}`` (float64).
    """
    _check(params, task, scale, readout)
    D = params.dim
    cells, rows = [], []
    for t in targets:
        if t not in TARGETS or not set(TARGETS[t]) <= set(FIELDS):
            raise ValueError(f"target must be one of K, Q, V, attn for linear attention, got {t!r}")
        for xi in rates:
            r = kept_rank(D, D, check_rate(xi), rule)
            rows.append([r if f in TARGETS[t] else D for f in FIELDS])
            cells.append({"target": t, "xi": float(xi), "rank": int(r)})
    rows.insert(0, [D] * len(FIELDS))
    p64 = LinearAttentionParams(*(jnp.asarray(getattr(params, f), jnp.float64) for f in FIELDS))
    err = np.asarray(_clip_errors(p64, jnp.asarray(rows, jnp.int32), jnp.asarray(task.sigma()), float(task.noise_std),
                                  scale_factor(scale, task.n_demos), readout, task.n_demos))
    for c, e in zip(cells, err[1:]):
        c["error"] = float(e)
    return {"unpruned": float(err[0]), "cells": cells}


def optimal_clip(params: LinearAttentionParams, task: LinearTask, **kw) -> dict:
    """The error-optimal clip of :func:`clip_errors` (ties: the first in target, ξ order; ξ = 0 is a candidate).

    Returns ``{"target", "xi", "rank", "error", "unpruned", "rel_change"}``.
    """
    res = clip_errors(params, task, **kw)
    best = min(res["cells"], key=lambda c: c["error"])
    if res["unpruned"] <= best["error"]:
        best = {"target": None, "xi": 0.0, "rank": params.dim, "error": res["unpruned"]}
    return dict(best, unpruned=res["unpruned"], rel_change=best["error"] / res["unpruned"] - 1.0)
