"""Train an in-context regressor (any model of lintrans.models) and score it on a fixed test set.

    python experiments/train_icl.py --model linear --layers 1 --d-in 20 --n-demos 40 \\
        --steps 2000 --seeds 2 --out runs/lin_d20_L1 [--resume]
    python experiments/train_icl.py --quick --out runs/quick      # tiny run, seconds; labelled quick

Trains ``--seeds`` seeds at once (:func:`lintrans.train.train`: one jitted, seed-vmapped step;
checkpoints and ``metrics.jsonl`` in ``--out``; ``--resume`` continues an interrupted run bit for
bit; one process per run directory), then scores every seed and every estimator on a fixed test
set from ``fold_in(PRNGKey(test_seed), 2)`` (:func:`lintrans.train_eval.score_run`: 95 %
intervals, ratios to one-step and L-step GD, prediction distances, and for a one-layer linear
model the weights read back as an effective step size next to ``η* = 1/(N+d+1+σ²)``).

Writes ``OUT/final.json`` (results, config, provenance) and ``OUT/final.png``
(:func:`lintrans.plots.train.final_figure`); ``--plot-only --out OUT`` redraws the figure.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax

from lintrans import cli, models
from lintrans.checkpoint import FINAL_FILE, read_metrics
from lintrans.cli import option
from lintrans.limits import check_size, check_training_size
from lintrans.plots.train import final_figure
from lintrans.train import SAMPLERS, Curriculum, TrainConfig, config_to_dict, train
from lintrans.train_eval import effective_step_size, score_run, test_size  # noqa: F401 (re-exported)

NAME = "train_icl"
_D = TrainConfig()
#: Flags of options only some models read: refused with a model that ignores them.
_WIDTH_FLAGS = ("width", "heads", "mlp_width")
_QUERY_FLAGS = ("k_min",)


@dataclasses.dataclass(frozen=True)
class Config:
    """A training run (lintrans.train.TrainConfig) and how it is scored."""

    out: str | None = option(None, "run directory (required): config.json, checkpoints, metrics.jsonl, final.json, "
                             "final.png", kind="output_dir")
    resume: bool = option(False, "continue the latest checkpoint of an existing run in --out")
    model: str = option(_D.model, "the model (registered in lintrans.models)", choices=models.MODELS)
    layers: int = option(_D.n_layers, "layers L", low=1, high=4096)
    d_in: int = option(_D.d_in, "input dimension d", low=1, high=65536)
    n_demos: int = option(_D.n_demos, "demonstrations per prompt N", low=1)
    steps: int = option(_D.steps, "optimizer steps", low=1)
    seeds: int = option(_D.seeds, "seeds trained together (vmapped): seed, seed+1, ...", low=1, high=4096)
    seed: int = option(_D.seed, "first training seed", low=0)
    lr: float = option(_D.lr, "Adam peak learning rate", low=1e-12)
    batch: int = option(_D.batch_size, "prompts per step and seed", low=1)
    warmup: int = option(_D.warmup_steps, "linear warm-up steps (≤ --steps)", low=0)
    final_lr_frac: float = option(_D.final_lr_frac, "cosine decay to lr × this fraction, in [0, 1]", low=0.0, high=1.0)
    clip: float = option(_D.clip_norm, "global-norm gradient clip (0: off)", low=0.0)
    curriculum: str | None = option(None, "Garg's curriculum d_start,d_step,n_start,n_step,every (e.g. 5,1,10,2,2000)")
    k_min: int | None = option(None, "query-scoring models: train over k ~ U{k_min..N} (zeroed demonstrations)", low=1)
    checkpoint_every: int = option(_D.checkpoint_every, "steps between checkpoints", low=1)
    log_every: int = option(_D.log_every, "steps between metrics records", low=1)
    mask: str = option(_D.mask, "attention mask of the linear model", choices=("demos", "causal"))
    scale: str = option(_D.scale, "attention scale s of the linear model", choices=("1", "1/N"))
    readout: int = option(_D.readout, "readout sign ρ of the linear model", choices=(1, -1))
    init_std: float = option(_D.init_std, "linear model: std of the Gaussian initial weights", low=0.0)
    width: int = option(_D.width, "residual width (models with a residual stream)", low=1, high=65536)
    heads: int = option(_D.n_heads, "attention heads, must divide --width", low=1)
    mlp_width: int = option(_D.mlp_width, "MLP hidden width", low=1, high=262144)
    noise_std: float = option(_D.noise_std, "label noise σ", low=0.0)
    sampler: str = option(_D.sampler, "training prompts: auto (Wishart where it needs fewer random draws, else tokens; "
                          "lintrans.train_config.resolve_sampler), tokens, or (linear, demos mask) exact Wishart draws "
                          "of their Gram matrix: O(d²) per prompt whatever N, same law, different draws", choices=SAMPLERS)
    dtype: str = option(_D.dtype, "training dtype", choices=("float32", "float64"))
    test_prompts: int = option(8192, "fixed test set (≥ 4096, issue 3)", low=4096)
    test_seed: int = option(1234, "test / validation prompts come from PRNGKey(test_seed)", low=0)
    tune_prompts: int = option(4096, "validation prompts for L-step GD's best constant η", low=256)
    ridge_lam: float = option(0.1, "ridge's λ (sum convention; σ² is Bayes-optimal with noise)", low=1e-300)

    def train_config(self) -> TrainConfig:
        """The run's :class:`~lintrans.train.TrainConfig` (``ValueError`` naming the field if invalid)."""
        cur = None
        if self.curriculum is not None:
            message = f"--curriculum must be five integers d_start,d_step,n_start,n_step,every; got {self.curriculum!r}"
            try:
                cur = Curriculum(*(int(p) for p in self.curriculum.split(",")))
            except (ValueError, TypeError):
                raise ValueError(message) from None
        return TrainConfig(
            model=self.model, d_in=self.d_in, n_demos=self.n_demos, n_layers=self.layers, mask=self.mask,
            scale=self.scale, readout=self.readout, init_std=self.init_std, width=self.width, n_heads=self.heads,
            mlp_width=self.mlp_width, noise_std=self.noise_std, k_min=self.k_min, curriculum=cur, sampler=self.sampler,
            steps=self.steps, batch_size=self.batch, lr=self.lr, warmup_steps=self.warmup,
            final_lr_frac=self.final_lr_frac, clip_norm=self.clip, seed=self.seed, seeds=self.seeds, dtype=self.dtype,
            checkpoint_every=self.checkpoint_every, log_every=self.log_every)

    def check(self, given: frozenset[str]) -> None:
        if self.out is None:
            raise ValueError("--out is required: the run directory, e.g. --out runs/NAME")
        spec = models.get(self.model)
        unread = (() if spec.uses_width else _WIDTH_FLAGS) + (() if spec.targets == "query" else _QUERY_FLAGS)
        for name in sorted(given & set(unread)):
            raise ValueError(f"--{name.replace('_', '-')} has no meaning for the {self.model} model")
        tc = self.train_config()
        check_training_size(tc)
        check_size(test_size(tc, max(self.test_prompts, self.tune_prompts)), "the test prompts (--test-prompts × D × (N+1))",
                   8 if self.dtype == "float64" else 4)
        cli.check_output_dir(self.out, "--out")


QUICK = dict(d_in=3, n_demos=6, steps=200, batch=32, lr=0.05, warmup=10, checkpoint_every=100, log_every=20,
             seeds=2, test_prompts=4096, tune_prompts=256)


def run(config: Config, *, quiet: bool = False) -> dict:
    """Train (or resume), then score every seed and every estimator on the fixed test set."""
    config.check(frozenset())
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    tc = config.train_config()
    result = train(tc, config.out, resume=config.resume, quiet=quiet)
    scores = score_run(tc, result.state.params, test_prompts=config.test_prompts, test_seed=config.test_seed,
                       tune_prompts=config.tune_prompts, ridge_lam=config.ridge_lam)
    results = {"run_dir": str(config.out), "steps": result.state.step, "resumed_from": result.resumed_from,
               "train_config": config_to_dict(tc), **scores, "metrics": read_metrics(config.out)}
    print(summary(results))
    return results


def plot(results: dict) -> dict:
    return {"final": final_figure(results)}


def summary(results: dict) -> str:
    """The run in a few lines: seeds' errors, estimators, ratios, closest estimator, step sizes."""
    est = results["estimators"]
    lines = [f"model {results['model']['name']} L={results['model']['n_layers']}: test error "
             + ", ".join(f"{s['mean']:.4f}±{s['ci95']:.4f} (seed {s['seed']})" for s in results["model"]["seeds"]),
             "estimators: " + ", ".join(f"{n} {v['mean']:.4f}" for n, v in est.items()),
             "ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in results["ratios"].items()),
             f"closest estimator (prediction distance): {results['closest_estimator']}"]
    if "effective_step_size" in results:
        e = results["effective_step_size"]
        lines.append("effective step size: " + ", ".join(f"{s['eta_eff']:.5f}" for s in e["seeds"])
                     + f" vs optimal {e['eta_optimal']:.5f}")
    return "\n".join(lines)


def _flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """The run's files live in ``--out``: ``--json`` defaults to ``OUT/final.json``, figures to ``OUT``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = _flag(argv, "--out")
    if out == "":
        raise ValueError("--out must not be empty (it would put the run in the current directory)")
    tag = "_quick" if "--quick" in argv else ""
    json_path = _flag(argv, "--json") or (out and f"{out}/{FINAL_FILE.replace('.json', tag + '.json')}")
    figures_dir = _flag(argv, "--figures-dir") or out
    if "--plot-only" in argv:  # redraw OUT/final.png from OUT/final.json; no run settings apply
        if json_path is None:
            raise ValueError("--plot-only needs --out RUN (or --json and --figures-dir)")
        fig = final_figure(cli.load_results(json_path)["results"])
        print(f"wrote: {cli.save_figure(fig, Path(figures_dir) / f'final{tag}.png')}")
        return 0
    if out is not None:
        argv += [] if _flag(argv, "--json") else ["--json", json_path]
        argv += [] if _flag(argv, "--figures-dir") else ["--figures-dir", figures_dir]
    return cli.main(Config, run, plot, argv, name=NAME, doc=__doc__, presets={"quick": QUICK})


if __name__ == "__main__":
    cli.command(main)
