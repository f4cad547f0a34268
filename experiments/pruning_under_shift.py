"""When does SVD pruning help ICL? Clipping under train → test shift, with seeds, intervals and theory (issue 13).

For each model (trained linear attention at L = 1, 4, 8 with s = 1 and 1/N, and the softmax
transformer: :data:`lintrans.shift_study.STUDY_MODELS`, trained on first use into ``--runs-dir`` and
reused; or ``--checkpoint RUN[,RUN]``), each shift (``--shift``, repeatable, :mod:`lintrans.shift`:
``shots=N'``, ``noise=σ``, ``x_scale=c``, ``spectrum=HI:LO``, ``sparsity=k``, combinable with commas,
``none`` the control) and each cell (layer, target, ξ), the pruned and unpruned models are scored on
the same validation and test prompts of the shifted distribution, every seed, in one compiled call
per (model, shift) (:func:`lintrans.shift_study.sweep_points`). Everything is float64.

``results.cells`` (one object per model × shift × cell; read by other tools):
  ``model`` (name), ``shift`` (dict of the shift's resolved values, e.g. ``{"shots": 10}``; ``{}`` the
  control), ``shift_label``, ``n_demos`` (N'), ``layer`` (1-based), ``target`` (K/Q/V/attn, softmax also
  O/mlp), ``xi``, ``rank`` (kept rank), ``ranks`` (per field), ``full_rank``, ``rank0`` (the clip deletes the
  layer's update / MLP), ``error`` and ``error_pruned`` (mean test error (ŷ−y)²/d over prompts and seeds),
  ``rel_change`` (mean over seeds of error_pruned/error − 1 per seed), ``rel_change_ci95`` ([low, high],
  Student t over seeds), ``rel_change_se``, ``significant``, ``improves`` (interval below 0),
  ``log_ratio`` and ``log_ratio_ci95`` (mean per-prompt log(e_p/e_u)), ``median``/``median_pruned``,
  ``frac_improved``, ``tail_frac``/``tail_frac_pruned`` (error > 10 × the zero predictor's),
  ``diverged``/``diverged_pruned`` (counts of (seed, prompt): non-finite or > 1e6 × it), ``n_prompts``,
  ``n_seeds``, ``rel_change_per_seed``; linear models also ``G_norm``/``G_norm_pruned`` (mean
  (Σ_t‖G_t‖_F²)^½), ``dlog_G``, ``step``/``step_pruned`` (effective step of the clipped layer),
  ``bound``/``bound_pruned``/``dlog_bound`` (Theorem 2, ε-ridged proof form over R) and ``L_S``;
  one-layer models ``error_theory``, ``error_pruned_theory``, ``rel_change_theory`` (lintrans.onelayer).
``results.models[*].shifts[label]``: ``choices`` (Algorithm 1, label-free, oracle: per-seed (layer, ξ),
test change with interval, seconds, compiled calls), ``depth`` (deep vs shallow), ``theory_optimal_clip``.
``results.correlations``: Spearman of log_ratio with dlog_G and dlog_bound, bootstrap 95 % interval,
overall and per shift. ``results.statements``: the verdicts (only where intervals support them).

Run from the repository root: ``python experiments/pruning_under_shift.py`` (``--quick``: tiny models,
two shifts; ``--help`` for options).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import jax

from lintrans import cli, shift_study
from lintrans.cli import option
from lintrans.pruning import PAPER_RATES
from lintrans.shift import DEFAULT_SHIFTS, parse_shift, parse_shifts

NAME = "pruning_under_shift"
ALL_TARGETS = ("K", "Q", "V", "attn", "O", "mlp")


def shift_list(text: str) -> tuple[str, ...]:
    """``--shift`` values (repeated flags are joined with ';' by :func:`main`), each checked by the grammar."""
    items = tuple(s.strip() for s in text.split(";") if s.strip())
    for s in items:
        parse_shift(s)
    parse_shifts(items)
    return items



@dataclasses.dataclass(frozen=True)
class Config:
    """SVD clipping of every (layer, target, ξ) under train → test shifts, paired over seeds."""

    shift: tuple[str, ...] = option(DEFAULT_SHIFTS, "test shifts, repeatable (--shift noise=1,shots=10 --shift none)",
                                    parse=shift_list, metavar="SHIFT")
    models: tuple[str, ...] = option(shift_study.DEFAULT_MODELS, "study models to train/reuse without --checkpoint (also: softmax)",
                                     choices=tuple(shift_study.STUDY_MODELS))
    checkpoint: tuple[str, ...] = option((), "run directories of train_icl.py instead of the study models, comma-separated",
                                         parse=cli.run_dirs, metavar="RUN[,RUN]")
    runs_dir: str = option("runs", "where the study models are trained and reused (relative: to the repository root)")
    size: str = option("full", "training size of the study models (tiny: smoke runs)", choices=("full", "tiny"))
    targets: tuple[str, ...] = option(ALL_TARGETS, "clip targets (each model uses those it has)", choices=ALL_TARGETS)
    rates: tuple[float, ...] = option(PAPER_RATES, "clipping rates ξ, comma-separated, each in [0, 1)", parse=cli.rates)
    layers: tuple[int, ...] = option((), "1-based layers to clip (default: every layer of each model)", low=1)
    n_val: int = option(128, "validation prompts per shift (Algorithm 1 and the label-free choice)", low=2)
    n_test: int = option(512, "test prompts per shift, shared by every seed and cell", low=2)
    n_bound: int = option(16, "validation prompts for the Theorem-2 bound (0: no bound)", low=0)
    chunk: int = option(512, "prompts evaluated at once", low=1)
    seed: int = option(0, "key of the prompts: fold_in(PRNGKey(seed), shift index)", low=0)
    merge: tuple[str, ...] = option((), "combine saved results files of parallel runs (disjoint --models) instead of "
                                    "computing, comma-separated", kind="input_file", metavar="JSON[,JSON]")

    def check(self, given: frozenset[str]) -> None:
        if self.merge and given - {"merge", "seed"}:
            raise ValueError("--merge combines saved results; it takes no other experiment flag than --seed")
        if self.checkpoint and given & {"models", "size", "runs_dir"}:
            raise ValueError("--models/--size/--runs-dir choose the study models; they have no meaning with --checkpoint")
        if self.n_bound > self.n_val:
            raise ValueError(f"--n-bound ({self.n_bound}) must not exceed --n-val ({self.n_val}): the bound uses validation prompts")
        if not self.merge and not self.checkpoint:
            runs = Path(self.runs_dir) if Path(self.runs_dir).is_absolute() else cli.REPO_ROOT / self.runs_dir
            cli.check_output_dir(runs, "--runs-dir")
        # the shifted prompts of one (model, shift): (n_val + n_test) × D × (N' + 1), D ≤ 21, N' ≤ 2N = 80, float64
        cli.check_size((self.n_val + self.n_test) * 21 * 81, f"--n-test {self.n_test} / --n-val {self.n_val}: the prompts",
                       itemsize=8)


QUICK = dict(models=("lin-L1-s1/N", "lin-L4-s1/N"), size="tiny", shift=("none", "shots=N/2"), targets=("V", "attn"),
             rates=(0.0, 0.5, 0.9), n_val=32, n_test=64, n_bound=4)


def run(config: Config, *, quiet: bool = False) -> dict:
    config.check(frozenset())
    jax.config.update("jax_enable_x64", True)  # divergent prompts overflow float32; the bound needs float64
    k_corr = jax.random.fold_in(jax.random.PRNGKey(config.seed), 17)
    if config.merge:
        results = shift_study.merge_results([cli.load_results(p)["results"] for p in config.merge], k_corr)
        if not quiet:
            print("\n".join(results["statements"]))
        return results
    load_at_start = list(os.getloadavg())  # timings mean little on a loaded machine: say how loaded it was
    t0 = time.perf_counter()
    shifts = parse_shifts(config.shift)
    if config.checkpoint:
        from lintrans.trained import load_trained

        models = [(shift_study.checkpoint_name(m), m) for m in (load_trained(d) for d in config.checkpoint)]
    else:
        runs = Path(config.runs_dir) if Path(config.runs_dir).is_absolute() else cli.REPO_ROOT / config.runs_dir
        models = shift_study.study_models(config.models, runs, size=config.size, quiet=quiet)
    t_train = time.perf_counter() - t0
    progress = cli.Progress(len(models) * len(shifts), NAME, quiet=quiet, unit="shifts")
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 13)
    out = [shift_study.study_model(name, m, shifts, key=key, targets=config.targets, rates=config.rates,
                                   layers=config.layers, n_val=config.n_val, n_test=config.n_test, n_bound=config.n_bound,
                                   chunk=config.chunk, progress=progress) for name, m in models]
    cells = [c for m in out for c in m["cells"]]
    corr = shift_study.correlation_table(k_corr, cells)
    sweep_s = sum(e["seconds"]["sweep"] for m in out for e in m["shifts"].values())
    results = {"models": [{k: v for k, v in m.items() if k != "cells"} for m in out], "cells": cells,
               "correlations": corr, "statements": shift_study.headline(out) + shift_study.summary_lines(out, corr),
               "timing": {"setup_train_seconds": t_train, "sweep_seconds": sweep_s, "n_cells": len(cells),
                          "cells_per_second": len(cells) / sweep_s if sweep_s > 0 else None,
                          "total_seconds": time.perf_counter() - t0,
                          "load_average_at_start": load_at_start, "cpu_count": os.cpu_count()}}
    if not quiet:
        for line in results["statements"]:
            print(line)
        print(f"{len(cells)} cells in {sweep_s:.1f} s of sweeps ({results['timing']['cells_per_second']:.1f} cells/s, "
              f"seeds x prompts each); total {results['timing']['total_seconds']:.0f} s", file=sys.stderr)
    return results


def plot(results: dict) -> dict:
    from lintrans.plots import shift as figures

    return figures.all_figures(results)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    shifts, rest, i = [], [], 0
    while i < len(argv):  # --shift is repeatable: join the occurrences for the CLI layer's one flag
        a = argv[i]
        if a == "--shift" and i + 1 < len(argv):
            shifts.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--shift="):
            shifts.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    if shifts:
        rest += ["--shift", ";".join(shifts)]
    return cli.main(Config, run, plot, rest, name=NAME, doc=__doc__, presets={"quick": QUICK})


if __name__ == "__main__":
    cli.command(main)
