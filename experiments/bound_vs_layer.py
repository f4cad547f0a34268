"""Theorem 2 under SVD truncation, layer by layer: the bound against the measured generalization gap.

For every (pruned layer k, clipping rate ξ, target) — and for the unpruned model — this script
evaluates, over a batch of in-context regression prompts and several seeds (SPEC §6–7):

* the rank kept by the truncation, and per term t the rank of the noise covariance ``C_t``;
* the summands of every form of the bound: as printed (``*_raw``: ``+∞``, ``C_t`` is singular),
  ridged (``C_t + ε_t I`` with ``ε_t = ε·E[tr C_t]/d``, an ε sweep) and support-restricted
  (``d → r_t``, ``log det → log pdet``: THIS PROJECT'S DERIVATION, NOT THE PAPER'S), each in the
  printed form (``E`` outside the log, ``‖ΔW_t‖²‖I + W_{t-1}‖²``) and the proof's form (``E`` inside,
  ``‖G_t‖²``); the bounds ``/R`` and with ``R̂`` (:func:`lintrans.bound.estimate_R`);
* the ICL test error, the measured gap ``L_μ(W_L) − L_S(W_L)`` and ``‖G_t‖``.

Models: ``--construct gd`` (default): the GD construction (SPEC §4; ``η = 1/(N(1 + √(d/N))²)``,
about ``1/λ_max(Σ_i x_i x_iᵀ)``) with relative Gaussian noise on every weight so the weights are
generic; ``--params FILE.npz`` (arrays ``w_k, w_q, w_v``); ``--checkpoint RUN_DIR`` (a linear run of
``lintrans.checkpoint``; seeds of the run are the seeds here). Settings (default all three):
``small`` (d_in = 3, N = 64, b = 16, noiseless), ``small_noisy`` (the same with label noise
σ = 0.5) and ``d20`` (d_in = 20, N = 256 > d_in(d_in+1)/2 = 210 so that ``G_t`` lies in the support,
b = 64, 4 layers, 4 prompts, 1 seed, target ``attn``: each term is a 210 × 210 ``eigh``). A loaded
model fixes d_in and L; its N defaults to the run's.

Outputs: ``results/bound_vs_layer.json`` (+ the figures ``bound_vs_layer.png``, ``bound_terms.png``,
``pruning_gap_vs_layer.png`` of the first setting) and a printed table.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from lintrans.bound import EPS_GRID, RTOL  # noqa: E402
from lintrans.bound_sweep import bound_sweep  # noqa: E402
from lintrans.constructions import gd_construction  # noqa: E402
from lintrans.experiment import ArgParser, Progress, cli, load_results, save_figure, save_results  # noqa: E402
from lintrans.params import FIELDS, LinearAttentionParams, load_params  # noqa: E402
from lintrans.pruning import PAPER_RATES, check_rate  # noqa: E402
from lintrans.tasks import sample_linear  # noqa: E402
from lintrans.truncation import TARGETS, condition_numbers  # noqa: E402

NAME = "bound_vs_layer"
CAP = 100.0  # figure: ICL errors beyond this (the zero predictor scores ≈ 1) are drawn at the cap, in red
LINEAR_TARGETS = ("K", "Q", "V", "attn")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    d_in: int  # input dimension (a loaded model fixes it)
    n_demos: int  # N, demonstrations per prompt = the learner's training set
    shots: int  # b < N, the shot count of the noise covariance C_t
    n_prompts: int  # prompts per seed
    noise_std: float  # label noise σ of the task
    n_seeds: int  # seeds (weight noise and prompts; a checkpoint's seeds)
    n_layers: int  # L of the construction (a loaded model fixes it)
    targets: tuple[str, ...]  # of K, Q, V, attn


SETTINGS = {
    "small": Setting("small", 3, 64, 16, 256, 0.0, 3, 8, LINEAR_TARGETS),  # the small config
    "small_noisy": Setting("small_noisy", 3, 64, 16, 256, 0.5, 3, 8, LINEAR_TARGETS),  # rank with label noise
    "d20": Setting("d20", 20, 256, 64, 4, 0.0, 1, 4, ("attn",)),  # Garg's d = 20; 210 × 210 eigh per term
}


@dataclasses.dataclass(frozen=True)
class Config:
    source: str = "construct"  # "construct" (GD + weight noise), "params" (npz) or "checkpoint" (run dir)
    path: str | None = None  # the npz file or run directory of a loaded model
    step: int | None = None  # checkpoint step (None: the latest)
    settings: tuple[Setting, ...] = tuple(SETTINGS.values())  # the first one is plotted
    rates: tuple[float, ...] = PAPER_RATES  # the paper's candidate clipping rates ξ
    rule: str = "exact"  # rank rule of SPEC §6
    weight_noise: float = 0.01  # construction: noise std relative to each matrix's largest entry
    eps: tuple[float, ...] = EPS_GRID  # relative ridges of the ε sweep
    plot_eps: float = 1e-3  # the ridge shown in the per-layer figures
    plot_xi: float = 0.5  # the rate of the per-term figure
    mask: str = "demos"  # model options for --params (a construction uses SPEC §4's, a run its own)
    scale: str = "1"
    readout: int = 1
    rtol: float = RTOL  # relative eigenvalue threshold of rank C_t and log pdet
    seed: int = 0


# ----------------------------------------------------------------------------- models


def _construct(key, setting: Setting, weight_noise: float):
    """GD construction (SPEC §4) plus relative Gaussian weight noise; options ``demos``, ``1``, ``−1``."""
    N, d = setting.n_demos, setting.d_in
    eta = 1.0 / (N * (1.0 + np.sqrt(d / N)) ** 2)
    p = gd_construction([eta] * setting.n_layers, d)
    keys = jax.random.split(key, 3)
    noisy = [a + weight_noise * jnp.max(jnp.abs(a)) * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(p, keys)]
    return LinearAttentionParams(*noisy), {"mask": "demos", "scale": "1", "readout": -1, "eta": eta}


def _load_checkpoint(path, seed_index, step):
    try:
        from lintrans.checkpoint import load_linear_params
    except ImportError as e:  # the training issue's module is optional here
        raise ValueError(f"--checkpoint needs lintrans.checkpoint, which is not available ({e})") from None
    params, cfg = load_linear_params(path, seed_index=seed_index, step=step)
    params = LinearAttentionParams(*(jnp.asarray(getattr(params, f), jnp.float64) for f in FIELDS))
    return params, cfg


def _models(config: Config, setting: Setting):
    """``[(params, options)]`` per seed, and a description of the model."""
    if config.source == "construct":
        root = jax.random.PRNGKey(config.seed)
        models = [_construct(jax.random.fold_in(root, 1000 + s), setting, config.weight_noise) for s in range(setting.n_seeds)]
        return models, f"GD construction (SPEC §4), η = {models[0][1]['eta']:.4g}, weight noise {config.weight_noise}"
    if config.source == "params":
        p = load_params(config.path, dtype=jnp.float64)
        opts = {"mask": config.mask, "scale": config.scale, "readout": config.readout}
        return [(p, opts)] * setting.n_seeds, f"weights from {config.path}"
    p, cfg = _load_checkpoint(config.path, 0, config.step)
    n_avail = int(cfg.get("seeds", 1))
    models = []
    for s in range(setting.n_seeds):
        ps = p if s == 0 else _load_checkpoint(config.path, s % n_avail, config.step)[0]
        models.append((ps, {"mask": cfg["mask"], "scale": cfg["scale"], "readout": int(cfg["readout"])}))
    return models, f"trained run {config.path} (step {config.step or 'latest'}, {n_avail} seed(s))"


def resolve_settings(config: Config, overrides: dict | None = None) -> Config:
    """Validate; apply ``overrides`` (Setting fields) to every setting. A loaded model replaces the
    settings by one, ``loaded``, with its d_in and L (a run's N and σ too) unless overridden."""
    if config.source not in ("construct", "params", "checkpoint"):
        raise ValueError(f"source must be construct, params or checkpoint, got {config.source!r}")
    for x in config.rates:
        check_rate(x)
    overrides = dict(overrides or {})
    if config.source == "construct":
        settings = [dataclasses.replace(s, **overrides) for s in config.settings]
    else:
        if config.source == "params":
            p, extra = load_params(config.path), {}
        else:
            p, cfg = _load_checkpoint(config.path, 0, config.step)
            extra = {"n_demos": int(cfg["n_demos"]), "noise_std": float(cfg.get("noise_std", 0.0))}
        overrides.pop("n_layers", None)
        base = dataclasses.replace(SETTINGS["small"], name="loaded", d_in=p.dim - 1, n_layers=p.n_layers, **extra)
        base = dataclasses.replace(base, shots=max(1, base.n_demos // 4))
        settings = [dataclasses.replace(base, **overrides)]
    for s in settings:
        if not 1 <= s.shots < s.n_demos:
            raise ValueError(f"shots: b must satisfy 1 <= b < N = {s.n_demos} (setting {s.name}), got {s.shots}")
        bad = [t for t in s.targets if t not in LINEAR_TARGETS]
        if bad:
            raise ValueError(f"targets: {bad} not in {LINEAR_TARGETS} (linear attention has no O or mlp)")
    return dataclasses.replace(config, settings=tuple(settings))


# ----------------------------------------------------------------------------- run


def _pooled_ci(means, sems, n):
    """Mean and 95% half-width over all (seed, prompt) pairs from per-seed means/s.e.m. (n prompts each)."""
    means, sems = np.asarray(means, float), np.asarray(sems, float)
    S = means.size
    m = means.mean()
    var = (np.sum((n - 1) * n * sems**2) + n * np.sum((means - m) ** 2)) / max(S * n - 1, 1)
    return float(m), float(1.96 * np.sqrt(var / (S * n)))


def _summarize(entries_per_seed, n_prompts, eps):
    """Aggregate one point over seeds (a list of SweepResult.entry dicts)."""
    e0 = entries_per_seed[0]
    stack = lambda k: np.stack([np.asarray(e[k], float) for e in entries_per_seed])  # noqa: E731
    out = {
        "rank_C_min": np.min(stack("rank_min"), 0).astype(int),
        "rank_C_max": np.max(stack("rank_max"), 0).astype(int),
        "rank_C_mean": stack("rank_mean").mean(0),
        "in_support_frac": stack("in_support_frac").mean(0),
        "summands": {
            f: stack(f).mean(0) for f in ("printed_raw", "proof_raw", "printed_support", "proof_support")
        },
        "norm_G": stack("norm_G").mean(0),
        "trace_C": stack("trace").mean(0),
        "min_prompt_summand": float(min(np.min(stack("printed_support_min")), np.min(stack("printed_ridge_min")),
                                        np.min(stack("proof_support")), np.min(stack("proof_ridge")))),
        "L_S": float(stack("L_S").mean()),
        "L_mu": float(stack("L_mu").mean()),
        "R_hat": float(np.mean([e["R_hat"] for e in entries_per_seed])),
        "nonfinite_prompts": int(stack("nonfinite").sum()),
        "eig_cut": {"smallest_kept_rel": float(np.min(stack("smallest_kept_rel"))),
                    "largest_dropped_rel": float(np.max(stack("largest_dropped_rel")))},
    }
    for f in ("printed_ridge", "proof_ridge"):
        arr = stack(f).mean(0)
        out["summands"][f] = {f"{e:g}": arr[j] for j, e in enumerate(eps)}
    for key in ("test_error", "gap", "d_test_error", "d_gap"):
        m, h = _pooled_ci(stack(key), stack(f"{key}_sem"), n_prompts)
        out[key], out[f"{key}_ci95"] = m, h
        out[f"{key}_seeds"] = stack(key).tolist()
    names = list(e0["bound_over_R"])
    out["bound_over_R"] = {k: float(np.mean([e["bound_over_R"][k] for e in entries_per_seed])) for k in names}
    out["bound_over_R_seeds"] = {k: [e["bound_over_R"][k] for e in entries_per_seed] for k in names}
    out["bound_R_hat"] = {k: float(np.mean([e["bound_R_hat"][k] for e in entries_per_seed])) for k in names}
    reasons = {}
    for e in entries_per_seed:
        reasons.update(e["reasons"])
    out["reasons"] = reasons
    return out


def _run_setting(config: Config, setting: Setting, progress: Progress) -> dict:
    models, description = _models(config, setting)
    sweeps, conds, t0 = [], [], time.perf_counter()
    root = jax.random.PRNGKey(config.seed)
    for s, (params, opts) in enumerate(models):
        key = jax.random.fold_in(jax.random.fold_in(root, 2000 + s), setting.d_in)
        batch = sample_linear(key, setting.n_prompts, setting.n_demos, setting.d_in,
                              noise_std=setting.noise_std, dtype=jnp.float64)
        sweeps.append(bound_sweep(
            params, batch, setting.shots, rates=config.rates, targets=setting.targets, rule=config.rule,
            eps=config.eps, noise_std=setting.noise_std, mask=opts["mask"], scale=opts["scale"],
            readout=opts["readout"], rtol=config.rtol,
        ))
        conds.append({f: v.tolist() for f, v in condition_numbers(params, "attn").items()})
        progress.update(1, info=f"{setting.name} seed {s}")
    elapsed = time.perf_counter() - t0
    sw = sweeps[0]
    D = setting.d_in + 1
    eps = sw.eps
    unpruned = _summarize([x.entry(0) for x in sweeps], setting.n_prompts, eps)
    cache = {0: unpruned}
    entries = []
    for (k, xi, target), point in sw.index.items():
        if point not in cache:
            cache[point] = _summarize([x.entry(point) for x in sweeps], setting.n_prompts, eps)
        row = {"layer": k, "xi": xi, "target": target, "point": point,
               "rank": {f: int(sw.points[point, 1 + FIELDS.index(f)]) if point else D for f in TARGETS[target]}}
        row.update(cache[point])
        entries.append(row)
    # span{h_i h_iᵀ − mean} has dimension ≤ N − 1 as well: the prediction needs N > d_in(d_in+1)/2
    predicted = min(setting.d_in * (setting.d_in + 1) // 2 if setting.noise_std == 0 else D * (D + 1) // 2,
                    setting.n_demos - 1)
    measured = [int(np.min(unpruned["rank_C_min"])), int(np.max(unpruned["rank_C_max"]))]
    # ε sweep of the unpruned model: Σ_t summand ≈ Σ_t (d − r_t) log(1/ε) + const as ε → 0
    sweep_rows = []
    for e in eps:
        key = f"{e:g}"
        sweep_rows.append({
            "eps": e,
            **{f"{f}_sum": float(np.sum(unpruned["summands"][f][key])) for f in ("printed_ridge", "proof_ridge")},
            **{f"{f}_bound_over_R": unpruned["bound_over_R"][f"{f}@{key}"] for f in ("printed_ridge", "proof_ridge")},
        })
    slope = (sweep_rows[0]["printed_ridge_sum"] - sweep_rows[1]["printed_ridge_sum"]) / np.log(eps[1] / eps[0])
    all_min = min(x["min_prompt_summand"] for x in cache.values())
    forms = [k for k in unpruned["bound_R_hat"] if np.isfinite(unpruned["bound_R_hat"][k])]
    holds = {f: float(np.mean([x["bound_R_hat"][f] >= abs(x["gap"]) for x in cache.values()])) for f in forms}
    larger = {}
    for f in ["support"] + [f"ridge@{e:g}" for e in eps]:
        pr = "printed_" + f if f == "support" else "printed_" + f
        pf = pr.replace("printed_", "proof_")
        pairs = [(x["bound_over_R"][pr], x["bound_over_R"][pf]) for x in cache.values()]
        finite = [(a, b) for a, b in pairs if np.isfinite(a) and np.isfinite(b)]
        larger[f] = {"printed_larger_fraction": float(np.mean([a > b for a, b in finite])) if finite else None,
                     "points_compared": len(finite), "points_infinite": len(pairs) - len(finite)}
    checks = {
        "rank_C_predicted": predicted,
        "rank_C_measured": measured,
        "rank_C_mean_unpruned": float(np.mean(unpruned["rank_C_mean"])),
        "rank_C_note": "prediction for generic weights: min(d_in(d_in+1)/2 noiseless or D(D+1)/2 with label noise "
                       "(SPEC §7), N - 1)",
        "d": D * D,
        "min_summand": all_min,
        "all_summands_nonnegative": bool(all_min >= -1e-9),
        "in_support_min_frac": float(min(np.min(x["in_support_frac"]) for x in cache.values())),
        "eig_cut": {"smallest_kept_rel": float(min(x["eig_cut"]["smallest_kept_rel"] for x in cache.values())),
                    "largest_dropped_rel": float(max(x["eig_cut"]["largest_dropped_rel"] for x in cache.values()))},
        "bound_R_hat_ge_abs_gap_fraction": holds,
        # R̂ ≥ √2·E L_μ, so bound(R̂) ≥ √2·(bound/R)·E L_μ: above ~0.7·bound/R it exceeds the risk itself
        "bound_R_hat_over_L_mu_unpruned": {f: unpruned["bound_R_hat"][f] / unpruned["L_mu"] for f in forms
                                          if "ridge" not in f or "0.001" in f},
        "larger_form": larger,
        "ridge_slope_per_log_inv_eps": float(slope),
        "ridge_slope_predicted": int(np.sum(D * D - np.asarray(unpruned["rank_C_min"]))),
        "nonfinite_prompts": int(sum(x["nonfinite_prompts"] for x in cache.values())),
    }
    return {
        "setting": dataclasses.asdict(setting),
        "model": description,
        "options": {k: v for k, v in models[0][1].items()},
        "n_layers": int(models[0][0].n_layers),
        "r0": sw.r0,
        "condition_numbers_attn": conds,
        "unpruned": unpruned,
        "entries": entries,
        "eps_sweep": sweep_rows,
        "deep_vs_shallow": _deep_vs_shallow(entries, unpruned, int(models[0][0].n_layers)),
        "checks": checks,
        "sweep_seconds": elapsed,
        "n_points": int(sw.points.shape[0]),
    }


def _deep_vs_shallow(entries, unpruned, L):
    """Per (target, ξ): median |Δ| from the unpruned value over the shallow half (k ≤ L/2) and the deep
    half (a median, since one clipped layer can make the states explode), and Δ for every layer."""
    out = []
    half = L // 2
    by = {}
    for e in entries:
        by.setdefault((e["target"], e["xi"]), {})[e["layer"]] = e
    for (target, xi), rows in by.items():
        if xi == 0 or len(rows) < 2:
            continue
        rec = {"target": target, "xi": xi}
        for q, get in (
            ("test_error", lambda e: e["d_test_error"]),
            ("bound_proof_support", lambda e: _num(e["bound_over_R"]["proof_support"])
             - _num(unpruned["bound_over_R"]["proof_support"])),
        ):
            with np.errstate(invalid="ignore"):  # inf − inf (an infinite bound) is reported, not compared
                d = {k: abs(get(e)) for k, e in rows.items()}
            if not all(np.isfinite(v) for v in d.values()):
                rec[q] = {"deep_steadier": None, "reason": "the bound is +inf at some layer (see reasons)"}
                continue
            sh = np.median([v for k, v in d.items() if k <= half])
            dp = np.median([v for k, v in d.items() if k > half])
            rec[q] = {"shallow_median_abs_change": float(sh), "deep_median_abs_change": float(dp),
                      "deep_steadier": bool(dp < sh), "change_by_layer": {str(k): float(get(e)) for k, e in sorted(rows.items())}}
            if q == "test_error":
                rec[q]["ci95_by_layer"] = {str(k): float(e["d_test_error_ci95"]) for k, e in sorted(rows.items())}
        out.append(rec)
    return out


def run(config: Config, quiet: bool = False) -> dict:
    """Evaluate every setting of ``config`` (call :func:`resolve_settings` first for a loaded model)."""
    progress = Progress(sum(s.n_seeds for s in config.settings), NAME, quiet=quiet)
    return {"source": config.source, "settings": {s.name: _run_setting(config, s, progress) for s in config.settings}}


# ----------------------------------------------------------------------------- figures


def _primary(results):
    return next(iter(results["settings"].values()))


def _xi_label(res, xi, target="attn"):
    """``ξ ∈ {…} (r=…)``: every rate of the candidate set that keeps the same rank as ``xi``."""
    rank = {e["xi"]: next(iter(e["rank"].values())) for e in res["entries"] if e["target"] == target and e["layer"] == 1}
    same = [x for x in sorted(rank) if rank[x] == rank[xi]]
    names = f"{same[0]:g}" if len(same) == 1 else "{" + ",".join(f"{x:g}" for x in same) + "}"
    return f"ξ={names} (r={rank[xi]})"


def _series(res, target, get):
    """``(rates, ks, {ξ: values over k})`` with one ξ per distinct kept rank (equal r, equal clip)."""
    L = res["n_layers"]
    table = {(e["layer"], e["xi"]): e for e in res["entries"] if e["target"] == target}
    rates, seen = [], set()
    for xi in sorted({e["xi"] for e in res["entries"]}):
        r = tuple(table[(1, xi)]["rank"].values())
        if r not in seen:
            seen.add(r)
            rates.append(xi)
    return rates, np.arange(1, L + 1), {xi: np.array([get(table[(k, xi)]) for k in range(1, L + 1)]) for xi in rates}


def _num(x):
    return np.inf if isinstance(x, str) else float(x)


def plot(results):
    """``bound_vs_layer.png``: both forms (support-restricted and ridged) against the pruned layer."""
    import matplotlib.pyplot as plt

    res = _primary(results)
    target = "attn" if "attn" in res["setting"]["targets"] else res["setting"]["targets"][0]
    eps_key = f"{results.get('plot_eps', 1e-3):g}"
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    cmap = plt.get_cmap("viridis")
    panels = [
        (axes[0, 0], "printed_support", "printed form, support-restricted\n(THIS PROJECT'S DERIVATION)"),
        (axes[0, 1], "proof_support", "proof form, support-restricted\n(THIS PROJECT'S DERIVATION)"),
        (axes[1, 0], f"printed_ridge@{eps_key}", f"printed form, ridged C_t + εI, ε = {eps_key}"),
        (axes[1, 1], f"proof_ridge@{eps_key}", f"proof form, ridged C_t + εI, ε = {eps_key}"),
    ]
    for ax, form, title in panels:
        rates, ks, ys = _series(res, target, lambda e: _num(e["bound_over_R"][form]))
        for j, xi in enumerate(rates):
            ax.plot(ks, ys[xi], "o-", ms=3, color=cmap(j / max(len(rates) - 1, 1)), label=_xi_label(res, xi, target))
        ax.axhline(_num(res["unpruned"]["bound_over_R"][form]), color="k", ls="--", lw=1, label="unpruned")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(ks)
        ax.set_xlabel(f"pruned layer k ({target})")
        ax.set_ylabel("bound / R")
    axes[0, 0].legend(fontsize=7)
    ax = axes[0, 2]
    sw = res["eps_sweep"]
    e = [r["eps"] for r in sw]
    ax.semilogx(e, [r["printed_ridge_bound_over_R"] for r in sw], "o-", label="printed, ridged")
    ax.semilogx(e, [r["proof_ridge_bound_over_R"] for r in sw], "s-", label="proof, ridged")
    for f, ls in (("printed_support", ":"), ("proof_support", "-.")):
        ax.axhline(_num(res["unpruned"]["bound_over_R"][f]), color="gray", ls=ls, label=f"{f.split('_')[0]}, support")
    ax.set_xlabel("relative ridge ε (ε_t = ε·E tr C_t / d)")
    ax.set_ylabel("bound / R (unpruned)")
    ax.set_title("ε dependence (as ε → 0 the ridged form → +∞)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1, 2]
    pts = [x for x in res["entries"]] + [res["unpruned"]]
    gap = np.array([abs(x["gap"]) for x in pts])
    for f, m in (("proof_support", "o"), ("printed_support", "s"), (f"proof_ridge@{eps_key}", "^")):
        ax.loglog(np.maximum(gap, 1e-16), [_num(x["bound_R_hat"][f]) for x in pts], m, ms=3, alpha=0.6, label=f)
    lo, hi = max(gap.min(), 1e-16), max(gap.max(), 1e-15)
    ax.loglog([lo, hi], [lo, hi], "k--", lw=1, label="bound = |gap|")
    ax.set_xlabel("measured |gap| = |L_μ − L_S| (mean over prompts)")
    ax.set_ylabel("bound with R̂")
    ax.set_title("bound (R̂ = √E Var ℓ, optimistic) vs measured gap, all points", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(f"Theorem 2 vs pruned layer — {res['setting']['name']}: {res['model']}; N={res['setting']['n_demos']}, "
                 f"b={res['setting']['shots']}, d=D²={res['checks']['d']}; the bound as printed is +∞ (rank C_t < d)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_terms(results):
    """``bound_terms.png``: per-term summands for a shallow and a deep pruned layer next to the unpruned ones."""
    import matplotlib.pyplot as plt

    res = _primary(results)
    L = res["n_layers"]
    target = "attn" if "attn" in res["setting"]["targets"] else res["setting"]["targets"][0]
    xi = results.get("plot_xi", 0.5)
    eps_key = f"{results.get('plot_eps', 1e-3):g}"
    k_sh, k_dp = max(1, L // 4), max(1, L - 1)
    table = {(e["layer"], e["xi"]): e for e in res["entries"] if e["target"] == target}
    xi = xi if (k_sh, xi) in table else sorted({x for (_, x) in table})[len({x for (_, x) in table}) // 2]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    t = np.arange(1, L + 1)
    for ax, (form, sub) in zip(axes, [("printed_support", None), ("proof_support", None),
                                      ("printed_ridge", eps_key), ("proof_ridge", eps_key)]):
        def get(x):
            v = x["summands"][form] if sub is None else x["summands"][form][sub]
            return np.array([_num(a) for a in v])
        ax.plot(t, get(res["unpruned"]), "ko-", label="unpruned")
        for k, c in ((k_sh, "tab:blue"), (k_dp, "tab:red")):
            ax.plot(t, get(table[(k, xi)]), "s--", color=c, label=f"{target} of layer {k} clipped (ξ={xi:g})")
            ax.axvline(k, color=c, ls=":", lw=1)
        ax.set_xticks(t)
        ax.set_xlabel("term t")
        ax.set_title(form + (f" (ε={sub})" if sub else " (our derivation)"), fontsize=9)
        ax.set_ylabel("summand")
    axes[0].legend(fontsize=7)
    fig.suptitle("per-term summands: clipping layer k changes only the terms t ≥ k (L − k + 1 of them)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_gap(results):
    """``pruning_gap_vs_layer.png``: ICL test error and measured gap against k and ξ (95% intervals)."""
    import matplotlib.pyplot as plt

    res = _primary(results)
    targets = res["setting"]["targets"]
    fig, axes = plt.subplots(3, len(targets), figsize=(3.4 * len(targets), 8.5), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for j, target in enumerate(targets):
        for row, key, label in ((0, "test_error", "ICL test error (sq. err / d)"),
                                (1, "d_test_error", "Δ test error vs unpruned (paired)"),
                                (2, "gap", "gap L_μ − L_S")):
            ax = axes[row, j]
            rates, ks, ys = _series(res, target, lambda e: e[key])
            _, _, hs = _series(res, target, lambda e: e[f"{key}_ci95"])
            worst = 0.0
            for i, xi in enumerate(rates):
                # the zero predictor scores ≈ 1: beyond CAP a clipped model is broken; draw it at the cap
                y, h = np.clip(ys[xi], -CAP, CAP), np.where(np.abs(ys[xi]) > CAP, 0.0, hs[xi])
                x = ks + 0.04 * (i - len(rates) / 2)
                color = cmap(i / max(len(rates) - 1, 1))
                ax.errorbar(x, y, yerr=h, fmt="o-", ms=2.5, lw=1, elinewidth=0.8, capsize=0, color=color,
                            label=_xi_label(res, xi, target))
                off = np.abs(ys[xi]) > CAP
                ax.plot(x[off], y[off], "^" if key == "test_error" else "x", color="red", ms=6)
                worst = max(worst, float(np.max(np.abs(ys[xi]))))
            if worst > CAP:
                ax.text(0.98, 0.95, f"red: off scale (|value| up to {worst:.1e})", transform=ax.transAxes,
                        ha="right", va="top", fontsize=7, color="red")
            u, h = res["unpruned"][key], res["unpruned"][f"{key}_ci95"]
            if h > 0:
                ax.axhspan(u - h, u + h, color="k", alpha=0.1)
            ax.axhline(u, color="k", ls="--", lw=1, label="unpruned")
            if key == "test_error":
                ax.set_yscale("log")
            else:  # a clipped layer can make the error explode by many orders of magnitude
                lin = max(abs(res["unpruned"]["test_error"]), 1e-12) / (1 if key == "d_test_error" else 10)
                ax.set_yscale("symlog", linthresh=lin)
                allv = np.concatenate([np.concatenate([ys[x], ys[x] + hs[x], ys[x] - hs[x]]) for x in rates])
                lo, top = np.nanmin(allv), min(1.5 * CAP, 3 * np.nanmax(np.abs(allv)) + lin)
                decades = 10.0 ** np.arange(np.ceil(np.log10(lin)), np.log10(top) + 1, 2)
                ticks = np.concatenate([-decades[::-1], [0.0], decades]) if lo < -lin else np.concatenate([[0.0], decades])
                ax.set_yticks(ticks)
                ax.set_ylim(-top if lo < -lin else -lin, top)
            ax.set_title(f"{target}: {label}", fontsize=9)
            ax.set_xticks(ks)
            ax.set_xlabel("pruned layer k")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, bbox_to_anchor=(0.5, -0.02))
    s = res["setting"]
    fig.suptitle(f"{s['name']}: {res['model']}; intervals: 95% over {s['n_prompts']} prompts × {s['n_seeds']} seeds "
                 "(middle row: differences on the same prompts)",
                 fontsize=10)
    fig.tight_layout()
    return fig


FIGURES = {"bound_vs_layer": plot, "bound_terms": plot_terms, "pruning_gap_vs_layer": plot_gap}


def table(results) -> str:
    """The printed table: per setting the checks, then (target attn) every (k, ξ) row."""
    lines = []
    for name, res in results["settings"].items():
        c, u = res["checks"], res["unpruned"]
        lines.append(f"== {name}: {res['model']}  (N={res['setting']['n_demos']}, b={res['setting']['shots']}, "
                     f"σ={res['setting']['noise_std']}, {res['setting']['n_prompts']} prompts × {res['setting']['n_seeds']} seeds, "
                     f"{res['n_points']} sweep points in {res['sweep_seconds']:.1f} s)")
        lines.append(f"rank C_t measured {c['rank_C_measured']} (min, max; mean {c['rank_C_mean_unpruned']:.3f}), "
                     f"predicted {c['rank_C_predicted']}, d = {c['d']}; "
                     f"eigenvalue cut: kept ≥ {c['eig_cut']['smallest_kept_rel']:.1e}·λmax, dropped ≤ "
                     f"{c['eig_cut']['largest_dropped_rel']:.1e}·λmax")
        lines.append(f"min summand over every prompt/term/point/form: {c['min_summand']:.3g} "
                     f"(all ≥ 0: {c['all_summands_nonnegative']}); G_t in supp C_t: min fraction {c['in_support_min_frac']:.3f}")
        lines.append(f"ε sweep slope of Σ_t printed ridge per log(1/ε): {c['ridge_slope_per_log_inv_eps']:.1f} "
                     f"(Σ_t (d − r_t) = {c['ridge_slope_predicted']})")
        lines.append("unpruned: bound/R " + ", ".join(f"{k}={_num(v):.3g}" for k, v in u["bound_over_R"].items()
                                                      if "ridge" not in k or "0.001" in k)
                     + f"; R̂={u['R_hat']:.3g}; gap={u['gap']:.3g}±{u['gap_ci95']:.2g}; test error={u['test_error']:.3g}")
        lines.append("unpruned bound(R̂) / L_μ (the population risk itself): " + ", ".join(
            f"{k}={v:.3g}" for k, v in c["bound_R_hat_over_L_mu_unpruned"].items()))
        lines.append("fraction of points with bound(R̂) ≥ |gap|: " + ", ".join(
            f"{k}={v:.2f}" for k, v in c["bound_R_hat_ge_abs_gap_fraction"].items()))
        lines.append("printed form larger than proof form (fraction of points with both finite): " + ", ".join(
            f"{k}={v['printed_larger_fraction']:.2f}" if v["printed_larger_fraction"] is not None else f"{k}=n/a (inf)"
            for k, v in c["larger_form"].items()))
        for ds in res["deep_vs_shallow"]:
            if ds["target"] == "attn" or "attn" not in res["setting"]["targets"]:
                te, bd = ds["test_error"], ds["bound_proof_support"]
                bound_txt = (f"median |Δ bound/R| shallow {bd['shallow_median_abs_change']:.3g} deep "
                             f"{bd['deep_median_abs_change']:.3g}" if bd["deep_steadier"] is not None else bd["reason"])
                lines.append(f"  deep vs shallow {ds['target']} ξ={ds['xi']:g}: median |Δ test error| shallow half "
                             f"{te['shallow_median_abs_change']:.3g}, deep half {te['deep_median_abs_change']:.3g} (deep steadier: "
                             f"{te['deep_steadier']}); {bound_txt}")
        target = "attn" if "attn" in res["setting"]["targets"] else res["setting"]["targets"][0]
        lines.append(f"{'k':>3} {'ξ':>6} {'r':>3} {'rank C_t':>12} {'printed supp':>12} {'proof supp':>11} "
                     f"{'proof ridge':>11} {'bound(R̂)':>10} {'test error':>11} {'Δ vs unpruned ± 95%':>22} {'gap':>10}"
                     f"   [bound/R unless noted; target {target}; ridge ε = 1e-3]")
        for e in res["entries"]:
            if e["target"] != target:
                continue
            b = e["bound_over_R"]
            lines.append(f"{e['layer']:>3} {e['xi']:>6g} {next(iter(e['rank'].values())):>3} "
                         f"{str(min(e['rank_C_min'])) + '..' + str(max(e['rank_C_max'])):>12} "
                         f"{_num(b['printed_support']):>12.4g} {_num(b['proof_support']):>11.4g} "
                         f"{_num(b['proof_ridge@0.001']) if 'proof_ridge@0.001' in b else float('nan'):>11.4g} "
                         f"{_num(e['bound_R_hat']['proof_support']):>10.3g} {e['test_error']:>11.4g} "
                         f"{e['d_test_error']:>+12.2e} ± {e['d_test_error_ci95']:<8.1e} {e['gap']:>10.3g}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def _csv(kind, conv):
    def parse(text):
        try:
            return tuple(conv(x) for x in text.split(",") if x.strip())
        except ValueError as e:
            raise ValueError(f"{kind}: {e}") from None
    return parse


def main(argv=None) -> int:
    ap = ArgParser(prog=f"python experiments/{NAME}.py", description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="RUN_DIR", help="a linear training run (lintrans.checkpoint)")
    src.add_argument("--params", metavar="FILE.npz", help="weights w_k, w_q, w_v (L, D, D)")
    src.add_argument("--construct", choices=["gd"], help="the GD construction with weight noise (default)")
    ap.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {list(SETTINGS)} (default all)")
    ap.add_argument("--n-layers", type=int, help="override L of the construction")
    ap.add_argument("--n-demos", type=int, help="override N")
    ap.add_argument("--shots", type=int, help="override b (< N)")
    ap.add_argument("--n-prompts", type=int, help="override prompts per seed")
    ap.add_argument("--noise-std", type=float, help="override the label noise σ")
    ap.add_argument("--seeds", type=int, help="override the number of seeds")
    ap.add_argument("--rates", type=_csv("rates", float), help="comma list of ξ (default: the paper's 8)")
    ap.add_argument("--targets", type=_csv("targets", str), help=f"comma list of {LINEAR_TARGETS}")
    ap.add_argument("--weight-noise", type=float, default=Config.weight_noise)
    ap.add_argument("--mask", default="demos")
    ap.add_argument("--scale", default="1")
    ap.add_argument("--readout", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", help="suffix for the results and figure names (e.g. trained → bound_vs_layer_trained.png)")
    ap.add_argument("--json", help="results JSON path (default results/bound_vs_layer[_TAG].json)")
    ap.add_argument("--figures-dir", help="figure directory (default figures/)")
    ap.add_argument("--plot-only", action="store_true", help="re-plot from the saved JSON")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    suffix = ""
    if args.tag is not None:
        if not args.tag.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"--tag must be letters, digits, '-' or '_', got {args.tag!r}")
        suffix = f"_{args.tag}"

    if args.plot_only:
        doc = load_results(args.json or Path(__file__).resolve().parent.parent / "results" / f"{NAME}{suffix}.json")
        results = doc["results"]
    else:
        names = [s.strip() for s in args.settings.split(",") if s.strip()]
        unknown = [n for n in names if n not in SETTINGS]
        if unknown or not names:
            raise ValueError(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
        source, path = ("checkpoint", args.checkpoint) if args.checkpoint else \
            ("params", args.params) if args.params else ("construct", None)
        overrides = {k: v for k, v in (("n_layers", args.n_layers), ("n_demos", args.n_demos), ("shots", args.shots),
                                       ("n_prompts", args.n_prompts), ("noise_std", args.noise_std),
                                       ("n_seeds", args.seeds), ("targets", args.targets)) if v is not None}
        config = Config(source=source, path=path, step=args.step,
                        settings=tuple(SETTINGS[n] for n in names),
                        rates=args.rates or PAPER_RATES, weight_noise=args.weight_noise, mask=args.mask,
                        scale=args.scale, readout=args.readout, seed=args.seed)
        config = resolve_settings(config, overrides)
        results = run(config, quiet=args.quiet)
        results.update(plot_eps=config.plot_eps, plot_xi=config.plot_xi)
        save_results(NAME + suffix, config, results, seed=config.seed, json_path=args.json)
    for name, fn in FIGURES.items():
        save_figure(fn(results), name + suffix, figures_dir=args.figures_dir, dpi=60)
    print(table(results))
    return 0


if __name__ == "__main__":
    cli(main)
