"""Theorem 2 under SVD truncation, as a study: models over seeds → sweep → one JSON-able summary (SPEC §6–7).

What ``experiments/bound_vs_layer.py`` reports, computed from plain arguments (never a script's
``Config``):

* :func:`noisy_gd_construction` — the GD construction (SPEC §4) plus relative Gaussian weight noise;
* :func:`sweep_study` — the (layer, ξ, target) sweep of :mod:`lintrans.bound_sweep` for every seed's
  model and prompts, summarised point by point over seeds; rows that evaluate the same clip are
  merged (one row, every ξ listed), and rows that keep every rank are the unpruned model;
* :func:`continuity_path` — the bound along a path of models (weight noise → 0, or ξ over one layer):
  the reported (ridged) forms next to the support-restricted diagnostic and the rank of ``C_t``.

The bound reported is the registry's (:mod:`lintrans.bound_forms`): forms that are finite and continuous.
Intervals: test error and gap are pooled over (seed, prompt) pairs, mean ± 1.96·s.e. (normal
approximation: at least 4 prompts per seed, and the paired differences to the unpruned model are
computed on the same prompts).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.bound import bound_summands, bound_value
from lintrans.bound_eval import prompt_stats
from lintrans.bound_forms import FORMS, REPORTED, names
from lintrans.bound_sweep import bound_sweep
from lintrans.constructions import gd_construction
from lintrans.params import FIELDS, LinearAttentionParams
from lintrans.pruning import kept_rank
from lintrans.truncation import TARGETS, target_fields, truncate_params_to_rank

__all__ = ["gd_rate", "noisy_gd_construction", "sweep_study", "continuity_path", "xi_path_params", "RIDGED"]

RIDGED = names(covariance="ridge")


def gd_rate(n_demos: int, d_in: int) -> float:
    """``η = 1/(N(1 + √(d/N))²)``, about ``1/λ_max(Σ_i x_i x_iᵀ)`` for Gaussian inputs (Marchenko–Pastur edge)."""
    return 1.0 / (n_demos * (1.0 + np.sqrt(d_in / n_demos)) ** 2)


def noisy_gd_construction(key, d_in: int, n_demos: int, n_layers: int, weight_noise) -> LinearAttentionParams:
    """GD construction (SPEC §4, rate :func:`gd_rate`) plus noise of std ``weight_noise·max|a|`` on each matrix ``a``.

    ``weight_noise`` may be an array ``(P,)``: the same draws scaled by each level (a path to 0), params
    with a leading ``(P,)`` axis. Options of the construction: mask ``demos``, scale ``1``, readout ``−1``.
    """
    p = gd_construction([gd_rate(n_demos, d_in)] * n_layers, d_in)
    level = jnp.asarray(weight_noise, jnp.float64)
    keys = jax.random.split(key, 3)
    out = []
    for a, k in zip(p, keys):
        z = jnp.max(jnp.abs(a)) * jax.random.normal(k, a.shape, a.dtype)
        out.append(a + level.reshape(level.shape + (1,) * a.ndim) * z)
    return LinearAttentionParams(*out)


# ----------------------------------------------------------------------------- the sweep, over seeds


def _pooled_ci(means, sems, n):
    """Mean and 95% half-width over all (seed, prompt) pairs from per-seed means and s.e.m. (n prompts each)."""
    means, sems = np.asarray(means, float), np.asarray(sems, float)
    S = means.size
    m = means.mean()
    var = (np.sum((n - 1) * n * sems**2) + n * np.sum((means - m) ** 2)) / max(S * n - 1, 1)
    return float(m), float(1.96 * np.sqrt(var / (S * n)))


def _summarize(entries, n_prompts, eps):
    """One sweep point over seeds (``entries``: one :meth:`lintrans.bound_sweep.SweepResult.entry` per seed)."""
    stack = lambda k: np.stack([np.asarray(e[k], float) for e in entries])  # noqa: E731
    out = {
        "rank_C_min": np.min(stack("rank_min"), 0).astype(int).tolist(),
        "rank_C_max": np.max(stack("rank_max"), 0).astype(int).tolist(),
        "rank_bound": np.max(stack("rank_bound_max"), 0).astype(int).tolist(),
        "in_support_frac": stack("in_support_frac").mean(0).tolist(),
        "summands": {f: stack(f).mean(0).tolist() for f in FORMS if f not in RIDGED},
        "norm_G": stack("norm_G").mean(0).tolist(),
        "trace_C": stack("trace").mean(0).tolist(),
        # the ≥ 0 check (AM–GM) over every prompt, term and ε of the reported (ridged) forms
        "min_summand_reported": float(min(np.min(stack("printed_ridge_min")), np.min(stack("proof_ridge")))),
        "L_S": float(stack("L_S").mean()),
        "L_mu": float(stack("L_mu").mean()),
        "R_hat": float(np.mean([e["R_hat"] for e in entries])),
        "nonfinite_prompts": int(stack("nonfinite").sum()),
        "eig_cut": {"smallest_kept_rel": float(np.min(stack("smallest_kept_rel"))),
                    "largest_dropped_rel": float(np.max(stack("largest_dropped_rel")))},
    }
    for f in RIDGED:
        arr = stack(f).mean(0)
        out["summands"][f] = {f"{e:g}": arr[j].tolist() for j, e in enumerate(eps)}
    for key in ("test_error", "gap", "d_test_error", "d_gap"):
        out[key], out[f"{key}_ci95"] = _pooled_ci(stack(key), stack(f"{key}_sem"), n_prompts)
    keys = list(entries[0]["bound_over_R"])
    out["bound_over_R"] = {k: float(np.mean([e["bound_over_R"][k] for e in entries])) for k in keys}
    out["bound_R_hat"] = {k: float(np.mean([e["bound_R_hat"][k] for e in entries])) for k in keys}
    out["reasons"] = {k: v for e in entries for k, v in e["reasons"].items()}
    return out


def sweep_study(models, batches, b: int, *, rates, targets, eps, noise_std: float = 0.0, rule: str = "exact",
                mask: str = "demos", scale: str = "1", readout: int = 1, progress=None) -> dict:
    """The sweep for every seed (``models[s]`` on ``batches[s]``), summarised over seeds.

    Returns ``{"unpruned", "rows", "eps_sweep", "checks", "r0", "n_points", "sweep_seconds"}`` (JSON-able):
    ``rows`` one per distinct (layer, target, clip), with ``xis`` the rates that give it.
    """
    if not models or len(models) != len(batches):
        raise ValueError(f"need one batch per model and at least one model, got {len(models)} and {len(batches)}")
    t0 = time.perf_counter()
    sweeps = []
    for s, (params, batch) in enumerate(zip(models, batches)):
        sweeps.append(bound_sweep(params, batch, b, rates=rates, targets=targets, rule=rule, eps=eps,
                                  noise_std=noise_std, mask=mask, scale=scale, readout=readout))
        if progress is not None:
            progress.update(1, info=f"seed {s}")
    elapsed = time.perf_counter() - t0
    sw, n_prompts = sweeps[0], int(np.asarray(batches[0][0]).shape[0])
    eps = sw.eps
    cache = {}

    def point(p):
        if p not in cache:
            cache[p] = _summarize([x.entry(p) for x in sweeps], n_prompts, eps)
        return cache[p]

    unpruned = point(0)
    merged = {}
    for (k, xi, target), p in sw.index.items():
        if p == 0:  # keeps every rank: the unpruned model itself
            continue
        merged.setdefault((target, k, p), []).append(xi)
    L, D = models[0].n_layers, models[0].dim
    rows = []
    for (target, k, p), xis in merged.items():
        rank = {f: int(sw.points[p, 1 + FIELDS.index(f)]) for f in TARGETS[target]}
        rows.append({"layer": k, "target": target, "xis": sorted(xis), "rank": rank, **point(p)})
    eps_sweep = [{"eps": e, **{f"{f}_bound_over_R": unpruned["bound_over_R"][f"{f}@{e:g}"] for f in RIDGED}}
                 for e in eps]
    d = D * D
    tot = {e: float(np.sum(unpruned["summands"]["printed_ridge"][f"{e:g}"])) for e in eps}
    checks = {
        "d": d,
        "rank_C_measured": [int(min(unpruned["rank_C_min"])), int(max(unpruned["rank_C_max"]))],
        "rank_C_structural_bound": unpruned["rank_bound"],
        "min_summand_reported": float(min(x["min_summand_reported"] for x in cache.values())),
        "eig_cut": {"smallest_kept_rel": float(min(x["eig_cut"]["smallest_kept_rel"] for x in cache.values())),
                    "largest_dropped_rel": float(max(x["eig_cut"]["largest_dropped_rel"] for x in cache.values()))},
        # Σ_t printed ridge ≈ Σ_t (d − r_t) log(1/ε) + const as ε → 0: the slope between the two smallest ε
        "ridge_slope_per_log_inv_eps": float((tot[eps[0]] - tot[eps[1]]) / np.log(eps[1] / eps[0])),
        "ridge_slope_predicted": int(np.sum(d - np.asarray(unpruned["rank_C_min"]))),
        "bound_R_hat_ge_abs_gap_fraction": {
            f: float(np.mean([x["bound_R_hat"][f] >= abs(x["gap"]) for x in cache.values()]))
            for f in unpruned["bound_R_hat"] if f.split("@")[0] in REPORTED},
        "nonfinite_prompts": int(sum(x["nonfinite_prompts"] for x in cache.values())),
    }
    return {"unpruned": unpruned, "rows": rows, "eps_sweep": eps_sweep, "checks": checks, "r0": int(sw.r0),
            "n_points": int(sw.points.shape[0]), "sweep_seconds": elapsed, "n_layers": L}


# ----------------------------------------------------------------------------- continuity paths

_prompt_stats = jax.jit(prompt_stats, static_argnames=("b", "mask", "scale", "method"))  # one compile per shape


def continuity_path(params: LinearAttentionParams, H, b: int, *, eps: float, mask: str = "demos",
                    scale: str = "1") -> dict:
    """The bound of each model of a family ``params`` (fields ``(P, L, D, D)``) on prompts ``H``.

    Returns numpy arrays over the family: ``{form: bound / R (P,)}`` for the reported (ridged) forms at
    relative ridge ``eps`` and for the support-restricted diagnostic, and ``rank_min``, ``rank_max``
    ``(P, L)`` (rank of ``C_t`` over prompts).
    """
    stats = _prompt_stats(params, jnp.asarray(H), b, mask=mask, scale=scale)
    d, n_demos = H.shape[1] ** 2, H.shape[2] - 1
    summ = jax.vmap(lambda st: bound_summands(st, d, eps=(float(eps),)))(stats)
    out = {}
    for f in FORMS:
        if FORMS[f].covariance == "raw":
            continue
        s = np.asarray(summ[f])
        out[f] = bound_value(s[:, 0] if f in RIDGED else s, n_demos)
    rank = np.asarray(stats.rank)
    out.update(rank_min=rank.min(axis=1), rank_max=rank.max(axis=1))
    return out


def xi_path_params(params: LinearAttentionParams, layer: int, target: str, xis, rule: str = "exact"):
    """``(family, ranks, where)``: ``params`` with ``target`` of 1-based ``layer`` clipped to each distinct
    rank that the rates ``xis`` keep (fields ``(R, L, D, D)``, each rank once), the rank of every ``ξ``,
    and ``where`` with ``family[where[i]]`` the model of ``xis[i]``."""
    fields = target_fields(params, target)
    D = params.dim
    ranks = np.array([kept_rank(D, D, float(x), rule) for x in xis], dtype=np.int32)
    distinct, where = np.unique(ranks, return_inverse=True)
    fam = jax.vmap(lambda r: truncate_params_to_rank(params, layer - 1, fields, (r,) * len(fields)))(jnp.asarray(distinct))
    return fam, ranks, where
