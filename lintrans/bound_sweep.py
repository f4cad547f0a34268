"""Theorem 2 under SVD truncation: the (layer, ξ, target) sweep as one compiled call (SPEC §6–7).

A sweep point is (layer ``k``, ranks of ``w_k, w_q, w_v``); every (layer, ξ, target) maps to one point,
and equal points are evaluated once (in small ``D`` several ``ξ`` give the same ``r``). All points go
through one compiled call: ``lax.map`` over points (bounding memory), ``vmap`` over prompts,
``lax.scan`` over layers, with the factored kernels of :mod:`lintrans.bound_factored` (mask
``demos``) or the direct ones of :mod:`lintrans.bound` (any mask). Every form of the registry
(:mod:`lintrans.bound_forms`) is computed; only the finite, continuous ones are reported as the bound.
Layer ``k`` is 1-based in every result. For the bound of one model (or a vmapped family of models) on
a batch of prompts, :func:`lintrans.bound_eval.theorem2_bound` is the simpler entry point.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.attention import check_options
from lintrans.bound import (
    SUPPORT_TOL,
    bound_summands,
    bound_value,
    check_shots,
    describe_bounds,
    estimate_R,
    prompt_risks,
    require_x64,
    structural_rank_bound,
    term_stats,
)
from lintrans.bound_factored import batch_term_stats, covariance_factor, factor_rank
from lintrans.bound_forms import EPS_GRID, FORMS, names
from lintrans.params import FIELDS, LinearAttentionParams, validate_params
from lintrans.pruning import PAPER_RATES, check_rate, kept_rank
from lintrans.truncation import check_layer, target_fields, truncate_params_to_rank

__all__ = ["SweepResult", "PreparedSweep", "prepare_sweep", "bound_sweep"]

#: Forms with one value per ε (the ridged ones); the others have one value per point.
RIDGED = names(covariance="ridge")


def _aggregate(summ, stats, rk, rank_bound):
    B = rk.gap.shape[0]

    def sem(x):
        return jnp.std(x, axis=0, ddof=1) / np.sqrt(B) if B > 1 else jnp.zeros_like(x[0])

    nonfinite = ~(
        jnp.all(jnp.isfinite(stats.eigvals), axis=(1, 2))
        & jnp.all(jnp.isfinite(stats.sq_printed), axis=1)
        & jnp.isfinite(rk.L_mu)
    )
    total = jnp.sum(summ["printed_support_prompt"], axis=-1)
    out = {k: summ[k] for k in (*FORMS, "eps_t")}
    out.update(
        rank_bound_min=jnp.min(rank_bound, axis=0),
        rank_bound_max=jnp.max(rank_bound, axis=0),
        rank_min=jnp.min(summ["rank"], axis=0),
        rank_max=jnp.max(summ["rank"], axis=0),
        rank_mean=jnp.mean(summ["rank"], axis=0),
        in_support_frac=jnp.mean(summ["in_support"], axis=0),
        out_of_support=jnp.sum(~summ["in_support"], axis=0),
        smallest_kept_rel=jnp.min(summ["smallest_kept_rel"], axis=0),
        largest_dropped_rel=jnp.max(summ["largest_dropped_rel"], axis=0),
        support_residual_max=jnp.max(stats.support_residual, axis=0),
        printed_support_min=jnp.min(summ["printed_support_prompt"], axis=0),
        printed_ridge_min=jnp.min(summ["printed_ridge_prompt"], axis=1),
        printed_support_total_sem=jnp.where(jnp.all(jnp.isfinite(total)), sem(jnp.where(jnp.isfinite(total), total, 0.0)), jnp.inf),
        norm_G=jnp.mean(jnp.sqrt(stats.sq_proof), axis=0),
        sq_proof=jnp.mean(stats.sq_proof, axis=0),
        sq_printed=jnp.mean(stats.sq_printed, axis=0),
        trace=jnp.mean(stats.trace, axis=0),
        L_S=jnp.mean(rk.L_S),
        L_mu=jnp.mean(rk.L_mu),
        gap=jnp.mean(rk.gap),
        gap_sem=sem(rk.gap),
        test_error=jnp.mean(rk.test_error),
        test_error_sem=sem(rk.test_error),
        loss_var=jnp.mean(rk.loss_var),
        nonfinite=jnp.sum(nonfinite),
    )
    return out


def _sweep_core(params, H, y_query, w, noise_std, cov_sqrt, layer_index, ranks, *, r0, n_demos, b, scale,
                readout, eps, support_tol, method, mask, chunk):
    D = H.shape[1]
    d = D * D
    eye = jnp.eye(D, dtype=H.dtype)
    L = params.w_k.shape[0]
    rank_bound = jax.vmap(lambda h: structural_rank_bound(h, L, mask=mask))(H)  # (B, L): data and mask only
    if method == "factored":
        S, Y, E = jax.vmap(lambda h: covariance_factor(h, r0))(H)

    def evaluate(p, k, reuse):
        if method == "factored":
            stats, A_L = batch_term_stats(p, S, Y, E, n_demos, b, scale, first_changed=k, reuse=reuse)
            W_L = A_L - eye
        else:
            stats, W_L = jax.vmap(lambda h: term_stats(p, h, b, mask=mask, scale=scale))(H)
        summ = bound_summands(stats, d, eps=eps, support_tol=support_tol)
        rk = jax.vmap(prompt_risks, in_axes=(0, 0, 0, 0, None, None, None))(W_L, H, w, y_query, noise_std, cov_sqrt, readout)
        return _aggregate(summ, stats, rk, rank_bound), stats, rk

    def paired(out, rk, rk0):
        # differences to the unpruned model on the same prompts: far tighter than the levels' spread
        B = rk.gap.shape[0]
        for name in ("test_error", "gap"):
            diff = getattr(rk, name) - getattr(rk0, name)
            out[f"d_{name}"] = jnp.mean(diff)
            out[f"d_{name}_sem"] = jnp.std(diff, ddof=1) / np.sqrt(B) if B > 1 else jnp.zeros(())
        return out

    base, base_stats, base_rk = evaluate(params, 0, None)
    base = paired(base, base_rk, base_rk)
    reuse = None
    if method == "factored" and chunk is None:
        reuse = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), base_stats)

    def one(point):
        k, r = point
        out, _, rk = evaluate(truncate_params_to_rank(params, k, FIELDS, r), k, reuse)
        return paired(out, rk, base_rk)

    rest = jax.lax.map(one, (layer_index, ranks), batch_size=chunk)
    return jax.tree_util.tree_map(lambda a, b_: jnp.concatenate([a[None], b_]), base, rest)


_sweep_core_jit = jax.jit(_sweep_core, static_argnames=(
    "r0", "n_demos", "b", "scale", "readout", "eps", "support_tol", "method", "mask", "chunk"))


class SweepResult(NamedTuple):
    """A (layer, ξ, target) sweep. ``points``: ``(P, 1 + 3)`` rows ``(layer k 1-based or 0 = unpruned,
    r_k, r_q, r_v)``, row 0 the unpruned model; ``index``: ``{(k, ξ, target): point}``; ``arrays``:
    ``{name: (P, ...)}`` numpy; ``n_demos``, ``d``, ``eps``, ``r0`` for the report."""

    points: np.ndarray
    index: dict
    arrays: dict
    n_demos: int
    d: int
    eps: tuple
    r0: int

    def entry(self, point: int) -> dict:
        """Everything about one point, with bounds (``/R`` and with ``R̂``) and reasons for each ``inf``."""
        a = {k: v[point] for k, v in self.arrays.items()}
        R_hat = estimate_R(a["loss_var"])
        summed = {f: float(np.sum(a[f])) for f in FORMS if f not in RIDGED}
        bounds = {f: float(bound_value(a[f], self.n_demos)) for f in summed}
        for j, e in enumerate(self.eps):
            for f in RIDGED:
                summed[f"{f}@{e:g}"] = float(np.sum(a[f][j]))
                bounds[f"{f}@{e:g}"] = float(bound_value(a[f][j], self.n_demos))
        n_out = int(np.sum(a["out_of_support"]))
        out = {k: v for k, v in a.items()}
        out.update(
            summed=summed,
            bound_over_R=bounds,
            R_hat=R_hat,
            bound_R_hat={k: v * R_hat for k, v in bounds.items()},
            reasons=describe_bounds(summed, d=self.d, rank_min=int(np.min(a["rank_min"])),
                                    rank_max=int(np.max(a["rank_max"])), n_out=n_out),
        )
        return out


class PreparedSweep(NamedTuple):
    """A validated sweep: ``fn(*args)`` returns ``{name: (P, ...)}`` (one compiled call, cached across
    sweeps of the same shapes and options); see :class:`SweepResult`."""

    fn: object
    args: tuple
    points: np.ndarray
    index: dict
    n_demos: int
    d: int
    eps: tuple
    r0: int

    def run(self) -> "SweepResult":
        arrays = {k: np.asarray(v) for k, v in self.fn(*self.args).items()}
        return SweepResult(self.points, self.index, arrays, self.n_demos, self.d, self.eps, self.r0)


def prepare_sweep(
    params: LinearAttentionParams,
    batch,
    b: int,
    *,
    layers=None,
    rates=PAPER_RATES,
    targets=("K", "Q", "V", "attn"),
    rule: str = "exact",
    min_rank: int = 0,
    eps=EPS_GRID,
    noise_std: float = 0.0,
    cov_sqrt=None,
    mask: str = "demos",
    scale: str = "1",
    readout: int = 1,
    support_tol: float = SUPPORT_TOL,
    method: str = "auto",
    chunk: int | None = None,
) -> "PreparedSweep":
    """Validate, build the sweep points and the compiled function; :meth:`PreparedSweep.run` evaluates.

    The returned ``fn(*args)`` is the whole sweep as one jitted call (per-prompt factors, every
    point, every prompt): what a benchmark times.

    Args:
      params: linear-attention weights ``(L, D, D)`` (never modified); float64 (x64 required).
      batch: ``RegressionBatch`` or ``(H (B, D, N+1), y_query (B,), w (B, d_in))``.
      b: shot count, ``1 ≤ b < N``.
      layers: 1-based layers to clip (default all); rates: clipping rates ``ξ``; targets: of
        ``K, Q, V, attn``; rule, min_rank: :func:`lintrans.pruning.kept_rank`.
      eps: relative ridges; noise_std, cov_sqrt: the task's label noise and ``Σ^{1/2}`` (for ``L_μ``).
      mask, scale, readout: the model's options. method: ``"factored"`` (mask ``"demos"``),
        ``"direct"`` (SVD of the ``N × D²`` factor of ``C_t``; any mask), or ``"auto"``.
      chunk: sweep points evaluated at once (``lax.map`` batch size; ``None``: one at a time).
    """
    require_x64()
    validate_params(params)
    check_options(mask, scale, readout)
    H, y_query, w = (jnp.asarray(x, jnp.float64) for x in batch)
    if H.ndim != 3 or H.shape[1] != params.dim:
        raise ValueError(f"batch H must have shape (B, D={params.dim}, N+1), got {tuple(H.shape)}")
    n_demos = H.shape[2] - 1
    b = check_shots(b, n_demos)
    if method == "auto":
        method = "factored" if mask == "demos" else "direct"
    if method not in ("factored", "direct"):
        raise ValueError(f"method must be 'auto', 'factored' or 'direct', got {method!r}")
    if method == "factored" and mask != "demos":
        raise ValueError("method 'factored' needs mask='demos' (every token moves by I + W_t); use 'direct'")
    L, D = params.n_layers, params.dim
    layers = tuple(range(1, L + 1)) if layers is None else tuple(check_layer(k, L) for k in layers)
    rates = tuple(check_rate(x) for x in rates)
    fields_of = {t: target_fields(params, t) for t in targets}
    eps = tuple(float(e) for e in eps)
    if not eps or any(not (e > 0 and np.isfinite(e)) for e in eps):
        raise ValueError(f"eps must be a non-empty sequence of finite ridges > 0, got {eps}")
    params = LinearAttentionParams(*(jnp.asarray(getattr(params, f), jnp.float64) for f in FIELDS))

    points, index = [(0, D, D, D)], {}
    for k in layers:
        for xi in rates:
            for t, fields in fields_of.items():
                r = tuple(kept_rank(D, D, xi, rule, min_rank) if f in fields else D for f in FIELDS)
                row = (k, *r) if min(r) < D else (0, D, D, D)
                if row not in points:
                    points.append(row)
                index[(k, xi, t)] = points.index(row)
    pts = np.array(points, dtype=np.int32)
    r0 = factor_rank(H) if method == "factored" else D * D
    noise = jnp.asarray(noise_std, jnp.float64)
    cov = None if cov_sqrt is None else jnp.asarray(cov_sqrt, jnp.float64)
    fn = partial(
        _sweep_core_jit, r0=r0, n_demos=n_demos, b=b, scale=scale, readout=readout, eps=eps,
        support_tol=float(support_tol), method=method, mask=mask, chunk=chunk,
    )
    fn._cache_size = _sweep_core_jit._cache_size  # lets a benchmark detect a recompilation
    args = (params, H, y_query, w, noise, cov, jnp.asarray(pts[1:, 0] - 1), jnp.asarray(pts[1:, 1:]))
    return PreparedSweep(fn, args, pts, index, n_demos, D * D, eps, int(r0))


def bound_sweep(params: LinearAttentionParams, batch, b: int, **options) -> SweepResult:
    """Bound summands, risks and ranks for the unpruned model and every (layer, ξ, target) clip:
    :func:`prepare_sweep` (same arguments), then its one compiled call."""
    return prepare_sweep(params, batch, b, **options).run()
