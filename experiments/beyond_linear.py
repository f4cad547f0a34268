"""Beyond linear attention: how far softmax, MLP and LayerNorm take a trained model from implicit GD.

The paper's open question (i) asks how Theorem 1 extends to a standard transformer. This trains
linear attention and its variants with the components of a transformer (an MLP after each layer,
pre-LayerNorm, softmax attention; alone and all together: :mod:`lintrans.variants`) on the same
in-context regression task, then probes every training checkpoint of every seed on one fixed set
of prompts with :mod:`lintrans.implicit`, per layer ``t``: the affinity residual of the query map,
Theorem 1's residual and the distance of ``G_t^J`` from the form ``ΔW_t(I + W_{t−1}^J)`` (from
``jax.jacfwd``), and the implicit weight ``w_eff = ∇_{x_q} ŷ_t`` against step ``t`` of GD at the
rate tuned for ``L`` steps, ridge and least squares. The last checkpoint is also probed with
``W_V`` of the last layer clipped at each rate ξ (SPEC §6): a verdict says whether clipping moves
the model towards or away from GD, only where the 95 % interval over seeds of the paired change
excludes 0. Probes run in float64 on the trained float32 weights, so exact zeros show at rounding
level. Runs are trained once into ``--runs-dir`` and reused (:func:`lintrans.trained.ensure_run`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lintrans import cli, implicit, stats, variants
from lintrans.checkpoint import list_checkpoints, load_run
from lintrans.cli import option
from lintrans.estimators import tune_gd_eta
from lintrans.pruning import kept_rank
from lintrans.tasks import sample_linear
from lintrans.trained import ensure_run, run_name
from lintrans.train import TrainConfig
from lintrans.truncation import truncate_params_to_rank

NAME = "beyond_linear"
#: Registry name → the variant that probes it (the registered ``"linear"`` model is ``linear_attn``).
PROBED = {"linear": "linear_attn", **{n: n for n in variants.VARIANTS if n != "linear_attn"}}


@dataclasses.dataclass(frozen=True)
class Config:
    """Train linear attention and its transformer-component variants; probe implicit GD per layer."""

    models: tuple[str, ...] = option(tuple(PROBED), "models to train and probe", choices=tuple(PROBED))
    d_in: int = option(5, "input dimension d", low=1, high=64)
    n_demos: int = option(20, "demonstrations per prompt N", low=2, high=1000)
    layers: int = option(3, "layers L", low=1, high=16)
    steps: int = option(600, "training steps", low=1, high=10**6)
    batch_size: int = option(128, "training prompts per step", low=1, high=4096)
    lr: float = option(5e-3, "peak Adam learning rate", low=1e-6, high=1.0)
    mlp_width: int = option(20, "hidden width of the MLP variants", low=1, high=1024)
    seeds: int = option(3, "training seeds (intervals are over seeds)", low=1, high=64)
    checkpoint_every: int = option(200, "steps between probed checkpoints", low=1, high=10**6)
    n_probe: int = option(128, "probe prompts, shared by every model, checkpoint and seed", low=2, high=8192)
    n_points: int = option(32, "query perturbations of the affinity fit (> d + 1)", low=3, high=1024)
    radius: float = option(1.0, "perturbation scale relative to the data's RMS coordinate", low=1e-6, high=100.0)
    ridge_lam: float = option(1.0, "ridge λ (multiplies the sum of squares)", low=1e-12, high=1e6)
    rates: tuple[float, ...] = option((0.5, 0.75, 0.9), "clipping rates ξ of the last layer's W_V", parse=cli.rates)
    runs_dir: str = option("runs", "where runs are trained and reused (relative: to the repository root)")
    seed: int = option(0, "first training seed; probe prompts use fold_in(PRNGKey(seed), 11)", low=0)

    def check(self, given: frozenset[str]) -> None:
        if self.n_points <= self.d_in + 1:
            raise ValueError(f"--n-points must exceed d_in + 1 = {self.d_in + 1}, got {self.n_points}")
        if self.checkpoint_every > self.steps:
            raise ValueError(f"--checkpoint-every ({self.checkpoint_every}) exceeds --steps ({self.steps})")
        if any(r == 0 for r in self.rates):
            raise ValueError("--rates: ξ = 0 is the unclipped model, always reported; give rates in (0, 1)")
        runs = Path(self.runs_dir) if Path(self.runs_dir).is_absolute() else cli.REPO_ROOT / self.runs_dir
        cli.check_output_dir(runs, "--runs-dir")


# Two models (linear attention and its softmax-attention variant: the furthest from GD), sized to run in
# under a minute on a quiet 2-core CPU from nothing trained (3 models took 73 s, measured).
QUICK = dict(models=("linear", "softmax_attn"), layers=2, steps=100, seeds=2, checkpoint_every=50,
             n_probe=16, n_points=12, rates=(0.5,), batch_size=64)


def train_config(config: Config, model: str) -> TrainConfig:
    """The run of ``model``: the same task, sizes and optimiser for every model."""
    return TrainConfig(model=model, d_in=config.d_in, n_demos=config.n_demos, n_layers=config.layers,
                       steps=config.steps, batch_size=config.batch_size, lr=config.lr, mlp_width=config.mlp_width,
                       warmup_steps=min(100, config.steps), seed=config.seed, seeds=config.seeds,
                       checkpoint_every=config.checkpoint_every, log_every=min(100, config.steps))


def _stack(trees):
    return jax.tree_util.tree_map(lambda *x: jnp.concatenate(x, axis=0), *trees)


def _intervals(values: np.ndarray, log: bool, floor: float = 1e-17) -> dict:
    """``values (K, S, L)`` → t interval over the seed axis, per (K, L); with ``log`` (residuals,
    distances, errors: ≥ 0 and spanning decades) also the interval of ``log10 max(v, floor)``."""
    iv = stats.interval(values, axis=1)
    out = {"mean": iv.mean, "low": iv.low, "high": iv.high}
    if log:
        lg = stats.interval(np.log10(np.maximum(values, floor)), axis=1)
        out.update(log10_mean=lg.mean, log10_low=lg.low, log10_high=lg.high)
    return out


def _probe_model(config: Config, model: str, run_dir: Path, H, y_q, eta: float, key) -> dict:
    tcfg = train_config(config, model)
    steps = list_checkpoints(run_dir)
    params = [load_run(run_dir, s)[0] for s in steps]  # each with the seed axis S
    D, L, S = config.d_in + 1, config.layers, config.seeds
    ranks = [kept_rank(D, D, xi) for xi in config.rates]
    clipped = [jax.vmap(lambda p: truncate_params_to_rank(p, L - 1, ("w_v",), [r]))(params[-1]) for r in ranks]
    stacked = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), _stack(params + clipped))
    v = variants.Variant(**{**dataclasses.asdict(variants.VARIANTS[PROBED[model]]), "scale": tcfg.scale,
                            "readout": tcfg.readout})
    report = implicit.probe_sweep(*variants.model_fns(v), stacked, H, key, eta=eta, lam=config.ridge_lam,
                                  n_points=config.n_points, radius=config.radius)
    means = {q: np.asarray(a).reshape(len(steps) + len(ranks), S, L) for q, a in implicit.prompt_means(report, y_q).items()}
    bad = [q for q, a in means.items() if not np.all(np.isfinite(a))]
    if bad:
        raise ValueError(f"{model}: non-finite probe values in {bad} (a diverged seed?); see {run_dir}")
    C = len(steps)
    out = {"run_dir": str(run_dir), "steps": steps, "ranks": ranks,
           "training": {q: _intervals(a[:C], not q.startswith("cos")) for q, a in means.items()},
           "clip": {q: _intervals(a[C:], not q.startswith("cos")) for q, a in means.items()}, "verdicts": {}, "error_verdicts": {}}
    for j, xi in enumerate(config.rates):  # paired change of the last layer's distance to GD, per seed
        change = means["dist_gd"][C + j, :, -1] - means["dist_gd"][C - 1, :, -1]
        out["verdicts"][f"{xi:g}"] = stats.verdict(stats.interval(change), what="the change of ‖w_eff − w_GD‖/‖w_GD‖",
                                                   positive="away from GD", negative="towards GD")
        err = np.log10(means["error"][C + j, :, -1] / means["error"][C - 1, :, -1])
        out["error_verdicts"][f"{xi:g}"] = stats.verdict(stats.interval(err), what="log10 of the ICL error ratio",
                                                         positive="raises the ICL error", negative="lowers the ICL error")
    return out, {f"{model}/{q}": a for q, a in means.items()}


def run(config: Config, *, quiet: bool = False) -> dict:
    config.check(frozenset())
    runs_dir = Path(config.runs_dir)
    runs_dir = runs_dir if runs_dir.is_absolute() else cli.REPO_ROOT / runs_dir
    run_dirs = {}
    for m in config.models:
        tcfg = train_config(config, m)
        run_dirs[m], trained = ensure_run(tcfg, runs_dir / run_name(tcfg), quiet=quiet)
        if not quiet:
            print(f"{'trained' if trained else 'reusing'} {m}: {run_dirs[m]}")
    root = jax.random.PRNGKey(config.seed)
    with jax.enable_x64(True):  # float64 probes of the float32 runs
        batch = sample_linear(jax.random.fold_in(root, 11), config.n_probe, config.n_demos, config.d_in, dtype=jnp.float64)
        gd = tune_gd_eta(jax.random.fold_in(root, 12), config.layers, config.n_demos, config.d_in, n_prompts=1024)
        per_model, arrays = {}, {}
        for m in config.models:
            per_model[m], arr = _probe_model(config, m, run_dirs[m], batch.H, batch.y_query, gd.eta,
                                             jax.random.fold_in(root, 13))
            arrays.update(arr)
            if not quiet:
                err = per_model[m]["training"]["error"]["mean"][-1, -1]
                print(f"probed {m}: ICL error {err:.3g}; clipping W_V of layer L at rate ξ:")
                for xi, v in per_model[m]["verdicts"].items():
                    print(f"  ξ = {xi}: {v}; {per_model[m]['error_verdicts'][xi]}")
        ls = float(jnp.mean(jnp.square(jax.vmap(lambda h: implicit.reference_weights(h, eta=gd.eta, n_steps=1,
                   lam=config.ridge_lam)["least_squares"] @ h[:-1, -1])(batch.H) - batch.y_query))) / config.d_in
    steps = per_model[config.models[0]]["steps"]
    return {"models": list(config.models), "layers": config.layers, "d_in": config.d_in, "n_demos": config.n_demos, "seeds": config.seeds, "steps": steps,
            "rates": list(config.rates), "ranks": per_model[config.models[0]]["ranks"], "full_rank": config.d_in + 1,
            "reference": {"gd_eta": gd.eta, "gd_error": gd.val_error, "gd_eta_at_edge": gd.at_edge, "ls_error": ls},
            "per_model": per_model, "arrays": arrays}


def plot(results: dict) -> dict:
    from lintrans.plots import beyond_linear

    return beyond_linear.figures(results)


def main(argv=None) -> int:
    return cli.main(Config, run, plot, argv, name=NAME, doc=__doc__, presets={"quick": QUICK})


if __name__ == "__main__":
    cli.command(main)
