"""The pruning phenomenon on trained models: clip one layer's group at each ξ, measure ICL error.

The paper's Figure 1 (GPT-J / LLaMA): SVD-clipping the weights of ONE layer can improve in-context
accuracy, and deep layers do so more steadily than shallow ones; its Figure 3: attention matrices
are far worse conditioned than MLP ones, more so in the last layers. For one model (parameters
with a leading seed axis ``S``), each group (``attn`` = {W_K, W_Q, W_V}; a softmax model also
``mlp`` = {W_in, W_out}), each layer ``t`` and each rate ``ξ`` (``r = ⌊min(m, n)(1 − ξ)⌋`` kept,
SPEC §6), :func:`evaluate_group` gives the mean ICL test error ``(ŷ − y)²/d`` on one fixed set of
prompts, relative to the same seed's unpruned model on the same prompts (paired comparisons).

Steadiness of layer ``t`` is measured on ``ℓ(ξ) = log10(error(ξ) / error(unpruned))`` over the
rates that change the weights (``ξ`` with some ``r < min(m, n)``; log ratios, so a seed whose error
is small does not dominate): ``worst = max ℓ``, ``spread = max ℓ − min ℓ``, ``best = min ℓ`` and
``frac_improve`` (the fraction of rates with a lower error than unpruned) — :func:`steadiness`.
Each gets a 95 % Student-t interval over seeds (:func:`lintrans.stats.interval`). The depth trend
of a statistic (:func:`depth_trend`) is measured per seed three ways — Spearman's rank correlation
with ``t``, the least-squares slope against ``t``, the difference deepest − shallowest — each with
a t interval over seeds. The rank correlation is the primary measure because the log ratios are
heavy-tailed (clipping a shallow layer of the linear stack can raise its error by ten decades,
which swamps a slope).

"Deep layers are steadier" (:func:`depth_verdict`) is stated only when (1) the t interval over
seeds of the rank correlation of ``worst`` with depth lies below 0 and (2) that ordering is not an
accident of the test prompts: the 95 % percentile-bootstrap interval over prompts of the
seed-mean rank correlation (:func:`prompt_bootstrap_rho`, every statistic recomputed from the
resampled per-prompt errors) also lies below 0. Otherwise the verdict is "inconclusive: …" saying
which condition failed (one seed; the seed interval contains 0; the ordering is not resolved by
the prompts). A barely trained model whose layers differ by 1e-4 of the error fails (2).

Shapes: per-prompt errors ``(S, L, 1 + R, B)`` (index 0 of the rate axis: the unpruned model, the
same at every layer); ``R`` rates; ``B`` prompts. Layers are 1-based in every report.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lintrans import stats
from lintrans.estimators import icl_error, predict_batch
from lintrans.search import group_condition_numbers, group_fields, group_ranks, prompt_mean_se, sweep_errors

__all__ = ["STATS", "REFERENCE_ESTIMATORS", "seed_sweep_errors", "steadiness", "spearman_with_depth", "depth_trend",
           "prompt_bootstrap_rho", "depth_verdict", "evaluate_group", "condition_numbers", "estimator_errors",
           "statements", "table"]

STATS = ("worst", "spread", "best", "frac_improve")
#: Reference estimators scored on the same test prompts (is the trained model an in-context learner at all?).
REFERENCE_ESTIMATORS = ("zero", "averaging", "gd_1step_opt", "least_squares")
#: Bootstrap resamples of the test prompts behind condition (2) of the verdict.
N_BOOT = 200


@partial(jax.jit, static_argnames=("score_fn", "fields", "chunk"))
def seed_sweep_errors(params_seeds, score_fn, fields, ranks, H, y, chunk):
    """``(S, L, U, B)`` per-prompt errors: seeds one after another, each a full (layer, rank) sweep
    (:func:`lintrans.search.sweep_errors`) on the same prompts."""
    return jax.lax.map(lambda p: sweep_errors(p, score_fn, fields, ranks, H, y, chunk), params_seeds)


def n_seeds_of(params_seeds) -> int:
    """The seed axis length, the same on every leaf (``ValueError`` otherwise)."""
    sizes = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(params_seeds)}
    if len(sizes) != 1:
        raise ValueError(f"params must share one leading seed axis, got lengths {sorted(sizes)}")
    return sizes.pop()


def steadiness(log_ratio: np.ndarray, changed: np.ndarray) -> dict[str, np.ndarray]:
    """Per (seed, layer) statistics over the rates that change the weights.

    ``log_ratio``: ``(..., L, R)`` = log10(error / unpruned error); ``changed``: ``(R,)`` bool.
    Returns ``{stat: (..., L)}``.
    """
    x = log_ratio[..., changed]
    return {"worst": x.max(axis=-1), "spread": x.max(axis=-1) - x.min(axis=-1), "best": x.min(axis=-1),
            "frac_improve": (x < 0).mean(axis=-1)}


def _avg_ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1..L, ties sharing their mean rank) along the last axis, vectorized."""
    less = (x[..., None, :] < x[..., :, None]).sum(-1)
    equal = (x[..., None, :] == x[..., :, None]).sum(-1)
    return less + (equal + 1) / 2


def spearman_with_depth(stat: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of ``stat (..., L)`` with the layer index; ``(...)``.

    0 where the statistic is constant over layers (no ordering) or ``L = 1``."""
    r = _avg_ranks(np.asarray(stat, dtype=np.float64))
    L = r.shape[-1]
    depth = np.arange(1, L + 1, dtype=np.float64) - (L + 1) / 2
    rc = r - r.mean(axis=-1, keepdims=True)
    den = np.sqrt((rc * rc).sum(-1) * (depth @ depth))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rc @ depth) / np.where(den > 0, den, 1.0), 0.0)


def depth_trend(stat: np.ndarray) -> dict[str, dict]:
    """``stat``: ``(S, L)`` → t intervals over seeds of three per-seed trend measures: Spearman's
    rank correlation with the layer index (its interval clipped to [−1, 1]), the least-squares
    slope against the layer index, and the deepest − shallowest difference; plus the number of
    seeds where the deepest layer's value is below the shallowest one's."""
    S, L = stat.shape
    layers = np.arange(1, L + 1, dtype=np.float64)
    slopes = np.polyfit(layers, stat.T, 1)[0] if L > 1 else np.zeros(S)
    rho = stats.interval(spearman_with_depth(stat)).to_dict()
    rho["low"], rho["high"] = max(rho["low"], -1.0), min(rho["high"], 1.0)
    return {"spearman": rho, "slope": stats.interval(slopes).to_dict(),
            "deep_minus_shallow": stats.interval(stat[:, -1] - stat[:, 0]).to_dict(),
            "seeds_deep_below_shallow": int(np.sum(stat[:, -1] < stat[:, 0])), "n_seeds": int(S)}


def prompt_bootstrap_rho(key: jax.Array, errors: np.ndarray, changed: np.ndarray, n_boot: int = N_BOOT,
                         level: float = 0.95) -> dict:
    """Percentile-bootstrap interval over the test prompts of the seed-mean rank correlation of
    ``worst`` with depth: each resample draws ``B`` prompts with replacement (one draw shared by
    every seed, layer and ξ: the comparisons stay paired) and recomputes the mean errors, log
    ratios, ``worst`` and the rank correlations from them. ``errors``: ``(S, L, 1 + R, B)``."""
    S, L, C, B = errors.shape
    idx = np.asarray(jax.random.randint(key, (n_boot, B), 0, B))
    weights = np.zeros((n_boot, B))
    np.add.at(weights, (np.arange(n_boot)[:, None], idx), 1.0 / B)
    means = (weights @ errors.reshape(-1, B).T).reshape(n_boot, S, L, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log10(means[..., 1:] / means[:, :, :1, :1])
    ok = np.all(np.isfinite(log_ratio), axis=(1, 2, 3))
    rho = spearman_with_depth(steadiness(log_ratio[ok], changed)["worst"]).mean(axis=-1)
    if rho.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n_boot": int(n_boot), "used": 0}
    low, high = np.quantile(rho, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(rho.mean()), "low": float(low), "high": float(high), "n_boot": int(n_boot),
            "used": int(ok.sum()), "level": level}


def depth_verdict(trend: dict, prompts: dict | None) -> str:
    """The depth statement from the rank correlation of ``worst`` with depth (see the module
    docstring): a claim only when the seed interval AND the prompt-bootstrap interval support it."""
    r = trend["spearman"]
    text = stats.verdict(
        _unclipped(r), what="the t interval over seeds of the rank correlation of the worst-case log error ratio with depth",
        positive="shallow layers are steadier: the worst-case degradation rises with depth",
        negative="deep layers are steadier: the worst-case degradation falls with depth")
    if text.startswith("inconclusive") or prompts is None:
        return text
    lo, hi = prompts["low"], prompts["high"]
    same_side = (hi < 0) if r["mean"] < 0 else (lo > 0)
    if not same_side:
        return (f"inconclusive: the ordering of the layers is not resolved by the test prompts (bootstrap over "
                f"prompts of the seed-mean rank correlation: {prompts['mean']:.2f} [{lo:.2f}, {hi:.2f}], "
                f"{prompts['used']} resamples), although the seed interval excludes 0 ({r['mean']:.2f} "
                f"[{r['low']:.2f}, {r['high']:.2f}])")
    return f"{text}; bootstrap over prompts {prompts['mean']:.2f} [{lo:.2f}, {hi:.2f}]"


def _unclipped(r: dict) -> stats.Interval:
    """The t interval of a stored rank-correlation dict (its [−1, 1] clipping does not move the sign)."""
    mean, se = float(r["mean"]), float(r["se"])
    half = stats.t_quantile(0.5 + r["level"] / 2, r["n"] - 1) * se if r["n"] > 1 else float("nan")
    return stats.Interval(np.float64(mean), np.float64(se), np.float64(half), int(r["n"]), float(r["level"]))


def _interval(v: np.ndarray, fraction: bool) -> dict:
    d = stats.interval(v).to_dict()
    if fraction:  # a fraction's t interval is clipped to [0, 1]
        d["low"] = np.clip(d["low"], 0, 1).tolist()
        d["high"] = np.clip(d["high"], 0, 1).tolist()
    return d


def evaluate_group(key: jax.Array, params_seeds, score_fn, group: str, rates, rule: str, H, y,
                   chunk: int) -> tuple[dict, np.ndarray]:
    """Sweep every (seed, layer, ξ) clip of ``group`` on prompts ``H (B, D, N+1)``, ``y (B,)``.

    ``rates``: validated, ascending. ``key``: the prompt bootstrap of the verdict. Returns the
    JSON-ready report of the group and the ``(S, L, R)`` mean-error array.
    """
    p0 = jax.tree_util.tree_map(lambda x: x[0], params_seeds)
    fields = group_fields(p0, group)
    ranks = group_ranks(p0, fields, rates, rule)
    full = np.array([min(getattr(p0, f).shape[1:]) for f in fields], dtype=np.int32)
    unique, inverse = np.unique(np.vstack([full[None], ranks]), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    errs = np.asarray(seed_sweep_errors(params_seeds, score_fn, fields, jnp.asarray(unique), H, y, chunk),
                      dtype=np.float64)[:, :, inverse]  # (S, L, 1 + R, B)
    mean, se = prompt_mean_se(errs)
    unpruned, err = mean[:, 0, 0], mean[:, :, 1:]  # (S,): full ranks, identical at every layer; (S, L, R)
    changed = np.any(ranks < full[None], axis=1)
    g = {"fields": list(fields), "ranks": ranks.tolist(), "full_ranks": full.tolist(),
         "changes_weights": changed.tolist(), "error": err.tolist(), "error_se_prompts": se[:, :, 1:].tolist(),
         "unpruned_error": unpruned.tolist()}
    bad = ~np.isfinite(err)
    if bad.any() or not np.all(np.isfinite(unpruned)) or np.any(unpruned <= 0):
        where = np.argwhere(bad)[0].tolist() if bad.any() else "unpruned"
        g["nonfinite"] = f"non-finite error at (seed, layer-1, rate index) {where}; statistics not computed"
    elif changed.any():
        log_ratio = np.log10(err / unpruned[:, None, None])
        st = steadiness(log_ratio, changed)
        g["log10_ratio"] = stats.interval(log_ratio).to_dict()  # (L, R)
        g["steadiness"] = {k: {"per_seed": v.tolist(), **_interval(v, k == "frac_improve")} for k, v in st.items()}
        g["depth_trend"] = {k: depth_trend(v) for k, v in st.items()}
        g["prompt_bootstrap_rho"] = prompt_bootstrap_rho(key, errs, changed) if err.shape[1] > 1 else None
        g["verdict"] = depth_verdict(g["depth_trend"]["worst"], g["prompt_bootstrap_rho"])
    else:
        g["nonfinite"] = None
        g["verdict"] = "no rate changes the weights (every r = min(m, n)); nothing to compare"
    return g, err


def condition_numbers(params_seeds, groups) -> dict[str, list]:
    """``κ = σ_max/σ_min`` per (seed, layer) of every matrix of ``groups`` and per group its max."""
    S = n_seeds_of(params_seeds)
    cond = {}
    for group in groups:
        per = np.stack([group_condition_numbers(jax.tree_util.tree_map(lambda x: x[s], params_seeds), group)
                        for s in range(S)])  # (S, L, n_fields)
        for j, f in enumerate(group_fields(jax.tree_util.tree_map(lambda x: x[0], params_seeds), group)):
            cond[f] = per[:, :, j].tolist()
        cond[f"{group}_max"] = per.max(axis=2).tolist()
    return cond


def estimator_errors(H, y, d_in: int) -> dict[str, float]:
    """Mean error of each :data:`REFERENCE_ESTIMATORS` on the prompts ``H``, ``y``."""
    return {name: float(np.asarray(icl_error(predict_batch(name, H), y, d_in), dtype=np.float64).mean())
            for name in REFERENCE_ESTIMATORS}


# ----------------------------------------------------------------------------- text reports


def _iv(d: dict) -> str:
    """``mean [low, high]``, or ``mean (one seed)`` when there is no interval."""
    mean, low, high = (float(d[k]) for k in ("mean", "low", "high"))
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]" if np.isfinite(low) and np.isfinite(high) else f"{mean:+.2f} (one seed)"


def _largest_gain(g: dict, rates) -> str:
    """The best relative error change over every (seed, layer, ξ that changes the weights) cell."""
    err = np.asarray(g["error"], dtype=np.float64)
    rel = err / np.asarray(g["unpruned_error"], dtype=np.float64)[:, None, None] - 1
    rel[..., ~np.asarray(g["changes_weights"])] = np.inf
    s, t, i = np.unravel_index(np.argmin(rel), rel.shape)
    return f"{100 * rel[s, t, i]:+.3f}% (seed {s}, layer {t + 1}, ξ = {rates[i]:g})"


def statements(results: dict) -> list[str]:
    """One paragraph per (model, group) and one per model's condition numbers."""
    out = []
    for m in results["models"]:
        for group, g in m["groups"].items():
            if "steadiness" not in g:
                out.append(f"{m['model']}/{group}: {g.get('verdict') or g.get('nonfinite')}")
                continue
            w = g["depth_trend"]["worst"]
            sp, sl, ds = (_iv(w[k]) for k in ("spearman", "slope", "deep_minus_shallow"))
            out.append(
                f"{m['model']}/{group} ({m['n_seeds']} seeds, L = {m['n_layers']}): {g['verdict']}. Worst log10 error "
                f"ratio over ξ vs depth: rank correlation {sp}; slope {sl} per layer; deepest − shallowest {ds}, "
                f"lower in {w['seeds_deep_below_shallow']}/{w['n_seeds']} seeds. Rates that improve on the unpruned "
                f"model: {100 * np.mean(g['steadiness']['frac_improve']['per_seed']):.0f}% of (seed, layer, ξ > 0) "
                f"cells; the largest improvement {_largest_gain(g, results['rates'])}")
        cond = m["condition_numbers"]
        if "mlp_max" in cond:
            a, b = np.asarray(cond["attn_max"]), np.asarray(cond["mlp_max"])
            out.append(f"{m['model']}: condition number attn/mlp, geometric mean over seeds and layers: "
                       f"{10 ** np.mean(np.log10(a)):.3g} vs {10 ** np.mean(np.log10(b)):.3g}; attn > mlp in "
                       f"{int(np.sum(a > b))}/{a.size} (seed, layer) cells")
    return out


def _fmt_interval(st: dict, t: int) -> str:
    low, high = float(st["low"][t]), float(st["high"][t])  # JSON stores NaN as "nan"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{st['mean'][t]:+7.3f} [  one seed  ]"
    return f"{st['mean'][t]:+7.3f} [{low:+6.3f},{high:+6.3f}]"


def table(results: dict) -> str:
    """Per-layer steadiness, mean [95 % t interval] over seeds."""
    lines = []
    for m in results["models"]:
        for group, g in m["groups"].items():
            refs = ", ".join(f"{k} {v:.4f}" for k, v in m.get("estimators", {}).items())
            lines.append(f"\n{m['model']} / {group}: unpruned error per seed {np.round(g['unpruned_error'], 4).tolist()}"
                         f" (same prompts: {refs})")
            if "steadiness" not in g:
                lines.append(f"  {g.get('nonfinite') or g.get('verdict')}")
                continue
            lines.append("  layer   worst log10(err/err0)      spread                  best                    frac ξ improving")
            for t in range(m["n_layers"]):
                lines.append(f"  {t + 1:5d}   " + "   ".join(_fmt_interval(g["steadiness"][k], t) for k in STATS))
            lines.append(f"  verdict: {g['verdict']}")
    return "\n".join(lines)
