"""Figures of the pruning experiments, from saved results (plain dicts) in the house style.

* :func:`phenomenon_figure` — the paper's Figure 1 analogue (``pruning_phenomenon`` results): ICL
  error of one layer's group clipped at ``ξ``, relative to the unpruned model, one series per
  layer (shallow → deep in colour order), geometric mean over seeds with its 95 % t interval as
  error bars; the layers are offset a little along ``x`` so that the bars of one rate stand side
  by side instead of on top of each other.
* :func:`condition_figure` — the Figure 3 analogue: condition number per layer, attention against
  MLP (the group max and each matrix), legend below the axes.
* :func:`clip_search_figure` — Algorithm 1 (``clip_search`` results): per seed the validation
  curve with ``ξ*`` marked, and the test change at ``ξ*`` with its paired interval over prompts.
* :func:`ratio_yscale` — the one rule for an axis of error ratios: log (ticked and labelled) when
  the plotted ratios span more than 3×, a plain linear axis otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from lintrans import plotting, stats

__all__ = ["ratio_yscale", "phenomenon_figure", "condition_figure", "clip_search_figure"]

#: Groups of each model in the figures, in panel order, with their colour and marker.
GROUP_STYLE = {"attn": ("tab:red", "o"), "mlp": ("tab:blue", "s")}


def _floats(values) -> np.ndarray:
    v = np.asarray(values, dtype=object).ravel()
    return np.array([float(x) for x in v], dtype=np.float64)  # JSON keeps NaN as "nan"


def ratio_yscale(ax, values) -> str:
    """Log scale when the finite positive ``values`` span more than 3×, else linear; returns it."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = _floats(values)
    v = v[np.isfinite(v)]
    if v.size and v.min() > 0 and v.max() / v.min() > 3:
        plotting.log_axis(ax, "y")
        if v.max() / v.min() < 300:  # under ~2.5 decades: label 1, 2, 5 of every decade, not only the decades
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        return "log"
    if v.size:
        pad = 0.1 * max(v.max() - v.min(), 1e-6 * max(abs(v.max()), 1.0))
        ax.set_ylim(v.min() - pad, v.max() + pad)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    return "linear"


def _rate_ticks(ax, rates, ranks, full=None) -> None:
    x = np.arange(len(rates))
    ax.set_xticks(x, [f"{xi:g}\nr={int(np.min(ranks[i]))}" for i, xi in enumerate(rates)])
    ax.set_xlabel("clipping rate ξ" + (f" (rank r kept of {min(full)})" if full is not None else ""))


def _grid(n_panels: int, panel_height: float = 2.9):
    ncols = min(n_panels, 2)
    nrows = math.ceil(n_panels / ncols)
    width = 4.0 * ncols if n_panels > 1 else 7.2  # one panel: room for the legend beside it
    fig, axes = plotting.figure(nrows, ncols, width=width, height=panel_height * nrows + 0.5, squeeze=False)
    flat = list(axes.ravel())
    return fig, flat[:n_panels], flat[n_panels:]


def _layer_colours(L: int):
    import matplotlib.pyplot as plt

    return plt.cm.viridis(np.linspace(0.0, 0.85, L))


def phenomenon_figure(results: dict):
    """Figure 1 analogue: error ratio (pruned / unpruned) against ξ, one series per layer."""
    panels = [(m, group, g) for m in results["models"] for group, g in m["groups"].items()]
    fig, axes, spare = _grid(len(panels))
    rates = results["rates"]
    x = np.arange(len(rates))
    handles = {}
    for ax, (m, group, g) in zip(axes, panels):
        L = m["n_layers"]
        colours = _layer_colours(L)
        offsets = (np.arange(L) - (L - 1) / 2) * min(0.12, 0.6 / L)
        if "log10_ratio" in g:
            lr = g["log10_ratio"]
            mean, low, high = (_floats(lr[k]).reshape(L, len(rates)) for k in ("mean", "low", "high"))
            # bars are clipped to two decades beyond the means so that one wild seed does not hide the rest
            lo_lim, hi_lim = mean.min() - 2, mean.max() + 2
            for t in range(L):
                y = 10 ** mean[t]
                line = ax.plot(x + offsets[t], y, "o-", color=colours[t], ms=3, lw=1.2)[0]
                if np.all(np.isfinite(low[t])):
                    yerr = [y - 10 ** np.clip(low[t], lo_lim, hi_lim), 10 ** np.clip(high[t], lo_lim, hi_lim) - y]
                    ax.errorbar(x + offsets[t], y, yerr=yerr, fmt="none", ecolor=colours[t], elinewidth=0.9,
                                capsize=1.5, alpha=0.8)
                handles[f"layer {t + 1}"] = line
            ratio_yscale(ax, 10 ** mean)
        else:
            ax.text(0.5, 0.5, g.get("nonfinite") or g.get("verdict") or "no statistics", ha="center", va="center",
                    transform=ax.transAxes, wrap=True)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        _rate_ticks(ax, rates, np.asarray(g["ranks"]), g["full_ranks"])
        steps = m.get("run", {}).get("train_config", {}).get("steps")
        ax.set_title(f"{m['model']} / {group} ({m['n_seeds']} seeds, L = {L}"
                     + (f", {steps} steps)" if steps else ")"))
    axes[0].set_ylabel("ICL test error / unpruned")
    for ax in axes[2::2]:
        ax.set_ylabel("ICL test error / unpruned")
    labels = list(handles)
    title = "clipped layer (shallow → deep);\ngeometric mean over seeds,\nbars: 95 % t interval"
    if spare:
        spare[0].axis("off")
        spare[0].legend([handles[k] for k in labels], labels, loc="center", title=title)
        for ax in spare[1:]:
            ax.axis("off")
    elif labels:
        plotting.legend_outside(axes[-1], handles=[handles[k] for k in labels], labels=labels, title=title)
    fig.suptitle("Clipping one layer's group at rate ξ: ICL test error relative to the unpruned model")
    return fig


def condition_figure(results: dict):
    """Figure 3 analogue: condition number per layer, attention vs MLP (group max and each matrix)."""
    models = results["models"]
    fig, axes = plotting.figure(1, len(models), width=4.0 * len(models), height=4.4, squeeze=False)
    for ax, m in zip(axes[0], models):
        cond = m["condition_numbers"]
        layers = np.arange(1, m["n_layers"] + 1)
        values = []
        for group, (colour, marker) in GROUP_STYLE.items():
            if f"{group}_max" not in cond:
                continue
            v = np.asarray(cond[f"{group}_max"], dtype=np.float64)  # (S, L)
            values.append(v)
            ax.plot(layers, 10 ** np.mean(np.log10(v), axis=0), marker + "-", color=colour, lw=2,
                    label=f"{group}: max of its matrices")
            ax.fill_between(layers, v.min(axis=0), v.max(axis=0), color=colour, alpha=0.15, lw=0)
            fields = m["groups"][group]["fields"] if group in m["groups"] else []
            for f, ls in zip(fields, (":", "--", "-.")):
                fv = np.asarray(cond[f], dtype=np.float64)
                ax.plot(layers, 10 ** np.mean(np.log10(fv), axis=0), ls, color=colour, lw=1, alpha=0.8, label=f)
        plotting.log_axis(ax, "y")
        ax.set_xticks(layers)
        ax.set_xlabel("layer t")
        ax.set_title(f"{m['model']} ({m['n_seeds']} seeds; band: seed range)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    axes[0, 0].set_ylabel("condition number σ_max/σ_min\n(geometric mean over seeds)")
    fig.suptitle("Condition numbers of the trained weights by layer (thin lines: single matrices)")
    return fig


def clip_search_figure(results: dict):
    """Algorithm 1 per seed: validation curve (ξ* starred) and test change at ξ* (row per model/group)."""
    rows = results["rows"]
    rates = results["rates"]
    x = np.arange(len(rates))
    z = stats.z_quantile(0.975)
    fig, axes = plotting.figure(len(rows), 2, width=8.0, height=3.1 * len(rows) + 0.6, squeeze=False)
    for j, row in enumerate(rows):
        ax, bx = axes[j, 0], axes[j, 1]
        reps = row["per_seed"]
        import matplotlib.pyplot as plt

        colours = plt.cm.tab10(np.arange(len(reps)) % 10)
        plotted = []
        for rep, c in zip(reps, colours):
            curve = _floats(rep["val_curve"]) / float(rep["val_before"])
            plotted.append(curve)
            ax.plot(x, curve, "o-", color=c, ms=3, lw=1.2, label=f"seed {rep['seed_index']} (layer {rep['layer']})")
            ax.plot(x[rep["index"]], curve[rep["index"]], "*", color=c, ms=12, mec="k", mew=0.6)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ratio_yscale(ax, np.concatenate(plotted))
        _rate_ticks(ax, rates, np.asarray(reps[0]["ranks"]))
        ax.set_title(f"{row['model']} / {row['group']}: validation error (★ = ξ*)")
        ax.set_ylabel("validation error / unpruned")
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.32), ncol=2, frameon=False)
        s = row["summary"]
        rc = {k: (float(v) if not isinstance(v, (list, str)) else v) for k, v in s["relative_change"].items()}
        for k, (rep, c) in enumerate(zip(reps, colours)):
            before = float(rep["test_before"])
            rel = 100 * float(rep["test_delta"]) / before
            half = 100 * z * float(rep["test_delta_se"]) / before
            bx.errorbar([k], [rel], yerr=[half] if np.isfinite(half) else None, fmt="o", color=c, ms=5, capsize=3)
        n = len(reps)
        mean, low, high = 100 * rc["mean"], 100 * rc["low_shown"], 100 * rc["high_shown"]
        if np.isfinite(low):
            bx.errorbar([n], [mean], yerr=[[mean - low], [high - mean]], fmt="D", color="k", ms=6, capsize=4)
        else:
            bx.plot([n], [mean], "D", color="k", ms=6)
        bx.axhline(0.0, color="k", lw=0.8, ls="--")
        bx.set_xticks(list(range(n + 1)), [f"seed {r['seed_index']}\nlayer {r['layer']}\nξ*={r['xi_star']:g}"
                                           for r in reps] + ["mean"])
        basis = rc.get("interval_basis", "seeds (t)")
        shown = f"[{low:+.2f}, {high:+.2f}]" if np.isfinite(low) else "(one seed: no interval)"
        bx.set_title(f"test change at ξ*: {mean:+.2f} % {shown}\n(95 %, {basis}; "
                     f"{s.get('resolved_seeds', 0)}/{n} seeds resolved)", fontsize=plotting.FONT_SIZE)
        bx.set_ylabel("test error after/before − 1 (%)")
    fig.suptitle(f"Algorithm 1 (top_k = {results['top_k']}) per seed; seed bars: paired 95 % interval over test prompts")
    return fig
