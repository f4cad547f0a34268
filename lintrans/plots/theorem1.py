"""The Theorem 1 figure (``theorem1_identity.png``) from saved ``verify_theorem1`` results.

Error against depth: the max relative error of T1–T4 over finite prompts (solid float64, dashed
float32) and each dtype's tolerance; main block left, overflow block right. Depths with non-finite
prompts are shaded red and labelled with the non-finite fraction per dtype. Exact zeros (T2 at
``L = 1`` holds by construction) are drawn at the bottom edge, which the title says.
"""

from __future__ import annotations

from lintrans import plotting

__all__ = ["FLOOR", "identity_figure"]

#: Where exact zeros are drawn on the log axis (below every nonzero float64 rounding error).
FLOOR = 3e-18
_CHECKS = ("T1", "T2", "T3", "T4")
_COLORS = dict(zip(_CHECKS, ("C0", "C1", "C2", "C3")))
_STYLES = {"float64": ("-", "o"), "float32": ("--", "s")}
_SHORT = {"float64": "f64", "float32": "f32"}


def _panel(ax, name: str, block: dict, handles: dict) -> None:
    rows = block["rows"]
    dtypes = [d for d in ("float64", "float32") if any(r["dtype"] == d for r in rows)]
    Ls = sorted({r["L"] for r in rows})
    for dt in dtypes:
        ls, mk = _STYLES[dt]
        for check in _CHECKS:
            rs = [r for r in rows if r["dtype"] == dt and r["check"] == check and r["max"] is not None]
            if rs:
                (line,) = ax.plot([r["L"] for r in rs], [max(r["max"], FLOOR) for r in rs], ls, marker=mk,
                                  color=_COLORS[check], label=f"{check} {dt}")
                handles.setdefault(f"{check} {dt}", line)
        tol = next(r["tol"] for r in rows if r["dtype"] == dt)
        ax.axhline(tol, color="0.35", ls=ls, lw=0.8)
        ax.text(Ls[0], tol * 2.2, f"tol {dt}", fontsize=8, color="0.25", ha="left")
    first = {(r["L"], r["dtype"]): r for r in rows if r["check"] == "T1"}
    for L in sorted({r["L"] for r in rows if r["n_nonfinite"]}):
        band = ax.axvspan(L - 0.3, L + 0.3, color="red", alpha=0.18, lw=0)
        handles.setdefault("depth with non-finite prompts", band)
        label = "\n".join(f"{_SHORT[dt]} {100 * first[(L, dt)]['n_nonfinite'] / first[(L, dt)]['n_prompts']:.0f}%"
                          for dt in dtypes if (L, dt) in first)
        ax.text(L, 0.5, label, color="darkred", fontsize=8, ha="center", va="top")
    plotting.log_axis(ax, "y")
    ax.set_ylim(FLOOR / 1.5, 1.0)
    ax.set_xticks(Ls)
    ax.set_xlim(Ls[0] - 0.8, Ls[-1] + 1.6)  # room for the last depth's non-finite label
    ax.set_xlabel("depth L (layers)")
    scale = block["init_scale"]
    what = "main block" if name == "main" else "overflow block (informational)"
    ax.set_title(what + (f", init_scale {scale:.3g}" if scale is not None else ", weights from file"))


def identity_figure(results: dict):
    """The figure of one ``verify_theorem1`` results dict (``main``, ``overflow`` and ``config``)."""
    blocks = [("main", results["main"])]
    if results.get("overflow") is not None:
        blocks.append(("overflow", results["overflow"]))
    fig, axes = plotting.figure(1, len(blocks), width=3.6 * len(blocks), height=3.9, squeeze=False, sharey=True)
    handles: dict = {}
    for ax, (name, block) in zip(axes[0], blocks):
        _panel(ax, name, block, handles)
    axes[0][0].set_ylabel("max rel. error over finite prompts")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(len(handles), 5),
               frameon=False)
    c = results["config"]
    fig.suptitle(f"Theorem 1, T1–T4: d_in={c['d_in']}, N={c['n_demos']}, B={c['batch']}, mask {c['mask']}, "
                 f"s={c['scale']}; exact zeros at the bottom edge", fontsize=10)
    return fig
