"""The house style of every lintrans figure: one size, one dpi, legible fonts, ticked log axes.

Figure functions (``lintrans/plots/<experiment>.py``) take saved results (plain dicts) and return
Matplotlib figures; :func:`lintrans.cli.save_figure` writes them at :data:`DPI`. The style is
chosen so that text stays ≥ 8 pt when the README shows a figure at its natural width: a 6.4-inch
figure at 110 dpi is 704 px wide, and 9 pt text is then ≈ 14 px high.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DPI", "FONT_SIZE", "WIDTH", "STYLE", "figure", "log_axis", "symlog_axis", "sparse_symlog_ticks", "legend_outside", "label_bars"]

#: Resolution of every saved PNG.
DPI = 110
#: Base font size (points); tick labels and legends are one point smaller, never below 8.
FONT_SIZE = 9
#: Default figure width in inches (one README column).
WIDTH = 6.4
#: rcParams applied to every figure made by :func:`figure`.
STYLE = {
    "font.size": FONT_SIZE,
    "axes.titlesize": FONT_SIZE + 1,
    "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE - 1,
    "ytick.labelsize": FONT_SIZE - 1,
    "legend.fontsize": FONT_SIZE - 1,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
}


def figure(nrows: int = 1, ncols: int = 1, *, width: float = WIDTH, height: float | None = None, squeeze: bool = True,
           **subplot_kw):
    """``(fig, axes)`` in the house style; ``height`` defaults to a panel aspect of 0.62."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    if height is None:
        height = 0.62 * width / ncols * nrows + 0.4
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=squeeze, constrained_layout=True,
                             **subplot_kw)
    return fig, axes


def log_axis(ax, which: str = "y") -> None:
    """Log scale on ``which`` (``"x"``, ``"y"`` or ``"both"``) with labelled decades and minor ticks."""
    from matplotlib.ticker import LogLocator

    for a in ("x", "y") if which == "both" else (which,):
        getattr(ax, f"set_{a}scale")("log")
        axis = ax.xaxis if a == "x" else ax.yaxis
        axis.set_major_locator(LogLocator(base=10, numticks=12))
        axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 0.1, numticks=12))


def symlog_axis(ax, values, which: str = "y", linthresh: float | None = None) -> None:
    """Symmetric log scale (for signed quantities such as gaps) with ticks on both sides of 0.

    ``linthresh`` defaults to the smallest nonzero |value| (so no plotted point is squashed into
    the linear band without it being visible), at least 1e-12 of the largest.
    """
    from matplotlib.ticker import SymmetricalLogLocator

    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v) & (v > 0)]
    if linthresh is None:
        linthresh = float(max(v.min(), v.max() * 1e-12)) if v.size else 1.0
    getattr(ax, f"set_{which}scale")("symlog", linthresh=linthresh)
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=linthresh))
    (ax.axhline if which == "y" else ax.axvline)(0.0, color="k", lw=0.6)


def sparse_symlog_ticks(ax, which: str = "y", max_per_side: int = 4) -> None:
    """On a symlog axis with ``linthresh`` 1: 0 and ±10^k every few decades, at most ``max_per_side``
    a side (one tick per decade crowds the labels when the data span many decades)."""
    lo, hi = (ax.get_xlim if which == "x" else ax.get_ylim)()
    top = max(0, int(np.ceil(np.log10(max(abs(lo), abs(hi), 1.0)))))
    step = max(1, int(np.ceil((top + 1) / max_per_side)))
    first = 0 if top <= 2 else step  # a span of ≤ 2 decades would otherwise get one tick a side
    ticks = [t for t in sorted({0.0, *(s * 10.0 ** k for k in range(first, top + 1, step) for s in (1, -1))})
             if lo <= t <= hi]
    labels = ["0" if t == 0 else f"${'-' if t < 0 else ''}10^{{{int(round(np.log10(abs(t))))}}}$" for t in ticks]
    (ax.set_xticks if which == "x" else ax.set_yticks)(ticks, labels, fontsize=8)


def legend_outside(ax, **kw) -> None:
    """A legend to the right of the axes, where it cannot cover data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def label_bars(ax, bars, values, fmt: str = "{:.3g}") -> None:
    """Write each bar's value above it (bars of height ≈ 0 stay readable)."""
    for bar, v in zip(bars, values):
        ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=FONT_SIZE - 1)
