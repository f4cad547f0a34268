"""The figure of a training run (``experiments/train_icl.py``'s ``RUN/final.png``), from saved results.

Left: the training loss of every seed against the step (log axis). Right: the test error of the
model and of every estimator, as horizontal bars on a log axis with a 95 % interval and the value
written at each bar, so that errors near zero (least squares and ridge are exact or nearly so when
``N ≥ d`` without noise) stay visible: the axis spans :data:`DECADES` decades below the largest
error, and a smaller one (or exactly 0) is drawn as a stub at that floor, labelled with its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lintrans import plotting

__all__ = ["final_figure"]


#: The axis spans at most this many decades below the largest error: smaller errors (least squares
#: at float64 rounding, 1e-30) are drawn as a stub at the floor, their value written beside them.
DECADES = 6


def _floor(values) -> float:
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], np.float64)
    if not v.size:
        return 1e-12
    return float(max(v.min(), v.max() * 10.0 ** -DECADES))


def final_figure(results: Mapping[str, Any]):
    """Training loss per seed and test errors (model vs estimators) of one run's saved results."""
    fig, (ax0, ax1) = plotting.figure(1, 2, width=10.0, height=4.0)
    metrics = results.get("metrics", [])
    seeds = results["model"]["seeds"]
    if metrics:
        steps = [m["step"] for m in metrics]
        losses = np.array([m["loss"] for m in metrics], np.float64)
        for i in range(losses.shape[1]):
            ax0.plot(steps, losses[:, i], lw=1, label=f"seed {seeds[i]['seed']}")
        if np.all(losses > 0):
            plotting.log_axis(ax0, "y")
        ax0.legend()
    ax0.set_xlabel("step")
    ax0.set_ylabel("training loss (MSE / d)")
    ax0.set_title("training")

    est = results["estimators"]
    names = list(est)
    vals = [est[n]["mean"] for n in names]
    errs = [est[n]["ci95"] for n in names]
    names.append(f"model ({results['model']['name']}, L={results['model']['n_layers']})")
    vals.append(results["model"]["mean_over_seeds"])
    errs.append(max(s["ci95"] for s in seeds))
    floor = _floor(vals)
    left = floor / 4  # bars start here, so an error at the floor still has a visible stub
    shown = [max(v, floor) for v in vals]
    y = np.arange(len(names))
    colors = ["0.6"] * (len(names) - 1) + ["C3"]
    ax1.barh(y, [s - left for s in shown], left=left, color=colors, height=0.7)
    lo = [min(e, s - left * 1.0001) for s, e in zip(shown, errs)]  # keep the lower whisker on the axis
    ax1.errorbar(shown, y, xerr=[lo, errs], fmt="none", ecolor="k", elinewidth=0.8, capsize=2)
    plotting.log_axis(ax1, "x")
    right = max(s + e for s, e in zip(shown, errs))
    ax1.set_xlim(left, right * 30)  # room for the value labels right of the longest bar
    for yi, s, e, v in zip(y, shown, errs, vals):
        text = "0" if v == 0 else f"{v:.3g}"
        ax1.annotate(text + (" (below axis)" if v < floor else ""), (s + e, yi), xytext=(3, 0),
                     textcoords="offset points", va="center", ha="left", fontsize=plotting.FONT_SIZE - 1)
    ax1.set_yticks(y, names)
    ax1.set_xlabel(f"test error (MSE / d), {results['test_prompts']} prompts, 95% CI")
    ax1.set_title("test error: model vs estimators")
    return fig
