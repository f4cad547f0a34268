"""Algorithm 1 (SPEC §8) on trained in-context regressors, over seeds, with the paper's table.

For each model (the linear-attention stack; the GPT-2-style softmax transformer), each module
group (``attn``; the softmax model also ``mlp``) and each seed of the model's run:

1. condition number of every matrix of the group in every layer, per layer the max;
2. the ``top_k`` worst-conditioned layers, the deepest of them selected;
3. each candidate ``ξ`` in ascending order clips that layer's group from the original weights,
   scored by the mean ICL error ``(ŷ − y)²/d`` on fresh validation prompts; the best ``ξ*`` is
   kept, ties to the smaller ``ξ``;
4. the test error before and after at ``ξ*`` on fresh test prompts (a key branch disjoint from the
   validation one), the validation curve, ``r`` per ``ξ``.

(:func:`lintrans.search.clip_search`.) The paper ran it once (one seed) on GPT-J / LLaMA; here
each training seed gets its own validation and test prompts, and the table reports the mean ±
standard error over seeds of ``ξ*``, the test errors and their paired change, with the selected
layer of every seed.

Outputs: ``results/clip_search.json`` (config, provenance, every seed's full report),
``figures/clip_search.png`` (validation curves relative to the unpruned model, ``ξ*`` marked; test
error before → after per seed), and the table on stdout.

Models: ``--checkpoint RUN_DIR`` (runs of ``experiments/train_icl.py``), or the small default
runs of :data:`lintrans.trained.DEFAULT_RUNS`, trained into ``--runs-dir`` the first time and
reused after. Run from the repository root: ``python experiments/clip_search.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from pathlib import Path

import jax
import numpy as np

from lintrans.experiment import REPO_ROOT, ArgParser, Progress, cli, load_results, save_figure, save_results, positive_int, rate_list
from lintrans.pruning import PAPER_RATES, RANK_RULES
from lintrans.search import GROUPS, check_rates, check_top_k, clip_search, group_fields
from lintrans.seedstats import seed_interval
from lintrans.trained import MODEL_GROUPS, add_default_run_flags, experiment_models, parse_models

NAME = "clip_search"


@dataclasses.dataclass(frozen=True)
class Config:
    checkpoints: tuple[str, ...] = ()  # run directories; empty → the default runs
    models: tuple[str, ...] = ("linear", "softmax")  # default runs used when no checkpoint is given
    model: str | None = None  # restrict to one model; a --checkpoint of another model is an error
    runs_dir: str = "runs"  # where default runs are trained / found (relative to the repo root)
    linear_steps: int | None = None  # None: DEFAULT_RUNS["linear"]["steps"]
    softmax_steps: int | None = None  # None: DEFAULT_RUNS["softmax"]["steps"]
    train_seeds: int | None = None  # None: the default runs' seeds
    layers: int | None = None  # None: 4 for both default runs
    softmax_width: int | None = None  # None: 32
    groups: tuple[str, ...] = ()  # empty → every group the model has (attn; softmax also mlp)
    rates: tuple[float, ...] = PAPER_RATES  # the paper's candidates (SPEC §6)
    top_k: int = 3  # the paper's default (SPEC §8)
    shots: int | None = None  # demonstrations per validation/test prompt; None → the run's N
    n_val: int = 512  # validation prompts per seed (fresh)
    n_test: int = 2048  # test prompts per seed (fresh, disjoint key branch)
    rule: str = "exact"  # rank rule of SPEC §6
    seed: int = 0  # prompts of training seed i: fold_in(fold_in(PRNGKey(seed), 11), i), split val/test


def _summary(reports: list[dict]) -> dict:
    """Mean ± s.e. over seeds of the quantities of the paper's table."""
    out = {"n_seeds": len(reports)}
    for key in ("xi_star", "test_before", "test_after", "test_delta", "layer"):
        v = np.array([r[key] for r in reports], dtype=np.float64)
        iv = seed_interval(v)
        out[key] = {"mean": float(iv.mean), "se": float(iv.se), "low": float(iv.low), "high": float(iv.high),
                    "per_seed": v.tolist()}
    rel = np.array([r["test_after"] / r["test_before"] - 1 for r in reports])
    iv = seed_interval(rel)
    out["relative_change"] = {"mean": float(iv.mean), "se": float(iv.se), "low": float(iv.low), "high": float(iv.high),
                              "per_seed": rel.tolist()}
    out["layers_selected"] = dict(sorted(Counter(int(r["layer"]) for r in reports).items()))
    out["ranks_star"] = [r["ranks_star"] for r in reports]
    out["improved_seeds"] = int(sum(r["test_after"] < r["test_before"] for r in reports))
    out["significant_improvement_seeds"] = int(
        sum(r["test_delta"] + 1.96 * r["test_delta_se"] < 0 for r in reports))  # paired, over test prompts
    return out


def run(config: Config, quiet: bool = False) -> dict:
    rates = check_rates(config.rates)
    top_k = check_top_k(config.top_k)
    if config.rule not in RANK_RULES:
        raise ValueError(f"rule must be one of {RANK_RULES}, got {config.rule!r}")
    for g in config.groups:
        if g not in GROUPS:
            raise ValueError(f"group must be one of {sorted(GROUPS)}, got {g!r}")
    models = experiment_models(config, model_filter=config.model, quiet=quiet)
    plan = []
    for m in models:
        groups = config.groups or m.groups
        for g in groups:
            group_fields(m.seed_params(0), g)  # a group the model lacks (mlp on linear attention): ValueError
        sampler = m.sampler(config.shots)
        plan += [(m, g, sampler) for g in groups]
    progress = Progress(sum(m.n_seeds for m, _, _ in plan), NAME, quiet=quiet)
    root = jax.random.fold_in(jax.random.PRNGKey(config.seed), 11)
    rows = []
    for m, group, sampler in plan:
        reports = []
        for i in range(m.n_seeds):
            res = clip_search(jax.random.fold_in(root, i), m.seed_params(i), m.score_fn, group, rates, top_k,
                              sample_fn=sampler, n_val=config.n_val, n_test=config.n_test, rule=config.rule)
            reports.append({"seed_index": i, **res.to_dict()})
            progress.update(1, f"{m.model}/{group} seed {i}: layer {res.layer}, ξ* = {res.xi_star:g}")
        rows.append({"model": m.model, "group": group, "run": m.describe(),
                     "shots": sampler.n_demos or m.config.n_demos, "summary": _summary(reports), "per_seed": reports})
    return {"rates": list(rates), "top_k": top_k, "rows": rows}


def table(results: dict) -> str:
    """The paper's table: model, group, selected layer, ξ*, r, test error before → after."""
    head = (f"{'model':8s} {'group':5s} {'layer (per seed)':18s} {'ξ* mean ± se':16s} {'r* (per seed)':22s} "
            f"{'test error before → after (mean ± se)':40s} {'change':>16s} improved")
    lines = [head, "-" * len(head)]
    for row in results["rows"]:
        s = row["summary"]
        layers = ",".join(str(int(v)) for v in s["layer"]["per_seed"])
        ranks = ",".join("/".join(str(x) for x in r) for r in s["ranks_star"])
        tb, ta, rel = s["test_before"], s["test_after"], s["relative_change"]
        if s["n_seeds"] < 2:  # one seed: no standard error over seeds
            lines.append(
                f"{row['model']:8s} {row['group']:5s} {layers:18s} {s['xi_star']['mean']:.3f} (1 seed)      "
                f"{ranks:22s} {tb['mean']:.4f} → {ta['mean']:.4f} (1 seed)                  "
                f"{100 * rel['mean']:+6.2f} %          {s['improved_seeds']}/{s['n_seeds']}"
            )
            continue
        lines.append(
            f"{row['model']:8s} {row['group']:5s} {layers:18s} {s['xi_star']['mean']:.3f} ± {s['xi_star']['se']:.3f}    "
            f"{ranks:22s} {tb['mean']:.4f} ± {tb['se']:.4f} → {ta['mean']:.4f} ± {ta['se']:.4f}        "
            f"{100 * rel['mean']:+6.2f} ± {100 * rel['se']:4.2f} %  {s['improved_seeds']}/{s['n_seeds']}"
        )
    lines.append("(mean ± standard error over training seeds; each seed has its own fresh validation and test "
                 "prompts; r*: ranks kept per matrix of the group; improved: seeds whose test error fell)")
    return "\n".join(lines)


def plot(results: dict):
    import matplotlib.pyplot as plt

    rows = results["rows"]
    rates = results["rates"]
    x = np.arange(len(rates))
    fig, axes = plt.subplots(2, len(rows), figsize=(4.5 * len(rows), 7.0), squeeze=False)
    for j, row in enumerate(rows):
        ax, bx = axes[0, j], axes[1, j]
        colours = plt.cm.tab10(np.arange(len(row["per_seed"])) % 10)
        plotted = []
        for rep, c in zip(row["per_seed"], colours):
            curve = np.asarray(rep["val_curve"], dtype=np.float64) / rep["val_before"]
            plotted.append(curve)
            ax.plot(x, curve, "o-", color=c, ms=3, lw=1.2, label=f"seed {rep['seed_index']} (layer {rep['layer']})")
            ax.plot(x[rep["index"]], curve[rep["index"]], "*", color=c, ms=13, mec="k", mew=0.6)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        _ratio_yscale(ax, np.concatenate(plotted))
        ranks = np.asarray(row["per_seed"][0]["ranks"])
        ax.set_xticks(x, [f"{xi:g}\nr={ranks[i].min()}" for i, xi in enumerate(rates)], fontsize=7)
        ax.set_xlabel("clipping rate ξ")
        ax.set_title(f"{row['model']} / {row['group']}: validation (★ = ξ*)", fontsize=10)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3, which="both")
        s = row["summary"]
        for k, (rep, c) in enumerate(zip(row["per_seed"], colours)):
            rel = 100 * rep["test_delta"] / rep["test_before"]
            half = 100 * 1.96 * rep["test_delta_se"] / rep["test_before"]
            bx.errorbar([k], [rel], yerr=[half], fmt="o", color=c, ms=5, capsize=3)
        n = len(row["per_seed"])
        rc = {k: float(rc_v) for k, rc_v in s["relative_change"].items() if k != "per_seed"}  # JSON "nan" → nan
        bx.errorbar([n], [100 * rc["mean"]], yerr=[0 if not np.isfinite(rc["se"]) else 100 * rc["se"]], fmt="D",
                    color="k", ms=6, capsize=4)
        bx.axhline(0.0, color="k", lw=0.8, ls="--")
        bx.set_xticks(list(range(n + 1)), [f"seed {r['seed_index']}\nlayer {r['layer']}\nξ*={r['xi_star']:g}"
                                            for r in row["per_seed"]] + ["mean\n± s.e."], fontsize=7)
        bx.set_title(f"test error change at ξ*: {100 * rc['mean']:+.2f} ± {100 * rc['se']:.2f} % (mean ± s.e.)",
                     fontsize=9)
        bx.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation error / unpruned")
    axes[1, 0].set_ylabel("test error after/before − 1 (%)\n(per seed: paired 95% CI over prompts)")
    fig.suptitle(f"Algorithm 1 (top_k = {results['top_k']}): per seed, validation curve and test error before → after",
                 fontsize=11)
    fig.tight_layout()
    return fig


def _ratio_yscale(ax, values):
    """Log scale when the plotted ratios span more than 3x, plain numbers on a linear scale otherwise."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 3:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def build_parser() -> ArgParser:
    d = Config()
    p = ArgParser(prog="python experiments/clip_search.py", description=__doc__.split("\n\n")[0],
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_default_run_flags(p, d)
    p.add_argument("--model", choices=tuple(MODEL_GROUPS), help="only this model (a --checkpoint of another model is an error)")
    p.add_argument("--group", action="append", choices=sorted(GROUPS), default=[],
                   help="module group (repeatable); default every group the model has: attn, and mlp for softmax")
    p.add_argument("--rates", type=rate_list, default=d.rates, help="candidate ξ, comma-separated (default the paper's)")
    p.add_argument("--top-k", type=positive_int, default=d.top_k, help=f"worst-conditioned layers competing (default {d.top_k})")
    p.add_argument("--shots", type=positive_int, help="demonstrations per validation/test prompt (default: the run's N)")
    p.add_argument("--n-val", type=positive_int, default=d.n_val, help=f"validation prompts per seed (default {d.n_val})")
    p.add_argument("--n-test", type=positive_int, default=d.n_test, help=f"test prompts per seed (default {d.n_test})")
    p.add_argument("--rule", choices=RANK_RULES, default=d.rule)
    p.add_argument("--seed", type=int, default=d.seed, help="key of the validation and test prompts")
    p.add_argument("--json", metavar="PATH", help=f"results file (default results/{NAME}.json)")
    p.add_argument("--figures-dir", metavar="DIR", help="write clip_search.png here instead of figures/")
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
        config = Config(checkpoints=tuple(args.checkpoint), models=models, model=args.model, runs_dir=args.runs_dir,
                        linear_steps=args.linear_steps, softmax_steps=args.softmax_steps, train_seeds=args.train_seeds,
                        layers=args.layers, softmax_width=args.softmax_width, groups=tuple(dict.fromkeys(args.group)),
                        rates=args.rates, top_k=args.top_k, shots=args.shots, n_val=args.n_val, n_test=args.n_test,
                        rule=args.rule, seed=args.seed)
        results = run(config, quiet=args.quiet)
        path = save_results(NAME, config, results, seed=config.seed, json_path=json_path)
        print(table(results))
        print(f"\nresults: {path}")
    try:
        fig = plot(results)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{json_path}: not a {NAME} results file ({type(e).__name__}: {e})") from None
    out = save_figure(fig, NAME, args.figures_dir)
    if not args.quiet:
        print(f"figure: {out}")
    return 0


if __name__ == "__main__":
    cli(main)
