"""The pruning phenomenon in the simulator: clip one layer's group at each ξ, measure ICL error.

The paper's Figure 1 (GPT-J / LLaMA): SVD-clipping the weights of ONE layer can improve in-context
accuracy, and deep layers do so more steadily than shallow ones; its Figure 3: attention matrices
are far worse conditioned than MLP ones, and more so in the last layers. Here, for each trained
model (the linear-attention stack; the GPT-2-style softmax transformer), each seed of its run,
each layer ``t``, each group (``attn`` = {W_K, W_Q, W_V}; the softmax model also ``mlp`` =
{W_in, W_out}) and each of the paper's rates ``ξ`` (``r = ⌊min(m, n)(1 − ξ)⌋`` kept, SPEC §6), the
mean ICL test error ``(ŷ − y)²/d`` on one fixed set of fresh prompts, relative to the same seed's
unpruned model on the same prompts.

Steadiness of layer ``t`` is measured on ``ℓ(ξ) = log10(error(ξ) / error(unpruned))`` over the
rates that change the weights (``ξ > 0``; log ratios, so a seed whose error is small does not
dominate): ``worst = max ℓ`` (the worst degradation), ``spread = max ℓ − min ℓ``, ``best = min ℓ``
and ``frac_improve`` (the fraction of rates with a lower error than unpruned). Each gets a 95 %
Student-t interval over seeds. The depth trend of a statistic is measured per seed three ways —
Spearman's rank correlation with ``t``, the least-squares slope against ``t``, the difference
deepest − shallowest — each with a t interval over seeds. "Deep layers are steadier" is stated only
when the interval of the rank correlation of ``worst`` with depth lies below 0; the rank
correlation is the primary measure because the log ratios are heavy-tailed (clipping a shallow
layer of the linear stack can raise its error by ten decades, which swamps a slope), and the
slope and difference are reported beside it.

Outputs: ``results/pruning_phenomenon.json`` (+ ``.npz`` with the (seed, layer, ξ) error arrays),
``figures/pruning_phenomenon.png`` (one panel per model and group: error ratio against ξ, one
line per layer, shallow → deep in colour order) and ``figures/condition_numbers.png`` (condition
number per layer: group max and each matrix, attention against MLP).

Models: ``--checkpoint RUN_DIR`` (repeatable; runs of ``experiments/train_icl.py``), or, with
none, the small default runs of :data:`lintrans.trained.DEFAULT_RUNS`, trained into
``--runs-dir`` the first time and reused after. Run from the repository root:
``python experiments/pruning_phenomenon.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.estimators import icl_error, predict_batch
from lintrans.experiment import REPO_ROOT, ArgParser, Progress, cli, load_results, save_figure, save_results, positive_int, rate_list
from lintrans.pruning import PAPER_RATES, RANK_RULES
from lintrans.search import check_rates, group_condition_numbers, group_fields, group_ranks, sweep_errors
from lintrans.seedstats import seed_interval
from lintrans.trained import MODEL_GROUPS, add_default_run_flags, experiment_models, parse_models

NAME = "pruning_phenomenon"
FIG_PHENOMENON = "pruning_phenomenon"
FIG_CONDITION = "condition_numbers"
STATS = ("worst", "spread", "best", "frac_improve")
REFERENCE_ESTIMATORS = ("zero", "averaging", "gd_1step_opt", "least_squares")


@dataclasses.dataclass(frozen=True)
class Config:
    checkpoints: tuple[str, ...] = ()  # run directories; empty → the default runs below
    models: tuple[str, ...] = ("linear", "softmax")  # default runs used when no checkpoint is given
    runs_dir: str = "runs"  # where default runs are trained / found (relative to the repo root)
    linear_steps: int | None = None  # None: DEFAULT_RUNS["linear"]["steps"] (2000)
    softmax_steps: int | None = None  # None: DEFAULT_RUNS["softmax"]["steps"]
    train_seeds: int | None = None  # None: the default runs' seeds (4 linear, 3 softmax)
    layers: int | None = None  # None: 4 for both default runs
    softmax_width: int | None = None  # None: 32
    rates: tuple[float, ...] = PAPER_RATES  # the paper's candidates (SPEC §6)
    rule: str = "exact"  # rank rule of SPEC §6
    n_test: int = 2048  # fresh test prompts, shared by every seed, layer and ξ (paired comparisons)
    seed: int = 0  # key of the test prompts: fold_in(PRNGKey(seed), 7)
    chunk: int = 512  # prompts per vmapped chunk (memory bound of the softmax sweep)


# ----------------------------------------------------------------------------- computation


@partial(jax.jit, static_argnames=("score_fn", "fields", "chunk"))
def _seed_sweep(params_seeds, score_fn, fields, ranks, H, y, chunk):
    """(S, L, U, B) per-prompt errors: seeds one after another, each a full (layer, rank) sweep."""
    return jax.lax.map(lambda p: sweep_errors(p, score_fn, fields, ranks, H, y, chunk), params_seeds)


def load_models(config: Config, quiet: bool = False):
    return experiment_models(config, quiet=quiet)


def steadiness(log_ratio: np.ndarray, changed: np.ndarray) -> dict[str, np.ndarray]:
    """Per (seed, layer) statistics over the rates that change the weights.

    ``log_ratio``: ``(S, L, R)`` = log10(error / unpruned error); ``changed``: ``(R,)`` bool.
    Returns ``{stat: (S, L)}``.
    """
    x = log_ratio[..., changed]
    return {
        "worst": x.max(axis=-1),
        "spread": x.max(axis=-1) - x.min(axis=-1),
        "best": x.min(axis=-1),
        "frac_improve": (x < 0).mean(axis=-1),
    }


def _estimator_errors(H, y, d_in: int) -> dict[str, float]:
    """Reference errors on the same test prompts: is the trained model an in-context learner at all?"""
    out = {}
    for name in REFERENCE_ESTIMATORS:
        err = np.asarray(icl_error(predict_batch(name, H), y, d_in), dtype=np.float64)
        out[name] = float(err.mean())
    return out


def _interval(v: np.ndarray, fraction: bool) -> dict:
    d = seed_interval(v).to_dict()
    if fraction:  # a fraction's t interval is clipped to [0, 1]
        d["low"] = np.clip(d["low"], 0, 1).tolist()
        d["high"] = np.clip(d["high"], 0, 1).tolist()
    return d


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a vector, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_with_depth(stat: np.ndarray) -> np.ndarray:
    """Per seed, Spearman's rank correlation of ``stat (S, L)`` with the layer index; ``(S,)``.

    0 for a seed whose statistic is constant over layers (no ordering)."""
    S, L = stat.shape
    depth = _ranks(np.arange(L, dtype=np.float64))
    out = np.zeros(S)
    for s in range(S):
        r = _ranks(stat[s])
        if np.ptp(r) > 0:
            out[s] = np.corrcoef(depth, r)[0, 1]
    return out


def depth_trend(stat: np.ndarray) -> dict[str, dict]:
    """``stat``: ``(S, L)`` → t intervals over seeds of three per-seed trend measures:
    Spearman's rank correlation with the layer index (robust to the heavy tail of log ratios),
    the least-squares slope against the layer index, and the deepest − shallowest difference;
    plus the number of seeds where the deepest layer's value is below the shallowest one's."""
    S, L = stat.shape
    layers = np.arange(1, L + 1, dtype=np.float64)
    slopes = np.polyfit(layers, stat.T, 1)[0] if L > 1 else np.zeros(S)
    rho = seed_interval(spearman_with_depth(stat)).to_dict()
    rho["low"], rho["high"] = max(rho["low"], -1.0), min(rho["high"], 1.0)  # a correlation's interval, clipped
    return {"spearman": rho,
            "slope": seed_interval(slopes).to_dict(),
            "deep_minus_shallow": seed_interval(stat[:, -1] - stat[:, 0]).to_dict(),
            "seeds_deep_below_shallow": int(np.sum(stat[:, -1] < stat[:, 0])), "n_seeds": int(S)}


def verdict(trend: dict) -> str:
    """Plain statement from the depth trend of the worst-case log error ratio (Spearman, t interval)."""
    r = trend["spearman"]
    if r["n"] < 2:
        return "undetermined (one seed: no interval)"
    if r["high"] < 0:
        return ("deep layers are steadier (the worst-case degradation falls with depth: 95% t interval of the "
                "per-seed rank correlation below 0)")
    if r["low"] > 0:
        return ("shallow layers are steadier (the worst-case degradation rises with depth: 95% t interval of the "
                "per-seed rank correlation above 0)")
    return "no clear depth trend (the 95% t interval of the rank correlation of the worst case with depth includes 0)"


def run(config: Config, quiet: bool = False) -> tuple[dict, dict]:
    """Sweep every model, group, seed, layer and ξ. Returns ``(results, arrays)``."""
    rates = check_rates(config.rates)
    if config.rule not in RANK_RULES:
        raise ValueError(f"rule must be one of {RANK_RULES}, got {config.rule!r}")
    models = load_models(config, quiet)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
    n_groups = sum(len(m.groups) for m in models)
    progress = Progress(n_groups, NAME, quiet=quiet)
    results = {"rates": list(rates), "n_test": config.n_test, "models": []}
    arrays = {}
    for model in models:
        H, y = model.sampler()(jax.random.fold_in(key, 0), config.n_test)  # one test set per model: paired comparisons
        p0 = model.seed_params(0)
        entry = {"model": model.model, "run": model.describe(), "n_seeds": model.n_seeds,
                 "n_layers": model.config.n_layers, "groups": {}, "condition_numbers": {},
                 "estimators": _estimator_errors(H, y, model.config.d_in)}
        for group in model.groups:
            t0 = time.perf_counter()
            fields = group_fields(p0, group)
            ranks = group_ranks(p0, fields, rates, config.rule)
            full = np.array([min(getattr(p0, f).shape[1:]) for f in fields], dtype=np.int32)
            unique, inverse = np.unique(np.vstack([full[None], ranks]), axis=0, return_inverse=True)
            inverse = np.asarray(inverse).reshape(-1)
            errs = np.asarray(_seed_sweep(model.params, model.score_fn, fields, jnp.asarray(unique), H, y, config.chunk),
                              dtype=np.float64)  # (S, L, U, B)
            errs = errs[:, :, inverse]  # (S, L, 1 + R, B)
            mean = errs.mean(axis=-1)
            se = errs.std(axis=-1, ddof=1) / np.sqrt(errs.shape[-1])
            unpruned = mean[:, 0, 0]  # (S,): full ranks, identical at every layer
            err = mean[:, :, 1:]  # (S, L, R)
            bad = ~np.isfinite(err)
            changed = np.any(ranks < full[None], axis=1)
            g = {"fields": list(fields), "ranks": ranks.tolist(), "full_ranks": full.tolist(),
                 "changes_weights": changed.tolist(), "error": err.tolist(), "error_se_prompts": se[:, :, 1:].tolist(),
                 "unpruned_error": unpruned.tolist(), "seconds": None}
            if bad.any() or not np.all(np.isfinite(unpruned)) or np.any(unpruned <= 0):
                where = np.argwhere(bad)[0].tolist() if bad.any() else "unpruned"
                g["nonfinite"] = f"non-finite error at (seed, layer-1, rate index) {where}; statistics not computed"
            elif changed.any():
                log_ratio = np.log10(err / unpruned[:, None, None])
                stats = steadiness(log_ratio, changed)
                g["log10_ratio"] = seed_interval(log_ratio).to_dict()  # (L, R)
                g["steadiness"] = {k: {"per_seed": v.tolist(), **_interval(v, k == "frac_improve")} for k, v in stats.items()}
                g["depth_trend"] = {k: depth_trend(v) for k, v in stats.items()}
                g["verdict"] = verdict(g["depth_trend"]["worst"])
            else:
                g["nonfinite"] = None
                g["verdict"] = "no rate changes the weights (every r = min(m, n)); nothing to compare"
            g["seconds"] = time.perf_counter() - t0
            entry["groups"][group] = g
            arrays[f"{model.model}_{group}_errors"] = err
            progress.update(1, f"{model.model}/{group}")
        cond = {}
        for group in MODEL_GROUPS[model.model]:
            per_field = np.stack([group_condition_numbers(model.seed_params(s), group) for s in range(model.n_seeds)])
            for j, f in enumerate(group_fields(p0, group)):
                cond[f] = per_field[:, :, j].tolist()  # (S, L)
            cond[f"{group}_max"] = per_field.max(axis=2).tolist()
        entry["condition_numbers"] = cond
        results["models"].append(entry)
    results["statements"] = statements(results)
    return results, arrays


def statements(results: dict) -> list[str]:
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
                f"lower in {w['seeds_deep_below_shallow']}/"
                f"{w['n_seeds']} seeds. Rates that improve on the unpruned model: "
                f"{100 * np.mean(g['steadiness']['frac_improve']['per_seed']):.0f}% of (seed, layer, ξ > 0) cells; "
                f"the largest improvement {_largest_gain(g, results['rates'])}"
            )
        cond = m["condition_numbers"]
        if "mlp_max" in cond:
            a, b = np.asarray(cond["attn_max"]), np.asarray(cond["mlp_max"])
            out.append(f"{m['model']}: condition number attn/mlp, geometric mean over seeds and layers: "
                       f"{10 ** np.mean(np.log10(a)):.3g} vs {10 ** np.mean(np.log10(b)):.3g}; attn > mlp in "
                       f"{int(np.sum(a > b))}/{a.size} (seed, layer) cells")
    return out


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
            st = g["steadiness"]
            for t in range(m["n_layers"]):
                cells = []
                for k in STATS:
                    cells.append(_fmt_interval(st[k], t))
                lines.append(f"  {t + 1:5d}   " + "   ".join(cells))
            lines.append(f"  verdict: {g['verdict']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def _panels(results):
    return [(m, group, g) for m in results["models"] for group, g in m["groups"].items()]


def plot(results: dict):
    """Figure 1 analogue: error ratio (pruned / unpruned) against ξ, one line per layer."""
    import matplotlib.pyplot as plt

    panels = _panels(results)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.9), squeeze=False)
    rates = results["rates"]
    x = np.arange(len(rates))
    for ax, (m, group, g) in zip(axes[0], panels):
        L = m["n_layers"]
        colours = plt.cm.viridis(np.linspace(0.0, 0.9, L))
        if "log10_ratio" in g:
            lr = g["log10_ratio"]
            mean, low, high = (np.asarray(lr[k], dtype=np.float64) for k in ("mean", "low", "high"))
            # the band is clipped to two decades beyond the means so one wild seed does not hide the lines
            lo_lim, hi_lim = mean.min() - 2, mean.max() + 2
            for t in range(L):
                ax.plot(x, 10 ** mean[t], "o-", color=colours[t], ms=3, lw=1.4, label=f"layer {t + 1}")
                if np.all(np.isfinite(low[t])):
                    ax.fill_between(x, 10 ** np.clip(low[t], lo_lim, hi_lim), 10 ** np.clip(high[t], lo_lim, hi_lim),
                                    color=colours[t], alpha=0.12, lw=0)
            _ratio_yscale(ax, 10 ** mean)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ranks = np.asarray(g["ranks"])
        full = g["full_ranks"]
        ax.set_xticks(x, [f"{xi:g}\nr={ranks[i].min()}" for i, xi in enumerate(rates)], fontsize=7)
        ax.set_xlabel(f"clipping rate ξ (rank kept of {min(full)})")
        ax.set_title(f"{m['model']} / {group}  ({m['n_seeds']} seeds, L = {L})", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("ICL test error / unpruned\n(geometric mean over seeds, 95% t band)")
    axes[0, -1].legend(fontsize=7, title="pruned layer (shallow → deep)", title_fontsize=7)
    fig.suptitle("Pruning one layer's group at rate ξ: ICL error relative to the unpruned model", fontsize=11)
    fig.tight_layout()
    return fig


def plot_condition(results: dict):
    """Figure 3 analogue: condition number per layer, attention vs MLP (group max and each matrix)."""
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.8 * len(models), 3.8), squeeze=False)
    styles = {"attn": ("tab:red", "o"), "mlp": ("tab:blue", "s")}
    for ax, m in zip(axes[0], models):
        cond = m["condition_numbers"]
        layers = np.arange(1, m["n_layers"] + 1)
        for group in MODEL_GROUPS[m["model"]]:
            colour, marker = styles[group]
            v = np.asarray(cond[f"{group}_max"])  # (S, L)
            gm = 10 ** np.mean(np.log10(v), axis=0)
            ax.plot(layers, gm, marker + "-", color=colour, lw=2, label=f"{group} (max over its matrices)")
            ax.fill_between(layers, v.min(axis=0), v.max(axis=0), color=colour, alpha=0.15, lw=0)
            for f, ls in zip(group_fields_from_results(m, group), (":", "--", "-.")):
                fv = np.asarray(cond[f])
                ax.plot(layers, 10 ** np.mean(np.log10(fv), axis=0), ls, color=colour, lw=1, alpha=0.8, label=f)
        ax.set_yscale("log")
        ax.set_xticks(layers)
        ax.set_xlabel("layer t")
        ax.set_title(f"{m['model']} ({m['n_seeds']} seeds; band: seed range)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="best", framealpha=0.7)
    axes[0, 0].set_ylabel("condition number σ_max/σ_min")
    fig.suptitle("Condition numbers of the trained weights by layer (thin lines: single matrices)", fontsize=11)
    fig.tight_layout()
    return fig


def _ratio_yscale(ax, values):
    """Log scale when the plotted ratios span more than 3x, plain numbers on a linear scale otherwise."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    values = np.asarray(values, dtype=np.float64)
    if values.min() > 0 and values.max() / values.min() > 3:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        pad = 0.1 * max(values.max() - values.min(), 1e-6)
        ax.set_ylim(values.min() - pad, values.max() + pad)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def group_fields_from_results(m: dict, group: str) -> list[str]:
    return m["groups"][group]["fields"] if group in m["groups"] else []


# ----------------------------------------------------------------------------- command line


def build_parser() -> ArgParser:
    d = Config()
    p = ArgParser(prog="python experiments/pruning_phenomenon.py", description=__doc__.split("\n\n")[0],
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_default_run_flags(p, d)
    p.add_argument("--rates", type=rate_list, default=d.rates, help="candidate ξ, comma-separated (default the paper's)")
    p.add_argument("--rule", choices=RANK_RULES, default=d.rule)
    p.add_argument("--n-test", type=positive_int, default=d.n_test, help=f"test prompts (default {d.n_test})")
    p.add_argument("--seed", type=int, default=d.seed, help="key of the test prompts")
    p.add_argument("--json", metavar="PATH", help=f"results file (default results/{NAME}.json)")
    p.add_argument("--figures-dir", metavar="DIR", help="write the two PNGs here instead of figures/")
    p.add_argument("--plot-only", action="store_true", help="re-plot from the saved results; compute nothing")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_path = Path(args.json) if args.json else REPO_ROOT / "results" / f"{NAME}.json"
    if args.plot_only:
        results = load_results(json_path)["results"]
    else:
        models = parse_models(args.models)
        config = Config(checkpoints=tuple(args.checkpoint), models=models, runs_dir=args.runs_dir,
                        linear_steps=args.linear_steps, softmax_steps=args.softmax_steps, train_seeds=args.train_seeds,
                        layers=args.layers, softmax_width=args.softmax_width, rates=args.rates, rule=args.rule,
                        n_test=args.n_test, seed=args.seed)
        results, arrays = run(config, quiet=args.quiet)
        path = save_results(NAME, config, results, seed=config.seed, arrays=arrays, json_path=json_path)
        print(table(results))
        print()
        for s in results["statements"]:
            print(s)
        print(f"\nresults: {path}")
    try:
        fig_a, fig_b = plot(results), plot_condition(results)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{json_path}: not a {NAME} results file ({type(e).__name__}: {e})") from None
    for fig, name in ((fig_a, FIG_PHENOMENON), (fig_b, FIG_CONDITION)):
        out = save_figure(fig, name, args.figures_dir)
        if not args.quiet:
            print(f"figure: {out}")
    return 0


if __name__ == "__main__":
    cli(main)
