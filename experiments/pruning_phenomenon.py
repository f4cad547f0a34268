"""The pruning phenomenon in the simulator: clip one layer's group at each ξ, measure ICL error.

The paper's Figure 1 (GPT-J / LLaMA): SVD-clipping the weights of ONE layer can improve in-context
accuracy, and deep layers do so more steadily than shallow ones; its Figure 3: attention matrices
are far worse conditioned than MLP ones, more so in the last layers. Here, for each trained model
(the linear-attention stack; the GPT-2-style softmax transformer), each seed of its run, each
layer, group (attn; softmax also mlp) and paper rate ξ, the mean ICL test error on one fixed set
of fresh prompts relative to the same seed's unpruned model (:mod:`lintrans.phenomenon`, which
also states when "deep layers are steadier" is supported and when it is inconclusive).

Outputs: ``results/pruning_phenomenon.json`` (+ ``.npz`` with the (seed, layer, ξ) error arrays),
figures ``pruning_phenomenon.png`` (error ratio against ξ, one series per layer) and
``condition_numbers.png`` (condition number per layer, attention against MLP), the table and the
statements on stdout.

Models: ``--checkpoint RUN_DIR[,RUN_DIR]`` (runs of ``experiments/train_icl.py``, one per model), or,
with none, the small default runs of :data:`lintrans.trained.DEFAULT_RUNS`, trained into
``--runs-dir`` the first time and reused after. ``--quick``: a tiny default linear run (300
steps, 2 seeds) and fewer prompts. Run from the repository root:
``python experiments/pruning_phenomenon.py`` (``--help`` for options).
"""

from __future__ import annotations

import dataclasses
import time

import jax

from lintrans import cli, phenomenon
from lintrans.checkpoint import read_run_config
from lintrans.cli import option
from lintrans.plots import pruning as figures
from lintrans.pruning import PAPER_RATES, RANK_RULES
from lintrans.search import check_rates
from lintrans.trained import DEFAULT_RUNS, MODEL_GROUPS, models_for

NAME = "pruning_phenomenon"
#: Fields that choose or size the default runs: meaningless with --checkpoint.
DEFAULT_RUN_FIELDS = ("models", "runs_dir", "linear_steps", "softmax_steps", "train_seeds", "layers", "softmax_width")



@dataclasses.dataclass(frozen=True)
class Config:
    """Clip one layer's group at each ξ in trained models and compare the ICL test error with unpruned."""

    checkpoint: tuple[str, ...] = option((), "run directories of train_icl.py, comma-separated, one per model "
                                         "(default: the small default runs)", parse=cli.run_dirs, metavar="RUN_DIR[,..]")
    models: tuple[str, ...] = option(("linear", "softmax"), "default runs to use without --checkpoint",
                                     choices=tuple(MODEL_GROUPS))
    runs_dir: str = option("runs", "where default runs are trained and reused (relative: to the repository root)")
    linear_steps: int | None = option(None, f"training steps of the default linear run (none: "
                                      f"{DEFAULT_RUNS['linear']['steps']})", low=1)
    softmax_steps: int | None = option(None, f"training steps of the default softmax run (none: "
                                       f"{DEFAULT_RUNS['softmax']['steps']})", low=1)
    train_seeds: int | None = option(None, "training seeds of the default runs (none: 4 linear, 3 softmax)", low=1,
                                     high=64)
    layers: int | None = option(None, "layers of the default runs (none: 4)", low=1, high=64)
    softmax_width: int | None = option(None, "width of the default softmax run, MLP 4x (none: 32)", low=1, high=4096)
    rates: tuple[float, ...] = option(PAPER_RATES, "clipping rates ξ, comma-separated, each in [0, 1)", parse=cli.rates)
    rule: str = option("exact", "rank rule of SPEC §6", choices=RANK_RULES)
    n_test: int = option(2048, "test prompts, shared by every seed, layer and ξ (paired comparisons)", low=2,
                         high=10**6)
    seed: int = option(0, "key of the test prompts: fold_in(PRNGKey(seed), 7)", low=0)
    chunk: int = option(512, "prompts per vmapped chunk (bounds the memory of the sweep)", low=1, high=10**6)

    def check(self, given: frozenset[str] = frozenset()) -> None:
        """Cross-field checks (run once by the CLI, again by :func:`run` for API callers)."""
        if self.checkpoint:
            extra = [f for f in DEFAULT_RUN_FIELDS if f in given]
            if extra:
                flags = ", ".join("--" + f.replace("_", "-") for f in extra)
                raise ValueError(f"{flags} choose or size the default runs; meaningless with --checkpoint")
        else:
            cli.check_output_dir(cli.repo_path(self.runs_dir), "--runs-dir")


#: --quick: a tiny default linear run (shared with clip_search's --quick, so the second reuses it), fewer
#: prompts; the softmax run is left out (its training step alone compiles for tens of seconds).
QUICK = dict(models=("linear",), linear_steps=300, train_seeds=2, n_test=256)


def load_models(config: Config, *, quiet: bool = False):
    """The checkpoints (float64 runs switch on jax_enable_x64), or the default runs, trained if missing."""
    if any(read_run_config(c).get("dtype") == "float64" for c in config.checkpoint):
        jax.config.update("jax_enable_x64", True)
    return models_for(config.checkpoint, config.models, cli.repo_path(config.runs_dir), train_seeds=config.train_seeds,
                      layers=config.layers, linear_steps=config.linear_steps, softmax_steps=config.softmax_steps,
                      softmax_width=config.softmax_width, quiet=quiet)


def run(config: Config, *, quiet: bool = False) -> dict:
    """Sweep every model, group, seed, layer and ξ; print the table and the statements."""
    config.check()
    rates = check_rates(config.rates)  # sorted; the CLI parsed them already, an API caller may not have
    models = load_models(config, quiet=quiet)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
    progress = cli.Progress(sum(len(m.groups) for m in models), NAME, quiet=quiet, unit="groups")
    results = {"rates": list(rates), "n_test": config.n_test, "models": [], "arrays": {}}
    for model in models:
        n_seeds = phenomenon.n_seeds_of(model.params)
        if n_seeds != model.n_seeds:
            raise ValueError(f"{model.run_dir}: the config says {model.n_seeds} seeds, the weights hold {n_seeds}")
        H, y = model.sampler()(jax.random.fold_in(key, 0), config.n_test)  # one test set per model: paired
        entry = {"model": model.model, "run": model.describe(), "n_seeds": n_seeds,
                 "n_layers": model.config.n_layers, "groups": {},
                 "estimators": phenomenon.estimator_errors(H, y, model.config.d_in)}
        for i, group in enumerate(model.groups):
            t0 = time.perf_counter()
            g, err = phenomenon.evaluate_group(jax.random.fold_in(key, 100 + i), model.params, model.score_fn, group,
                                               rates, config.rule, H, y, config.chunk)
            entry["groups"][group] = {**g, "seconds": time.perf_counter() - t0}
            results["arrays"][f"{model.model}_{group}_errors"] = err
            progress.update(1, f"{model.model}/{group}")
        entry["condition_numbers"] = phenomenon.condition_numbers(model.params, MODEL_GROUPS[model.model])
        results["models"].append(entry)
    results["statements"] = phenomenon.statements(results)
    print(phenomenon.table(results), "", *results["statements"], sep="\n")
    return results


def plot(results: dict) -> dict:
    """The two figures, from saved results."""
    try:
        return {"pruning_phenomenon": figures.phenomenon_figure(results),
                "condition_numbers": figures.condition_figure(results)}
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"not a {NAME} results file ({type(e).__name__}: {e})") from None


def main(argv: list[str] | None = None) -> int:
    return cli.main(Config, run, plot, argv, name=NAME, doc=__doc__, presets={"quick": QUICK})


if __name__ == "__main__":
    cli.command(main)
