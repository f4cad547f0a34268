"""In-context error against the number of examples k: trained models vs least squares (Figs 2.1, 2.2).

    python experiments/icl_curves.py                   # CPU defaults: d = 5, k = 1..10, minutes
    python experiments/icl_curves.py --d-in 20 --linear-steps 20000 --softmax-steps 50000 ...  # GPU
    python experiments/icl_curves.py --plot-only

Writes ``figures/icl_vs_least_squares.png``: the error ``E (ŷ − y_q)²/d`` against
``k = 1 … 2d`` for linear-attention models of several depths, the softmax transformer, and the
estimators (least squares, averaging, 3-nearest-neighbours, one-step GD at the optimal ``η`` for
each ``k``), with 95 % intervals over ``--eval-prompts`` (≥ 1000) prompts per ``k``: the analogue
of the paper's Figure 2.1 (from Garg et al.). And ``figures/icl_train_steps.png``: the same curve
for checkpoints of one softmax run and of the deepest linear run at several training steps (the
analogue of Figure 2.2). Results with provenance in ``results/icl_curves.json``.

Models. Each is trained (or reused: a run directory that already holds the same config is loaded,
an interrupted one resumed) through :func:`lintrans.train.train` in ``RUNS/icl_<model>…``.

* Linear attention predicts only the query, so a curve over ``k`` needs a model trained over a
  range of ``k``: the linear runs use ``k_min = 1`` — each training prompt has
  ``k ~ Uniform{1..N}`` real demonstrations (``N = 2d``), the rest zeroed, which contributes
  exactly nothing (:mod:`lintrans.train`). They are evaluated the same way: ``k`` real
  demonstrations of the evaluation prompt, the rest zeroed, one compiled function for every ``k``
  (identical to slicing the prompt, tested).
* The softmax transformer is trained with Garg's loss over every position (one model covers every
  ``k``); at ``k`` it sees the prompt sliced to its first ``k`` pairs and the query, like the
  estimators, so every curve predicts the same query from the same examples.
* Estimators at ``k`` see the prompt sliced to its first ``k`` demonstrations and the query.

``prediction_distance[model][estimator][k] = E (ŷ_model − ŷ_estimator)²/d`` on the same prompts
says which algorithm a model's predictions match (Garg et al.'s comparison); ``closest_estimator``
names the nearest one at each ``k``.

All curves are measured on one fixed set of prompts from ``fold_in(PRNGKey(test_seed), 2)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lintrans import checkpoint
from lintrans.estimators import mean_ci95, predict_batch
from lintrans.experiment import REPO_ROOT, ArgParser, Progress, cli, load_results, save_figure, save_results
from lintrans.tasks import sample_linear
from lintrans.train import (
    Curriculum,
    TrainConfig,
    TrainingDivergedError,
    config_to_dict,
    linear_query_predict,
    predict_query,
    test_key,
    train,
)

NAME = "icl_curves"
FIGURE_K = "icl_vs_least_squares"
FIGURE_STEPS = "icl_train_steps"
ESTIMATOR_CURVES = ("least_squares", "averaging", "knn3", "gd_1step_opt")


@dataclasses.dataclass(frozen=True)
class Config:
    """What to train, how long, and how to evaluate."""

    d_in: int = 5  # small so the defaults train on a 2-core CPU in minutes (Garg et al.: 20)
    depths: tuple[int, ...] = (1, 2, 4)  # linear-attention depths L
    linear_steps: int = 3000  # per linear run
    linear_lr: float = 1e-2  # Adam peak lr (warm-up 5 %, cosine decay)
    linear_batch: int = 128
    linear_scale: str = "1"  # s = 1: with s = 1/k (the "1/N" option) k = 1 prompts blew up at L = 4
    softmax: bool = True  # also train the GPT-2-style transformer
    softmax_layers: int = 3  # L = 2, width 32 stayed near averaging (error 0.7 at k = 2d) in 3000 steps
    softmax_width: int = 64
    softmax_heads: int = 4
    softmax_mlp: int = 256  # 4 x width, GPT-2's ratio
    softmax_steps: int = 4000
    softmax_lr: float = 1e-3
    softmax_batch: int = 64
    softmax_curriculum_every: int = 500  # Garg's curriculum (d and N = 2d grow from 2 and 4); 0: off
    seeds: int = 1  # seeds per run; curves average the per-prompt error over seeds
    seed: int = 0
    checkpoints: int = 6  # checkpoints per run (the icl_train_steps figure uses them)
    eval_prompts: int = 2000  # prompts per k (>= 1000)
    test_seed: int = 1234
    dtype: str = "float32"  # training and evaluation dtype ("float64" enables jax x64)
    runs_dir: str = "runs"  # where runs/icl_* live (reused when present)
    quiet: bool = False

    def __post_init__(self):
        ints = {"d_in": 1, "linear_steps": 1, "linear_batch": 1, "softmax_layers": 1, "softmax_width": 1,
                "softmax_heads": 1, "softmax_mlp": 1, "softmax_steps": 1, "softmax_batch": 1, "seeds": 1,
                "softmax_curriculum_every": 0,
                "seed": 0, "checkpoints": 1, "eval_prompts": 1000, "test_seed": 0}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if not self.depths or any(isinstance(L, bool) or not isinstance(L, int) or L < 1 for L in self.depths):
            raise ValueError(f"depths must be positive integers, got {self.depths!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")

    @property
    def n_demos(self) -> int:
        """``N = 2d``: curves run over ``k = 1 … 2d``."""
        return 2 * self.d_in


def linear_config(config: Config, n_layers: int) -> TrainConfig:
    steps = config.linear_steps
    return TrainConfig(model="linear", d_in=config.d_in, n_demos=config.n_demos, n_layers=n_layers,
                       scale=config.linear_scale, k_min=1, steps=steps, batch_size=config.linear_batch,
                       lr=config.linear_lr, warmup_steps=max(steps // 20, 1), seed=config.seed, seeds=config.seeds,
                       dtype=config.dtype,
                       checkpoint_every=max(steps // config.checkpoints, 1), log_every=max(steps // 50, 1))


def softmax_train_config(config: Config) -> TrainConfig:
    """The softmax run. Curriculum (Garg et al.): ``d`` from ``min(2, d)`` by 1 and ``N = 2d`` from
    ``2·min(2, d)`` by 2 every ``softmax_curriculum_every`` steps, so ``N = 2d`` at every stage. Measured
    at d = 5, L = 3, width 64, 4000 steps: error at k = 2d 0.12 with it, 0.58 and 0.96 (two seeds)
    without (the model sat on the zero-estimator plateau)."""
    steps = config.softmax_steps
    every = config.softmax_curriculum_every
    d0 = min(2, config.d_in)
    curriculum = Curriculum(d_start=d0, d_step=1, n_start=2 * d0, n_step=2, every=every) if every else None
    return TrainConfig(model="softmax", d_in=config.d_in, n_demos=config.n_demos, n_layers=config.softmax_layers,
                       curriculum=curriculum,
                       width=config.softmax_width, n_heads=config.softmax_heads, mlp_width=config.softmax_mlp,
                       steps=steps, batch_size=config.softmax_batch, lr=config.softmax_lr,
                       warmup_steps=max(steps // 20, 1), seed=config.seed, seeds=config.seeds, dtype=config.dtype,
                       checkpoint_every=max(steps // config.checkpoints, 1), log_every=max(steps // 50, 1))


def run_specs(config: Config) -> dict[str, tuple[TrainConfig, Path]]:
    """Curve label → (training config, run directory)."""
    runs = Path(config.runs_dir)
    specs = {f"linear attention, L={L}": (linear_config(config, L), runs / f"icl_linear_L{L}_d{config.d_in}")
             for L in config.depths}
    if config.softmax:
        s = config
        specs[f"softmax transformer, L={s.softmax_layers}"] = (
            softmax_train_config(config),
            runs / f"icl_softmax_L{s.softmax_layers}_w{s.softmax_width}_d{config.d_in}")
    return specs


def ensure_trained(tc: TrainConfig, run_dir: Path, quiet: bool) -> str:
    """Reuse a finished run with this config, resume an unfinished one, or train; returns what happened."""
    cfg_file = run_dir / checkpoint.CONFIG_FILE
    if cfg_file.exists():
        have = checkpoint.read_run_config(run_dir)
        if have != json_roundtrip(config_to_dict(tc)):
            raise ValueError(f"{run_dir} holds a run with a different config; remove it or pass --runs-dir")
        if tc.steps in checkpoint.list_checkpoints(run_dir):
            return "reused"
        train(tc, run_dir, resume=True, quiet=quiet)
        return "resumed"
    train(tc, run_dir, quiet=quiet)
    return "trained"


def json_roundtrip(obj):
    import json

    from lintrans.io import to_jsonable

    return json.loads(json.dumps(to_jsonable(obj)))


def _curve(errors_by_k: list[np.ndarray]) -> dict[str, list[float]]:
    cis = [mean_ci95(e) for e in errors_by_k]
    return {"mean": [float(c.mean) for c in cis], "ci95": [float(c.half_width) for c in cis]}


@functools.partial(jax.jit, static_argnums=0)
def _linear_predictions_at(tc: TrainConfig, params, H, k):
    """``(S, B)`` query predictions of every seed with k demonstrations (the rest zeroed)."""
    N = H.shape[2] - 1
    keep = (jnp.arange(N + 1) < k) | (jnp.arange(N + 1) == N)
    Hk = H * keep[None, None, :].astype(H.dtype)

    def one_seed(p):
        return jax.vmap(lambda h: linear_query_predict(p, h, k, mask=tc.mask, scale=tc.scale,
                                                       readout=tc.readout))(Hk)

    return jax.vmap(one_seed)(params)


def _sliced(H, k):
    """The prompts cut to their first k demonstrations and the query: ``(B, D, k+1)``."""
    return jnp.concatenate([H[:, :, :k], H[:, :, -1:]], axis=2)


def model_predictions(tc: TrainConfig, params, H, ks) -> list[np.ndarray]:
    """Per k, ``(S, B)`` query predictions of a run's seeds (``params`` with the seed axis)."""
    if tc.model == "linear":
        return [np.asarray(_linear_predictions_at(tc, params, H, jnp.asarray(k))) for k in ks]
    seeds = [jax.tree_util.tree_map(lambda x, i=i: x[i], params) for i in range(tc.seeds)]
    return [np.stack([np.asarray(predict_query(tc, p, _sliced(H, k))) for p in seeds]) for k in ks]


@functools.lru_cache(maxsize=16)
def _estimator(name: str):
    """One jitted batched estimator per name (compiled once per prompt shape, reused across runs)."""
    return jax.jit(functools.partial(predict_batch, name))


def estimator_predictions(name: str, H, ks) -> list[np.ndarray]:
    """Per k, ``(B,)`` predictions of an estimator on the prompts sliced to k demonstrations."""
    return [np.asarray(_estimator(name)(_sliced(H, k))) for k in ks]


def _errors(preds: list[np.ndarray], y_query, d_in: int) -> list[np.ndarray]:
    """Per k, per-prompt error (mean over the seed axis, if any)."""
    y = np.asarray(y_query)
    return [np.mean((p - y) ** 2, axis=0) / d_in if p.ndim == 2 else (p - y) ** 2 / d_in for p in preds]


def run(config: Config) -> dict[str, Any]:
    """Train or reuse every model, then measure every curve on one fixed set of prompts."""
    d, N = config.d_in, config.n_demos
    ks = list(range(1, N + 1))
    specs = run_specs(config)
    status = {label: ensure_trained(tc, run_dir, config.quiet) for label, (tc, run_dir) in specs.items()}
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    test = sample_linear(test_key(config.test_seed), config.eval_prompts, N, d, dtype=dtype)
    curves, train_steps, distance, closest = {}, {}, {}, {}
    progress = Progress(len(specs) + len(ESTIMATOR_CURVES), "icl curves", quiet=config.quiet)
    est_preds = {}
    for name in ESTIMATOR_CURVES:
        est_preds[name] = estimator_predictions(name, test.H, ks)
        curves[name] = _curve(_errors(est_preds[name], test.y_query, d))
        progress.update(1, name)
    for label, (tc, run_dir) in specs.items():
        params, _, step = checkpoint.load_run(run_dir)
        preds = model_predictions(tc, params, test.H, ks)
        curves[label] = {**_curve(_errors(preds, test.y_query, d)), "run_dir": str(run_dir), "step": step,
                         "status": status[label]}
        # Which algorithm the model's predictions match: E (ŷ_model − ŷ_est)²/d at each k.
        distance[label] = {n: [float(np.mean((p - q[None]) ** 2) / d) for p, q in zip(preds, est_preds[n])]
                           for n in ESTIMATOR_CURVES}
        closest[label] = [min(ESTIMATOR_CURVES, key=lambda n, j=j: distance[label][n][j]) for j in range(len(ks))]
        progress.update(1, label)
    # Figure 2.2 analogue: checkpoints of the softmax run and of the deepest linear run.
    chosen = [lab for lab in specs if lab.startswith("softmax")]
    chosen += [f"linear attention, L={max(config.depths)}"]
    for label in chosen:
        tc, run_dir = specs[label]
        steps = checkpoint.list_checkpoints(run_dir)
        picks = sorted({steps[int(round(i))] for i in np.linspace(0, len(steps) - 1, min(len(steps), 5))})
        train_steps[label] = {}
        for step in picks:
            params, _, _ = checkpoint.load_run(run_dir, step)
            train_steps[label][str(step)] = _curve(_errors(model_predictions(tc, params, test.H, ks), test.y_query, d))
    return {"k": ks, "d_in": d, "n_demos": N, "eval_prompts": config.eval_prompts, "curves": curves,
            "train_steps": train_steps, "least_squares": curves["least_squares"],
            "prediction_distance": distance, "closest_estimator": closest}


def _band(ax, ks, c, label, **kw):
    m, h = np.asarray(c["mean"]), np.asarray(c["ci95"])
    (line,) = ax.plot(ks, m, label=label, **kw)
    ax.fill_between(ks, m - h, m + h, color=line.get_color(), alpha=0.2, lw=0)


def plot(results: dict[str, Any]):
    """Figure 2.1 analogue: error vs k for models and estimators."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ks, d = results["k"], results["d_in"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = {"least_squares": "least squares", "averaging": "averaging", "knn3": "3-nearest neighbours",
             "gd_1step_opt": "1-step GD, optimal η"}
    for label, c in results["curves"].items():
        if label in names:
            _band(ax, ks, c, names[label], ls="--", lw=1.2)
        else:
            _band(ax, ks, c, f"{label} ({c['step']} steps)", lw=2)
    ax.axvline(d, color="0.5", lw=0.8, ls=":")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel("squared error / d")
    ax.set_ylim(bottom=-0.02, top=1.3)
    ax.set_title(f"In-context linear regression, d = {d} (95% CI, {results['eval_prompts']} prompts per k)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_steps(results: dict[str, Any]):
    """Figure 2.2 analogue: error vs k at several training steps of one run per panel."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ks, d = results["k"], results["d_in"]
    runs = results["train_steps"]
    fig, axes = plt.subplots(1, max(len(runs), 1), figsize=(5.2 * max(len(runs), 1), 3.8), squeeze=False)
    for ax, (label, by_step) in zip(axes[0], runs.items()):
        cmap = plt.get_cmap("viridis")
        for j, (step, c) in enumerate(by_step.items()):
            _band(ax, ks, c, f"step {step}", color=cmap(j / max(len(by_step) - 1, 1)), lw=1.8)
        _band(ax, ks, results["least_squares"], "least squares", color="k", ls="--", lw=1)
        ax.axvline(d, color="0.5", lw=0.8, ls=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("in-context examples k")
        ax.set_ylim(bottom=-0.02, top=1.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("squared error / d")
    fig.tight_layout()
    return fig


def build_parser() -> argparse.ArgumentParser:
    c = Config()
    p = ArgParser(prog="icl_curves.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=c.d_in)
    p.add_argument("--depths", default=",".join(map(str, c.depths)), help="linear depths, e.g. 1,2,4")
    p.add_argument("--linear-steps", type=int, default=c.linear_steps)
    p.add_argument("--linear-lr", type=float, default=c.linear_lr)
    p.add_argument("--linear-batch", type=int, default=c.linear_batch)
    p.add_argument("--linear-scale", choices=("1", "1/N"), default=c.linear_scale)
    p.add_argument("--no-softmax", action="store_true")
    p.add_argument("--softmax-layers", type=int, default=c.softmax_layers)
    p.add_argument("--softmax-width", type=int, default=c.softmax_width)
    p.add_argument("--softmax-heads", type=int, default=c.softmax_heads)
    p.add_argument("--softmax-mlp", type=int, default=c.softmax_mlp)
    p.add_argument("--softmax-steps", type=int, default=c.softmax_steps)
    p.add_argument("--softmax-lr", type=float, default=c.softmax_lr)
    p.add_argument("--softmax-batch", type=int, default=c.softmax_batch)
    p.add_argument("--softmax-curriculum-every", type=int, default=c.softmax_curriculum_every,
                   help="steps per curriculum stage (0: no curriculum)")
    p.add_argument("--seeds", type=int, default=c.seeds)
    p.add_argument("--seed", type=int, default=c.seed)
    p.add_argument("--checkpoints", type=int, default=c.checkpoints)
    p.add_argument("--eval-prompts", type=int, default=c.eval_prompts)
    p.add_argument("--test-seed", type=int, default=c.test_seed)
    p.add_argument("--dtype", choices=("float32", "float64"), default=c.dtype)
    p.add_argument("--runs-dir", default=c.runs_dir)
    p.add_argument("--json", default=None, help="results file (default results/icl_curves.json)")
    p.add_argument("--figures-dir", default=None, help="default figures/")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_path = Path(args.json) if args.json else REPO_ROOT / "results" / f"{NAME}.json"
    if not args.plot_only:
        try:
            depths = tuple(int(x) for x in args.depths.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"--depths must be comma-separated integers, got {args.depths!r}") from None
        config = Config(d_in=args.d_in, depths=depths, linear_steps=args.linear_steps, linear_lr=args.linear_lr,
                        linear_batch=args.linear_batch, linear_scale=args.linear_scale, softmax=not args.no_softmax,
                        softmax_layers=args.softmax_layers, softmax_width=args.softmax_width,
                        softmax_heads=args.softmax_heads, softmax_mlp=args.softmax_mlp,
                        softmax_steps=args.softmax_steps, softmax_lr=args.softmax_lr,
                        softmax_batch=args.softmax_batch,
                        softmax_curriculum_every=args.softmax_curriculum_every, seeds=args.seeds, seed=args.seed,
                        checkpoints=args.checkpoints, eval_prompts=args.eval_prompts, test_seed=args.test_seed,
                        dtype=args.dtype, runs_dir=args.runs_dir, quiet=args.quiet)
        if config.dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        try:
            results = run(config)
        except TrainingDivergedError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        save_results(NAME, config, results, seed=config.seed, json_path=json_path)
        print(f"wrote {json_path}")
    results = load_results(json_path)["results"]
    for fig, name in ((plot(results), FIGURE_K), (plot_steps(results), FIGURE_STEPS)):
        print(f"wrote {save_figure(fig, name, figures_dir=args.figures_dir)}")
    k_d, k_2d = results["d_in"] - 1, len(results["k"]) - 1
    for label, c in results["curves"].items():
        line = f"{label:32s} k=1: {c['mean'][0]:.3f}  k=d: {c['mean'][k_d]:.3f}  k=2d: {c['mean'][k_2d]:.3f}"
        if label in results.get("closest_estimator", {}):
            near = results["closest_estimator"][label]
            line += f"  closest estimator at k=1/d/2d: {near[0]}/{near[k_d]}/{near[k_2d]}"
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli(main)
