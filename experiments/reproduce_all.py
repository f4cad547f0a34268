"""Run every experiment of the project in order, reusing what is current, with the time of each stage.

    python experiments/reproduce_all.py --dry-run     # the stages, their commands, what would be reused
    python experiments/reproduce_all.py               # compute what is missing or stale → results/
    python experiments/reproduce_all.py --quick       # every stage with its --quick preset (minutes)
    python experiments/reproduce_all.py --publish     # ALSO regenerate the committed figures/ (the one command that does)
    python experiments/reproduce_all.py --plot-only   # redraw every figure from the saved results

Each stage is one or more subprocesses ``python experiments/NAME.py …``, exactly as a user would run
them (the stage table :data:`STAGES`; a new experiment is one line there). A step is reused when its
stored result was made by the same FULL config: for an experiment, the ``config`` and preset
recorded in its results JSON equal those its command line parses to (the script's own ``Config``),
so a file from a smaller or ``--quick`` run is never reused for a default run; for a training run,
the run directory (named by a hash of its whole training config) holds the final checkpoint and
``final.json``. ``--force`` recomputes. A failing stage is reported and the stages that do not depend
on it still run; exit status 1 if any failed. Results and figures go to ``results/`` and
``results/figures/`` (git-ignored); ``--publish`` sends the figures to the committed ``figures/``
(reused stages are redrawn from their results). Times are printed and saved in
``results/reproduce_all[_quick].json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import sys
from pathlib import Path

from lintrans import cli, models, pipeline
from lintrans.cli import option
from lintrans.io import provenance, save_json
from lintrans.train import TrainConfig
from lintrans.trained import default_config, run_name

NAME = "reproduce_all"
EXPERIMENTS = cli.REPO_ROOT / "experiments"
#: The 8-layer linear run behind bound_vs_layer_trained.png (d_in = 3, N = 64 as in bound_vs_layer's
#: `small` setting; 3 seeds). The training length is this project's choice (the DEFAULT_RUNS linear recipe).
BOUND_RUN = dict(d_in=3, n_demos=64, n_layers=8, steps=2000, batch_size=128, lr=1e-2, seeds=3,
                 checkpoint_every=500, log_every=100)
QUICK_TRAIN = dict(steps=60, seeds=2)  # --quick: the same architectures, a few steps


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row of the stage table. ``args(ctx)`` → the script's own flags (outputs are added here);
    ``runs`` → the training runs (TrainConfigs) the stage trains with train_icl.py instead."""

    name: str
    script: str | None = None
    args: object = None  # callable ctx -> list[str]
    figures: bool = True
    depends: tuple[str, ...] = ()
    runs: object = None  # callable ctx -> {label: TrainConfig}
    optional: bool = False  # only with --benchmark
    json: str | None = None  # results-file stem (default: the stage name)


def train_runs(ctx) -> dict:
    """The default runs the pruning experiments share (:data:`lintrans.trained.DEFAULT_RUNS`)."""
    q = QUICK_TRAIN if ctx["quick"] else {}
    return {"linear": default_config("linear", **q), "softmax": default_config("softmax", **q)}


def bound_runs(ctx) -> dict:
    """The run behind the ``*_trained`` figures (:data:`BOUND_RUN`)."""
    return {"bound": default_config("linear", **{**BOUND_RUN, **(QUICK_TRAIN if ctx["quick"] else {})})}


def run_dir(ctx, label: str) -> Path:
    return ctx["runs"] / run_name({**train_runs(ctx), **bound_runs(ctx)}[label])


def _ckpts(ctx) -> list[str]:
    return ["--checkpoint", f"{run_dir(ctx, 'linear')},{run_dir(ctx, 'softmax')}"]


STAGES = (
    Stage("verify_theorem1", "verify_theorem1", lambda ctx: []),
    Stage("icl_curves", "icl_curves", lambda ctx: ["--runs-dir", str(ctx["runs"])]),
    Stage("train", runs=train_runs, figures=False),
    Stage("train_bound", runs=bound_runs, figures=False),
    Stage("bound_vs_layer", "bound_vs_layer", lambda ctx: []),
    Stage("bound_vs_layer_trained", "bound_vs_layer", lambda ctx: ["--checkpoint", str(run_dir(ctx, "bound")),
                                                                   "--tag", "trained"], depends=("train_bound",)),
    Stage("pruning_phenomenon", "pruning_phenomenon", _ckpts, depends=("train",)),
    Stage("clip_search", "clip_search", _ckpts, depends=("train",)),
    Stage("pruning_under_shift", "pruning_under_shift", lambda ctx: ["--runs-dir", str(ctx["runs"])]),
    Stage("beyond_linear", "beyond_linear", lambda ctx: ["--runs-dir", str(ctx["runs"])]),
    Stage("benchmark", "benchmark", lambda ctx: [], figures=False, optional=True),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


@dataclasses.dataclass(frozen=True)
class Config:
    """Which stages to run and what to reuse."""

    only: tuple[str, ...] | None = option(None, "run only these stages, comma-separated (none: all)", choices=STAGE_NAMES)
    force: bool = option(False, "recompute stages whose stored results are current")
    benchmark: bool = option(False, "also run the speed benchmark (experiments/benchmark.py)")
    dry_run: bool = option(False, "list the stages, their commands and what would be reused; run nothing")
    publish: bool = option(False, "write the figures into the committed figures/ (the only command that does)")
    runs_dir: str = option("runs", "where training runs are trained and reused", kind="output_dir")
    stage_preset: str | None = option(None, "run every stage with this preset (--quick sets it)", choices=("quick",))

    def check(self, given: frozenset[str]) -> None:
        cli.check_output_dir(self.runs_dir, "--runs-dir")
        if self.publish and self.stage_preset is not None:
            raise ValueError("--publish writes the committed figures, which come from the default sizes; not with --quick")
        if self.only and "benchmark" in self.only and "benchmark" in given:
            raise ValueError("--benchmark has no meaning with --only (name the benchmark stage in --only)")


QUICK = dict(stage_preset="quick")


@functools.lru_cache(maxsize=None)
def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_reproduce_{name}", EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def expected_config(script: str, argv: list[str]) -> dict | None:
    """The full config ``experiments/<script>.py argv`` runs with (``None``: not a cli-layer script,
    or its inputs do not exist yet)."""
    try:
        mod = _load_script(script)
        presets = {"quick": mod.QUICK} if hasattr(mod, "QUICK") else None
        with contextlib.redirect_stderr(io.StringIO()):
            config, _, _ = cli.parse_config(mod.Config, argv, presets=presets)
    except (SystemExit, AttributeError, ValueError, TypeError, OSError):
        return None
    return pipeline.jsonable(dataclasses.asdict(config))


def train_icl_args(tc: TrainConfig, out: Path) -> list[str]:
    """The ``train_icl.py`` flags that reproduce ``tc`` exactly (so every script reuses the run)."""
    args = ["--model", tc.model, "--layers", tc.n_layers, "--d-in", tc.d_in, "--n-demos", tc.n_demos,
            "--steps", tc.steps, "--seeds", tc.seeds, "--seed", tc.seed, "--lr", tc.lr, "--batch", tc.batch_size,
            "--warmup", tc.warmup_steps, "--final-lr-frac", tc.final_lr_frac, "--clip", tc.clip_norm,
            "--checkpoint-every", tc.checkpoint_every, "--log-every", tc.log_every, "--mask", tc.mask,
            "--scale", tc.scale, "--readout", tc.readout, "--init-std", tc.init_std, "--noise-std", tc.noise_std,
            "--dtype", tc.dtype, "--out", out, "--resume"]
    if models.get(tc.model).uses_width:
        args += ["--width", tc.width, "--heads", tc.n_heads, "--mlp-width", tc.mlp_width]
    return [str(a) for a in args]


def plan(config: Config, results_dir: Path, figures_dir: Path, plot_only: bool = False) -> list[dict]:
    """Per stage: its steps ``{"argv", "current", "why"}`` (commands as lists, reuse decided here)."""
    preset = config.stage_preset
    ctx = {"runs": Path(config.runs_dir).resolve(), "quick": preset is not None}
    py = [sys.executable]
    wanted = set(config.only or (s.name for s in STAGES if not s.optional or config.benchmark))
    out = []
    for s in STAGES:
        if s.name not in wanted:
            continue
        steps = []
        if s.runs is not None and plot_only:
            steps.append({"argv": None, "current": True, "why": "--plot-only trains nothing"})
        elif s.runs is not None:
            for label, tc in s.runs(ctx).items():
                rdir = ctx["runs"] / run_name(tc)
                current, why = pipeline.run_current(tc, rdir)
                steps.append({"argv": py + [str(EXPERIMENTS / "train_icl.py")] + train_icl_args(tc, rdir) + ["--quiet"],
                              "current": current, "why": why, "run": label})
        else:
            flags = s.args(ctx) + (["--quick"] if preset else [])
            json_path = results_dir / f"{s.json or s.name}{'_' + preset if preset else ''}.json"
            current, why = pipeline.results_current(json_path, expected_config(s.script, flags), preset)
            io_flags = ["--json", str(json_path)] + (["--figures-dir", str(figures_dir)] if s.figures else [])
            if plot_only:
                argv = [str(EXPERIMENTS / f"{s.script}.py"), "--plot-only"] + io_flags if s.figures else None
                current, why = (False, "redraw from the stored results") if argv else (True, "draws no figures")
            elif current and config.publish and s.figures:  # publish what is current: redraw it into figures/
                argv, current, why = [str(EXPERIMENTS / f"{s.script}.py"), "--plot-only"] + io_flags, False, why + "; redrawn"
            else:
                argv = [str(EXPERIMENTS / f"{s.script}.py")] + flags + io_flags
            steps.append({"argv": py + argv if argv else None, "current": current, "why": why})
        out.append({"stage": s.name, "depends": s.depends, "steps": steps})
    return out


def run(config: Config, *, results_dir: Path, figures_dir: Path, plot_only: bool = False, quiet: bool = False) -> dict:
    """Plan and execute the stages (:func:`lintrans.pipeline.execute`)."""
    return pipeline.execute(plan(config, results_dir, figures_dir, plot_only), cwd=cli.REPO_ROOT, force=config.force,
                            dry_run=config.dry_run, extra=("--quiet",) if quiet else ())


def main(argv: list[str] | None = None) -> int:
    config, args, _ = cli.parse_config(Config, argv, presets={"quick": QUICK}, prog=f"{NAME}.py", doc=__doc__)
    results_dir = cli.check_output_dir(args.results_dir if args.results_dir is not None else cli.RESULTS_DIR,
                                       "--results-dir")
    if config.publish and args.figures_dir is not None:
        raise ValueError("--publish writes figures/; --figures-dir has no meaning with it")
    figures_dir = cli.PUBLISHED_FIGURES_DIR if config.publish else Path(args.figures_dir or cli.FIGURES_DIR)
    cli.check_output_dir(figures_dir, "--figures-dir")
    json_path = Path(args.json) if args.json else results_dir / f"{NAME}{'_quick' if config.stage_preset else ''}.json"
    cli.check_output_file(json_path, "--json")
    results = run(config, results_dir=results_dir.resolve(), figures_dir=figures_dir.resolve(),
                  plot_only=args.plot_only, quiet=args.quiet)
    if config.dry_run:
        return 0
    print(pipeline.summary(results))
    save_json(json_path, {"name": NAME, "config": dataclasses.asdict(config), "preset": args.preset,
                          "provenance": provenance(None), "results": results})
    print(f"wrote: {json_path}" + (f"\nfigures: {figures_dir}" if not results["failed"] else ""))
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    cli.command(main)
