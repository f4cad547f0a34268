"""Algorithm 1 (SPEC §8) over the training seeds of a run: per-seed searches, the paper's table.

The paper ran Algorithm 1 once (one seed) on GPT-J / LLaMA. Here each training seed ``i`` of a run
gets its own fresh validation and test prompts (key ``fold_in(key, i)``, split into the two
branches by :func:`lintrans.search.clip_search`), and :func:`summarize` reports over seeds the
quantities of the paper's table — ``ξ*``, the test error before and after, their paired change —
each as mean, standard error and 95 % Student-t interval (:func:`lintrans.stats.interval`).

The relative test change ``after/before − 1`` of a seed has two sources of spread: the seed (the
model) and its finite test set. With few seeds the t interval over seeds can be far narrower than
the prompt noise every seed carries (three seeds agreeing to 1e-5 by chance while each seed's own
interval over prompts crosses 0). So the interval the table and the figure show for the mean
change is the wider of the seed t interval and the prompt-noise interval of the mean,
``z · √(Σ_i se_i²) / S`` (``se_i``: seed ``i``'s paired standard error over its prompts, relative to
its error before), and a verdict ("clipping lowers the test error") is drawn only when that
interval excludes 0 (:func:`lintrans.stats.verdict`); ``resolved_seeds`` counts the seeds whose own
prompt interval excludes 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import jax
import numpy as np

from lintrans import stats
from lintrans.search import clip_search

__all__ = ["search_seeds", "summarize", "table"]


def search_seeds(key: jax.Array, params_seeds, score_fn, group: str, rates, top_k: int, *, sample_fn, n_val: int,
                 n_test: int, rule: str = "exact", on_seed: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Algorithm 1 on each seed of ``params_seeds`` (leading seed axis): a JSON-ready report per seed.

    ``on_seed(i, report)`` is called after each seed (progress)."""
    n = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(params_seeds)}
    if len(n) != 1:
        raise ValueError(f"params must share one leading seed axis, got lengths {sorted(n)}")
    reports = []
    for i in range(n.pop()):
        params = jax.tree_util.tree_map(lambda x: x[i], params_seeds)
        res = clip_search(jax.random.fold_in(key, i), params, score_fn, group, rates, top_k, sample_fn=sample_fn,
                          n_val=n_val, n_test=n_test, rule=rule)
        reports.append({"seed_index": i, **res.to_dict()})
        if on_seed is not None:
            on_seed(i, reports[-1])
    return reports


def _seed_stats(v) -> dict:
    iv = stats.interval(np.asarray(v, dtype=np.float64))
    return {"mean": float(iv.mean), "se": float(iv.se), "low": float(iv.low), "high": float(iv.high),
            "per_seed": np.asarray(v, dtype=np.float64).tolist()}


def summarize(reports: list[dict], level: float = 0.95) -> dict:
    """Mean, s.e. and t interval over seeds of the paper's table quantities, and the relative
    change with its seed-or-prompt interval and verdict (module docstring)."""
    out = {"n_seeds": len(reports)}
    for key in ("xi_star", "test_before", "test_after", "test_delta", "layer"):
        out[key] = _seed_stats([r[key] for r in reports])
    rel = np.array([r["test_after"] / r["test_before"] - 1 for r in reports])
    rel_se = np.array([r["test_delta_se"] / r["test_before"] for r in reports])  # per seed, over its prompts
    z = stats.z_quantile(0.5 + level / 2)
    change = _seed_stats(rel)
    seed_half = change["high"] - change["mean"]
    prompt_half = float(z * np.sqrt(np.sum(rel_se**2)) / len(reports))
    wider_seed = np.isfinite(seed_half) and seed_half >= prompt_half
    half = seed_half if wider_seed else prompt_half
    change.update(prompt_half_width=prompt_half, seed_half_width=seed_half, half_width=half,
                  interval_basis="seeds (t)" if wider_seed else "prompt noise",
                  low_shown=change["mean"] - half, high_shown=change["mean"] + half)
    iv = stats.Interval(np.float64(change["mean"]), np.float64(change["se"]), np.float64(half), len(reports), level)
    change["verdict"] = stats.verdict(iv, what="the interval of the mean relative test change",
                                      positive="clipping at ξ* raises the test error",
                                      negative="clipping at ξ* lowers the test error")
    out["relative_change"] = change
    out["layers_selected"] = dict(sorted(Counter(int(r["layer"]) for r in reports).items()))
    out["ranks_star"] = [r["ranks_star"] for r in reports]
    out["improved_seeds"] = int(sum(r["test_after"] < r["test_before"] for r in reports))
    out["significant_improvement_seeds"] = int(sum(d + z * s < 0 for d, s in zip(rel, rel_se)))
    out["resolved_seeds"] = int(sum(abs(d) > z * s for d, s in zip(rel, rel_se)))
    return out


def _pm(d: dict, digits: int = 4) -> str:
    se = float(d["se"])
    return f"{d['mean']:.{digits}f}" + (f" ± {se:.{digits}f}" if np.isfinite(se) else " (1 seed)")


def table(results: dict) -> str:
    """The paper's table: model, group, selected layer, ξ*, r, test error before → after, change."""
    head = (f"{'model':8s} {'group':5s} {'layer (per seed)':17s} {'ξ* mean ± se':15s} {'r* (per seed)':20s} "
            f"{'test error before → after (mean ± se)':38s} {'change, 95% interval':28s} resolved improved")
    lines = [head, "-" * len(head)]
    for row in results["rows"]:
        s = row["summary"]
        layers = ",".join(str(int(v)) for v in s["layer"]["per_seed"])
        ranks = ",".join("/".join(str(x) for x in r) for r in s["ranks_star"])
        c = s["relative_change"]
        change = f"{100 * c['mean']:+.2f} % [{100 * c['low_shown']:+.2f}, {100 * c['high_shown']:+.2f}]"
        lines.append(f"{row['model']:8s} {row['group']:5s} {layers:17s} {_pm(s['xi_star'], 3):15s} {ranks:20s} "
                     f"{_pm(s['test_before']) + ' → ' + _pm(s['test_after']):38s} {change:28s} "
                     f"{s['resolved_seeds']}/{s['n_seeds']:<6d} {s['improved_seeds']}/{s['n_seeds']}")
    lines.append("(mean ± standard error over training seeds, each with its own fresh validation and test prompts; "
                 "r*: ranks kept per matrix of the group; change: after/before − 1 with the wider of the seeds' t "
                 "interval and the test prompts' noise; resolved: seeds whose own prompt interval excludes 0; "
                 "improved: seeds whose test error fell)")
    for row in results["rows"]:
        lines.append(f"{row['model']}/{row['group']}: {row['summary']['relative_change']['verdict']}")
    return "\n".join(lines)
