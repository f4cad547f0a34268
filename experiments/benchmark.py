"""Speed of the library on this machine, in sections; writes ``results/benchmark.json``.

``python experiments/benchmark.py`` runs every section; ``--only core,training`` selects;
``--small`` runs tiny sizes (the CI smoke test: under 2 minutes on CPU for all sections together).
Before the sections, the harness measures the reference rate: the GFLOP/s of a large float32
matrix product at full precision (``_bench_util.matmul_gflops``), stored under
``reference_matmul``.

Adding a section ``NAME``:

1. Write ``experiments/bench_NAME.py`` with ``run(config, progress) -> dict``. ``config`` is this
   script's :class:`Config` (read ``config.small``, ``config.repeats``, ``config.seed``; keep
   your own sizes in your module, a full and a ``small`` preset); ``progress`` is a
   :class:`lintrans.experiment.Progress` (call ``progress.update(0, info="NAME: step")`` to show
   where you are; the harness counts sections). Time every jitted call with
   ``_bench_util.time_jitted`` (``import _bench_util``) so the numbers mean the same in every
   section. Return a JSON-ready dict; put the table in ``"rows"`` (a list of flat dicts) and the
   keys to print in ``"columns"`` (default: every key of the first row).
2. Add ``"NAME": _load("bench_NAME").run`` to :data:`SECTIONS`.
3. Extend ``tests/test_benchmark_smoke.py`` if the section has its own invariants (the smoke test
   already runs every registered section with ``--small``).

Scripts import only ``lintrans``; the section modules are loaded by file path (:func:`_load`) and
registered in ``sys.modules``, so nothing is added to ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import jax

from lintrans.experiment import REPO_ROOT, ArgParser, Progress, cli, save_results

NAME = "benchmark"
_HERE = Path(__file__).resolve().parent


def _load(module: str) -> ModuleType:
    """Import ``experiments/<module>.py`` by path, once (registered in ``sys.modules``)."""
    if module in sys.modules:
        return sys.modules[module]
    spec = importlib.util.spec_from_file_location(module, _HERE / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[module]
        raise
    return mod


bench_util = _load("_bench_util")

#: Registered sections, in run order: name → ``run(config, progress) -> dict``.
SECTIONS = {
    "core": _load("bench_core").run,
    "bound": _load("bench_bound").run,
    "training": _load("bench_training").run,
    "device": _load("bench_device").run,
}

#: Sections left out of a plain run (select them with ``--only`` or ``--device-check``): the device
#: check trains at batch 65,536, which is for an accelerator.
OPT_IN = ("device",)


@dataclasses.dataclass(frozen=True)
class Config:
    only: tuple[str, ...] = ()  # sections to run, in registry order; () means all
    small: bool = False  # tiny sizes (CI smoke test); the full sizes are each section's defaults
    repeats: int = 5  # timed calls per measurement; the median is reported
    seed: int = 0  # PRNG seed of weights and prompts (speed does not depend on it)
    matmul_n: int | None = None  # reference matmul size; None → 4096 (512 with small)

    def sections(self) -> tuple[str, ...]:
        if not self.only:
            return tuple(s for s in SECTIONS if s not in OPT_IN)
        return tuple(s for s in SECTIONS if s in self.only)


def _check(config: Config) -> None:
    unknown = [s for s in config.only if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    if isinstance(config.repeats, bool) or not isinstance(config.repeats, int) or config.repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {config.repeats!r}")
    if config.matmul_n is not None and (not isinstance(config.matmul_n, int) or config.matmul_n < 1):
        raise ValueError(f"matmul_n must be a positive integer, got {config.matmul_n!r}")


def run(config: Config, quiet: bool = True) -> dict:
    """Measure the reference matmul rate, then each selected section."""
    _check(config)
    sections = config.sections()
    progress = Progress(len(sections) + 1, NAME, quiet=quiet)
    n = config.matmul_n or (512 if config.small else 4096)
    progress.update(0, info=f"reference matmul {n}×{n}")
    results = {"reference_matmul": bench_util.matmul_gflops(n, repeats=config.repeats, seed=config.seed)}
    progress.update(1, info="reference matmul done")
    results["sections"] = {}
    for name in sections:
        start = time.perf_counter()
        out = SECTIONS[name](config, progress)
        out["section_wall_s"] = time.perf_counter() - start
        results["sections"][name] = out
        progress.update(1, info=f"{name} done")
    return results


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of flat dicts as an aligned text table (columns: given, or the first row's keys)."""
    if not rows:
        return "(no rows)"
    columns = columns or [k for k, v in rows[0].items() if not isinstance(v, (dict, list))]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def report(results: dict) -> str:
    ref = results["reference_matmul"]
    out = [
        f"reference: {ref['n']}×{ref['n']} {ref['dtype']} matmul (precision {ref['precision']}): "
        f"{ref['gflop_per_s']:.1f} GFLOP/s (median of {ref['timing']['repeats']})"
    ]
    for name, sec in results["sections"].items():
        out.append(f"\n[{name}] ({sec['section_wall_s']:.1f} s)")
        out.append(format_table(sec.get("rows", []), sec.get("columns")))
        for key in ("agreement", "notes"):
            if sec.get(key):
                out.append(f"{key}: {sec[key]}")
    return "\n".join(out)


def _sections_arg(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        raise ValueError("--only needs a comma-separated list of sections")
    return names


def main(argv: list[str] | None = None) -> int:
    p = ArgParser(
        prog="python experiments/benchmark.py",
        description="Prompts per second of the library against a naive attention-matrix reference, "
        "and the reference matmul GFLOP/s. Sections: " + ", ".join(SECTIONS) + ".",
    )
    p.add_argument("--only", metavar="A,B", help="comma-separated sections to run (default: all)")
    p.add_argument("--small", action="store_true", help="tiny sizes (CI smoke test)")
    p.add_argument("--repeats", type=int, default=Config.repeats, help="timed calls per measurement (median reported)")
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--matmul-n", type=int, default=None, help="reference matmul size (default 4096; 512 with --small)")
    p.add_argument("--json", metavar="PATH", help="results file (default results/benchmark.json)")
    p.add_argument("--device-check", action="store_true",
                   help="run only the 'device' section (devices, training throughput at batch 256/4096/65536, "
                   "trajectory sweep, Theorem 1 error in float32 and float64) and write results/device_check.json; "
                   "under 3 min on one GPU, under 2 min on a CPU with --small")
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(SECTIONS))
        return 0
    if args.device_check and args.only is not None:
        raise ValueError("--device-check runs the 'device' section alone; drop --only")
    if args.device_check:
        # The float64 identity errors of the device section need x64; float32 work stays float32.
        jax.config.update("jax_enable_x64", True)
    config = Config(
        only=("device",) if args.device_check else (_sections_arg(args.only) if args.only is not None else ()),
        small=args.small,
        repeats=args.repeats,
        seed=args.seed,
        matmul_n=args.matmul_n,
    )
    _check(config)
    default_name = "device_check" if args.device_check else NAME
    json_path = Path(args.json) if args.json else REPO_ROOT / "results" / f"{default_name}.json"
    if json_path.is_dir():
        raise ValueError(f"--json {json_path} is a directory")
    results = run(config, quiet=args.quiet)
    path = save_results(NAME, config, results, seed=config.seed, json_path=json_path)
    print(report(results))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    cli(main)
