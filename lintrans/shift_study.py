"""When does SVD clipping help ICL? Pruning under train → test shift, one vectorised sweep per model (issue 13).

For a trained model (seed axis ``S``), a shift (:mod:`lintrans.shift`) and the cells
``(layer t, target, ξ)`` — target ``K, Q, V, attn`` (softmax transformer also ``O, mlp``), ``ξ`` the
paper's candidates, the kept rank ``r = ⌊min(m, n)(1 − ξ)⌋`` (SPEC §6) — :func:`sweep_points` scores
every cell AND the unpruned model on the same prompts (validation and test drawn from the shifted
distribution) in ONE compiled call: ``lax.map`` over seeds, ``lax.map``/``vmap`` over sweep points
(equal rank tuples evaluated once), ``vmap`` over prompts. Per prompt it returns the error
``(ŷ − y)²/d_in`` and, for linear attention, ``‖G_t‖_F`` of every layer (Theorem 1's implicit
gradient, ``G_t = ΔW_t (I + W_{t−1})``) and the effective step of every layer read from the weights,
``η_t = ρ s(N') (W_V^t)_{D,D} · mean diag((W_K^tᵀ W_Q^t)_{:d,:d})`` (the step of the GD construction,
SPEC §4; for one layer ``ŷ ≈ η Σ_i y_i x_iᵀ x_q``).

Cell statistics (:func:`cell_stats`), all paired (pruned and unpruned on the same prompts, per seed):
mean relative change ``mean_p/mean_u − 1`` with a 95 % Student-t interval over seeds
(:func:`lintrans.stats.interval`) and whether it excludes 0; the mean per-prompt log ratio
``log(e_p/e_u)`` (robust to heavy tails) with its interval; medians; the fraction of prompts that
improve; tail fractions (error above :data:`TAIL` × the zero predictor's error on the same prompts)
and diverged counts (non-finite, or above :data:`DIVERGED` × it); the rank flag ``rank0`` (the clip
keeps rank 0 — it deletes the layer's attention update, or the MLP); ``‖G‖`` and ``η`` before/after.

Mechanism (:func:`correlations`): Spearman correlation, over cells, of the error's log ratio with
``Δ log ‖G‖`` and with ``Δ log bound`` (Theorem 2 through :mod:`lintrans.bound_sweep`, the ε-ridged
proof form, ``ε`` = :data:`BOUND_EPS`, continuous in the weights), with a bootstrap interval.

Choosing ξ (:func:`rate_choices`, group ``attn`` as in the paper): Algorithm 1 (the deepest of the
top-3 worst-conditioned layers, ξ by validation error on shifted prompts; :mod:`lintrans.search`),
a label-free choice (the (layer, ξ) minimising ``J = L_S (1 + √2 · B)`` on validation prompts, with
``L_S`` the implicit learner's risk on the demonstrations and ``B`` the Theorem-2 bound over ``R``
with ``R̂ = √2 L_S`` (as :func:`lintrans.bound.estimate_R` with ``L_S`` for ``L_μ``): no query label
is read), and the test-set oracle. Test error change of each, per seed, with intervals and costs.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lintrans import stats
from lintrans.attention import check_options, scale_factor
from lintrans.numerics import mm
from lintrans.pruning import check_rate, kept_rank
from lintrans.search import choose_rate, group_condition_numbers, select_layer
from lintrans.shift import Shift
from lintrans.trajectory import trajectory
from lintrans.truncation import TARGETS, field_names, truncate_params_to_rank

__all__ = ["TAIL", "DIVERGED", "BOUND_EPS", "LinearMeasure", "SoftmaxMeasure", "measure_for", "SweepPlan",
           "plan_sweep", "sweep_points", "cell_stats", "model_cells", "bound_points", "correlations",
           "rate_choices", "depth_summary"]

#: A prompt is in the tail when its error exceeds TAIL × the zero predictor's mean error on the prompts.
TAIL = 10.0
#: ... and diverged when its error is non-finite or exceeds DIVERGED × that.
DIVERGED = 1e6
#: Relative ridge ε of the Theorem-2 bound used here (``C_t + ε E[tr C_t]/d · I``; lintrans.bound).
BOUND_EPS = 1e-3


# ----------------------------------------------------------------------------- per-prompt measures


@dataclasses.dataclass(frozen=True)
class LinearMeasure:
    """``(params, H, y) -> (error (), ‖G_t‖_F (L,))`` for linear attention; hashable (a static jit argument)."""

    d_in: int
    mask: str = "demos"
    scale: str = "1"
    readout: int = 1

    def __call__(self, params, H, y):
        D = H.shape[0]
        eye = jnp.eye(D, dtype=H.dtype)
        if self.mask == "demos":  # Gram path (attention.predict), recording G_t = ΔW_t A_{t−1}
            n = H.shape[1] - 1
            s = scale_factor(self.scale, n)
            gram = mm(H[:, :n], H[:, :n].T)

            def step(A, w):
                w_k, w_q, w_v = w
                G = s * mm(mm(mm(mm(mm(w_v, A), gram), mm(w_k, A).T), w_q), A)
                return A + G, jnp.sqrt(jnp.sum(G * G))

            A_L, g = jax.lax.scan(step, eye, (params.w_k, params.w_q, params.w_v))
        else:
            tr = trajectory(params, H, mask=self.mask, scale=self.scale)
            A_L, g = eye + tr.W[-1], jnp.sqrt(jnp.sum(tr.G * tr.G, axis=(1, 2)))
        y_hat = self.readout * jnp.dot(A_L[-1], H[:, -1], precision="highest")
        return (y_hat - y) ** 2 / self.d_in, g

    def steps(self, params, n_demos: int):
        """Effective step ``η_t`` of every layer ``(L,)`` (module docstring)."""
        d = self.d_in
        kq = jnp.einsum("lji,ljk->lik", params.w_k, params.w_q)[:, :d, :d]
        return self.readout * scale_factor(self.scale, n_demos) * params.w_v[:, d, d] * jnp.trace(kq, axis1=1, axis2=2) / d


@dataclasses.dataclass(frozen=True)
class SoftmaxMeasure:
    """``(params, H, y) -> (error (), empty (0,))`` for the softmax transformer (no Theorem-1 ``G_t``)."""

    score: Any  # lintrans.trained.QueryError (frozen, hashable)

    def __call__(self, params, H, y):
        return self.score(params, H, y), jnp.zeros((0,), H.dtype)

    def steps(self, params, n_demos: int):
        return jnp.zeros((0,))


def measure_for(model):
    """The measure of a :class:`lintrans.trained.TrainedModel`."""
    c = model.config
    if c.model == "linear":
        check_options(c.mask, c.scale, c.readout)
        return LinearMeasure(c.d_in, c.mask, c.scale, c.readout)
    return SoftmaxMeasure(model.score_fn)


# ----------------------------------------------------------------------------- the sweep


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """Sweep points of one model. ``fields``: every field any target clips; ``points``: ``(P, F)`` ranks
    and ``layer_index`` ``(P,)`` (row 0 = unpruned); ``cells``: ``[{"layer", "target", "xi", "ranks",
    "point"}]`` with 1-based layers."""

    fields: tuple[str, ...]
    full: tuple[int, ...]
    layer_index: np.ndarray
    points: np.ndarray
    cells: tuple[dict, ...]


def plan_sweep(params0, targets, rates, layers=None, rule: str = "exact") -> SweepPlan:
    """The cells (layer, target, ξ) of one model (``params0``: one seed, no seed axis) and their points."""
    names = field_names(params0)
    targets = tuple(targets)
    for t in targets:
        if t not in TARGETS or not set(TARGETS[t]) <= set(names):
            raise ValueError(f"target {t!r} is not a target of {type(params0).__name__}; "
                             f"allowed: {[x for x in TARGETS if set(TARGETS[x]) <= set(names)]}")
    fields = tuple(dict.fromkeys(f for t in targets for f in TARGETS[t]))
    L = int(getattr(params0, fields[0]).shape[0])
    layers = tuple(range(1, L + 1)) if layers is None else tuple(layers)
    for k in layers:
        if not 1 <= k <= L:
            raise ValueError(f"layer {k} out of range: this model has layers 1..{L}")
    full = tuple(int(min(getattr(params0, f).shape[1:])) for f in fields)
    rows, lidx, cells = [full], [0], []
    for k in layers:
        for t in targets:
            for xi in rates:
                r = {f: kept_rank(*getattr(params0, f).shape[1:], check_rate(xi), rule) for f in TARGETS[t]}
                row = tuple(r.get(f, n) for f, n in zip(fields, full))
                key = (0, full) if row == full else (k - 1, row)
                try:
                    p = next(i for i in range(len(rows)) if (lidx[i], rows[i]) == (key[0], key[1]))
                except StopIteration:
                    rows.append(key[1]), lidx.append(key[0])
                    p = len(rows) - 1
                cells.append({"layer": k, "target": t, "xi": float(xi), "ranks": r, "point": p})
    return SweepPlan(fields, full, np.asarray(lidx, np.int32), np.asarray(rows, np.int32), tuple(cells))


@partial(jax.jit, static_argnames=("measure", "fields", "chunk", "point_chunk"))
def sweep_points(params_seeds, measure, fields, layer_index, ranks, H, y, chunk: int = 512, point_chunk: int = 16):
    """Every sweep point of every seed on the same prompts: one compiled call.

    Args: ``params_seeds`` (leading seed axis), ``measure`` (hashable), ``fields`` (static), ``layer_index``
    ``(P,)`` 0-based, ``ranks`` ``(P, F)``, prompts ``H (B, D, N+1)`` and labels ``y (B,)``.
    Returns ``(err (S, P, B), g_total (S, P, B), g_layer (S, P, L), steps (S, P, L))``: per-prompt errors,
    ``(Σ_t ‖G_t‖²)^{1/2}`` per prompt, mean ``‖G_t‖_F`` per layer and the effective steps.
    """
    n_demos = H.shape[-1] - 1

    def per_seed(p):
        def per_point(kr):
            q = truncate_params_to_rank(p, kr[0], fields, kr[1])
            err, g = jax.lax.map(lambda hy: measure(q, hy[0], hy[1]), (H, y), batch_size=min(chunk, H.shape[0]))
            return err, jnp.sqrt(jnp.sum(g * g, axis=-1)), jnp.mean(g, axis=0), measure.steps(q, n_demos)

        return jax.lax.map(per_point, (layer_index, ranks), batch_size=point_chunk)

    return jax.lax.map(per_seed, params_seeds)


# ----------------------------------------------------------------------------- statistics


def _iv(values) -> dict:
    """Mean, s.e. and 95 % t interval over seeds, or NaNs with ``finite: false`` when a value is not finite."""
    v = np.asarray(values, np.float64)
    if not np.all(np.isfinite(v)):
        return {"mean": float("nan"), "se": float("nan"), "low": float("nan"), "high": float("nan"), "n": int(v.size),
                "finite": False}
    iv = stats.interval(v)
    return {"mean": float(iv.mean), "se": float(iv.se), "low": float(iv.low), "high": float(iv.high), "n": iv.n,
            "finite": True}


def cell_stats(e_u: np.ndarray, e_p: np.ndarray, null: float) -> dict:
    """Paired statistics of one cell: ``e_u``, ``e_p`` ``(S, B)`` unpruned and pruned errors on the same prompts.

    ``null``: the zero predictor's mean error on those prompts (scale of the tail and divergence thresholds).
    """
    e_u, e_p = np.asarray(e_u, np.float64), np.asarray(e_p, np.float64)
    with np.errstate(all="ignore"):
        m_u, m_p = e_u.mean(axis=1), e_p.mean(axis=1)
        rel = m_p / m_u - 1.0
        ok = np.isfinite(e_u) & np.isfinite(e_p) & (e_u > 0) & (e_p > 0)
        lr = np.where(ok, np.log(np.where(ok, e_p, 1.0) / np.where(ok, e_u, 1.0)), 0.0).sum(1) / np.maximum(ok.sum(1), 1)
        div = lambda e: int(np.sum(~np.isfinite(e) | (e > DIVERGED * null)))  # noqa: E731
        iv_rel, iv_lr = _iv(rel), _iv(lr)
    return {
        "error": float(np.mean(m_u)), "error_pruned": float(np.mean(m_p)),
        "rel_change": iv_rel["mean"], "rel_change_se": iv_rel["se"], "rel_change_ci95": [iv_rel["low"], iv_rel["high"]],
        "significant": bool(iv_rel["finite"] and (iv_rel["low"] > 0 or iv_rel["high"] < 0)),
        "improves": bool(iv_rel["finite"] and iv_rel["high"] < 0),
        "log_ratio": iv_lr["mean"], "log_ratio_ci95": [iv_lr["low"], iv_lr["high"]],
        "log_ratio_improves": bool(iv_lr["finite"] and iv_lr["high"] < 0),
        "median": float(np.mean(np.median(e_u, axis=1))), "median_pruned": float(np.mean(np.median(e_p, axis=1))),
        "frac_improved": float(np.mean(e_p < e_u)),
        "tail_frac": float(np.mean(~np.isfinite(e_u) | (e_u > TAIL * null))),
        "tail_frac_pruned": float(np.mean(~np.isfinite(e_p) | (e_p > TAIL * null))),
        "diverged": div(e_u), "diverged_pruned": div(e_p), "n_prompts": int(e_u.shape[1]), "n_seeds": int(e_u.shape[0]),
        "rel_change_per_seed": rel.tolist(),
    }


def model_cells(plan: SweepPlan, err, g_total, steps, *, null: float, base: dict) -> list[dict]:
    """Cells of one (model, shift) from the test part of a sweep (``err``/``g_total`` ``(S, P, B)``,
    ``steps`` ``(S, P, L)``); ``base``: fields every cell carries (model, shift, n_demos, …)."""
    out = []
    has_g = g_total is not None
    for c in plan.cells:
        p = c["point"]
        cell = dict(base, layer=c["layer"], target=c["target"], xi=c["xi"], rank=int(min(c["ranks"].values())),
                    ranks=c["ranks"], full_rank=int(min(plan.full)), rank0=bool(min(c["ranks"].values()) == 0),
                    point=p)
        cell.update(cell_stats(err[:, 0], err[:, p], null))
        if has_g:
            g_u, g_p = g_total[:, 0].mean(axis=1), g_total[:, p].mean(axis=1)
            with np.errstate(all="ignore"):
                cell.update(G_norm=float(np.mean(g_u)), G_norm_pruned=float(np.mean(g_p)),
                            dlog_G=float(np.mean(np.log(g_p / g_u))),
                            step=float(np.mean(steps[:, 0, c["layer"] - 1])),
                            step_pruned=float(np.mean(steps[:, p, c["layer"] - 1])))
        out.append(cell)
    return out


# ----------------------------------------------------------------------------- Theorem 2


def bound_points(params_seeds, plan: SweepPlan, H, *, model_config, layers, targets, rates, rule="exact", noise_std=0.0):
    """Theorem-2 bound (ε-ridged proof form over ``R``) and ``L_S`` of every point, per seed: ``(S, P)`` each.

    Uses :func:`lintrans.bound_sweep.prepare_sweep` (one compiled call per seed; float64). The query
    labels are not read (zeros are passed for ``y_query`` and ``w``; only ``L_S`` and the summands are used).
    Points the bound sweep does not cover stay NaN. Returns ``(bound, L_S, seconds, calls)``.
    """
    from lintrans.bound import bound_value
    from lintrans.bound_sweep import prepare_sweep

    c = model_config
    n = H.shape[-1] - 1
    b = max(1, n // 2)
    S = jax.tree_util.tree_leaves(params_seeds)[0].shape[0]
    P = plan.points.shape[0]
    bound, L_S = np.full((S, P), np.nan), np.full((S, P), np.nan)
    H64 = jnp.asarray(H, jnp.float64)
    zeros = (jnp.zeros(H.shape[0]), jnp.zeros((H.shape[0], H.shape[1] - 1)))
    t0 = time.perf_counter()
    lin_targets = tuple(t for t in targets if t in ("K", "Q", "V", "attn"))
    for s in range(S):
        p = jax.tree_util.tree_map(lambda x: jnp.asarray(x[s], jnp.float64), params_seeds)
        sw = prepare_sweep(p, (H64, *zeros), b, layers=layers, rates=rates, targets=lin_targets, rule=rule,
                           eps=(BOUND_EPS,), noise_std=noise_std, mask=c.mask, scale=c.scale, readout=c.readout).run()
        vals = np.asarray(bound_value(sw.arrays["proof_ridge"][:, 0], n))  # (Pb,)
        ls = np.asarray(sw.arrays["L_S"])
        bound[s, 0], L_S[s, 0] = vals[0], ls[0]
        for cell in plan.cells:
            key = (cell["layer"], cell["xi"], cell["target"])
            if key in sw.index:
                bound[s, cell["point"]], L_S[s, cell["point"]] = vals[sw.index[key]], ls[sw.index[key]]
    return bound, L_S, time.perf_counter() - t0, S


# ----------------------------------------------------------------------------- mechanism


def correlations(key, cells: list[dict], x_name: str, y_name: str = "log_ratio", by: str | None = "shift_label",
                 n_boot: int = 1000) -> dict:
    """Spearman ρ of ``y_name`` with ``x_name`` over the cells that change the weights (finite values),
    with a bootstrap interval; overall and per ``by`` group. Keys split per group."""
    def one(k, cs):
        pairs = [(c[x_name], c[y_name]) for c in cs if c["rank"] < c["full_rank"] and c.get(x_name) is not None
                 and np.isfinite(c[x_name]) and np.isfinite(c[y_name])]
        if len(pairs) < 4:
            return {"rho": None, "n": len(pairs), "note": "fewer than 4 finite cells"}
        x, y = np.asarray(pairs).T
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            return {"rho": None, "n": len(pairs), "note": "constant values"}
        return stats.spearman_interval(k, x, y, n_boot=n_boot)

    k_all, k_groups = jax.random.split(key)
    out = {"x": x_name, "y": y_name, "overall": one(k_all, cells), "groups": {}}
    if by:
        for i, g in enumerate(dict.fromkeys(c[by] for c in cells)):
            out["groups"][g] = one(jax.random.fold_in(k_groups, i), [c for c in cells if c[by] == g])
    return out


# ----------------------------------------------------------------------------- choosing ξ


def rate_choices(plan: SweepPlan, params_seeds, err_val, err_test, *, rates, J=None, top_k: int = 3,
                 group: str = "attn") -> dict:
    """Algorithm 1, the label-free choice (``J`` ``(S, P)``, or None) and the oracle, per seed.

    ``err_val``/``err_test`` ``(S, P, B)``. Each method's test change ``mean_test(choice)/mean_test(unpruned) − 1``
    per seed and its interval; the choices ``(layer, ξ)``. Ties go to the smaller ξ, then the shallower layer.
    """
    S = err_test.shape[0]
    cells = [c for c in plan.cells if c["target"] == group]
    if not cells:
        return {"note": f"no {group} cells swept"}
    mv, mt = np.asarray(err_val, np.float64).mean(-1), np.asarray(err_test, np.float64).mean(-1)  # (S, P)
    out = {m: {"choices": [], "rel_change_per_seed": []} for m in ("algorithm1", "label_free", "oracle")}
    if J is None:
        out.pop("label_free")
    for s in range(S):
        p0 = jax.tree_util.tree_map(lambda x: x[s], params_seeds)
        cond = group_condition_numbers(p0, group).max(axis=1)
        layer = select_layer(cond, top_k)
        lc = [c for c in cells if c["layer"] == layer]
        xi, i = choose_rate([c["xi"] for c in lc], [mv[s, c["point"]] for c in lc])
        picks = {"algorithm1": lc[i]}
        cand = [{"layer": 0, "xi": 0.0, "point": 0}] + cells

        def best(score):
            vals = np.array([score[c["point"]] for c in cand])
            vals = np.where(np.isfinite(vals), vals, np.inf)
            j = min(range(len(cand)), key=lambda j: (vals[j], cand[j]["xi"], cand[j]["layer"]))
            return cand[j]

        picks["oracle"] = best(mt[s])
        if J is not None:
            picks["label_free"] = best(J[s])
        for m, c in picks.items():
            out[m]["choices"].append({"layer": int(c["layer"]), "xi": float(c["xi"])})
            out[m]["rel_change_per_seed"].append(float(mt[s, c["point"]] / mt[s, 0] - 1.0))
    for m in out:
        iv = _iv(out[m]["rel_change_per_seed"])
        out[m].update(rel_change=iv["mean"], rel_change_ci95=[iv["low"], iv["high"]])
    return out


def depth_summary(cells: list[dict]) -> dict:
    """Per layer (one model, one shift): the best mean relative change, whether any cell improves
    significantly, and the worst per-seed log ratio; the depth trend of the worst case over seeds
    (Spearman of layer vs worst log-ratio per seed → t interval) and its verdict."""
    layers = sorted({c["layer"] for c in cells})
    per_layer = {}
    worst = []
    for k in layers:
        cs = [c for c in cells if c["layer"] == k and c["rank"] < c["full_rank"]]
        if not cs:
            continue
        best = min(cs, key=lambda c: c["rel_change"] if np.isfinite(c["rel_change"]) else np.inf)
        sig = [c for c in cs if c["improves"]]
        per_layer[k] = {"best_rel_change": best["rel_change"], "best_ci95": best["rel_change_ci95"],
                        "best_cell": {"target": best["target"], "xi": best["xi"], "rank": best["rank"]},
                        "n_significant_improvements": len(sig), "n_cells": len(cs),
                        "best_significant": min((c["rel_change"] for c in sig), default=None)}
        worst.append(np.max(np.array([np.log1p(np.asarray(c["rel_change_per_seed"])) for c in cs]), axis=0))
    out = {"per_layer": per_layer}
    if len(worst) >= 3:
        W = np.stack(worst, axis=1)  # (S, L)
        if np.all(np.isfinite(W)):
            rho = np.array([stats.spearman(np.arange(W.shape[1]), w) if np.ptp(w) > 0 else 0.0 for w in W])
            iv = stats.interval(rho)
            out["depth_trend"] = {"spearman_worst_vs_layer": _iv(rho)}
            out["verdict"] = stats.verdict(iv, positive="shallow layers are steadier (worst-case change rises with depth)",
                                           negative="deep layers are steadier (worst-case change falls with depth)",
                                           what="the rank correlation of the worst-case log change with depth")
        else:
            out["verdict"] = "inconclusive: non-finite errors in some cells"
    return out


def shift_base(model_name: str, shift: Shift, config) -> dict:
    """Fields every cell of (model, shift) carries."""
    return {"model": model_name, "shift": shift.resolved(config.d_in, config.n_demos, config.noise_std),
            "shift_label": shift.label(), "n_demos": shift.n_demos(config.n_demos)}
