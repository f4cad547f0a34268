"""Speed of the library on this machine, in sections; writes ``results/benchmark.json``.

``python experiments/benchmark.py`` runs every section but the opt-in ``device``; ``--only
core,training`` selects; ``--small`` (or ``--quick``) runs tiny sizes (the CI smoke test: under 2
minutes on a CPU for all sections together); ``--device-check`` runs the ``device`` section alone
into ``results/device_check.json``; ``--list`` prints the sections. ``--d-in``, ``--n-prompts`` and
``--batch`` resize the sections that declare them; every size is checked against int32 indexing and
the machine's memory before anything is compiled. Before the sections, the reference rate: the
GFLOP/s of a large float32 matrix product at full precision (``_bench_util.matmul_gflops``).

Adding a section ``NAME``:

1. Write ``experiments/bench_NAME.py`` with ``run(config, progress) -> dict``. ``config`` is this
   script's :class:`Config` (read ``config.small``, ``config.repeats``, ``config.seed``; keep your
   sizes in your module, a full and a ``small`` preset); ``progress`` is a
   :class:`lintrans.progress.Progress` (``progress.update(0, info="NAME: step")``). Time every
   jitted call with ``_bench_util.time_jitted`` (``import _bench_util``). Return a JSON-ready dict:
   the table in ``"rows"`` (flat dicts) and the keys to print in ``"columns"``; ``"agreement"``
   (rows), ``"checks"`` (a flat dict) and ``"notes"`` (text) are printed too.
   Optional: ``SIZE_FLAGS`` (the size flags the section obeys, e.g. ``("d_in", "batch")``) and
   ``memory(config) -> [(n_elements, what, copies), …]`` (its largest arrays, checked before the run).
2. Add ``"NAME"`` to :data:`SECTION_NAMES`.
3. Extend ``tests/test_benchmark_smoke.py`` if the section has its own invariants (the smoke test
   already runs every registered section with ``--small``).

The section modules are loaded by file path (:func:`_load`) and registered in ``sys.modules``, so
nothing is added to ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import jax

from lintrans import cli
from lintrans.cli import option

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

#: Registered sections, in run order (module ``experiments/bench_<name>.py`` each).
SECTION_NAMES = ("core", "bound", "training", "peers", "shift", "device")  # peers after training (imports it)
MODULES = {name: _load(f"bench_{name}") for name in SECTION_NAMES}
#: name → ``run(config, progress) -> dict``.
SECTIONS = {name: mod.run for name, mod in MODULES.items()}
#: Left out of a plain run (select with ``--only`` or ``--device-check``): the device check trains at
#: batch 65,536, which is for an accelerator.
OPT_IN = ("device",)
SIZE_FIELDS = ("d_in", "n_prompts", "batch")


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in SECTIONS]
    if not names or unknown:
        raise ValueError(f"unknown section(s) {unknown or [text]}; known: {', '.join(SECTIONS)}")
    return names


@dataclasses.dataclass(frozen=True)
class Config:
    """Prompts and training steps per second of the library against a naive attention-matrix reference."""

    only: tuple[str, ...] = option((), f"sections to run, comma-separated, of {','.join(SECTION_NAMES)} "
                                   "(default: all but device)", parse=_sections)
    small: bool = option(False, "tiny sizes (the CI smoke test)")
    repeats: int = option(5, "timed calls per measurement; the median is reported", low=1, high=10_000)
    seed: int = option(0, "PRNG seed of weights and prompts (speed does not depend on it)", low=0)
    matmul_n: int | None = option(None, "reference matmul size n, n×n float32 (none: 4096; 512 with --small)", low=1)
    d_in: int | None = option(None, "input dimension d of the sections that take it (core, training; none: theirs)",
                              low=1)
    n_prompts: int | None = option(None, "prompts per call of the core section (none: 4096; 32 with --small)", low=1)
    batch: int | None = option(None, "training batch of the training section (none: 256; 8 with --small)", low=1)
    device_check: bool = option(False, "only the device section (devices, training at batch 256/4096/65536, "
                                "trajectory sweep, Theorem 1 errors in float32 and float64) into "
                                "results/device_check.json; under 3 min on one GPU, 2 min on a CPU with --small")

    def sections(self) -> tuple[str, ...]:
        if self.device_check:
            return ("device",)
        if not self.only:
            return tuple(s for s in SECTIONS if s not in OPT_IN)
        return tuple(s for s in SECTIONS if s in self.only)

    def check(self, given: frozenset[str] = frozenset()) -> None:
        """Cross-field checks and the size checks, before anything is compiled."""
        if self.only:
            _sections(",".join(self.only))
        if self.device_check and self.only:
            raise ValueError("--device-check runs the 'device' section alone; drop --only")
        chosen = self.sections()
        for f in SIZE_FIELDS:
            users = [s for s in chosen if f in getattr(MODULES[s], "SIZE_FLAGS", ())]
            if getattr(self, f) is not None and not users:
                takers = [s for s in SECTIONS if f in getattr(MODULES[s], "SIZE_FLAGS", ())]
                raise ValueError(f"--{f.replace('_', '-')} sizes the {'/'.join(takers)} section(s), "
                                 f"none of which runs here ({','.join(chosen)})")
        n = self.matmul_n or (512 if self.small else 4096)
        cli.check_size(n * n, f"--matmul-n {n}: the n×n reference matrices", copies=3)
        for s in chosen:
            for n_elements, what, copies in getattr(MODULES[s], "memory", lambda c: [])(self):
                cli.check_size(n_elements, f"{s}: {what}", copies=copies)


#: --quick: the --small sizes with two timed calls per measurement.
QUICK = dict(small=True, repeats=2)


def run(config: Config, *, quiet: bool = False) -> dict:
    """Measure the reference matmul rate, then each selected section; print the report."""
    config.check()
    sections = config.sections()
    if "device" in sections:  # its float64 identity errors need x64; float32 work stays float32
        jax.config.update("jax_enable_x64", True)
    progress = cli.Progress(len(sections) + 1, NAME, quiet=quiet, unit="sections")
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
    print(bench_util.report(results))
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--list"]:
        print("\n".join(f"{s}{' (opt-in)' if s in OPT_IN else ''}" for s in SECTIONS))
        return 0
    name = "device_check" if "--device-check" in argv else NAME
    return cli.main(Config, run, None, argv, name=name, doc=__doc__, presets={"quick": QUICK})


if __name__ == "__main__":
    cli.command(main)
