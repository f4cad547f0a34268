"""Run every experiment of the project at its default size, in order, with the time of each stage.

    python experiments/reproduce_all.py                  # reuse what exists, compute the rest
    python experiments/reproduce_all.py --force          # recompute every stage
    python experiments/reproduce_all.py --benchmark      # also the speed benchmarks
    python experiments/reproduce_all.py --results-dir /tmp/r --figures-dir /tmp/f --runs-dir /tmp/u

Stages (each a subprocess ``python experiments/NAME.py …``, exactly as a user would run it):

1. ``verify_theorem1``  — Theorem 1's identities T1–T5 (figures/theorem1_identity.png);
2. ``icl_curves``       — trains linear models of several depths and the softmax transformer, error
   against the number of examples next to least squares (figures/icl_vs_least_squares.png,
   icl_train_steps.png);
3. ``train``            — ``train_icl.py`` for the two multi-seed runs the pruning experiments use
   (:data:`lintrans.trained.DEFAULT_RUNS`), each with ``final.json`` (test errors vs estimators);
4. ``bound_vs_layer``   — Theorem 2's bound under truncation, layer by layer;
5. ``pruning_phenomenon`` — error change per layer and ξ, steadiness, condition numbers;
6. ``clip_search``      — Algorithm 1 over seeds, the paper's table;
7. ``benchmark``        — only with ``--benchmark``.

A stage whose results already exist (its results JSON; for ``train`` each run's ``final.json``,
run by run) is skipped unless ``--force``; runs under the runs directory are reused by the scripts themselves
(an interrupted run is resumed). A failing stage is reported and the stages that do not depend on
it still run; the exit status is 1 if any stage failed. The times are printed at the end and saved
in ``results/reproduce_all.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from lintrans.experiment import REPO_ROOT, ArgParser, cli
from lintrans.io import load_json, provenance, save_json
from lintrans.train import TrainConfig
from lintrans.trained import default_config, run_name

NAME = "reproduce_all"
STAGES = ("verify_theorem1", "icl_curves", "train", "bound_vs_layer", "pruning_phenomenon", "clip_search", "benchmark")
DEPENDS = {"pruning_phenomenon": ("train",), "clip_search": ("train",)}


@dataclasses.dataclass(frozen=True)
class Config:
    results_dir: str = "results"  # every results JSON goes here (relative to the repo root)
    figures_dir: str = "figures"  # every figure goes here
    runs_dir: str = "runs"  # trained runs
    force: bool = False  # recompute stages whose results exist
    benchmark: bool = False  # also run experiments/benchmark.py
    only: tuple[str, ...] = ()  # run only these stages (default: all)
    dry_run: bool = False  # print the commands, run nothing


def train_icl_args(tc: TrainConfig, out: Path) -> list[str]:
    """The ``train_icl.py`` flags that reproduce ``tc`` exactly (so the scripts reuse the run)."""
    args = ["--model", tc.model, "--layers", tc.n_layers, "--d-in", tc.d_in, "--n-demos", tc.n_demos,
            "--steps", tc.steps, "--seeds", tc.seeds, "--seed", tc.seed, "--lr", tc.lr, "--batch", tc.batch_size,
            "--warmup", tc.warmup_steps, "--final-lr-frac", tc.final_lr_frac, "--clip", tc.clip_norm,
            "--checkpoint-every", tc.checkpoint_every, "--log-every", tc.log_every, "--mask", tc.mask,
            "--scale", tc.scale, "--readout", tc.readout, "--init-std", tc.init_std, "--noise-std", tc.noise_std,
            "--dtype", tc.dtype, "--out", out]
    if tc.model == "softmax":
        args += ["--width", tc.width, "--heads", tc.n_heads, "--mlp-width", tc.mlp_width]
    return [str(a) for a in args]


def _abs(p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else REPO_ROOT / path


def plan(config: Config) -> list[dict]:
    """Stage name → commands (argv lists) and the files whose existence means 'done'."""
    res, fig, runs = _abs(config.results_dir), _abs(config.figures_dir), _abs(config.runs_dir)
    script = lambda name: [sys.executable, str(REPO_ROOT / "experiments" / f"{name}.py")]  # noqa: E731
    out = lambda name: ["--json", str(res / f"{name}.json")]  # noqa: E731
    figs = ["--figures-dir", str(fig)]
    run_dirs = {m: runs / run_name(default_config(m)) for m in ("linear", "softmax")}
    ckpts = [a for m in ("linear", "softmax") for a in ("--checkpoint", str(run_dirs[m]))]
    def stage(name, *steps):
        # steps: (command, file whose existence means this command's work is done)
        return {"stage": name, "commands": [c for c, _ in steps], "done": [d for _, d in steps]}

    stages = [
        stage("verify_theorem1", (script("verify_theorem1") + out("verify_theorem1") + figs, res / "verify_theorem1.json")),
        stage("icl_curves", (script("icl_curves") + out("icl_curves") + figs + ["--runs-dir", str(runs)],
                             res / "icl_curves.json")),
        stage("train", *[(script("train_icl") + train_icl_args(default_config(m), run_dirs[m]) + ["--resume"],
                          run_dirs[m] / "final.json") for m in ("linear", "softmax")]),
        stage("bound_vs_layer", (script("bound_vs_layer") + out("bound_vs_layer") + figs, res / "bound_vs_layer.json")),
        stage("pruning_phenomenon", (script("pruning_phenomenon") + ckpts + out("pruning_phenomenon") + figs,
                                     res / "pruning_phenomenon.json")),
        stage("clip_search", (script("clip_search") + ckpts + out("clip_search") + figs, res / "clip_search.json")),
        stage("benchmark", (script("benchmark") + out("benchmark"), res / "benchmark.json")),
    ]
    wanted = set(config.only) if config.only else set(STAGES) - ({"benchmark"} if not config.benchmark else set())
    return [s for s in stages if s["stage"] in wanted]


def _previous_times(path: Path) -> dict:
    """Stage → its wall and CPU seconds from an earlier reproduce_all.json (computed stages only)."""
    try:
        stages = load_json(path)["results"]["stages"]
    except (ValueError, KeyError, TypeError):
        return {}
    out = {}
    for e in stages:
        if e.get("status") == "ok":
            out[e["stage"]] = {"seconds": e["seconds"], "cpu_seconds": e.get("cpu_seconds")}
        elif "computed_before" in e:
            out[e["stage"]] = e["computed_before"]
    return out


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes: with several cores a stage's wall
    time is below its CPU time, so the CPU time bounds the wall time on a dedicated machine."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(config: Config) -> dict:
    stages = plan(config)
    report, failed = [], set()
    previous = _previous_times(_abs(config.results_dir) / f"{NAME}.json")
    t_all = time.perf_counter()
    for s in stages:
        name = s["stage"]
        entry = {"stage": name, "commands": [" ".join(c) for c in s["commands"]]}
        blocked = [d for d in DEPENDS.get(name, ()) if d in failed]
        if blocked:
            entry.update(status="not run", reason=f"depends on failed stage(s) {blocked}", seconds=0.0)
        elif not config.force and all(p.exists() for p in s["done"]):
            entry.update(status="skipped", reason="results exist (--force recomputes)", seconds=0.0)
            if name in previous:  # keep the time it took when it was computed
                entry["computed_before"] = previous[name]
        elif config.dry_run:
            entry.update(status="dry run", seconds=0.0)
            for c, done in zip(s["commands"], s["done"]):
                print(("(skipped, exists) " if not config.force and done.exists() else "") + " ".join(c))
        else:
            print(f"\n=== {name} ===", flush=True)
            t0, cpu0 = time.perf_counter(), _children_cpu()
            codes = []
            for c, done in zip(s["commands"], s["done"]):
                if not config.force and done.exists():
                    print(f"$ (skipped, {done} exists) " + " ".join(c), flush=True)
                    continue
                print("$ " + " ".join(c), flush=True)
                codes.append(subprocess.run(c, cwd=REPO_ROOT).returncode)
                if codes[-1] != 0:
                    break
            entry["seconds"] = time.perf_counter() - t0
            entry["cpu_seconds"] = _children_cpu() - cpu0
            entry["exit_codes"] = codes
            entry["status"] = "ok" if all(c == 0 for c in codes) else "FAILED"
            if entry["status"] == "FAILED":
                failed.add(name)
        print(f"--- {name}: {entry['status']} {entry['seconds']:.1f} s", flush=True)
        report.append(entry)
    return {"stages": report, "total_seconds": time.perf_counter() - t_all,
            "total_cpu_seconds": sum(e.get("cpu_seconds", 0.0) for e in report),
            "load_average_at_end": list(os.getloadavg()), "cpu_count": os.cpu_count(), "failed": sorted(failed)}


def summary(results: dict) -> str:
    lines = ["", f"{'stage':20s} {'status':10s} {'wall s':>9s} {'CPU s':>9s}"]
    for e in results["stages"]:
        note = f"   ({e['reason']})" if e.get("reason") else ""
        if "computed_before" in e:
            before = e["computed_before"]
            note += f" [took {before['seconds']:.1f} s wall, {before.get('cpu_seconds') or 0:.1f} s CPU when computed]"
        lines.append(f"{e['stage']:20s} {e['status']:10s} {e['seconds']:9.1f} {e.get('cpu_seconds', 0.0):9.1f}" + note)
    lines.append(f"{'total':20s} {'':10s} {results['total_seconds']:9.1f} {results['total_cpu_seconds']:9.1f}")
    lines.append(f"(load average at the end {results['load_average_at_end'][0]:.1f} on {results['cpu_count']} cores; "
                 "CPU s = user + system time of the stage's processes)")
    return "\n".join(lines)


def build_parser() -> ArgParser:
    d = Config()
    p = ArgParser(prog="python experiments/reproduce_all.py", description=__doc__.split("\n\n")[0],
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--force", action="store_true", help="recompute stages whose results exist")
    p.add_argument("--benchmark", action="store_true", help="also run experiments/benchmark.py")
    p.add_argument("--only", default="", help=f"comma-separated stages to run, of {', '.join(STAGES)}")
    p.add_argument("--results-dir", default=d.results_dir, help="where every results JSON goes (default results/)")
    p.add_argument("--figures-dir", default=d.figures_dir, help="where every figure goes (default figures/)")
    p.add_argument("--runs-dir", default=d.runs_dir, help="where trained runs go (default runs/)")
    p.add_argument("--dry-run", action="store_true", help="print the commands of the stages that would run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in only if s not in STAGES]
    if unknown:
        raise ValueError(f"--only: unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    config = Config(results_dir=args.results_dir, figures_dir=args.figures_dir, runs_dir=args.runs_dir,
                    force=args.force, benchmark=args.benchmark, only=only, dry_run=args.dry_run)
    results = run(config)
    print(summary(results))
    if not config.dry_run:
        path = save_json(_abs(config.results_dir) / f"{NAME}.json",
                         {"name": NAME, "config": dataclasses.asdict(config), "provenance": provenance(None),
                          "results": results})
        print(f"\nresults: {path}")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    cli(main)
