"""The Theorem 2 bound of a model on a batch of prompts: the public entry point (SPEC §7).

    theorem2_bound(params, H, b, *, form="proof_ridge", eps=1e-3, mask="demos", scale="1", method="auto")
        -> Theorem2Bound(summands, total, over_R, eps_t, rank, rank_bound)

For ``LinearAttentionParams`` with fields ``(..., L, D, D)`` — any leading sweep axes, e.g. one model
per clipping rank or seed — and prompts ``H (B, D, N+1)`` with shot count ``1 ≤ b < N``, it returns the
per-layer summands and the summed bound of one form of the registry (:mod:`lintrans.bound_forms`),
chosen by name; only forms that are finite and continuous in the weights are accepted (the ridged
ones: ``"proof_ridge"``, the default and what the proof establishes, and ``"printed_ridge"``). The bound
is ``gen ≤ R · over_R`` with ``over_R = sqrt(total/N)``.

Shapes (``...`` the leading axes of ``params``): ``summands (..., L)``, ``total (...)``, ``over_R (...)``,
``eps_t (..., L)`` (the ridge ``ε·E[tr C_t]/d`` actually added), ``rank (..., B, L)`` (``rank C_t``,
justified tolerance) and ``rank_bound (B, L)`` (:func:`lintrans.bound.structural_rank_bound`).

Traceable: call it inside ``jit``/``vmap`` (``b``, ``form``, ``mask``, ``scale``, ``method`` static; ``eps``
may be traced). float64 is required (x64 on). ``method``: ``"factored"`` (mask ``demos``; the spectrum
of ``C_t`` from a per-prompt data factor, no ``d × d`` matrix), ``"direct"`` (any mask) or ``"auto"``.

:func:`prompt_stats` (same arguments) gives the per-prompt, per-term statistics behind it, for every
form of the registry (:func:`lintrans.bound.bound_summands`), including the diagnostic ones.

Example::

    jax.config.update("jax_enable_x64", True)
    out = theorem2_bound(params, batch.H, b=16)               # out.over_R: bound / R
    ranks = jnp.arange(D + 1)                                 # vmapped over clip ranks of layer 2's W_V:
    pruned = jax.vmap(lambda r: truncate_params_to_rank(params, 1, ("w_v",), (r,)))(ranks)
    outs = theorem2_bound(pruned, batch.H, b=16)              # out.total (D+1,)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lintrans.attention import check_options
from lintrans.bound import TermStats, check_shots, require_x64, ridge_terms, structural_rank_bound, term_stats
from lintrans.bound_factored import batch_term_stats, covariance_factor, max_factor_rank
from lintrans.bound_forms import EPS_DEFAULT, THE_BOUND, check_reportable
from lintrans.params import FIELDS, LinearAttentionParams

__all__ = ["Theorem2Bound", "theorem2_bound", "prompt_stats"]


class Theorem2Bound(NamedTuple):
    """See the module docstring for shapes. ``over_R`` is the bound divided by ``R``."""

    summands: jax.Array
    total: jax.Array
    over_R: jax.Array
    eps_t: jax.Array
    rank: jax.Array
    rank_bound: jax.Array


def _check(params, H, b, mask, scale, method):
    require_x64()
    check_options(mask, scale)
    if not isinstance(params, LinearAttentionParams):
        raise TypeError(f"params must be LinearAttentionParams, got {type(params).__name__}")
    H = jnp.asarray(H)
    if H.ndim != 3:
        raise ValueError(f"H must have shape (B, D, N+1), got {tuple(H.shape)}")
    D, n_demos = H.shape[1], H.shape[2] - 1
    shapes = {name: tuple(getattr(params, name).shape) for name in FIELDS}
    if any(len(s) < 3 or s[-2:] != (D, D) or s[:-2] != shapes["w_k"][:-2] for s in shapes.values()):
        raise ValueError(f"params fields must all have shape (..., L, D={D}, D) matching H, got {shapes}")
    if any(getattr(params, name).dtype != jnp.float64 for name in FIELDS) or H.dtype != jnp.float64:
        raise ValueError("params and H must be float64 (the bound's eigenvalues and logs need it)")
    b = check_shots(b, n_demos)
    if method == "auto":
        method = "factored" if mask == "demos" else "direct"
    if method not in ("factored", "direct"):
        raise ValueError(f"method must be 'auto', 'factored' or 'direct', got {method!r}")
    if method == "factored" and mask != "demos":
        raise ValueError("method 'factored' needs mask='demos' (every token moves by I + W_t); use 'direct'")
    return H, b, method, shapes["w_k"][:-3], shapes["w_k"][-3]


def _stats_fn(H, b, mask, scale, method):
    """``params (L, D, D) → TermStats (B, L, ...)``; the data factor is computed once, outside."""
    D, n_demos = H.shape[1], H.shape[2] - 1
    if method == "factored":
        S, Y, E = jax.vmap(lambda h: covariance_factor(h, max_factor_rank(D, n_demos)))(H)
        return lambda p: batch_term_stats(p, S, Y, E, n_demos, b, scale)[0]
    return lambda p: jax.vmap(lambda h: term_stats(p, h, b, mask=mask, scale=scale)[0])(H)


def _vmap_lead(fn, lead):
    for _ in lead:
        fn = jax.vmap(fn)
    return fn


def prompt_stats(params: LinearAttentionParams, H: jax.Array, b: int, *, mask: str = "demos", scale: str = "1",
                 method: str = "auto") -> TermStats:
    """:class:`lintrans.bound.TermStats` of every prompt and term: fields ``(..., B, L, ...)`` (same
    arguments as :func:`theorem2_bound`); feed them to :func:`lintrans.bound.bound_summands` for every form."""
    H, b, method, lead, _ = _check(params, H, b, mask, scale, method)
    return _vmap_lead(_stats_fn(H, b, mask, scale, method), lead)(params)


def theorem2_bound(
    params: LinearAttentionParams,
    H: jax.Array,
    b: int,
    *,
    form: str = THE_BOUND,
    eps=EPS_DEFAULT,
    mask: str = "demos",
    scale: str = "1",
    method: str = "auto",
) -> Theorem2Bound:
    """The Theorem 2 bound (a finite, continuous form) of ``params`` on the prompts ``H`` (module docstring)."""
    f = check_reportable(form)
    H, b, method, lead, L = _check(params, H, b, mask, scale, method)
    n_demos, d = H.shape[2] - 1, H.shape[1] ** 2
    if isinstance(eps, (int, float)) and not (eps > 0 and eps < float("inf")):
        raise ValueError(f"eps must be a finite relative ridge > 0, got {eps!r}")
    eps = jnp.asarray(eps, jnp.float64)
    if eps.ndim != 0:
        raise ValueError(f"eps must be one relative ridge (a scalar), got shape {tuple(eps.shape)}")
    stats_of = _stats_fn(H, b, mask, scale, method)

    def one(p):
        stats = stats_of(p)
        out = ridge_terms(stats, d, eps[None])
        summands = out[f.name][0]
        total = jnp.sum(summands)
        return summands, total, jnp.sqrt(total / n_demos), out["eps_t"][0], stats.rank

    summands, total, over_R, eps_t, rank = _vmap_lead(one, lead)(params)
    rank_bound = jax.vmap(lambda h: structural_rank_bound(h, L, mask=mask))(H)
    return Theorem2Bound(summands, total, over_R, eps_t, rank, rank_bound)
