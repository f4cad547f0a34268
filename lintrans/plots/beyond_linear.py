"""Figures of experiments/beyond_linear.py, from its saved results (issue 16).

``results["per_model"][name]["training"][q]`` holds ``{"mean", "low", "high"}`` arrays ``(C, L)``
(checkpoint × layer; a 95 % t interval over seeds of per-seed prompt means) and, for non-negative
quantities, ``log10_mean/low/high`` (the interval of ``log10`` of the same values, which the log
axes show: residuals span decades, and a linear interval over 3 seeds often reaches below 0), and
``["clip"][q]`` the same ``(R, L)`` over the clipping rates; ``results["steps"]`` the checkpoint
steps, ``results["rates"]`` and ``results["ranks"]`` the rates and the kept rank of ``W_V``.
"""

from __future__ import annotations

import numpy as np

from lintrans import plotting

__all__ = ["FLOOR", "layers_figure", "training_figure", "clipping_figure", "figures"]

#: Values below this are drawn at it on the log axes (float64 rounding: linear attention's exact
#: zeros come out at 1e-16 … 1e-15, a few exactly 0); the panels say so.
FLOOR = 1e-17

_LAYER_PANELS = (
    ("affinity", "affinity residual of ŷ_t(x_q)"),
    ("t1", "T1 residual ‖h^t − (I+W_t^J)h^0‖ / ‖h^t‖"),
    ("g_form", "‖G_t^J − ΔW_t(I+W_{t−1}^J)‖ / ‖G_t^J‖"),
    ("cos_gd", "cos(w_eff,t , w_GD,t)  (bars cut at ±1)"),
)


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _get(block: dict, q: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(centre, low, high)`` to draw: ``10**`` the log10 interval where there is one, else the interval."""
    b = block[q]
    if "log10_mean" in b and not q.startswith("cos"):  # cosines are signed: never a geometric mean
        return tuple(10.0 ** _arr(b[f"log10_{k}"]) for k in ("mean", "low", "high"))
    return _arr(b["mean"]), _arr(b["low"]), _arr(b["high"])


def _errorbars(ax, x, mean, low, high, **kw):
    low, high = np.where(np.isnan(low), mean, low), np.where(np.isnan(high), mean, high)
    ax.errorbar(x, mean, yerr=[np.maximum(mean - low, 0), np.maximum(high - mean, 0)], capsize=2, marker="o", **kw)


def layers_figure(results: dict):
    """Deviation from implicit GD per component against layer ``t`` (last checkpoint)."""
    fig, axes = plotting.figure(2, 2, height=5.8)
    L = int(results["layers"])
    x = np.arange(1, L + 1)
    for ax, (q, title) in zip(axes.ravel(), _LAYER_PANELS):
        for k, name in enumerate(results["models"]):
            mean, low, high = _get(results["per_model"][name]["training"], q)
            _errorbars(ax, x + 0.05 * (k - 2), mean[-1], low[-1], high[-1], label=name)
        if q != "cos_gd":
            plotting.log_axis(ax, "y")
        else:
            ax.set_ylim(-1.05, 1.05)
        ax.set_title(title, fontsize=plotting.FONT_SIZE)
        ax.set_xticks(x)
        ax.set_xlabel("layer t")
    axes[0, 0].legend(fontsize=8, loc="center right")  # the empty decades between linear attention and the rest
    fig.suptitle(f"step {results['steps'][-1]}; prompt means; log panels: geometric mean and 95 % interval over "
                 f"{results['seeds']} seeds (values < {FLOOR:g} counted as {FLOOR:g})", fontsize=plotting.FONT_SIZE)
    return fig


def _bands(ax, steps, mean, low, high, label):
    line, = ax.plot(steps, mean, marker="o", label=label)
    ax.fill_between(steps, np.where(np.isnan(low), mean, low), np.where(np.isnan(high), mean, high),
                    color=line.get_color(), alpha=0.2)


def training_figure(results: dict):
    """Alignment of the last layer's implicit weight with GD over training, and the ICL error."""
    fig, axes = plotting.figure(1, 3, width=7.6, height=3.4)
    steps = np.asarray(results["steps"])
    for name in results["models"]:
        block = results["per_model"][name]["training"]
        for ax, q in zip(axes, ("cos_gd", "dist_gd", "error")):
            mean, low, high = _get(block, q)
            _bands(ax, steps, mean[:, -1], low[:, -1], high[:, -1], name)
    gd = results["reference"]
    axes[2].axhline(gd["gd_error"], color="k", ls="--", lw=1)
    axes[0].plot([], [], color="k", ls="--", lw=1, label=f"{results['layers']}-step GD (error panel)")
    axes[0].set_ylim(-1.05, 1.05)
    axes[0].set_title("cos(w_eff, w_GD), layer L\n(bands cut at ±1)", fontsize=plotting.FONT_SIZE)
    axes[1].set_title("‖w_eff − w_GD‖ / ‖w_GD‖\nlayer L", fontsize=plotting.FONT_SIZE)
    axes[2].set_title("ICL error (ŷ − y)²/d\n(least squares: 0)", fontsize=plotting.FONT_SIZE)
    for ax in axes[1:]:
        plotting.log_axis(ax, "y")
    for ax in axes:
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=8, loc="lower right")  # empty after step 0: the curves rise above 0.5
    return fig


def clipping_figure(results: dict):
    """Clipping W_V of the last layer: distance to GD and ICL error against ξ (ξ = 0: unclipped)."""
    fig, axes = plotting.figure(1, 2, width=7.2, height=3.9)
    rates = [0.0] + list(results["rates"])
    x = np.arange(len(rates))
    for k, name in enumerate(results["models"]):
        pm = results["per_model"][name]
        for ax, q in zip(axes, ("dist_gd", "error")):
            t_mean, t_low, t_high = _get(pm["training"], q)
            c_mean, c_low, c_high = _get(pm["clip"], q)
            mean = np.concatenate([t_mean[-1:, -1], c_mean[:, -1]])
            low = np.concatenate([t_low[-1:, -1], c_low[:, -1]])
            high = np.concatenate([t_high[-1:, -1], c_high[:, -1]])
            _errorbars(ax, x + 0.05 * (k - 2), mean, low, high, label=name)
    labels = [f"{r:g}\n(r={k})" for r, k in zip(rates, [results["full_rank"]] + list(results["ranks"]))]
    for ax, title in zip(axes, ("‖w_eff − w_GD‖ / ‖w_GD‖, last layer", "ICL error")):
        plotting.log_axis(ax, "y")
        ax.set_xticks(x, labels)
        ax.set_xlabel("ξ of W_V in layer L (kept rank r)")
        ax.set_title(title, fontsize=plotting.FONT_SIZE)
    # below both panels: inside either one it covers the ξ = 0.9 intervals, which reach the axis floor
    fig.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def figures(results: dict) -> dict:
    """All figures: name → Figure."""
    return {"beyond_linear_layers": layers_figure(results), "beyond_linear_training": training_figure(results),
            "beyond_linear_clipping": clipping_figure(results)}
