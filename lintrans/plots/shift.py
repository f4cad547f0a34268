"""Figures of experiments/pruning_under_shift.py, from its saved results (plain dicts).

* ``shift_heatmap``: per (shift × model layer), the best SIGNIFICANT improvement (−relative change, %,
  95 % interval over seeds below 0); blank where no cell of that layer improves significantly.
* ``shift_onelayer``: one-layer models, error against ξ when clipping V (and attn), measured (mean over
  seeds, 95 % interval) against the closed form of :mod:`lintrans.onelayer`, per shift.
* ``shift_mechanism``: per cell, the error's mean log ratio against Δlog‖G‖ and Δlog bound.
* ``shift_choices``: test change of the clip chosen by Algorithm 1, the label-free rule and the oracle.
"""

from __future__ import annotations

import numpy as np

from lintrans import plotting

__all__ = ["heatmap", "onelayer", "mechanism", "choices", "all_figures"]


def _v(x) -> float:
    """A saved number (non-finite values are saved as the strings "nan"/"inf"); None → NaN."""
    return float("nan") if x is None else float(x)


def _shifts(results):
    seen = []
    for m in results["models"]:
        for s in m["shifts"]:
            if s not in seen:
                seen.append(s)
    return seen


def heatmap(results: dict):
    shifts = _shifts(results)
    cols = [(m["model"], k) for m in results["models"] for k in range(1, m["n_layers"] + 1)]
    Z = np.full((len(shifts), len(cols)), np.nan)
    for c in results["cells"]:
        if not c["improves"] or c["rank"] >= c["full_rank"]:
            continue
        i, j = shifts.index(c["shift_label"]), cols.index((c["model"], c["layer"]))
        Z[i, j] = np.nanmax([Z[i, j], -100 * _v(c["rel_change"])])
    fig, ax = plotting.figure(width=max(6.4, 0.28 * len(cols) + 2.5), height=0.32 * len(shifts) + 1.9)
    im = ax.imshow(np.where(np.isfinite(Z), Z, np.nan), aspect="auto", cmap="viridis", vmin=0)
    ax.grid(False)
    ax.set_yticks(range(len(shifts)), shifts)
    ax.set_xticks(range(len(cols)), [str(k) for _, k in cols])
    starts = [j for j, (m, k) in enumerate(cols) if k == 1]
    for j in starts[1:]:
        ax.axvline(j - 0.5, color="w", lw=2)
    centers = [j0 + (sum(1 for mm, _ in cols if mm == m["model"]) - 1) / 2
               for j0, m in zip(starts, results["models"])]
    top = ax.secondary_xaxis("top")
    # anchored at the start of the text, so that the names of adjacent one-column models stay one
    # column apart along the axis instead of their bounding boxes meeting
    top.set_xticks(centers, [m["model"] for m in results["models"]], fontsize=8, rotation=50, ha="left",
                   va="center", rotation_mode="anchor")
    top.tick_params(length=0)
    for i in range(len(shifts)):
        for j in range(len(cols)):
            if np.isfinite(Z[i, j]):
                ax.text(j, i, f"{Z[i, j]:.0f}" if Z[i, j] >= 1 else f"{Z[i, j]:.1f}", ha="center", va="center",
                        fontsize=8, color="w" if Z[i, j] < 0.6 * np.nanmax(Z) else "k")
    ax.set_xlabel("layer (1-based) of each model")
    ax.set_title("best significant improvement by clipping one layer (%); blank: none")
    fig.colorbar(im, ax=ax, label="error reduction (%)")
    return fig


def onelayer(results: dict):
    models = [m for m in results["models"] if m["n_layers"] == 1 and m["kind"] == "linear"]
    if not models:
        return None
    shifts = [s for s in _shifts(results) if any(c.get("error_theory") is not None for c in results["cells"]
                                                 if c["shift_label"] == s)]
    fig, axes = plotting.figure(len(models), 2, width=7.2, height=2.5 * len(models) + 0.7, squeeze=False)
    colors = {s: f"C{i}" for i, s in enumerate(shifts)}
    for r, m in enumerate(models):
        for col, target in enumerate(("V", "attn")):
            ax = axes[r, col]
            for s in shifts:
                cs = sorted((c for c in results["cells"] if c["model"] == m["model"] and c["shift_label"] == s
                             and c["target"] == target and "error_theory" in c), key=lambda c: c["xi"])
                if not cs:
                    continue
                x = np.arange(len(cs))
                meas = np.array([100 * _v(c["rel_change"]) for c in cs])
                ci = np.array([[100 * _v(v) for v in c["rel_change_ci95"]] for c in cs])
                th = np.array([100 * _v(c["rel_change_theory"]) for c in cs])
                ax.plot(x, th, "-", color=colors[s], label=f"{s}: closed form" if col == 0 else None)
                ax.errorbar(x, meas, yerr=[np.maximum(meas - ci[:, 0], 0), np.maximum(ci[:, 1] - meas, 0)], fmt="o",
                            color=colors[s], ms=3, capsize=2, label=f"{s}: measured" if col == 0 else None)
                ax.set_xticks(x, [f"{c['xi']:g} (r={c['rank']})" for c in cs], fontsize=8, rotation=45, ha="right")
            ax.axhline(0, color="k", lw=0.6)
            ax.set_title(f"{m['model']}: clip {target} of layer 1", fontsize=9)
            ax.set_xlabel("clipping rate ξ (kept rank)")
            ax.set_ylabel("error change (%)")
    h, lab = axes[0, 0].get_legend_handles_labels()
    axes[0, 1].legend(h, lab, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def mechanism(results: dict):
    cells = [c for c in results["cells"] if "dlog_G" in c and c["rank"] < c["full_rank"]]
    if not cells:
        return None
    fig, axes = plotting.figure(1, 2, width=7.6, height=3.4)
    shifts = _shifts(results)
    for ax, (x_name, label, ckey) in zip(axes, (("dlog_G", "Δ log ‖G‖ (pruned / unpruned)", "G"),
                                                ("dlog_bound", "Δ log bound (pruned / unpruned)", "bound"))):
        for i, s in enumerate(shifts):
            cs = [c for c in cells if c["shift_label"] == s and np.isfinite(_v(c.get(x_name))) and np.isfinite(_v(c["log_ratio"]))]
            if cs:
                ax.scatter([_v(c[x_name]) for c in cs], [_v(c["log_ratio"]) for c in cs], s=8, color=f"C{i % 10}",
                           marker="o" if i < 10 else "^", label=s, alpha=0.7)
        o = results["correlations"][ckey]["overall"]
        if o.get("rho") is not None:
            ax.set_title(f"Spearman {o['rho']:+.2f} [{o['low']:+.2f}, {o['high']:+.2f}]", fontsize=9)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel(label)
        ax.set_ylabel("mean log(error ratio)")
    plotting.legend_outside(axes[1], fontsize=8)
    return fig


#: Half-width (%) of the rate-choice figure's axis; changes beyond it are drawn at the edge, labelled.
CHOICE_AXIS_LIMIT = 1e4


def choices(results: dict):
    rows = [(m["model"], s, e["choices"]) for m in results["models"] for s, e in m["shifts"].items()
            if "oracle" in e.get("choices", {})]
    if not rows:
        return None
    fig, ax = plotting.figure(width=7.2, height=0.22 * len(rows) + 1.6)
    methods = ("algorithm1", "label_free", "oracle")
    names = {"algorithm1": "Algorithm 1 (validation)", "label_free": "label-free (bound)", "oracle": "oracle (test set)"}
    # Values beyond the axis are written in a column right of the axes, one per row, so no label sits on
    # an interval or a marker (written on the row itself, they landed on the intervals cut at the edge).
    beyond = [[] for _ in rows]
    finite = np.zeros(len(rows), bool)
    for k, meth in enumerate(methods):
        y = np.arange(len(rows)) + (k - 1) * 0.25
        v = np.array([100 * _v(r[2][meth]["rel_change"]) if meth in r[2] else np.nan for r in rows])
        ci = np.array([[100 * _v(x) for x in r[2][meth]["rel_change_ci95"]] if meth in r[2] else [np.nan, np.nan] for r in rows])
        finite |= np.isfinite(v)
        # A divergent tail (an 8-layer model's +4e75 %) would stretch the axis until every other row sat on
        # 0: points and intervals beyond ±CHOICE_AXIS_LIMIT are cut at the edge, the point marked and its value written.
        vc, cic = np.clip(v, -CHOICE_AXIS_LIMIT, CHOICE_AXIS_LIMIT), np.clip(ci, -CHOICE_AXIS_LIMIT, CHOICE_AXIS_LIMIT)
        ax.errorbar(vc, y, xerr=[np.maximum(vc - cic[:, 0], 0), np.maximum(cic[:, 1] - vc, 0)], fmt="o", ms=3,
                    capsize=2, color=f"C{k}", label=names[meth])
        for i, (yi, vi) in enumerate(zip(y, v)):
            if np.isfinite(vi) and abs(vi) > CHOICE_AXIS_LIMIT:
                edge = np.sign(vi) * CHOICE_AXIS_LIMIT
                ax.plot([edge], [yi], marker=">" if vi > 0 else "<", ms=6, color=f"C{k}", ls="none",
                        clip_on=False, zorder=5)
                beyond[i].append((f"{vi:+.1e} %", f"C{k}"))
    side = ax.get_yaxis_transform()  # x in axes fraction, y in data: a column beside the axes
    for i, labels in enumerate(beyond):
        for j, (text, color) in enumerate(labels):
            ax.text(1.02, i + 0.3 * (j - (len(labels) - 1) / 2), text, transform=side, ha="left", va="center",
                    fontsize=8, color=color, clip_on=False)
        if not finite[i]:
            ax.text(0.5, i, "no finite change: the unpruned test error is not finite (prompts overflow)",
                    transform=side, ha="center", va="center", fontsize=8, color="0.35")
    ax.set_xlim(-1.05 * CHOICE_AXIS_LIMIT, 1.05 * CHOICE_AXIS_LIMIT)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(np.arange(len(rows)), [f"{m} | {s}" for m, s, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xscale("symlog", linthresh=1.0)
    plotting.sparse_symlog_ticks(ax, "x")  # a tick per decade crowds the labels when a tail reaches 1e7 %
    cut = any(beyond)
    ax.set_xlabel("test error change of the chosen attn clip (%, symlog; 95 % interval over seeds)"
                  + (f"\nbeyond ±{CHOICE_AXIS_LIMIT:.0e} %: cut at the edge, marked ▶/◀, the value written at the right" if cut else ""))
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8, borderaxespad=0.3, frameon=False)
    return fig


def all_figures(results: dict) -> dict:
    figs = {"shift_heatmap": heatmap(results), "shift_onelayer": onelayer(results),
            "shift_mechanism": mechanism(results), "shift_choices": choices(results)}
    return {k: v for k, v in figs.items() if v is not None}
