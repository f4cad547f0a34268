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
``Δ log ‖G‖`` and with ``Δ log bound`` (Theorem 2 through :func:`lintrans.bound_eval.theorem2_bound`, the ε-ridged
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
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lintrans import stats
from lintrans import models
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
    has_G: ClassVar[bool] = True

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
    has_G: ClassVar[bool] = False

    def __call__(self, params, H, y):
        return self.score(params, H, y), jnp.zeros((0,), H.dtype)

    def steps(self, params, n_demos: int):
        return jnp.zeros((0,))


def measure_for(model):
    """The measure of a :class:`lintrans.trained.TrainedModel`."""
    c = model.config
    if models.get(c.model).theorem1:  # ‖G_t‖ and the effective step need Theorem 1's trajectory
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
    ``(Σ_t ‖G_t‖²)^{1/2}`` per prompt, mean ``‖G_t‖_F`` per layer and the effective steps. A measure
    without ``G_t`` (``has_G`` false: the softmax transformer) gives zeros for ``g_total`` and ``L = 0``.
    """
    n_demos = H.shape[-1] - 1

    def per_seed(p):
        def per_point(kr):
            q = truncate_params_to_rank(p, kr[0], fields, kr[1])
            if not measure.has_G:  # only the error goes through lax.map, which cannot batch zero-size outputs
                return jax.lax.map(lambda hy: measure(q, hy[0], hy[1])[0], (H, y), batch_size=min(chunk, H.shape[0]))
            err, g = jax.lax.map(lambda hy: measure(q, hy[0], hy[1]), (H, y), batch_size=min(chunk, H.shape[0]))
            return err, jnp.sqrt(jnp.sum(g * g, axis=-1)), jnp.mean(g, axis=0), measure.steps(q, n_demos)

        return jax.lax.map(per_point, (layer_index, ranks), batch_size=point_chunk)

    out = jax.lax.map(per_seed, params_seeds)
    if measure.has_G:
        return out
    empty = jnp.zeros((*out.shape[:2], 0), out.dtype)
    return out, jnp.zeros_like(out), empty, empty


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


@partial(jax.jit, static_argnames=("fields", "b", "mask", "scale", "readout", "point_chunk"))
def bound_points(params_seeds, fields, layer_index, ranks, H, *, b: int, mask: str, scale: str, readout: int,
                 eps: float = BOUND_EPS, point_chunk: int = 4):
    """Theorem-2 bound over ``R`` and ``L_S`` of every sweep point and seed: ``(S, P)`` each, one compiled call.

    The bound is :func:`lintrans.bound_eval.theorem2_bound` (the ε-ridged proof form, continuous in the
    weights, after clipping too); ``L_S(W_L)`` is :func:`lintrans.bound.empirical_risk` of the implicit
    learner on the demonstrations. Neither reads a query label. float64 (x64) is required.
    """
    from lintrans.bound import empirical_risk
    from lintrans.bound_eval import theorem2_bound

    def per_seed(p):
        # every point's clipped weights stacked on a leading axis: theorem2_bound computes the prompts'
        # data factor (an eigh of a D² × D² matrix per prompt) once for all of them
        q = jax.vmap(lambda k, r: truncate_params_to_rank(p, k, fields, r))(layer_index, ranks)
        over_R = theorem2_bound(q, H, b, eps=eps, mask=mask, scale=scale).over_R  # (P,)

        def risk(qq):
            W_L = jax.vmap(lambda h: trajectory(qq, h, mask=mask, scale=scale).W[-1])(H)
            return jnp.mean(jax.vmap(lambda w, h: empirical_risk(w, h, readout))(W_L, H))

        return over_R, jax.lax.map(risk, q, batch_size=point_chunk)

    return jax.lax.map(per_seed, params_seeds)


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
        if any(np.isfinite(mv[s, c["point"]]) for c in lc):
            xi, i = choose_rate([c["xi"] for c in lc], [mv[s, c["point"]] for c in lc])
            picks = {"algorithm1": lc[i]}
        else:  # every candidate diverged on validation: Algorithm 1 has nothing to pick, the model stays unclipped
            picks = {"algorithm1": {"layer": 0, "xi": 0.0, "point": 0}}
            out["algorithm1"].setdefault("seeds_without_finite_validation", []).append(s)
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


# ----------------------------------------------------------------------------- models and the whole study

#: Training seeds of every study model (the paired intervals are over these).
SEEDS = 4

#: The study's default models (name → TrainConfig fields), trained on first use into ``runs/`` and
#: reused (:func:`lintrans.trained.ensure_run`). Sized for a 2-core CPU: the one-layer models are the
#: issue's (d = 20, N = 40; optimal one-step GD error 0.34); the deep ones the default run's task (d = 5,
#: N = 20). The Wishart sampler draws the Gram matrix directly (the linear model reads nothing else).
STUDY_MODELS: dict[str, dict] = {
    "lin-L1-s1/N": dict(model="linear", d_in=20, n_demos=40, n_layers=1, scale="1/N", steps=400, batch_size=256,
                        init_std=0.2, sampler="wishart"),
    "lin-L1-s1": dict(model="linear", d_in=20, n_demos=40, n_layers=1, scale="1", steps=400, batch_size=256,
                      init_std=0.2, sampler="wishart"),
    "lin-L4-s1/N": dict(model="linear", n_layers=4, scale="1/N", steps=600, checkpoint_every=600, sampler="wishart"),
    "lin-L4-s1": dict(model="linear", n_layers=4, scale="1", steps=600, checkpoint_every=600, sampler="wishart"),
    # float64 and lr 3e-3 (not the shared float32, 1e-2). The prediction is a polynomial of degree 3^L in the
    # prompt (S_{l+1} = T_l S_l T_l^T with T_l affine in S_l), so at L = 8 the per-prompt loss is heavy-tailed:
    # every seed sees clipped gradient-norm spikes (> 10, up to 4e3), and in float32 a rare prompt overflows
    # (> 3.4e38) and the loss goes non-finite: seed 3 at step 105 at 3e-3 (1 of 8 seeds); lr 2e-3 / 1e-3 left
    # 1 / 2 of 4 seeds non-finite (loss or gradient), and clip_norm 0.1, 300 warm-up steps or batch 512 1, 1 and
    # 3 of 8. In float64 the clipped gradient absorbs them: 8 of 8 seeds train (median loss 0.12-0.18 over the
    # last 50 steps) at 1.6x the float32 time (measured 2026-12-02).
    "lin-L8-s1/N": dict(model="linear", n_layers=8, scale="1/N", steps=600, checkpoint_every=600, sampler="wishart",
                        lr=3e-3, dtype="float64"),
    # no L = 8 model at s = 1: its float32 training diverged at lr 1e-2, 3e-3 and 1e-3 (non-finite loss or weights at
    # steps 111, 86 and 286; 600 steps, init_std 0.02, measured; float64 not tried), a train-time instability, not a pruning result.
    # the project's default softmax recipe (lintrans.trained.DEFAULT_RUNS: d = 5, N = 10, 4 layers, 1500 steps) at the
    # study's 4 seeds (the shared pruning run has 3), so not in the default model list: its training costs more than
    # the five linear models together (add it with --models softmax). Cheaper runs do not learn: 800 steps of a
    # 2-layer model left all 4 seeds on the zero-estimator plateau (loss 1.00 at step 200, measured).
    "softmax": dict(model="softmax", seeds=SEEDS),
}
#: The models run by default (the softmax run costs more training than the rest together; see above).
DEFAULT_MODELS = ("lin-L1-s1/N", "lin-L1-s1", "lin-L4-s1/N", "lin-L4-s1", "lin-L8-s1/N")
#: ``size="tiny"`` (the --quick preset): every model at d = 3, N = 8 and a few dozen steps (smoke runs only).
TINY = dict(d_in=3, n_demos=8, steps=60, batch_size=64, checkpoint_every=60, log_every=20)


def study_config(name: str, size: str = "full"):
    """The :class:`lintrans.train.TrainConfig` of a study model (``size``: ``"full"`` or ``"tiny"``)."""
    from lintrans.trained import default_config

    if name not in STUDY_MODELS:
        raise ValueError(f"model must be one of {tuple(STUDY_MODELS)}, got {name!r}")
    if size not in ("full", "tiny"):
        raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")
    kw = dict(dict(seeds=SEEDS), **STUDY_MODELS[name])
    kind = kw.pop("model")
    if size == "tiny":
        kw.update(TINY, n_layers=min(kw["n_layers"], 2))
        kw.pop("init_std", None)
        if kind == "softmax":
            kw.update(width=16, mlp_width=32, n_heads=2)
    return default_config(kind, **kw)


def study_models(names, runs_dir, *, size: str = "full", quiet: bool = False) -> list[tuple[str, Any]]:
    """``[(name, TrainedModel)]``: each study model trained into ``runs_dir`` on first use, reused after."""
    import sys
    from pathlib import Path

    from lintrans.trained import ensure_run, load_trained, run_name

    out = []
    for name in names:
        config = study_config(name, size)
        run_dir, trained = ensure_run(config, Path(runs_dir) / run_name(config), quiet=quiet)
        if not quiet:
            print(f"{'trained' if trained else 'reusing'} {name}: {run_dir}", file=sys.stderr)
        out.append((name, load_trained(run_dir)))
    return out


def checkpoint_name(model) -> str:
    """A study name for a ``--checkpoint`` run: kind, depth and scale."""
    c = model.config
    return f"lin-L{c.n_layers}-s{c.scale}" if models.get(c.model).theorem1 else f"{c.model}-L{c.n_layers}"


def _theory(model, task, targets, rates, cells):
    """One-layer closed form per seed at every cell (in place) and the error-optimal clip per seed."""
    from lintrans import onelayer

    c = model.config
    res = [onelayer.clip_errors(model.seed_params(s), task, scale=c.scale, readout=c.readout, targets=targets, rates=rates)
           for s in range(model.n_seeds)]
    for cell in cells:
        e = [next(x["error"] for x in r["cells"] if (x["target"], x["xi"]) == (cell["target"], cell["xi"])) for r in res]
        u = [r["unpruned"] for r in res]
        cell.update(error_theory=float(np.mean(u)), error_pruned_theory=float(np.mean(e)),
                    rel_change_theory=float(np.mean(np.asarray(e) / np.asarray(u) - 1)))
    return [onelayer.optimal_clip(model.seed_params(s), task, scale=c.scale, readout=c.readout, targets=targets,
                                  rates=rates) for s in range(model.n_seeds)]


def _algorithm1_cost(model, params, H_val, y_val, rates, top_k=3, rule="exact"):
    """Seconds and compiled calls of Algorithm 1 alone (condition numbers + the validation sweep of the
    chosen layer, :func:`lintrans.search.candidate_errors`), every seed; the second of two runs (warm)."""
    from lintrans.search import candidate_errors, group_fields, group_ranks

    def once(seeds):
        calls = 0
        for s in seeds:
            p = jax.tree_util.tree_map(lambda x: x[s], params)
            fields = group_fields(p, "attn")
            layer = select_layer(group_condition_numbers(p, "attn").max(axis=1), top_k)
            ranks = np.unique(group_ranks(p, fields, rates, rule), axis=0)
            jax.block_until_ready(candidate_errors(p, model.score_fn, fields, layer - 1, jnp.asarray(ranks), H_val, y_val))
            calls += 2
        return calls

    once([0])  # compile (the shapes are the same for every seed)
    t0 = time.perf_counter()
    calls = once(range(model.n_seeds))
    return time.perf_counter() - t0, calls


def study_model(name: str, model, shifts, *, key, targets, rates, layers=(), n_val: int = 256, n_test: int = 1024,
                n_bound: int = 32, rule: str = "exact", chunk: int = 512, progress=None) -> dict:
    """Every shift of one model: cells, rate choices, depth summary, one-layer theory, timings (module docstring).

    ``key`` draws every shift's validation and test prompts (``fold_in(key, shift index)``, split).
    Needs x64 (the sweep runs in float64 so that divergent prompts stay finite where float32 overflows).
    """
    from lintrans.bound import require_x64

    require_x64()
    c = model.config
    linear = models.get(c.model).theorem1
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), model.params)
    p0 = jax.tree_util.tree_map(lambda x: x[0], params)
    names = field_names(p0)
    avail = tuple(t for t in targets if set(TARGETS[t]) <= set(names))
    lay = tuple(k for k in layers if k <= c.n_layers) if layers else None
    plan = plan_sweep(p0, avail, rates, lay, rule)
    measure = measure_for(model)
    out = {"model": name, "kind": c.model, "n_layers": c.n_layers, "scale": c.scale if linear else None,
           "d_in": c.d_in, "n_demos_train": c.n_demos, "targets": list(avail), "n_points": int(plan.points.shape[0]),
           "n_cells": len(plan.cells), "run": model.describe(), "shifts": {}, "skipped": {}, "cells": []}
    for i, shift in enumerate(shifts):
        label = shift.label()
        try:
            task = shift.task(c.d_in, c.n_demos, c.noise_std)
            if not linear and task.n_demos > c.n_demos:
                raise ValueError(f"{task.n_demos} shots exceed the softmax model's context of {c.n_demos} demonstrations")
        except ValueError as e:
            out["skipped"][label] = str(e)
            if progress:
                progress.update(1, f"{name} {label} skipped")
            continue
        base = shift_base(name, shift, c)
        k_val, k_test = jax.random.split(jax.random.fold_in(key, i))
        val, test = task.sample(k_val, n_val, dtype=jnp.float64), task.sample(k_test, n_test, dtype=jnp.float64)
        H, y = jnp.concatenate([val.H, test.H]), jnp.concatenate([val.y_query, test.y_query])
        t0 = time.perf_counter()
        res = jax.block_until_ready(sweep_points(params, measure, plan.fields, jnp.asarray(plan.layer_index),
                                                 jnp.asarray(plan.points), H, y, chunk=chunk))
        sweep_s = time.perf_counter() - t0
        err, g_tot, _g_layer, steps = (np.asarray(a) for a in res)
        null = float(np.mean(np.asarray(test.y_query) ** 2) / c.d_in)
        cells = model_cells(plan, err[:, :, n_val:], g_tot[:, :, n_val:] if linear else None, steps, null=null, base=base)
        entry = {"shift": base["shift"], "n_demos": base["n_demos"], "null_error": null,
                 "seconds": {"sweep": sweep_s}, "calls": {"sweep": 1}}
        J = None
        if linear and n_bound > 0 and task.n_demos >= 2:
            t1 = time.perf_counter()
            bnd, LS = (np.asarray(a) for a in jax.block_until_ready(bound_points(
                params, plan.fields, jnp.asarray(plan.layer_index), jnp.asarray(plan.points), val.H[:n_bound],
                b=max(1, task.n_demos // 2), mask=c.mask, scale=c.scale, readout=c.readout)))
            entry["seconds"]["bound"], entry["calls"]["bound"] = time.perf_counter() - t1, 1
            J = LS * (1 + np.sqrt(2.0) * bnd)
            with np.errstate(all="ignore"):
                for cell in cells:
                    p = cell["point"]
                    cell.update(bound=float(np.mean(bnd[:, 0])), bound_pruned=float(np.mean(bnd[:, p])),
                                dlog_bound=float(np.mean(np.log(bnd[:, p] / bnd[:, 0]))),
                                L_S=float(np.mean(LS[:, 0])), L_S_pruned=float(np.mean(LS[:, p])))
        if linear and c.n_layers == 1 and task.sparsity is None:
            entry["theory_optimal_clip"] = _theory(model, task, avail, rates, cells)
        entry["choices"] = rate_choices(plan, params, err[:, :, :n_val], err[:, :, n_val:], rates=rates, J=J)
        if "attn" in avail:
            a1_s, a1_calls = _algorithm1_cost(model, params, val.H, val.y_query, rates, rule=rule)
            entry["choices"]["algorithm1"].update(seconds=a1_s, calls=a1_calls)
            entry["choices"]["oracle"].update(seconds=sweep_s, calls=1, note="the full test sweep (every target), with test labels")
            if J is not None:
                entry["choices"]["label_free"].update(seconds=entry["seconds"]["bound"], calls=1,
                                                      note="bound and L_S at every point on validation prompts, no query labels")
        if c.n_layers > 1:
            entry["depth"] = depth_summary(cells)
        out["shifts"][label] = entry
        out["cells"] += cells
        if progress:
            progress.update(1, f"{name} {label}: {len(cells)} cells in {sweep_s:.1f} s")
    return out


def headline(models: list[dict]) -> list[str]:
    """One line per (model, shift): the best significant improvement, or why there is none (verdicts only
    where the 95 % interval over seeds supports them)."""
    lines = []
    for m in models:
        for label in m["shifts"]:
            cs = [c for c in m["cells"] if c["shift_label"] == label and c["rank"] < c["full_rank"]]
            sig = [c for c in cs if c["improves"]]
            if sig:
                b = min(sig, key=lambda c: c["rel_change"])
                lo, hi = b["rel_change_ci95"]
                lines.append(f"{m['model']} / {label}: clipping {b['target']} of layer {b['layer']} at xi={b['xi']:g} "
                             f"(rank {b['rank']}{', deletes the layer' if b['rank0'] else ''}) improves ICL by "
                             f"{-100 * b['rel_change']:.1f} % [{-100 * hi:.1f}, {-100 * lo:.1f}] "
                             f"({b['error']:.3g} -> {b['error_pruned']:.3g}; median {b['median']:.3g} -> "
                             f"{b['median_pruned']:.3g}); {len(sig)} of {len(cs)} cells improve significantly")
            else:
                lines.append(f"{m['model']} / {label}: no cell improves significantly (inconclusive or worse: 95 % interval "
                             f"over seeds never below 0 in {len(cs)} cells)")
    return lines


def _fmt_num(v):
    # a diverged clip's change can reach 1e78 %: fixed notation would print 80 digits
    return f"{v:+.1f}" if abs(v) < 1e4 else f"{v:+.2e}"


def _fmt_iv(mean, ci, pct=True):
    f = 100.0 if pct else 1.0
    return f"{_fmt_num(f * mean)}{' %' if pct else ''} [{_fmt_num(f * ci[0])}, {_fmt_num(f * ci[1])}]"


def summary_lines(models: list[dict], corr: dict) -> list[str]:
    """Mechanism, deep vs shallow and rate-choice statements (verdicts only where intervals support them)."""
    lines = []
    for name, c in corr.items():
        o = c["overall"]
        if o.get("rho") is None:
            lines.append(f"Spearman(log error ratio, {c['x']}): not computed ({o.get('note')})")
            continue
        lo, hi = o["low"], o["high"]
        verdict = ("predicts the direction of the change" if lo > 0 else "anti-correlated" if hi < 0
                   else "inconclusive (interval contains 0)")
        lines.append(f"Spearman(log error ratio, {c['x']}) over {o['n']} linear cells: {o['rho']:+.2f} [{lo:+.2f}, {hi:+.2f}] "
                     f"(bootstrap 95 %): {verdict}")
    for m in models:
        for label, e in m["shifts"].items():
            if "verdict" in e.get("depth", {}):
                lines.append(f"{m['model']} / {label}: {e['depth']['verdict']}")
            ch = e.get("choices", {})
            parts = []
            for meth in ("algorithm1", "label_free", "oracle"):
                if meth in ch and np.isfinite(ch[meth].get("rel_change", np.nan)):
                    x = ch[meth]
                    iv = x["rel_change_ci95"]
                    sig = "" if not np.all(np.isfinite(iv)) else (" *" if iv[1] < 0 or iv[0] > 0 else "")
                    parts.append(f"{meth} {_fmt_iv(x['rel_change'], iv)}{sig}")
            if parts:
                lines.append(f"{m['model']} / {label}: test change of the chosen clip (attn; * = interval excludes 0): "
                             + "; ".join(parts))
    return lines


def _restore(obj):
    """Saved results → numbers again: the strings "nan", "inf", "-inf" of lintrans.io.to_jsonable become floats."""
    if isinstance(obj, dict):
        return {k: _restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return float(obj)
    return obj


def correlation_table(key, cells: list[dict]) -> dict:
    """Δerror against Δlog‖G‖ and Δlog bound over the linear cells (:func:`correlations`), keys split."""
    lin = [c for c in cells if "dlog_G" in c]
    return {name: correlations(jax.random.fold_in(key, i), lin, x)
            for i, (name, x) in enumerate((("G", "dlog_G"), ("bound", "dlog_bound")))}


def merge_results(parts: list[dict], key) -> dict:
    """Results of several runs (e.g. disjoint model sets run in parallel) as one: models and cells
    concatenated (a model in two parts is refused), correlations and statements recomputed."""
    parts = [_restore(p) for p in parts]
    models = [m for p in parts for m in p["models"]]
    names = [m["model"] for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"the results to merge share models: {sorted({n for n in names if names.count(n) > 1})}")
    cells = [c for p in parts for c in p["cells"]]
    corr = correlation_table(key, cells)
    full = [dict(m, cells=[c for c in cells if c["model"] == m["model"]]) for m in models]
    t = [p["timing"] for p in parts]
    sweep_s = sum(x["sweep_seconds"] for x in t)
    timing = {"parts": t, "sweep_seconds": sweep_s, "n_cells": len(cells),
              "cells_per_second": len(cells) / sweep_s if sweep_s > 0 else None,
              "note": "parts run in parallel on a shared, loaded machine"}
    return {"models": models, "cells": cells, "correlations": corr,
            "statements": headline(full) + summary_lines(full, corr), "timing": timing}
