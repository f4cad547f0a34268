"""Train an in-context regressor (linear attention or a softmax transformer) and score it.

    python experiments/train_icl.py --model linear --layers 1 --d-in 20 --n-demos 40 \\
        --steps 2000 --seeds 2 --out runs/lin_d20_L1 [--resume]

Trains ``--seeds`` seeds at once (:func:`lintrans.train.train`: one jitted, seed-vmapped step;
checkpoints, ``metrics.jsonl``; ``--resume`` continues an interrupted run bit for bit), then writes
``RUN/final.json``:

* ``model``: the test error of every seed, ``E (ŷ − y_q)²/d`` with a 95 % interval, on a fixed test
  set of ``--test-prompts`` (≥ 4096) prompts from ``fold_in(PRNGKey(test_seed), 2)`` (the same set
  whatever the training seed);
* ``estimators``: every baseline of :data:`lintrans.estimators.ESTIMATORS` on the same prompts
  (ridge at ``--ridge-lam``; one-step GD at the optimal ``η* = 1/(N+d+1+σ²)``; ``L``-step GD at the
  best constant ``η`` tuned on separate validation prompts, ``L`` = the model's depth);
* ``ratios``: model error over one-step-GD, ``L``-step-GD and least-squares errors;
* ``prediction_distance``: ``E (ŷ_model − ŷ_est)²/d`` per estimator, i.e. which algorithm the
  model's predictions match (Garg et al.'s comparison);
* for a 1-layer linear model, the weights read back as an effective step size (below) next to
  ``η*``;
* the config and provenance (versions, git revision, seed).

Effective step size of one trained layer (``mask="demos"``). With ``h_q = [x_q; 0]`` and
``e_yᵀh_q = 0``, ``ŷ = ρ e_yᵀ ΔW h_q = ρ s v S P x_q`` where ``v = e_yᵀW_V`` (the label row of
``W_V``), ``P = (W_Kᵀ W_Q)[:, :d]`` (its x-block columns) and ``S = Σ_i h_i h_iᵀ``. Expanding
``v·h_i = v_x·x_i + v_y y_i`` and ``h_iᵀ P x_q = x_iᵀ P_x x_q + y_i p_yᵀ x_q``::

    ŷ = Σ_i y_i x_iᵀ Γ x_q  +  ρ s Σ_i [ (v_x·x_i) x_iᵀ P_x x_q + v_y y_i² p_y·x_q + (v_x·x_i) y_i p_y·x_q ],
    Γ = ρ s v_y P_x   (d × d).

The first sum is one preconditioned GD step from ``w_0 = 0`` (``ŵ = Γᵀ Σ_i y_i x_i``); isotropic
data make ``Γ = η I`` and the other terms zero optimal. So ``η_eff = tr Γ / d`` (in the sum
convention of :func:`lintrans.estimators.gd_one_step`, ``s`` included), with
``anisotropy = ‖Γ − η_eff I‖_F / ‖Γ‖_F`` and, measured on the test prompts, the relative distance
between the model's predictions and one-step GD at ``η_eff``. For the construction of SPEC §4
(``W_V = [[0,0],[0,−η]]``, ``W_K = W_Q = [[I,0],[0,0]]``, ``s = 1``, ``ρ = −1``) this gives
``Γ = η I`` exactly.

Also writes ``RUN/final.png`` (training loss and test errors); ``--plot-only`` re-plots it from
``RUN/final.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.checkpoint import FINAL_FILE, read_metrics
from lintrans.estimators import (
    gd_one_step,
    gd_one_step_optimal_error,
    gd_one_step_optimal_eta,
    icl_error,
    mean_ci95,
    predict_batch,
    tune_gd_eta,
)
from lintrans.experiment import ArgParser, cli, load_results, save_figure, save_results
from lintrans.params import LinearAttentionParams
from lintrans.tasks import sample_linear
from lintrans.train import (
    MODELS,
    SAMPLERS,
    Curriculum,
    TrainConfig,
    predict_query,
    test_key,
    train,
    validation_key,
)

NAME = "train_icl"


@dataclasses.dataclass(frozen=True)
class Config:
    """A training run and how it is scored."""

    train: TrainConfig = TrainConfig()  # the run (lintrans.train.TrainConfig defaults: linear, d=20, N=40, L=1)
    out: str = "runs/icl"  # run directory (config.json, checkpoints, metrics.jsonl, final.json)
    resume: bool = False  # continue the latest checkpoint of an existing run
    test_prompts: int = 8192  # fixed test set, >= 4096 (issue 3); 8192 matches the prototype's numbers
    test_seed: int = 1234  # test / validation prompts come from PRNGKey(test_seed), not the training seeds
    tune_prompts: int = 4096  # validation prompts for L-step GD's best constant eta
    ridge_lam: float = 0.1  # ridge's lambda (sum convention); sigma^2 is Bayes-optimal with noise
    quiet: bool = False  # no progress line

    def __post_init__(self):
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if isinstance(self.test_prompts, bool) or not isinstance(self.test_prompts, int) or self.test_prompts < 4096:
            raise ValueError(f"test_prompts must be an integer >= 4096, got {self.test_prompts!r}")
        if isinstance(self.tune_prompts, bool) or not isinstance(self.tune_prompts, int) or self.tune_prompts < 256:
            raise ValueError(f"tune_prompts must be an integer >= 256, got {self.tune_prompts!r}")
        if isinstance(self.test_seed, bool) or not isinstance(self.test_seed, int) or self.test_seed < 0:
            raise ValueError(f"test_seed must be an integer >= 0, got {self.test_seed!r}")
        if not (isinstance(self.ridge_lam, (int, float)) and np.isfinite(self.ridge_lam) and self.ridge_lam > 0):
            raise ValueError(f"ridge_lam must be a finite number > 0, got {self.ridge_lam!r}")


def effective_step_size(params: LinearAttentionParams, *, scale: str, readout: int, n_demos: int) -> dict[str, Any]:
    """One trained linear-attention layer read as one step of GD (module docstring).

    Args:
      params: one layer, arrays ``(1, D, D)``, ``D = d + 1``.
      scale, readout, n_demos: the model's ``s`` option, ``ρ`` and ``N``.

    Returns:
      ``{"eta_eff": tr Γ / d, "anisotropy": ‖Γ − η_eff I‖_F/‖Γ‖_F, "gamma": Γ (d, d)}`` with
      ``Γ = ρ s (W_V)[D-1, D-1] (W_Kᵀ W_Q)[:d, :d]``.
    """
    if params.n_layers != 1:
        raise ValueError(f"effective_step_size reads one layer; the model has {params.n_layers}")
    D = params.dim
    d = D - 1
    s = 1.0 if scale == "1" else 1.0 / n_demos
    w_v = np.asarray(params.w_v[0], np.float64)
    kq = np.asarray(params.w_k[0], np.float64).T @ np.asarray(params.w_q[0], np.float64)
    gamma = readout * s * w_v[D - 1, D - 1] * kq[:d, :d]
    eta = float(np.trace(gamma) / d)
    norm = float(np.linalg.norm(gamma))
    aniso = float(np.linalg.norm(gamma - eta * np.eye(d)) / norm) if norm > 0 else 0.0
    return {"eta_eff": eta, "anisotropy": aniso, "gamma": gamma}


def _ci(errors) -> dict[str, float]:
    ci = mean_ci95(np.asarray(errors))
    return {"mean": float(ci.mean), "ci95": float(ci.half_width), "n": ci.n}


@functools.lru_cache(maxsize=64)
def _estimator(name: str, opts: tuple) -> Callable:
    """One jitted batched estimator per (name, options): repeated runs reuse its compilation."""
    return jax.jit(functools.partial(predict_batch, name, **dict(opts)))


def _estimator_table(config: Config, H, y_query) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    tc = config.train
    tuning = tune_gd_eta(validation_key(config.test_seed), tc.n_layers, tc.n_demos, tc.d_in,
                         noise_std=tc.noise_std, n_prompts=config.tune_prompts, dtype=H.dtype)
    opts = {"zero": {}, "least_squares": {}, "ridge": {"lam": config.ridge_lam}, "averaging": {}, "knn3": {},
            "gd_1step_opt": {"noise_std": tc.noise_std},
            "gd_Lstep": {"eta": tuning.eta, "n_steps": tc.n_layers}}
    table, preds = {}, {}
    for name, o in opts.items():
        y_hat = _estimator(name, tuple(sorted(o.items())))(H)
        preds[name] = np.asarray(y_hat)
        table[name] = {**_ci(icl_error(y_hat, y_query, tc.d_in)), "opts": o}
    table["gd_Lstep"]["val_error"] = tuning.val_error
    table["gd_1step_opt"]["opts"]["eta"] = gd_one_step_optimal_eta(tc.n_demos, tc.d_in, tc.noise_std)
    table["gd_1step_opt"]["expected"] = gd_one_step_optimal_error(tc.n_demos, tc.d_in, tc.noise_std)
    return table, preds


def run(config: Config) -> dict[str, Any]:
    """Train (or resume), then score every seed and every estimator on the fixed test set."""
    tc = config.train
    t0 = time.perf_counter()
    result = train(tc, config.out, resume=config.resume, quiet=config.quiet)
    train_s = time.perf_counter() - t0
    dtype = tc.jnp_dtype
    test = sample_linear(test_key(config.test_seed), config.test_prompts, tc.n_demos, tc.d_in,
                         noise_std=tc.noise_std, dtype=dtype)
    estimators, est_preds = _estimator_table(config, test.H, test.y_query)
    seeds, distances, eff = [], {name: [] for name in est_preds}, []
    for i in range(tc.seeds):
        params = jax.tree_util.tree_map(lambda x, i=i: x[i], result.state.params)
        y_hat = predict_query(tc, params, test.H)
        errs = icl_error(y_hat, test.y_query, tc.d_in)
        seeds.append({"seed": tc.seed + i, **_ci(errs)})
        for name, p in est_preds.items():
            distances[name].append(float(np.mean((np.asarray(y_hat) - p) ** 2) / tc.d_in))
        if tc.model == "linear" and tc.n_layers == 1 and tc.mask == "demos":
            e = effective_step_size(params, scale=tc.scale, readout=tc.readout, n_demos=tc.n_demos)
            y_gd = jax.vmap(lambda h: gd_one_step(h[:-1, :-1].T, h[-1, :-1], h[:-1, -1], e["eta_eff"]))(test.H)
            diff = float(jnp.linalg.norm(y_hat - y_gd) / jnp.linalg.norm(y_hat))
            eff.append({"seed": tc.seed + i, "eta_eff": e["eta_eff"], "anisotropy": e["anisotropy"],
                        "prediction_rel_diff_vs_gd_at_eta_eff": diff,
                        "gd_at_eta_eff_error": float(jnp.mean(icl_error(y_gd, test.y_query, tc.d_in)))})
    model_mean = float(np.mean([s["mean"] for s in seeds]))
    results: dict[str, Any] = {
        "run_dir": str(config.out),
        "steps": result.state.step,
        "resumed_from": result.resumed_from,
        "train_seconds": train_s,
        "test_prompts": config.test_prompts,
        "model": {"name": tc.model, "n_layers": tc.n_layers, "seeds": seeds, "mean_over_seeds": model_mean},
        "estimators": estimators,
        "ratios": {f"model_over_{n}": model_mean / estimators[n]["mean"] for n in ("gd_1step_opt", "gd_Lstep")},
        "prediction_distance": {n: float(np.mean(v)) for n, v in distances.items()},
        "closest_estimator": min(distances, key=lambda n: np.mean(distances[n])),
        "metrics": read_metrics(config.out),
    }
    if eff:
        results["effective_step_size"] = {
            "seeds": eff, "eta_optimal": gd_one_step_optimal_eta(tc.n_demos, tc.d_in, tc.noise_std),
            "convention": "w = eta * sum_i y_i x_i (sum over demonstrations; s included)"}
    save_results(NAME, config, results, seed=tc.seed, json_path=Path(config.out) / FINAL_FILE)
    return results


def plot(results: dict[str, Any]):
    """Training loss per seed and the test errors of the model and the estimators."""
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
    metrics = results.get("metrics", [])
    if metrics:
        steps = [m["step"] for m in metrics]
        losses = np.array([m["loss"] for m in metrics])
        for i in range(losses.shape[1]):
            ax0.plot(steps, losses[:, i], lw=1, label=f"seed {results['model']['seeds'][i]['seed']}")
        ax0.set_yscale("log")
        ax0.legend(fontsize=7)
    ax0.set_xlabel("step")
    ax0.set_ylabel("training loss (MSE / d)")
    names = list(results["estimators"])
    vals = [results["estimators"][n]["mean"] for n in names]
    errs = [results["estimators"][n]["ci95"] for n in names]
    names.append(f"model ({results['model']['name']}, L={results['model']['n_layers']})")
    vals.append(results["model"]["mean_over_seeds"])
    errs.append(max(s["ci95"] for s in results["model"]["seeds"]))
    ax1.barh(range(len(names)), vals, xerr=errs, color=["0.6"] * (len(names) - 1) + ["C3"])
    ax1.set_yticks(range(len(names)), names, fontsize=8)
    ax1.set_xlabel(f"test error (MSE / d), {results['test_prompts']} prompts, 95% CI")
    fig.tight_layout()
    return fig


def _parse_curriculum(text: str | None) -> Curriculum | None:
    if text is None:
        return None
    message = f"--curriculum must be five integers d_start,d_step,n_start,n_step,every; got {text!r}"
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(message) from None
    if len(parts) != 5:
        raise ValueError(message)
    return Curriculum(*parts)


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="train_icl.py", description=__doc__.split("\n\n")[0])
    d = TrainConfig()
    p.add_argument("--model", choices=MODELS, default=d.model)
    p.add_argument("--layers", type=int, default=d.n_layers)
    p.add_argument("--d-in", type=int, default=d.d_in)
    p.add_argument("--n-demos", type=int, default=d.n_demos)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch", type=int, default=d.batch_size)
    p.add_argument("--warmup", type=int, default=d.warmup_steps)
    p.add_argument("--final-lr-frac", type=float, default=d.final_lr_frac)
    p.add_argument("--clip", type=float, default=d.clip_norm, help="global-norm clip (0: off)")
    p.add_argument("--curriculum", default=None, help="d_start,d_step,n_start,n_step,every (Garg: 5,1,10,2,2000)")
    p.add_argument("--k-min", type=int, default=None, help="linear: train over k ~ U{k_min..N} (zeroed demos)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--mask", choices=("demos", "causal"), default=d.mask)
    p.add_argument("--scale", choices=("1", "1/N"), default=d.scale)
    p.add_argument("--readout", type=int, choices=(1, -1), default=d.readout)
    p.add_argument("--init-std", type=float, default=d.init_std)
    p.add_argument("--width", type=int, default=d.width, help="softmax: residual width")
    p.add_argument("--heads", type=int, default=d.n_heads, help="softmax: attention heads")
    p.add_argument("--mlp-width", type=int, default=d.mlp_width, help="softmax: MLP hidden width")
    p.add_argument("--noise-std", type=float, default=d.noise_std)
    p.add_argument("--sampler", choices=SAMPLERS, default=d.sampler,
                   help="training prompts as tokens, or (linear, demos mask) as exact Wishart draws of their "
                        "Gram matrix: O(d²) per prompt whatever N, different draws")
    p.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype)
    c = Config()
    p.add_argument("--test-prompts", type=int, default=c.test_prompts)
    p.add_argument("--test-seed", type=int, default=c.test_seed)
    p.add_argument("--tune-prompts", type=int, default=c.tune_prompts)
    p.add_argument("--ridge-lam", type=float, default=c.ridge_lam)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--plot-only", action="store_true", help="re-plot RUN/final.png from RUN/final.json")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    tc = TrainConfig(
        model=args.model, d_in=args.d_in, n_demos=args.n_demos, n_layers=args.layers, mask=args.mask,
        scale=args.scale, readout=args.readout, init_std=args.init_std, width=args.width, n_heads=args.heads,
        mlp_width=args.mlp_width, noise_std=args.noise_std, k_min=args.k_min, sampler=args.sampler,
        curriculum=_parse_curriculum(args.curriculum), steps=args.steps, batch_size=args.batch, lr=args.lr,
        warmup_steps=args.warmup, final_lr_frac=args.final_lr_frac, clip_norm=args.clip, seed=args.seed,
        seeds=args.seeds, dtype=args.dtype, checkpoint_every=args.checkpoint_every, log_every=args.log_every)
    return Config(train=tc, out=args.out, resume=args.resume, test_prompts=args.test_prompts,
                  test_seed=args.test_seed, tune_prompts=args.tune_prompts, ridge_lam=args.ridge_lam,
                  quiet=args.quiet)


def _summary(results: dict[str, Any]) -> str:
    est = results["estimators"]
    lines = [f"model {results['model']['name']} L={results['model']['n_layers']}: test error "
             + ", ".join(f"{s['mean']:.4f}±{s['ci95']:.4f} (seed {s['seed']})" for s in results["model"]["seeds"])]
    lines.append("estimators: " + ", ".join(f"{n} {v['mean']:.4f}" for n, v in est.items()))
    lines.append("ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in results["ratios"].items()))
    lines.append(f"closest estimator (prediction distance): {results['closest_estimator']}")
    if "effective_step_size" in results:
        e = results["effective_step_size"]
        lines.append("effective step size: " + ", ".join(f"{s['eta_eff']:.5f}" for s in e["seeds"])
                     + f" vs optimal {e['eta_optimal']:.5f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lintrans.train import TrainingDivergedError

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.plot_only:
        results = load_results(out / FINAL_FILE)["results"]
        print(f"wrote {save_figure(plot(results), 'final', figures_dir=out)}")
        return 0
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    config = config_from_args(args)
    try:
        results = run(config)
    except TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    print(_summary(results))
    print(f"wrote {out / FINAL_FILE} and {save_figure(plot(results), 'final', figures_dir=out)}")
    return 0


if __name__ == "__main__":
    cli(main)
