"""Theorem 2 under SVD truncation, layer by layer: the bound against the measured generalization gap.

For every (pruned layer k, clipping rate ξ, target) and the unpruned model, over prompts and seeds
(SPEC §6–7): the kept rank; per term t the rank of C_t beside its structural upper bound; the bound
in the registry's reported form (finite and continuous in the weights: C_t + ε_t I, ε_t = ε·E tr C_t/d,
:mod:`lintrans.bound_forms`) with its ε sweep, /R and with R̂; the ICL test error and the gap
L_μ − L_S. It also draws the reported bound along weight noise → 0 and along ξ over one layer.

Models: the GD construction (SPEC §4) with relative weight noise (default), --params FILE.npz, or
--checkpoint RUN_DIR (a linear run; its seeds are the seeds here). Settings: small (d_in = 3,
N = 64, b = 16), small_noisy (label noise σ = 0.5), d20 (d_in = 20, N = 256, 4 layers, target attn).
A loaded model fixes d_in and L (a run also N, σ and its options).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lintrans import cli
from lintrans.bound_forms import EPS_DEFAULT, EPS_GRID, FORMS, REPORTED, THE_BOUND, get_form
from lintrans.bound_report import continuity_path, noisy_gd_construction, sweep_study, xi_path_params
from lintrans.cli import option
from lintrans.params import FIELDS, LinearAttentionParams, load_params
from lintrans.pruning import PAPER_RATES
from lintrans.tasks import sample_linear

LINEAR_TARGETS = ("K", "Q", "V", "attn")
# name: (d_in, N, b, prompts per seed, label noise σ, seeds, L, targets)
SETTINGS = {
    "small": (3, 64, 16, 256, 0.0, 3, 8, LINEAR_TARGETS),
    "small_noisy": (3, 64, 16, 256, 0.5, 3, 8, LINEAR_TARGETS),
    "d20": (20, 256, 64, 4, 0.0, 1, 4, ("attn",)),  # 210 of 441 directions; one SVD of 231 × 441 per term
}
KEYS = ("d_in", "n_demos", "shots", "n_prompts", "noise_std", "n_seeds", "n_layers", "targets")
NOISE_PATH = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 0.0)


@dataclasses.dataclass(frozen=True)
class Config:
    """Theorem 2 under SVD truncation: the bound against the measured gap, layer by layer."""

    settings: tuple[str, ...] = option(tuple(SETTINGS), "settings, comma-separated (the first is plotted)",
                                       choices=tuple(SETTINGS))
    params: str | None = option(None, "weights npz (w_k, w_q, w_v) instead of the construction", kind="input_file")
    checkpoint: str | None = option(None, "a linear training run instead of the construction", kind="input_dir")
    step: int | None = option(None, "checkpoint step (default: the latest); only with --checkpoint", low=0)
    n_layers: int | None = option(None, "L of the construction (a loaded model fixes it)", low=1, high=64)
    n_demos: int | None = option(None, "N, demonstrations per prompt (default: the setting's or the run's)", low=2)
    shots: int | None = option(None, "b < N, the shot count of C_t (default: the setting's, N/4 for a model)", low=1)
    n_prompts: int | None = option(None, "prompts per seed (default: the setting's)", low=2)
    noise_std: float | None = option(None, "label noise σ (default: the setting's or the run's)", low=0.0)
    seeds: int | None = option(None, "seeds (default: the setting's; a run: all of its seeds)", low=1, high=1000)
    rates: tuple[float, ...] = option(PAPER_RATES, "clipping rates ξ, comma-separated, each in [0, 1)", parse=cli.rates)
    targets: tuple[str, ...] | None = option(None, "targets, comma-separated (default: the setting's)",
                                             choices=LINEAR_TARGETS)
    weight_noise: float | None = option(None, "construction only: noise std relative to each matrix's largest "
                                        "entry (default 0.01; 0 is the exact construction)", low=0.0)
    eps: tuple[float, ...] = option(EPS_GRID, "relative ridges ε of the ε sweep, comma-separated", low=1e-300, high=1e6)
    plot_eps: float = option(EPS_DEFAULT, "the ridge ε of the reported bound (one of --eps)", low=1e-300)
    form: str = option(THE_BOUND, "the reported form (finite and continuous)", choices=REPORTED)
    mask: str | None = option(None, "--params only: attention mask (default demos)", choices=("demos", "causal"))
    scale: str | None = option(None, "--params only: scale s (default 1)", choices=("1", "1/N"))
    readout: int | None = option(None, "--params only: readout sign (default 1)", choices=(1, -1))
    xi_layer: int | None = option(None, "layer of the ξ path of the continuity figure (default: L/2)", low=1)
    tag: str | None = option(None, "suffix of the figure names, letters/digits/-/_ (e.g. trained)")
    seed: int = option(0, "random seed (weight noise and prompts)", low=0)

    def check(self, given: frozenset[str] = frozenset()) -> None:
        loaded = self.params is not None or self.checkpoint is not None
        if self.params is not None and self.checkpoint is not None:
            raise ValueError("--params and --checkpoint are two models; give one")
        if self.step is not None and self.checkpoint is None:
            raise ValueError("--step has no meaning without --checkpoint")
        for f in ("n_layers", "weight_noise"):
            if loaded and getattr(self, f) is not None:
                raise ValueError(f"--{f.replace('_', '-')} has no meaning with a loaded model (it fixes the weights)")
        for f in ("mask", "scale", "readout"):
            if getattr(self, f) is not None and self.params is None:
                raise ValueError(f"--{f} is for --params only (the construction uses SPEC §4's options, a run its own)")
        if self.plot_eps not in self.eps:
            raise ValueError(f"--plot-eps {self.plot_eps:g} must be one of --eps {','.join(f'{e:g}' for e in self.eps)}")
        if self.tag is not None and not (self.tag and self.tag.replace("-", "").replace("_", "").isalnum()):
            raise ValueError(f"--tag must be letters, digits, '-' or '_', got {self.tag!r}")
        if self.shots is not None and self.n_demos is not None and self.shots >= self.n_demos:
            raise ValueError(f"--shots must be < --n-demos = {self.n_demos}, got {self.shots}")


QUICK = dict(settings=("small",), n_prompts=32, seeds=2, rates=(0.0, 0.5, 0.75, 0.9), n_demos=24, shots=6)


def _loaded(config: Config, seed_index: int):
    """``(params, options, run config)`` of a loaded model (float64)."""
    if config.params is not None:
        p = load_params(config.params, dtype=jnp.float64)
        return p, {"mask": config.mask or "demos", "scale": config.scale or "1", "readout": config.readout or 1}, {}
    from lintrans.checkpoint import load_linear_params

    p, run = load_linear_params(config.checkpoint, seed_index=seed_index, step=config.step)
    p = LinearAttentionParams(*(jnp.asarray(getattr(p, f), jnp.float64) for f in FIELDS))
    return p, {"mask": run["mask"], "scale": run["scale"], "readout": int(run["readout"])}, run


def _setting(config: Config, name: str) -> dict:
    s = dict(zip(KEYS, SETTINGS[name]), name=name)
    if config.params is not None or config.checkpoint is not None:
        p, _, run = _loaded(config, 0)
        s.update(name="loaded", d_in=p.dim - 1, n_layers=p.n_layers, n_demos=int(run.get("n_demos", s["n_demos"])),
                 noise_std=float(run.get("noise_std", 0.0)), n_seeds=int(run.get("seeds", 1)) if run else 1)
        s["shots"] = max(1, s["n_demos"] // 4)
        if config.seeds is not None and run and config.seeds > s["n_seeds"]:
            raise ValueError(f"--seeds {config.seeds}: the run {config.checkpoint} has {s['n_seeds']} seed(s)")
    for key, field in (("n_layers", "n_layers"), ("n_demos", "n_demos"), ("shots", "shots"), ("n_prompts", "n_prompts"),
                       ("noise_std", "noise_std"), ("n_seeds", "seeds"), ("targets", "targets")):
        if getattr(config, field) is not None:
            s[key] = getattr(config, field)
    if not 1 <= s["shots"] < s["n_demos"]:
        raise ValueError(f"--shots: b must satisfy 1 <= b < N = {s['n_demos']} (setting {name}), got {s['shots']}")
    if config.xi_layer is not None and config.xi_layer > s["n_layers"]:
        raise ValueError(f"--xi-layer must be in 1..L = {s['n_layers']}, got {config.xi_layer}")
    cli.check_size(s["n_prompts"] * (s["d_in"] + 1) ** 4 * s["n_layers"], f"setting {name}: prompt × term spectra",
                   itemsize=8, copies=4)
    return s


def _run_setting(config: Config, s: dict, progress, continuity: bool) -> dict:
    root = jax.random.PRNGKey(config.seed)
    construct = config.params is None and config.checkpoint is None
    noise = 0.01 if config.weight_noise is None else config.weight_noise
    models, batches, opts = [], [], {"mask": "demos", "scale": "1", "readout": -1}
    for i in range(s["n_seeds"]):
        if construct:
            models.append(noisy_gd_construction(jax.random.fold_in(root, 1000 + i), s["d_in"], s["n_demos"],
                                                s["n_layers"], noise))
        else:
            p, opts, _ = _loaded(config, i if config.checkpoint else 0)
            models.append(p)
        key = jax.random.fold_in(jax.random.fold_in(root, 2000 + i), s["d_in"])
        batches.append(sample_linear(key, s["n_prompts"], s["n_demos"], s["d_in"], noise_std=s["noise_std"],
                                     dtype=jnp.float64))
    out = sweep_study(models, batches, s["shots"], rates=config.rates, targets=tuple(s["targets"]), eps=config.eps,
                      noise_std=s["noise_std"], progress=progress, **opts)
    desc = (f"GD construction (SPEC §4) + weight noise {noise:g}" if construct else
            f"weights from {config.params}" if config.params else f"run {config.checkpoint} (step {config.step or 'latest'})")
    if continuity:
        out["continuity"] = _continuity(config, s, models[0], batches[0].H, opts, construct)
    return {"setting": s, "model": desc, "options": opts, **out}


def _continuity(config, s, params, H, opts, construct) -> dict:
    """The first model's weights + levels × fixed relative draws (→ 0), and ξ over one layer."""
    root, L = jax.random.PRNGKey(config.seed), s["n_layers"]
    if construct:
        fam = noisy_gd_construction(jax.random.fold_in(root, 1000), s["d_in"], s["n_demos"], L, jnp.asarray(NOISE_PATH))
        model = "GD construction + weight noise"
    else:
        keys = jax.random.split(jax.random.fold_in(root, 3000), 3)
        lv = jnp.asarray(NOISE_PATH).reshape(-1, 1, 1, 1)
        fam = LinearAttentionParams(*(a + lv * jnp.max(jnp.abs(a)) * jax.random.normal(k, a.shape, a.dtype)
                                      for a, k in zip(params, keys)))
        model = "loaded weights + weight noise"
    kw = dict(eps=config.plot_eps, mask=opts["mask"], scale=opts["scale"])
    path = continuity_path(fam, H, s["shots"], **kw)
    xis = np.round(np.linspace(0.0, 0.995, 200), 4)
    layer, target = config.xi_layer or max(1, L // 2), "attn" if "attn" in s["targets"] else s["targets"][0]
    fam, ranks, where = xi_path_params(params, layer, target, xis)  # each kept rank evaluated once
    xi_path = {k: v[where] for k, v in continuity_path(fam, H, s["shots"], **kw).items()}
    return {
        "noise": {"levels": list(NOISE_PATH), "model": model, **{k: v.tolist() for k, v in path.items()}},
        "xi": {"xis": xis.tolist(), "ranks": ranks.tolist(), "layer": layer, "target": target,
               **{k: v.tolist() for k, v in xi_path.items()}},
    }


def run(config: Config, *, quiet: bool = False) -> dict:
    """Every setting (a loaded model: one, ``loaded``); JSON-able results, the first setting plotted."""
    jax.config.update("jax_enable_x64", True)  # the bound needs float64; a CLI user cannot set it
    config.check()
    settings = [_setting(config, n) for n in (config.settings[:1] if config.params or config.checkpoint else config.settings)]
    progress = cli.Progress(sum(s["n_seeds"] for s in settings), "bound_vs_layer", quiet=quiet, unit="seeds")
    results = {"settings": {s["name"]: _run_setting(config, s, progress, i == 0) for i, s in enumerate(settings)}}
    results.update(form=config.form, plot_eps=config.plot_eps, tag=config.tag,
                   forms={k: f._asdict() for k, f in FORMS.items()})
    if not quiet:
        print(table(results))
    return results


def table(results) -> str:
    """The printed table: per setting the checks, then one row per distinct clip of the plotted target."""
    form, eps = results["form"], results["plot_eps"]
    key, lines = f"{form}@{eps:g}", []
    for name, res in results["settings"].items():
        c, u, s = res["checks"], res["unpruned"], res["setting"]
        lines += [f"== {name}: {res['model']} (N={s['n_demos']}, b={s['shots']}, σ={s['noise_std']}, {s['n_prompts']} "
                  f"prompts × {s['n_seeds']} seeds, {res['n_points']} sweep points in {res['sweep_seconds']:.1f} s)",
                  f"rank C_t unpruned {c['rank_C_measured']} (min, max over prompts and terms); structural upper "
                  f"bound {sorted(set(c['rank_C_structural_bound']))}; d = {c['d']}",
                  f"the bound: {form} (ε = {eps:g}), {get_form(form).note}",
                  f"unpruned bound/R {u['bound_over_R'][key]:.4g}, with R̂ = {u['R_hat']:.3g}: {u['bound_R_hat'][key]:.3g}; "
                  f"gap {u['gap']:.3g} ± {u['gap_ci95']:.2g}; test error {u['test_error']:.3g}",
                  f"min summand (reported forms, every prompt/term/point): {c['min_summand_reported']:.3g}; "
                  f"ε-sweep slope {c['ridge_slope_per_log_inv_eps']:.1f} per log(1/ε) (Σ_t (d − r_t) = {c['ridge_slope_predicted']})",
                  f"{'k':>3} {'target':>6} {'ξ (same clip)':>18} {'r':>5} {'rank C_k':>9} {'bound/R':>9} "
                  f"{'bound(R̂)':>9} {'test error':>10} {'Δ vs unpruned ± 95%':>22} {'gap ± 95%':>20}"]
        for r in sorted(res["rows"], key=lambda r: (r["target"], r["layer"], min(r["xis"]))):
            k = r["layer"]
            lines.append(f"{k:>3} {r['target']:>6} {','.join(f'{x:g}' for x in r['xis']):>18} "
                         f"{'/'.join(str(v) for v in sorted(set(r['rank'].values()))):>5} "
                         f"{r['rank_C_min'][k - 1]:>4}..{r['rank_C_max'][k - 1]:<4} {r['bound_over_R'][key]:>9.4g} "
                         f"{r['bound_R_hat'][key]:>9.3g} {r['test_error']:>10.4g} {r['d_test_error']:>+12.2e} ± "
                         f"{r['d_test_error_ci95']:<8.1e} {r['gap']:>+10.3g} ± {r['gap_ci95']:<8.2g}")
    return "\n".join(lines)


def plot(results: dict) -> dict:
    from lintrans.plots.bound import figures

    return figures(results)


def main(argv=None) -> int:
    return cli.main(Config, run, plot, argv, name="bound_vs_layer", doc=__doc__, presets={"quick": QUICK})


if __name__ == "__main__":
    cli.command(main)
