"""Test-suite configuration: identities are checked in float64 (jax x64) throughout.

The suite is compile-bound (hundreds of tiny jitted functions, each compiled once), so before JAX
is imported the test process (and every script subprocess, which inherits the environment) gets:

* XLA's CPU backend (LLVM) optimisation off, ``--xla_backend_optimization_level=0``: measured to
  halve the compile time of ``tests/test_models.py::test_every_model_honours_the_interface``
  (144 compilations: 60.7 s → 25–30 s of ``backend_compile_and_load``). It changes how fast the
  compiled code runs; the arithmetic stays IEEE (no fast-math at any level) and every identity in
  the suite holds at its stated tolerance at both levels. (``--xla_llvm_disable_expensive_passes``
  was tried too: no further gain, and it moved one float64 identity from 1e-13 to 3.6e-12, so it is
  not used.) Flags already in ``XLA_FLAGS`` are kept (a user's own flags win).
* XLA's older loop-fusion emitters instead of its MLIR fusion emitters,
  ``--xla_cpu_use_fusion_emitters=false``: measured to halve the backend compile time again (the
  ``not slow`` suite: 96 s → 42 s of ``backend_compile_duration`` over 1,277 compilations; wall
  88 s → 57 s). Elementwise functions are as accurate (exp, log, erf, erfinv, tanh, … compared
  with scipy on 20,001 points: the same maximum relative error with either emitter); only the
  summation order of some fused reductions changes, which every identity's tolerance allows.
* One LLVM module per compilation instead of XLA's default split into parts compiled on its thread
  pool, ``--xla_cpu_parallel_codegen_split_count=1``: with optimisation off the per-part set-up
  outweighs the parallelism, and two workers already use both cores. Measured: ``tests/test_models.py``
  with ``-n 0`` 21.5–25.2 s → 17.7–18.9 s; the whole suite 292 s → 224 s wall (545 s → 420 s CPU).
  It changes how the module is partitioned for compilation, not the HLO compiled; the whole suite
  passes with it at every stated tolerance.
* XLA:CPU's compile-time preset, ``--xla_cpu_opt_preset=FAST_COMPILE``: it skips the HLO passes that
  spend compile time to buy run time. Measured back to back on the whole suite: 243 s → 220 s wall
  (452 s → 412 s CPU); ``backend_compile_duration`` of ``tests/test_models.py`` 11.5 s → 9.8 s over
  75 compilations. It chooses which optimisation passes run, not fast-math (which stays off); the
  whole suite passes with it at every stated tolerance, and ``verify_theorem1.py --quick`` under all
  four flags reports the same rounding-level float64 errors as with none (T1–T4 maxima at L = 1, 2:
  1.9e-16–6.0e-16 either way).
* No persistent compilation cache: JAX's is not safe between processes without its file lock,
  and with the lock its size bookkeeping (every write re-reads every entry's access time) made a
  two-worker run slower, not faster (measured: workers at 45 % CPU, waiting on the lock).
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
_FAST_COMPILE = (
    "--xla_backend_optimization_level=0",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_parallel_codegen_split_count=1",
    "--xla_cpu_opt_preset=FAST_COMPILE",
)
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_flags, *(f for f in _FAST_COMPILE if f.split("=")[0] not in _flags)]).strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
