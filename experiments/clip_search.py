"""Algorithm 1 (SPEC §8) on trained in-context regressors, over seeds, with the paper's table.

For each model (the linear-attention stack; the GPT-2-style softmax transformer), module group
(attn; softmax also mlp) and seed of the model's run (:func:`lintrans.search.clip_search`):
condition numbers of the group's matrices per layer; the deepest of the ``top_k`` worst-conditioned
layers; each candidate ξ in ascending order clips that layer's group from the original weights,
scored by the mean ICL error on fresh validation prompts, the best ξ* kept (ties to the smaller
ξ); the test error before and after at ξ* on fresh test prompts. The paper ran it once (one seed);
here every training seed gets its own prompts, and the table reports ξ*, the test errors and their
change over seeds (:mod:`lintrans.clip_seeds`: the change's interval is the wider of the seeds' t
interval and the test prompts' noise; a verdict only when it excludes 0).

Outputs: ``results/clip_search.json`` (config, provenance, every seed's full report), figure
``clip_search.png`` (validation curves with ξ* marked; test change per seed and its mean), and the
table on stdout.

Models: ``--checkpoint RUN_DIR[,RUN_DIR]`` (runs of ``experiments/train_icl.py``), or the small
default runs of :data:`lintrans.trained.DEFAULT_RUNS`, trained into ``--runs-dir`` the first time
and reused after (``--quick``: the tiny linear run of ``pruning_phenomenon.py --quick``, fewer
prompts). Run from the repository root: ``python experiments/clip_search.py``.
"""

from __future__ import annotations

import dataclasses

import jax

from lintrans import cli, clip_seeds
from lintrans.checkpoint import read_run_config
from lintrans.cli import option
from lintrans.plots import pruning as figures
from lintrans.pruning import PAPER_RATES, RANK_RULES
from lintrans.search import GROUPS, group_fields
from lintrans.trained import DEFAULT_RUNS, MODEL_GROUPS, models_for

NAME = "clip_search"
#: Fields that choose or size the default runs: meaningless with --checkpoint.
DEFAULT_RUN_FIELDS = ("models", "runs_dir", "linear_steps", "softmax_steps", "train_seeds", "layers", "softmax_width")



@dataclasses.dataclass(frozen=True)
class Config:
    """Algorithm 1 (choose one layer and one clipping rate by validation) on every seed of trained models."""

    checkpoint: tuple[str, ...] = option((), "run directories of train_icl.py, comma-separated, one per model "
                                         "(default: the small default runs)", parse=cli.run_dirs, metavar="RUN_DIR[,..]")
    models: tuple[str, ...] = option(("linear", "softmax"), "default runs to use without --checkpoint",
                                     choices=tuple(MODEL_GROUPS))
    model: str | None = option(None, "only this model (a --checkpoint of another model is an error)",
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
    group: tuple[str, ...] = option((), "module groups, comma-separated (default: every group the model has: "
                                    "attn, and mlp for softmax)", choices=tuple(sorted(GROUPS)))
    rates: tuple[float, ...] = option(PAPER_RATES, "candidate clipping rates ξ, comma-separated, each in [0, 1)",
                                      parse=cli.rates)
    top_k: int = option(3, "worst-conditioned layers competing; the deepest is taken (the paper's 3)", low=1)
    shots: int | None = option(None, "demonstrations per validation/test prompt (none: the run's N)", low=1)
    n_val: int = option(512, "fresh validation prompts per seed", low=1, high=10**6)
    n_test: int = option(2048, "fresh test prompts per seed (a key branch disjoint from validation)", low=1,
                         high=10**6)
    rule: str = option("exact", "rank rule of SPEC §6", choices=RANK_RULES)
    seed: int = option(0, "prompts of training seed i: fold_in(fold_in(PRNGKey(seed), 11), i), split val/test", low=0)

    def check(self, given: frozenset[str] = frozenset()) -> None:
        """Cross-field checks (run once by the CLI, again by :func:`run` for API callers)."""
        if self.checkpoint:
            extra = [f for f in DEFAULT_RUN_FIELDS if f in given]
            if extra:
                flags = ", ".join("--" + f.replace("_", "-") for f in extra)
                raise ValueError(f"{flags} choose or size the default runs; meaningless with --checkpoint")
        else:
            cli.check_output_dir(cli.repo_path(self.runs_dir), "--runs-dir")
        if self.model is not None and "models" in given:
            raise ValueError("give --model (one model) or --models (default runs), not both")
        if len(set(self.group)) != len(self.group):
            raise ValueError(f"--group lists a group twice: {','.join(self.group)}")


#: --quick: the tiny default linear run of pruning_phenomenon's --quick (reused if it ran first), fewer
#: prompts; the softmax run is left out (its training step alone compiles for tens of seconds).
QUICK = dict(models=("linear",), linear_steps=300, train_seeds=2, n_val=128, n_test=256)


def load_models(config: Config, *, quiet: bool = False):
    """The checkpoints (float64 runs switch on jax_enable_x64), or the default runs, trained if missing."""
    if any(read_run_config(c).get("dtype") == "float64" for c in config.checkpoint):
        jax.config.update("jax_enable_x64", True)
    return models_for(config.checkpoint, config.models, cli.repo_path(config.runs_dir), train_seeds=config.train_seeds,
                      layers=config.layers, linear_steps=config.linear_steps, softmax_steps=config.softmax_steps,
                      softmax_width=config.softmax_width, model_filter=config.model, quiet=quiet)


def run(config: Config, *, quiet: bool = False) -> dict:
    """Algorithm 1 on every (model, group, seed); print the table."""
    config.check()
    plan = []
    for m in load_models(config, quiet=quiet):
        groups = config.group or m.groups
        for g in groups:
            group_fields(m.seed_params(0), g)  # a group the model lacks (mlp on linear attention): ValueError
        plan += [(m, g, m.sampler(config.shots)) for g in groups]
    progress = cli.Progress(sum(m.n_seeds for m, _, _ in plan), NAME, quiet=quiet, unit="seeds")
    root = jax.random.fold_in(jax.random.PRNGKey(config.seed), 11)
    rows = []
    for m, group, sampler in plan:
        def on_seed(i, rep, m=m, group=group):
            progress.update(1, f"{m.model}/{group} seed {i}: layer {rep['layer']}, ξ* = {rep['xi_star']:g}")

        reports = clip_seeds.search_seeds(root, m.params, m.score_fn, group, config.rates, config.top_k,
                                          sample_fn=sampler, n_val=config.n_val, n_test=config.n_test,
                                          rule=config.rule, on_seed=on_seed)
        rows.append({"model": m.model, "group": group, "run": m.describe(), "shots": sampler.n_demos or m.config.n_demos,
                     "summary": clip_seeds.summarize(reports), "per_seed": reports})
    results = {"rates": sorted(config.rates), "top_k": config.top_k, "rows": rows}
    print(clip_seeds.table(results))
    return results


def plot(results: dict) -> dict:
    """The figure, from saved results."""
    try:
        return {"clip_search": figures.clip_search_figure(results)}
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"not a {NAME} results file ({type(e).__name__}: {e})") from None


def main(argv: list[str] | None = None) -> int:
    return cli.main(Config, run, plot, argv, name=NAME, doc=__doc__, presets={"quick": QUICK})


if __name__ == "__main__":
    cli.command(main)
