"""The in-context-curve figures (``icl_vs_least_squares.png``, ``icl_train_steps.png``) from saved
``icl_curves`` results.

Both use a log error axis, so every curve is visible from ``k = 1`` (where averaging and
3-nearest-neighbours are far above 1) down to the best models. Least squares is exact
(≈ 0, a rounding error) for ``k ≥ d`` in the noiseless task: points below the axis floor are drawn
ON the floor with a down-pointing triangle, and the legend says so — nothing is clipped silently.
"""

from __future__ import annotations

import numpy as np

from lintrans import plotting

__all__ = ["NAMES", "axis_floor", "icl_figure", "train_steps_figure"]

#: Display names of the estimator curves.
NAMES = {"least_squares": "least squares", "averaging": "averaging", "knn3": "3-nearest neighbours",
         "gd_1step_opt": "1-step GD, optimal η"}


def axis_floor(curves) -> float:
    """The log axis' floor: half the decade below the smallest error ≥ 1e-4 of any curve (values
    below 1e-4 are least squares' rounding errors at ``k ≥ d``; they are drawn on the floor)."""
    vals = np.concatenate([np.asarray(c["mean"], dtype=float) for c in curves])
    vals = vals[np.isfinite(vals) & (vals >= 1e-4)]
    return float(10.0 ** np.floor(np.log10(vals.min()))) / 2 if vals.size else 1e-3


def _band(ax, ks, c, label, floor, **kw):
    m, h = np.asarray(c["mean"], dtype=float), np.asarray(c["ci95"], dtype=float)
    below = m < floor
    shown = np.where(below, floor, m)
    if below.any():
        label += " (▼ < axis floor)"
    (line,) = ax.plot(ks, shown, label=label, **kw)
    ax.fill_between(ks, np.clip(m - h, floor, None), np.clip(m + h, floor, None), color=line.get_color(), alpha=0.2,
                    lw=0)
    if below.any():
        ax.plot(np.asarray(ks)[below], shown[below], "v", color=line.get_color(), ms=5, clip_on=False)
    return line


def _axes(ax, ks, d, floor, top):
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    ax.axvline(d, color="0.5", lw=0.8, ls=":")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("in-context examples k (dotted: k = d)")
    plotting.log_axis(ax, "y")
    ax.set_ylim(floor, top)
    if top / floor < 1e3:  # few decades: label 1, 2, 5 of each, so the axis can be read
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _top(curves) -> float:
    return 1.3 * max(float(np.max(np.asarray(c["mean"]) + np.asarray(c["ci95"]))) for c in curves)


def icl_figure(results: dict):
    """Figure 2.1 analogue: error against ``k`` for the trained models and the estimators."""
    ks, d = results["k"], results["d_in"]
    curves = results["curves"]
    floor, top = axis_floor(curves.values()), _top(curves.values())
    fig, ax = plotting.figure(width=6.4, height=4.6)
    for label, c in curves.items():
        if label in NAMES:
            _band(ax, ks, c, NAMES[label], floor, ls="--", lw=1.2)
        else:
            _band(ax, ks, c, f"{label} ({c['step']} steps)", floor, lw=2)
    _axes(ax, ks, d, floor, top)
    ax.set_ylabel("squared error / d")
    ax.set_title(f"In-context linear regression, d = {d}: 95 % CI over {results['eval_prompts']} prompts per k"
                 + ("\nQUICK preset (small run)" if results.get("quick") else ""))
    fig.legend(loc="outside lower center", ncol=2, frameon=False)
    return fig


def train_steps_figure(results: dict):
    """Figure 2.2 analogue: error against ``k`` at several training steps, one run per panel."""
    import matplotlib.pyplot as plt

    ks, d = results["k"], results["d_in"]
    runs = results["train_steps"]
    every = [c for by in runs.values() for c in by.values()] + [results["least_squares"]]
    floor, top = axis_floor(every), _top(every)
    n = max(len(runs), 1)
    fig, axes = plotting.figure(1, n, width=3.7 * n, height=4.4, squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, (label, by_step) in zip(axes[0], runs.items()):
        for j, (step, c) in enumerate(by_step.items()):
            _band(ax, ks, c, f"step {step}", floor, color=cmap(j / max(len(by_step) - 1, 1)), lw=1.8)
        _band(ax, ks, results["least_squares"], "least squares", floor, color="k", ls="--", lw=1)
        _axes(ax, ks, d, floor, top)
        ax.set_title(label)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)  # below: covers nothing
    axes[0][0].set_ylabel("squared error / d")
    if results.get("quick"):
        fig.suptitle("QUICK preset (small run)")
    return fig
