"""Figures of ``experiments/bound_vs_layer.py``, drawn from its saved results (plain dicts).

Every function takes one setting's results (``results["settings"][name]``) plus the figure options
saved beside them and returns a Matplotlib figure in the house style (:mod:`lintrans.plotting`).
The bound drawn is the registry's reported form (finite and continuous, :mod:`lintrans.bound_forms`);
the support-restricted form appears only in the continuity figure, labelled as a diagnostic.
"""

from __future__ import annotations

import numpy as np

from lintrans import plotting
from lintrans.bound_forms import FORMS

__all__ = ["bound_vs_layer", "bound_terms", "pruning_gap_vs_layer", "bound_continuity", "figures"]

WIDTH = 7.5  # inches: ≤ 825 px at 110 dpi, so the README shows it near natural size (text ≥ 8 pt)


def _num(x):
    return np.inf if isinstance(x, str) else float(x)


def _xi_label(row):
    xs = row["xis"]
    names = f"{xs[0]:g}" if len(xs) == 1 else "{" + ",".join(f"{x:g}" for x in xs) + "}"
    return f"ξ={names} (r={'/'.join(str(v) for v in sorted(set(row['rank'].values())))})"


def _series(res, target):
    """``{clip label: (layers, rows)}`` for ``target``: one series per distinct kept rank."""
    by = {}
    for row in res["rows"]:
        if row["target"] == target:
            key = tuple(sorted(row["rank"].items()))
            by.setdefault(key, []).append(row)
    out = {}
    for key, rows in sorted(by.items(), key=lambda kv: -min(v for _, v in kv[0])):
        rows = sorted(rows, key=lambda r: r["layer"])
        out[_xi_label(rows[0])] = (np.array([r["layer"] for r in rows]), rows)
    return out


def _target(res):
    t = res["setting"]["targets"]
    return "attn" if "attn" in t else t[0]


def _colors(n):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def bound_vs_layer(res: dict, *, form: str, eps: float):
    """The reported bound against the pruned layer; its ε dependence; bound (R̂) against the measured gap."""
    fig, ax = plotting.figure(2, 2, width=WIDTH, height=6.4)
    key = f"{form}@{eps:g}"
    target = _target(res)
    series = _series(res, target)
    u = res["unpruned"]
    a = ax[0, 0]
    for c, (label, (ks, rows)) in zip(_colors(len(series)), series.items()):
        a.plot(ks, [_num(r["bound_over_R"][key]) for r in rows], "o-", color=c, label=label)
    a.axhline(_num(u["bound_over_R"][key]), color="k", ls="--", lw=1, label="unpruned")
    a.set_xlabel(f"pruned layer k ({target})")
    a.set_ylabel("bound / R")
    a.set_title(f"{form}, ε = {eps:g}")
    a.set_xticks(range(1, res["n_layers"] + 1))
    a.legend(fontsize=8, ncol=1, loc="best", framealpha=0.8)

    a = ax[0, 1]
    e = [r["eps"] for r in res["eps_sweep"]]
    for f, m in (("printed_ridge", "o-"), ("proof_ridge", "s--")):
        a.plot(e, [r[f"{f}_bound_over_R"] for r in res["eps_sweep"]], m, label=f)
    plotting.log_axis(a, "both")
    a.set_xlabel("relative ridge ε (ε_t = ε·E tr C_t / d)")
    a.set_ylabel("bound / R (unpruned)")
    a.set_title("ε dependence (→ ∞ as ε → 0)")
    a.legend(fontsize=8)

    a = ax[1, 0]
    pts = [u] + [r for r in res["rows"] if r["target"] == target]
    gap = np.array([p["gap"] for p in pts])
    ci = np.array([p["gap_ci95"] for p in pts])
    bnd = np.array([_num(p["bound_R_hat"][key]) for p in pts])
    # Gaps span many decades (≈1e-4 for mild clips, ≈1e12 when an early layer is cut to rank ≤ 1): a
    # symlog axis in units of the median interval half-width keeps gaps within their interval of 0 on
    # the linear band around 0 and the divergent ones on the log part, the sign visible throughout.
    half = np.abs(ci[np.isfinite(ci) & (ci > 0)])
    unit = float(10.0 ** np.floor(np.log10(np.median(half)))) if half.size else 1.0
    a.errorbar(gap[1:] / unit, bnd[1:], xerr=ci[1:] / unit, fmt="o", ms=3, elinewidth=0.8)
    a.errorbar(gap[:1] / unit, bnd[:1], xerr=ci[:1] / unit, fmt="s", ms=5, color="k", elinewidth=0.8)
    a.set_xscale("symlog", linthresh=1.0)
    plotting.sparse_symlog_ticks(a, "x")
    a.axvline(0.0, color="k", lw=0.6)
    plotting.log_axis(a, "y")
    a.set_xlabel(f"measured gap L_μ − L_S (units of {unit:.0e}, symlog; 95% interval)")
    a.set_ylabel("bound with R̂")
    # No legend: wherever it sits it covers points or intervals of some setting; the title says it.
    a.set_title(f"bound (R̂, optimistic) vs signed gap ({target}; ■ unpruned)", fontsize=9)

    a = ax[1, 1]
    for c, (label, (ks, rows)) in zip(_colors(len(series)), series.items()):
        a.plot(ks, [r["rank_C_min"][k - 1] for k, r in zip(ks, rows)], "o-", color=c, label=label)
    L = res["n_layers"]
    a.plot(range(1, L + 1), u["rank_C_min"], "k--", lw=1, label="unpruned (min over prompts)")
    a.plot(range(1, L + 1), u["rank_bound"], "r:", lw=1.5, label="structural upper bound")
    a.set_xlabel(f"pruned layer k ({target})")
    a.set_ylabel("rank C_k (term of the clipped layer)")
    a.set_title("rank of C_t at the clipped layer")
    a.set_xticks(range(1, L + 1))
    a.set_ylim(-0.5, 2.0 * max(u["rank_bound"]) + 0.5)
    a.legend(fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(0.0, 1.0), columnspacing=0.8, handlelength=1.5)
    fig.suptitle(f"Theorem 2 vs pruned layer — {res['setting']['name']}: N={res['setting']['n_demos']}, "
                 f"b={res['setting']['shots']}, d=D²={res['checks']['d']}")
    return fig


def bound_terms(res: dict, *, form: str, eps: float):
    """Per-term summands of the ridged forms: unpruned, a shallow and a deep clipped layer (only t ≥ k move)."""
    fig, axes = plotting.figure(1, 2, width=WIDTH, height=3.4)
    L, target = res["n_layers"], _target(res)
    series = _series(res, target)
    label, (ks, rows) = next(iter(series.items())) if series else (None, ([], []))
    by_k = {r["layer"]: r for r in rows}
    picks = [k for k in (max(1, L // 4), max(1, L - 1)) if k in by_k]
    t = np.arange(1, L + 1)
    for a, f in zip(axes, ("printed_ridge", "proof_ridge")):
        a.plot(t, res["unpruned"]["summands"][f][f"{eps:g}"], "ko-", label="unpruned")
        for k, c in zip(sorted(set(picks)), ("tab:blue", "tab:red")):
            a.plot(t, by_k[k]["summands"][f][f"{eps:g}"], "s--", color=c, label=f"layer {k} clipped, {label}")
            a.axvline(k, color=c, ls=":", lw=1)
        a.set_xticks(t)
        a.set_xlabel("term t")
        a.set_ylabel("summand")
        a.set_title(f"{f} (ε = {eps:g})")
    axes[0].legend(fontsize=8)
    fig.suptitle("clipping layer k changes only the terms t ≥ k")
    return fig


def pruning_gap_vs_layer(res: dict):
    """Paired change of the ICL test error and the measured gap against the pruned layer, per target."""
    targets = res["setting"]["targets"]
    fig, axes = plotting.figure(len(targets), 2, width=WIDTH, height=1.9 * len(targets) + 0.9, squeeze=False)
    for i, target in enumerate(targets):
        series = _series(res, target)
        for j, (key, title) in enumerate((("d_test_error", "Δ test error vs unpruned (paired)"),
                                           ("gap", "gap L_μ − L_S"))):
            a = axes[i, j]
            vals = []
            for n, (c, (label, (ks, rows))) in enumerate(zip(_colors(len(series)), series.items())):
                y = np.array([r[key] for r in rows])
                h = np.array([r[f"{key}_ci95"] for r in rows])
                a.errorbar(ks + 0.08 * (n - len(series) / 2), y, yerr=h, fmt="o-", ms=3, lw=1, elinewidth=0.8,
                           color=c, label=label)
                vals.append(np.concatenate([y - h, y + h]))
            u = res["unpruned"][key]
            a.axhline(u, color="k", ls="--", lw=1, label="unpruned")
            v = np.abs(np.concatenate(vals + [[u]]))
            top = float(np.max(v[np.isfinite(v)], initial=0.0)) or 1.0
            # two decades of log scale on each side of a linear band around 0: small values stay readable
            plotting.symlog_axis(a, v, "y", linthresh=10.0 ** np.floor(np.log10(top) - 2))
            a.set_xticks(range(1, res["n_layers"] + 1))
            a.set_title(f"{target}: {title}", fontsize=8)
            if i == len(targets) - 1:
                a.set_xlabel("pruned layer k")
        plotting.legend_outside(axes[i, 1], fontsize=8)
    s = res["setting"]
    fig.suptitle(f"{s['name']}: 95% intervals over {s['n_prompts']} prompts × {s['n_seeds']} seeds")
    return fig


def bound_continuity(res: dict, *, eps: float):
    """The reported bound along weight noise → 0 and along ξ over one layer, beside the support diagnostic."""
    c = res["continuity"]
    fig, (a, b) = plotting.figure(1, 2, width=WIDTH, height=3.6)
    x = np.asarray(c["noise"]["levels"], float)
    lin = float(np.min(x[x > 0])) if np.any(x > 0) else 1.0
    for f, m in (("proof_ridge", "o-"), ("printed_ridge", "s-"), ("proof_support", "x:")):
        lab = f + (" (diagnostic: not continuous)" if not FORMS[f].continuous else "")
        a.plot(x, np.asarray(c["noise"][f], float), m, label=lab)
    a.set_xscale("symlog", linthresh=lin)
    from matplotlib.ticker import SymmetricalLogLocator

    a.xaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=lin))
    plotting.log_axis(a, "y")
    a.set_xlabel(f"relative weight noise (0 = exact; linear below {lin:g})")
    a.set_ylabel("bound / R")
    a.set_title(f"{c['noise']['model']}")
    for xv, r0, r1 in zip(x, c["noise"]["rank_min"], c["noise"]["rank_max"]):
        a.annotate(f"r={min(r0)}" if min(r0) == max(r1) else f"r={min(r0)}–{max(r1)}", (xv, 1.0),
                   xycoords=("data", "axes fraction"), xytext=(0, -10), textcoords="offset points",
                   ha="center", fontsize=8)
    lo, hi = a.get_ylim()
    a.set_ylim(lo, hi * (hi / lo) ** 0.15)  # headroom for the rank labels
    a.legend(fontsize=8, loc="center left")

    xs = np.asarray(c["xi"]["xis"], float)
    for f, m in (("proof_ridge", "-"), ("printed_ridge", "--")):
        b.plot(xs, np.asarray(c["xi"][f], float), m, label=f, drawstyle="steps-post")
    ranks = np.asarray(c["xi"]["ranks"])
    for j in np.flatnonzero(np.diff(ranks)) + 1:
        b.axvline(xs[j], color="gray", lw=0.6, ls=":")
    for r in np.unique(ranks):
        sel = xs[ranks == r]
        b.annotate(f"r={r}", ((sel.min() + sel.max()) / 2, 1.0), xycoords=("data", "axes fraction"),
                   xytext=(0, -10), textcoords="offset points", ha="center", fontsize=8)
    lo, hi = b.get_ylim()
    b.set_ylim(lo, hi + 0.12 * (hi - lo))
    b.set_xlabel(f"clipping rate ξ of {c['xi']['target']} in layer {c['xi']['layer']}")
    b.set_ylabel("bound / R")
    b.set_title("steps only where the kept rank r changes")
    b.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"the reported bound is continuous in the weights (ε = {eps:g})")
    return fig


def figures(results: dict) -> dict:
    """Every figure of the first setting, named as saved (with the run's tag)."""
    name, res = next(iter(results["settings"].items()))
    form, eps = results["form"], float(results["plot_eps"])
    tag = f"_{results['tag']}" if results.get("tag") else ""
    figs = {
        f"bound_vs_layer{tag}": bound_vs_layer(res, form=form, eps=eps),
        f"bound_terms{tag}": bound_terms(res, form=form, eps=eps),
        f"pruning_gap_vs_layer{tag}": pruning_gap_vs_layer(res),
    }
    if "continuity" in res:
        figs[f"bound_continuity{tag}"] = bound_continuity(res, eps=eps)
    return figs
