"""Shared helpers of the benchmark sections (``experiments/bench_<name>.py``).

Every section times its jitted functions with :func:`time_jitted`, so all numbers in
``results/benchmark.json`` mean the same thing:

* the first call (trace + compile + one run) is timed separately and never enters the statistics;
* each timed call ends with ``jax.block_until_ready`` (JAX dispatch is asynchronous: without it one
  would time the dispatch, not the work);
* ``repeats`` timed calls (each of ``number`` back-to-back calls, divided by ``number``), reporting
  the median (robust to a noisy shared machine), min and max;
* a recompilation during the timed calls is detected through the jitted function's cache size and
  reported (``recompiled``): it would mean the timed loop measured compilation.

:func:`matmul_gflops` measures the reference rate (a large float32 matrix product at full
precision, the kind every section's kernels reduce to), so a section can quote its own speed as a
fraction of what the machine does on the best-case kernel.

Sections load this module with ``import _bench_util``: ``experiments/benchmark.py`` registers it
(and each section) in ``sys.modules`` by file path, and ``python experiments/benchmark.py`` has
``experiments/`` on ``sys.path`` anyway.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lintrans.numerics import mm

__all__ = ["Timing", "time_jitted", "per_second", "matmul_gflops", "sized", "format_table", "report"]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of one jitted function on fixed arguments.

    Attributes:
      first_call_s: the first call, compilation included (not in the statistics).
      median_s, min_s, max_s: per call, over the timed repeats.
      times_s: every timed repeat, per call.
      repeats, number: timed repeats and calls per repeat.
      recompiled: the jit cache grew during the timed calls (``None`` if not inspectable).
    """

    first_call_s: float
    median_s: float
    min_s: float
    max_s: float
    times_s: tuple[float, ...]
    repeats: int
    number: int
    recompiled: bool | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sized(sizes, config, **fields):
    """``sizes`` (a section's frozen size preset) with the harness's size flags applied:
    ``fields`` maps a size-preset field to the ``config`` flag that overrides it (``None``: keep)."""
    updates = {f: getattr(config, flag, None) for f, flag in fields.items()}
    return dataclasses.replace(sizes, **{f: v for f, v in updates.items() if v is not None})


def _cache_size(fn) -> int | None:
    try:
        return int(fn._cache_size())
    except (AttributeError, TypeError):
        return None


def time_jitted(
    fn: Callable, *args, repeats: int = 5, number: int = 1, warmup: int = 1, max_seconds: float | None = None
) -> Timing:
    """Time ``fn(*args)`` (a ``jax.jit``-ed function) after warming it up.

    Args:
      fn: the jitted function; called with the same ``args`` every time, so it compiles once.
      repeats: timed repeats (the median is the reported number), ``≥ 1``.
      number: back-to-back calls per repeat (raise it for calls of a few milliseconds), ``≥ 1``.
      warmup: untimed calls before timing, ``≥ 1`` (the first one compiles).
      max_seconds: stop repeating once the timed calls have taken this long, but never before
        ``min(3, repeats)`` repeats (for slow references: a median of 3 calls of 10 s is enough).
        ``Timing.repeats`` records how many ran.
    """
    for name, v in (("repeats", repeats), ("number", number), ("warmup", warmup)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds!r}")
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        jax.block_until_ready(fn(*args))
    cache_before = _cache_size(fn)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / number)
        del out  # free large outputs (a trajectory can be GBs) before the next call
        if max_seconds is not None and len(times) >= min(3, repeats) and sum(times) * number >= max_seconds:
            break
    cache_after = _cache_size(fn)
    recompiled = None if cache_before is None else cache_after != cache_before
    return Timing(
        first_call_s=first,
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        times_s=tuple(times),
        repeats=len(times),
        number=number,
        recompiled=recompiled,
    )


def per_second(count: float, timing: Timing) -> float:
    """Items per second at the median time (``count`` items per call)."""
    return count / timing.median_s


def matmul_gflops(n: int = 4096, dtype=jnp.float32, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """GFLOP/s of an ``(n, n) @ (n, n)`` product at full precision (:func:`lintrans.numerics.mm`).

    ``2 n³`` floating-point operations per product. Returns the size, dtype, timing and rate.
    """
    ka, kb = jax.random.split(jax.random.PRNGKey(seed))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    fn = jax.jit(mm)
    timing = time_jitted(fn, a, b, repeats=repeats)
    flops = 2.0 * n**3
    return {
        "n": n,
        "dtype": jnp.dtype(dtype).name,
        "precision": "HIGHEST",
        "flop_per_call": flops,
        "gflop_per_s": flops / timing.median_s / 1e9,
        "timing": timing.as_dict(),
    }


# ----------------------------------------------------------------------------- the printed report


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value)
    return str(value)


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of flat dicts as an aligned text table (columns: given, or the first row's scalar keys)."""
    if not rows:
        return "(no rows)"
    columns = columns or [k for k, v in rows[0].items() if not isinstance(v, (dict, list))]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _flat(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k} = {_cell(v)}")
    return out


def report(results: dict) -> str:
    """The reference rate, then per section its table, agreement table, checks and notes (no raw dicts)."""
    ref = results["reference_matmul"]
    out = [f"reference: {ref['n']}×{ref['n']} {ref['dtype']} matmul (precision {ref['precision']}): "
           f"{ref['gflop_per_s']:.1f} GFLOP/s (median of {ref['timing']['repeats']})"]
    for name, sec in results["sections"].items():
        out.append(f"\n[{name}] ({sec['section_wall_s']:.1f} s)")
        out.append(format_table(sec.get("rows", []), sec.get("columns")))
        agreement = sec.get("agreement")
        if isinstance(agreement, list) and agreement:
            out += ["agreement of the implementations:", format_table(agreement)]
        for key in ("checks", "identity_error", "agreement"):
            if isinstance(sec.get(key), dict):
                out.append(f"{key}: " + "; ".join(_flat(sec[key])))
        if sec.get("notes"):
            out.append(f"notes: {sec['notes']}")
    return "\n".join(out)
