"""In-context error against the number of examples k: trained models vs least squares (Figs 2.1, 2.2).

    python experiments/icl_curves.py                   # CPU defaults: d = 5, k = 1..10, minutes
    python experiments/icl_curves.py --quick           # d = 3, tiny runs, under a minute; labelled quick
    python experiments/icl_curves.py --d-in 20 --linear-steps 20000 --softmax-steps 50000 ...  # GPU

Trains (or reuses) linear-attention models of several depths (over k ~ U{1..N}, N = 2d) and the
softmax transformer, then measures on one fixed set of prompts (``fold_in(PRNGKey(test_seed), 2)``)
the error ``E (ŷ − y_q)²/d`` at ``k = 1 … 2d`` of every model and of the estimators (least squares,
averaging, 3-nearest-neighbours, one-step GD at the optimal η), with 95 % intervals over
``--eval-prompts`` prompts (:mod:`lintrans.curves`). Figures: ``icl_vs_least_squares.png`` (Fig. 2.1
analogue) and ``icl_train_steps.png`` (checkpoints of the softmax run and of the deepest linear run,
Fig. 2.2 analogue). ``closest_estimator`` names, per k, the estimator nearest to a model's
predictions, joined by ``≈`` with those not measurably farther.

Run folders are ``RUNS/icl_<model…>_<hash of the whole training config>``: a run of another size
never blocks this one; a finished run of the same config is reused, an interrupted one resumed.
Writes ``results/icl_curves.json`` and ``results/figures/`` (``_quick`` with --quick).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lintrans import checkpoint, cli, curves
from lintrans.cli import option
from lintrans.plots.icl import icl_figure, train_steps_figure
from lintrans.tasks import sample_linear
from lintrans.train import test_key

NAME = "icl_curves"


@dataclasses.dataclass(frozen=True)
class Config:
    """What to train, how long, and how to evaluate."""

    d_in: int = option(5, "input dimension d; N = 2d, curves over k = 1..2d (Garg et al.: 20)", low=1, high=512)
    depths: tuple[int, ...] = option((1, 2, 4), "linear-attention depths L, comma-separated", low=1, high=4096)
    linear_steps: int = option(3000, "training steps of each linear run", low=1)
    linear_lr: float = option(1e-2, "Adam peak learning rate of the linear runs (warm-up over 1/20 of the steps, cosine decay)", low=0.0)
    linear_batch: int = option(128, "prompts per step of the linear runs", low=1)
    linear_scale: str = option("1", "attention scale s of the linear runs (with 1/N, k = 1 prompts blew up at L = 4)",
                               choices=("1", "1/N"))
    softmax: bool = option(True, "also train the GPT-2-style softmax transformer")
    softmax_layers: int = option(3, "softmax layers (L = 2, width 32 stayed near averaging in 3000 steps)", low=1, high=4096)
    softmax_width: int = option(64, "softmax residual width", low=1, high=65536)
    softmax_heads: int = option(4, "softmax attention heads (must divide the width)", low=1)
    softmax_mlp: int = option(256, "softmax MLP hidden width (GPT-2: 4 x width)", low=1, high=262144)
    softmax_steps: int = option(4000, "training steps of the softmax run", low=1)
    softmax_lr: float = option(1e-3, "Adam peak learning rate of the softmax run", low=0.0)
    softmax_batch: int = option(64, "prompts per step of the softmax run", low=1)
    softmax_curriculum_every: int = option(500, "steps per stage of Garg's curriculum (0: no curriculum)", low=0)
    seeds: int = option(1, "seeds per run; curves average the per-prompt error over seeds", low=1, high=4096)
    seed: int = option(0, "training seed of every run", low=0)
    checkpoints: int = option(6, "checkpoints per run (icl_train_steps reads them)", low=1, high=10000)
    eval_prompts: int = option(2000, "evaluation prompts per k (≥ 1000: the intervals are CLT ones)", low=1000)
    test_seed: int = option(1234, "seed of the fixed evaluation prompts", low=0)
    dtype: str = option("float32", "training and evaluation dtype", choices=("float32", "float64"))
    runs_dir: str = option("runs", "where the runs live (reused when present)", kind="output_dir")

    def check(self, given: frozenset[str]) -> None:
        cli.check_output_dir(self.runs_dir, "--runs-dir")
        if not self.softmax:
            for name in sorted(given):
                if name.startswith("softmax_"):
                    raise ValueError(f"--{name.replace('_', '-')} has no meaning with --no-softmax")
        if self.softmax and self.softmax_width % self.softmax_heads:
            raise ValueError(f"--softmax-heads {self.softmax_heads} must divide --softmax-width {self.softmax_width}")
        N, D, itemsize = 2 * self.d_in, self.d_in + 1, 8 if self.dtype == "float64" else 4
        # training activations: states (batch, seeds, L+1, D, N+1) linear, (batch, seeds, L, 2N+1, width) x ~8 softmax
        cli.check_size(self.linear_batch * self.seeds * (max(self.depths) + 1) * D * (N + 1),
                       "a linear training step (--linear-batch × --seeds × --depths)", itemsize=itemsize, copies=4)
        if self.softmax:
            cli.check_size(self.softmax_batch * self.seeds * self.softmax_layers * (2 * N + 1)
                           * max(self.softmax_mlp, self.softmax_width),
                           "a softmax training step (--softmax-batch × --seeds × --softmax-layers × width)",
                           itemsize=itemsize, copies=8)
        cli.check_size(self.eval_prompts * self.seeds * D * (N + 1) * N,
                       "the evaluation prompts over every k (--eval-prompts × --seeds × --d-in)", itemsize=itemsize,
                       copies=2)


QUICK = dict(d_in=2, depths=(2,), linear_steps=200, softmax_layers=1, softmax_width=16, softmax_heads=2,
             softmax_mlp=64, softmax_steps=200, softmax_batch=32, softmax_curriculum_every=0, checkpoints=2,
             eval_prompts=1000)


def is_quick(config: Config) -> bool:
    return all(getattr(config, k) == v for k, v in QUICK.items())


def run_specs(config: Config) -> dict:
    """Curve label → (training config, run directory)."""
    c = config
    common = dict(seed=c.seed, seeds=c.seeds, dtype=c.dtype, checkpoints=c.checkpoints)
    tcs = {f"linear attention, L={L}": curves.linear_train_config(c.d_in, L, steps=c.linear_steps, lr=c.linear_lr,
                                                                  batch=c.linear_batch, scale=c.linear_scale, **common)
           for L in c.depths}
    if c.softmax:
        tcs[f"softmax transformer, L={c.softmax_layers}"] = curves.softmax_train_config(
            c.d_in, n_layers=c.softmax_layers, width=c.softmax_width, heads=c.softmax_heads, mlp_width=c.softmax_mlp,
            steps=c.softmax_steps, lr=c.softmax_lr, batch=c.softmax_batch, curriculum_every=c.softmax_curriculum_every,
            **common)
    return {label: (tc, curves.run_dir_for(c.runs_dir, tc)) for label, tc in tcs.items()}


def run(config: Config, *, quiet: bool = False) -> dict:
    """Train or reuse every model, then measure every curve on one fixed set of prompts."""
    config.check(frozenset())
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    d, N = config.d_in, 2 * config.d_in
    ks = list(range(1, N + 1))
    specs = run_specs(config)
    status = {label: curves.ensure_trained(tc, run_dir, quiet=quiet) for label, (tc, run_dir) in specs.items()}
    test = sample_linear(test_key(config.test_seed), config.eval_prompts, N, d,
                         dtype=jnp.float64 if config.dtype == "float64" else jnp.float32)
    progress = cli.Progress(len(specs) + len(curves.ESTIMATOR_CURVES), "icl curves", quiet=quiet, unit="curves")
    est_preds, out, distance, closest = {}, {}, {}, {}
    for name in curves.ESTIMATOR_CURVES:
        est_preds[name] = curves.estimator_predictions(name, test.H, ks)
        out[name] = curves.curve(curves.errors(est_preds[name], test.y_query, d))
        progress.update(1, name)
    for label, (tc, run_dir) in specs.items():
        params, _, step = checkpoint.load_run(run_dir)
        preds = curves.model_predictions(tc, params, test.H, ks)
        out[label] = {**curves.curve(curves.errors(preds, test.y_query, d)), "run_dir": str(run_dir), "step": step,
                      "status": status[label]}
        distance[label] = curves.prediction_distance(preds, est_preds, d)
        closest[label] = curves.closest_estimators(preds, est_preds, d)
        progress.update(1, label)
    # Figure 2.2 analogue: checkpoints of the softmax run and of the deepest linear run.
    chosen = [lab for lab in specs if lab.startswith("softmax")] + [f"linear attention, L={max(config.depths)}"]
    train_steps = {}
    for label in chosen:
        tc, run_dir = specs[label]
        train_steps[label] = {}
        for step in curves.checkpoint_steps(run_dir):
            params, _, _ = checkpoint.load_run(run_dir, step)
            train_steps[label][str(step)] = curves.curve(curves.errors(curves.model_predictions(tc, params, test.H, ks),
                                                                       test.y_query, d))
    results = {"k": ks, "d_in": d, "n_demos": N, "eval_prompts": config.eval_prompts, "quick": is_quick(config),
               "curves": out, "train_steps": train_steps, "least_squares": out["least_squares"],
               "prediction_distance": distance, "closest_estimator": closest}
    print(summary(results))
    return results


def summary(results: dict) -> str:
    k_d, k_2d = results["d_in"] - 1, len(results["k"]) - 1
    lines = ["QUICK preset: small runs, not the documented sizes" if results["quick"] else "",
             f"{'curve':32s} {'k=1':>7s} {'k=d':>7s} {'k=2d':>7s}  closest estimator at k=1 / d / 2d"]
    for label, c in results["curves"].items():
        line = f"{label:32s} {c['mean'][0]:7.3f} {c['mean'][k_d]:7.3f} {c['mean'][k_2d]:7.3f}"
        near = results["closest_estimator"].get(label)
        if near:
            line += f"  {near[0]} / {near[k_d]} / {near[k_2d]}"
        lines.append(line)
    return "\n".join(line for line in lines if line)


def plot(results: dict) -> dict:
    return {"icl_vs_least_squares": icl_figure(results), "icl_train_steps": train_steps_figure(results)}


def main(argv: list[str] | None = None) -> int:
    return cli.main(Config, run, plot, argv, name=NAME, doc=__doc__, presets={"quick": QUICK})


if __name__ == "__main__":
    cli.command(main)
