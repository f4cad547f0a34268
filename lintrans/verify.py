"""The Theorem 1 sweep (SPEC §3): checks T1–T5 over depths, dtypes and a batch of prompts.

For each depth ``L`` and dtype, one jitted, vmapped call of :func:`lintrans.checks.check_theorem1`
over the prompts gives per-prompt, per-layer relative errors of

* T1 ``h^t_{N+1} = (I + W_t) h^0_{N+1}``,
* T2 ``I + W_t = (I + ΔW_t)···(I + ΔW_1)``,
* T3 ``H^t = (I + W_t) H^0`` (mask ``demos``),
* T4 ``ΔW_t = s W_V^t A S A^T (W_K^t)^T W_Q^t`` (mask ``demos``),
* T5 ``rank(ΔW_t) ≤ min(N, D)``,

summarised per ``(L, check, dtype)`` as the max and median over prompts of each prompt's worst
layer ``t ≤ L``, with the non-finite prompts (never a pass) and PASS/FAIL against a tolerance.

The ``L``-layer model is the first ``L`` layers of ONE deep weight draw (:func:`prefix`), so the
rows are nested models and the growth of the error with ``L`` is growth along one trajectory.
Inputs are float64; a float32 row casts the same numbers (one rounding apart).

Used by ``experiments/verify_theorem1.py``; every function takes plain arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.attention import predict, predict_tokens
from lintrans.checks import CHECKS, check_theorem1
from lintrans.params import LinearAttentionParams, init_params, load_params
from lintrans.tasks import load_prompts, random_prompts, sample_linear
from lintrans.trajectory import QUANTITIES, trajectory

__all__ = [
    "DTYPES",
    "IDENTITY_CHECKS",
    "TASKS",
    "STANDARD_DEPTHS",
    "default_init_scale",
    "default_depths",
    "load_params_file",
    "load_prompts_file",
    "draw_params",
    "draw_prompts",
    "prefix",
    "scaled",
    "evaluate",
    "summarize",
    "run_block",
    "verdict",
    "dump_trajectory",
    "format_block",
    "report",
]

DTYPES = {"float64": jnp.float64, "float32": jnp.float32}
IDENTITY_CHECKS = ("T1", "T2", "T3", "T4")  # relative errors; T5 is a rank bound
TASKS = ("random", "linear")
#: The default depths; with a weights file, those up to its depth plus its depth (:func:`default_depths`).
STANDARD_DEPTHS = (1, 2, 4, 8, 12, 16)
#: File dtypes accepted for weights and prompts: float16 holds ~3 digits, so a float64 check of
#: identities to 1e-12 on it would check the cast, not the theorem.
FILE_DTYPES = (np.float32, np.float64)


def default_init_scale(scale: str, n_demos: int) -> float:
    """The default weight scale ``c`` (std ``c/√D``): every state stays finite to L = 16.

    ``‖ΔW_t‖_F ≈ s · N · c³ · √D`` for i.i.d. weights of std ``c/√D`` and N(0, 1) tokens (the Gram
    matrix is ≈ N·I and a product of three such matrices has Frobenius norm ≈ c³√D). Holding it
    near 0.03 keeps ``‖I + ΔW_t‖_2 ≲ 1.04`` per layer, so states grow by at most ~1.9× over 16
    layers (measured at the defaults: they do not grow at all).
    With ``s = 1`` that needs ``c ∝ N^{-1/3}``: ``c = 0.05 · (40/N)^{1/3}`` (0.05 at N = 40).
    With ``s = 1/N`` the size does not depend on N: ``c = 0.1``.
    """
    if scale == "1/N":
        return 0.1
    return 0.05 * (40.0 / n_demos) ** (1.0 / 3.0)


def default_depths(n_layers: int | None) -> tuple[int, ...]:
    """:data:`STANDARD_DEPTHS`, or for a weights file of ``n_layers`` layers those ``≤ n_layers`` and ``n_layers``."""
    if n_layers is None:
        return STANDARD_DEPTHS
    return tuple(sorted({L for L in STANDARD_DEPTHS if L <= n_layers} | {n_layers}))


def _require_file_dtype(path, dtype) -> None:
    if np.dtype(dtype) not in [np.dtype(d) for d in FILE_DTYPES]:
        raise TypeError(
            f"{path}: arrays are {np.dtype(dtype).name}; float32 or float64 is needed "
            "(float16 keeps ~3 digits, too few to check identities to 1e-12)"
        )


def load_params_file(path, d_out: int) -> LinearAttentionParams:
    """Weights ``w_k, w_q, w_v (L, D, D)`` from an npz as float64; ``D > d_out`` and float32/float64 required."""
    params = load_params(path)
    _require_file_dtype(path, params.dtype)
    if params.dim <= d_out:
        raise ValueError(f"{path}: D = {params.dim} leaves no input dimension with d_out = {d_out}")
    return LinearAttentionParams(*(jnp.asarray(a, jnp.float64) for a in params))


def load_prompts_file(path, d_out: int) -> jax.Array:
    """Prompts ``H (B, D, N+1)`` (query last, its label slot 0) from an npz as float64."""
    H = load_prompts(path)
    _require_file_dtype(path, H.dtype)
    B, D, _ = H.shape
    if D <= d_out:
        raise ValueError(f"{path}: D = {D} leaves no input dimension with d_out = {d_out}")
    d_in = D - d_out
    label = np.asarray(H[:, d_in:, -1])
    if np.any(label != 0):
        raise ValueError(
            f"{path}: the query's label slot H[:, {d_in}:, -1] must be 0 (layout (B, D, N+1), "
            f"query last, d_out = {d_out}); found max |value| {float(np.max(np.abs(label))):.3g}"
        )
    return jnp.asarray(H, jnp.float64)


def draw_params(key: jax.Array, n_layers: int, dim: int) -> LinearAttentionParams:
    """Unit-scale float64 weights (std ``1/√D``); each block rescales them (:func:`scaled`)."""
    return init_params(key, n_layers, dim, 1.0, jnp.float64)


def draw_prompts(key: jax.Array, task: str, batch: int, n_demos: int, d_in: int, d_out: int) -> jax.Array:
    """float64 prompts ``(B, D, N+1)``: ``random`` (:func:`random_prompts`, N(0, 1) tokens, labels
    included — the identities hold for any prompt) or ``linear`` (:func:`sample_linear`, noiseless
    Garg regression, labels of size ~√d_in)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "random":
        return random_prompts(key, batch, n_demos, d_in, d_out, jnp.float64)
    if d_out != 1:
        raise ValueError(f"task 'linear' has d_out = 1, got d_out = {d_out}")
    return sample_linear(key, batch, n_demos, d_in, dtype=jnp.float64).H


def scaled(params: LinearAttentionParams, factor: float) -> LinearAttentionParams:
    return LinearAttentionParams(*(factor * a for a in params))


def prefix(params: LinearAttentionParams, L: int, dtype) -> LinearAttentionParams:
    """The first ``L`` layers, cast to ``dtype``."""
    return LinearAttentionParams(*(jnp.asarray(a[:L], dtype) for a in params))


@partial(jax.jit, static_argnames=("mask", "scale"))
def _evaluate(params: LinearAttentionParams, H: jax.Array, *, mask: str, scale: str):
    def one(h):
        report = check_theorem1(params, h, mask=mask, scale=scale)
        y_fast = predict(params, h, mask=mask, scale=scale)
        y_tok = predict_tokens(params, h, mask=mask, scale=scale)
        states = trajectory(params, h, mask=mask, scale=scale).states
        big = jnp.where(jnp.all(jnp.isfinite(states)), jnp.max(jnp.abs(states)), jnp.nan)
        return report, y_fast, y_tok, big

    return jax.vmap(one)(H)


def evaluate(params: LinearAttentionParams, H: jax.Array, *, mask: str, scale: str, readout: int):
    """One jitted call: T1–T5 on every prompt, plus the predictions.

    Returns ``(report, y_fast, y_tokens, max_abs_state)``: the vmapped
    :class:`lintrans.checks.Theorem1Report` (arrays ``(B, L)``), the query predictions of the
    fast path :func:`predict` and of the reference :func:`predict_tokens` (``(B,)`` each, readout
    sign applied), and ``max_t,j |H^t|`` per prompt (``(B,)``, NaN if a state is non-finite).
    The sign is applied outside the jitted call, so the readout never recompiles.
    """
    report, y_fast, y_tok, big = _evaluate(params, H, mask=mask, scale=scale)
    return report, readout * y_fast, readout * y_tok, big


def _stat(x: np.ndarray) -> tuple[float | None, float | None]:
    return (float(np.max(x)), float(np.median(x))) if x.size else (None, None)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), np.finfo(a.dtype).tiny))


def summarize(L: int, dtype: str, tol: float, mask: str, readout: int, out) -> tuple[list[dict], dict, dict]:
    """One :func:`evaluate` output → table rows (one per check), a prediction summary and the
    per-prompt arrays. A check is PASS when every prompt's worst layer is ≤ ``tol`` and every
    prompt stayed finite; NONFINITE when any prompt went non-finite; ``n/a`` when it does not
    hold for ``mask``."""
    report, y_fast, y_tok, big = (jax.tree.map(np.asarray, o) for o in out)
    nf_layer = report.nonfinite_layer  # (B,), 1-based, -1 finite, 0 the input itself
    nf_qty = report.nonfinite_quantity
    finite = nf_layer < 0
    n_bad = int(np.sum(~finite))
    if n_bad:
        worst = int(np.argmin(np.where(finite, np.iinfo(np.int32).max, nf_layer)))
        first_layer = int(nf_layer[worst])
        first_qty = QUANTITIES[int(nf_qty[worst])] if first_layer > 0 else "input"
    else:
        first_layer, first_qty = None, None
    common = dict(
        L=L, dtype=dtype, tol=tol, n_prompts=int(finite.size), n_finite=int(finite.sum()), n_nonfinite=n_bad,
        first_nonfinite_layer=first_layer, first_nonfinite_quantity=first_qty,
    )
    rows = []
    for check in IDENTITY_CHECKS:
        if mask not in CHECKS[check]:
            rows.append(dict(common, check=check, max=None, median=None, status="n/a"))
            continue
        worst_layer = np.max(getattr(report, check), axis=1)[finite]  # each prompt's worst layer
        per_layer = np.max(getattr(report, check)[finite], axis=0) if finite.any() else np.full(L, np.nan)
        mx, med = _stat(worst_layer)
        status = "NONFINITE" if n_bad or mx is None else ("PASS" if mx <= tol else "FAIL")
        rows.append(dict(common, check=check, max=mx, median=med, per_layer_max=per_layer, status=status))
    ranks = report.T5_rank[finite]
    bound = int(np.asarray(report.T5_bound).reshape(-1)[0])
    max_rank = int(ranks.max()) if ranks.size else None
    status = "NONFINITE" if n_bad or max_rank is None else ("PASS" if max_rank <= bound else "FAIL")
    rows.append(dict(common, check="T5", max_rank=max_rank, bound=bound, status=status))
    ok = np.isfinite(y_fast) & np.isfinite(y_tok)
    any_ok = bool(ok.any())
    pred = dict(
        L=L, dtype=dtype, readout=readout,
        mean=float(np.mean(y_fast[ok])) if any_ok else None,
        std=float(np.std(y_fast[ok])) if any_ok else None,
        max_abs=float(np.max(np.abs(y_fast[ok]))) if any_ok else None,
        n_nonfinite=int(np.sum(~ok)),
        # predict (T4-based fast path) against predict_tokens, relative over the batch vector
        fast_vs_tokens_rel_err=_rel(y_fast[ok], y_tok[ok]) if any_ok else None,
        max_abs_state=float(np.nanmax(big)) if np.isfinite(big).any() else None,
    )
    arrays = {
        **{c: getattr(report, c) for c in IDENTITY_CHECKS},
        "T5_rank": report.T5_rank,
        "nonfinite_layer": nf_layer,
        "nonfinite_quantity": nf_qty,
        "y_fast": y_fast,
        "y_tokens": y_tok,
    }
    return rows, pred, arrays


def run_block(
    block: str,
    params: LinearAttentionParams,
    H: jax.Array,
    *,
    layers: Sequence[int],
    dtypes: Sequence[str],
    tols: dict[str, float],
    mask: str,
    scale: str,
    readout: int,
    init_scale: float | None,
    update: Callable[[str], None] | None = None,
) -> tuple[dict, dict]:
    """Every depth and dtype of one block: ``({"init_scale", "rows", "predictions"}, arrays)``.

    ``params``: the deepest float64 weights, already at the block's scale; ``H`` float64 prompts.
    ``arrays`` maps ``"<block>_<dtype>_L<L>_<name>"`` to per-prompt arrays. ``update(info)`` is
    called after each jitted call (progress).
    """
    rows, preds, arrays = [], [], {}
    for L in layers:
        for dtype in dtypes:
            p = prefix(params, L, DTYPES[dtype])
            h = jnp.asarray(H, DTYPES[dtype])
            out = evaluate(p, h, mask=mask, scale=scale, readout=readout)
            jax.block_until_ready(out)
            if out[0].T1.dtype != DTYPES[dtype]:
                raise AssertionError(f"{dtype} run computed in {out[0].T1.dtype} (is jax_enable_x64 on?)")
            r, pred, arr = summarize(L, dtype, tols[dtype], mask, readout, out)
            rows += r
            preds.append(pred)
            arrays.update({f"{block}_{dtype}_L{L}_{k}": v for k, v in arr.items()})
            if update is not None:
                update(f"{block} L={L} {dtype}")
    return {"init_scale": init_scale, "rows": rows, "predictions": preds}, arrays


def verdict(main_block: dict, dtypes: Sequence[str]) -> dict:
    """Which dtype decides (float64 when it ran, else float32 — a run that cannot fail checks
    nothing) and the failures of the main block in it: ``{decisive_dtype, passed, failures, exit_status}``."""
    decisive = "float64" if "float64" in dtypes else "float32"
    failed = [r for r in main_block["rows"] if r["dtype"] == decisive and r["status"] in ("FAIL", "NONFINITE")]
    return {
        "decisive_dtype": decisive,
        "passed": not failed,
        "failures": [f"L={r['L']} {r['check']} {r['dtype']}: {r['status']}" for r in failed],
        "exit_status": 0 if not failed else 1,
    }


@partial(jax.jit, static_argnames=("mask", "scale"))
def _dump(params, H, *, mask: str, scale: str):
    return jax.vmap(lambda h: trajectory(params, h, mask=mask, scale=scale))(H)


def dump_trajectory(params: LinearAttentionParams, H: jax.Array, *, L: int, dtype: str, mask: str, scale: str) -> dict:
    """The trajectory of the first ``L`` layers in ``dtype``: ``delta_w, G, W (B, L, D, D)``,
    ``states (B, L+1, D, N+1)`` as numpy arrays."""
    dt = DTYPES[dtype]
    traj = _dump(prefix(params, L, dt), jnp.asarray(H, dt), mask=mask, scale=scale)
    return {k: np.asarray(v) for k, v in traj._asdict().items()}


# ------------------------------------------------------------------------------------------
# the printed table


def _fmt(x) -> str:
    return f"{'—':>9}" if x is None else f"{x:9.2e}"


def _nonfinite(r) -> str:
    if not r["n_nonfinite"]:
        return "0"
    return f"{r['n_nonfinite']}@L{r['first_nonfinite_layer']} {r['first_nonfinite_quantity']}"


def format_block(title: str, block: dict, dtypes: Sequence[str]) -> str:
    """The table of one block: rows ``(L, check)``, a column group per dtype, then the predictions."""
    by = {(r["L"], r["check"], r["dtype"]): r for r in block["rows"]}
    Ls = sorted({r["L"] for r in block["rows"]})
    head = f"{'L':>3} {'check':<5}"
    sub = " " * 9
    for dt in dtypes:
        tol = next(r["tol"] for r in block["rows"] if r["dtype"] == dt)
        group = f"{dt} (tol {tol:.0e})"
        sub += f" | {group:^45}"
        head += f" | {'max':>9} {'median':>9} {'nonfinite':>15} {'status':>9}"
    lines = [title, sub, head, "-" * len(head)]
    for L in Ls:
        for check in (*IDENTITY_CHECKS, "T5"):
            line = f"{L:>3} {check:<5}"
            for dt in dtypes:
                r = by[(L, check, dt)]
                if check == "T5":
                    mx = "—" if r["max_rank"] is None else f"rank {r['max_rank']}"
                    line += f" | {mx:>9} {'≤ ' + str(r['bound']):>9} {_nonfinite(r):>15} {r['status']:>9}"
                else:
                    line += f" | {_fmt(r['max'])} {_fmt(r['median'])} {_nonfinite(r):>15} {r['status']:>9}"
            lines.append(line)
    for p in block["predictions"]:
        if p["dtype"] == dtypes[0]:
            fv = "—" if p["fast_vs_tokens_rel_err"] is None else f"{p['fast_vs_tokens_rel_err']:.1e}"
            st = "—" if p["max_abs_state"] is None else f"{p['max_abs_state']:.3g}"
            mean = "—" if p["mean"] is None else f"{p['mean']:+.3g} ± {p['std']:.3g}"
            lines.append(
                f"  L={p['L']:<3} {dtypes[0]}: ŷ (readout {p['readout']:+d}) = {mean}; "
                f"predict vs predict_tokens rel. err {fv}; max |h| over finite prompts {st}"
            )
    return "\n".join(lines)


def report(results: dict) -> str:
    """The printed report of a verify_theorem1 results dict: both tables and the verdict line (last)."""
    c = results["config"]
    dtypes = tuple(d for d in ("float64", "float32") if c["dtype"] in (d, "both"))
    scale = (f"init_scale {results['init_scale']:.4g} (std init_scale/√D)" if results["init_scale"] is not None
             else "weights from file")
    common = (f"d_in={c['d_in']} d_out={c['d_out']} N={c['n_demos']} B={c['batch']} mask={c['mask']} s={c['scale']} "
              f"weights: {results['weights']}; prompts: {results['prompts']}")
    out = [format_block(f"Theorem 1, main block ({scale}): errors = max over layers t ≤ L per prompt; "
                               f"max/median over finite prompts\n  {common}", results["main"], dtypes)]
    if results["overflow"] is not None:
        out.append(format_block(
            f"Overflow regime, INFORMATIONAL (init_scale {results['overflow']['init_scale']:g}, same draw rescaled); "
            "does not set the exit status; non-finite prompts are never a pass", results["overflow"], dtypes))
    else:
        out.append(f"Overflow block skipped: {results['overflow_skipped']}")
    verdict = "PASS" if results["passed"] else "FAIL: " + "; ".join(results["failures"][:6])
    out.append(f"Result ({results['decisive_dtype']} checks of the main block decide): {verdict} "
               f"→ exit {results['exit_status']}")
    return "\n\n".join(out)
