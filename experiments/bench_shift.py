"""Benchmark section ``shift``: the pruning-under-shift cell sweep (:func:`lintrans.shift_study.sweep_points`).

What is timed (float64, as the study runs): one compiled call scoring every sweep point of a
linear-attention stack (random weights at the trained models' scale, 4 seeds, targets ``K, Q, V, attn``,
the paper's 8 rates, every layer) on the same prompts of a shifted distribution (``shots=N/4``), with
per-prompt errors, ``‖G_t‖_F`` of every layer and the effective steps (``_bench_util.time_jitted``: first
call with compilation apart, median of the repeats). Sizes: ``L = 4``, ``d_in = 5``, ``N = 20`` (``N' = 5``),
1024 prompts (``--small``: ``L = 2``, 64 prompts).

Columns: ``points`` (distinct (layer, ranks) incl. the unpruned one), ``cells`` ((layer, target, ξ)
triples), ``prompt_evals`` (seeds × points × prompts), ``median_s``, ``cells_per_s`` (cells × seeds ×
prompts each), ``prompt_evals_per_s``, ``first_call_s``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from _bench_util import time_jitted
from lintrans.params import init_params
from lintrans.pruning import PAPER_RATES
from lintrans.shift import parse_shift

__all__ = ["ShiftSizes", "FULL", "SMALL", "run"]


@dataclasses.dataclass(frozen=True)
class ShiftSizes:
    d_in: int = 5
    n_demos: int = 20  # training N; the prompts have N/4
    n_layers: int = 4
    seeds: int = 4
    n_prompts: int = 1024


FULL = ShiftSizes()
SMALL = ShiftSizes(n_layers=2, n_prompts=64)


def run(config, progress) -> dict[str, Any]:
    """The ``shift`` section (float64 inside ``jax.enable_x64``; the harness default is untouched)."""
    from lintrans import shift_study as ss

    sz = SMALL if config.small else FULL
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.PRNGKey(config.seed), sz.seeds + 1)
        params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[
            init_params(k, sz.n_layers, sz.d_in + 1, 0.5, jnp.float64) for k in keys[1:]])
        p0 = jax.tree_util.tree_map(lambda x: x[0], params)
        plan = ss.plan_sweep(p0, ("K", "Q", "V", "attn"), PAPER_RATES)
        batch = parse_shift("shots=N/4").task(sz.d_in, sz.n_demos).sample(keys[0], sz.n_prompts, dtype=jnp.float64)
        measure = ss.LinearMeasure(sz.d_in, "demos", "1/N", 1)
        progress.update(0, info=f"shift: {plan.points.shape[0]} points × {sz.seeds} seeds × {sz.n_prompts} prompts")
        args = (params, measure, plan.fields, jnp.asarray(plan.layer_index), jnp.asarray(plan.points), batch.H,
                batch.y_query)
        timing = time_jitted(ss.sweep_points, *args, repeats=config.repeats, max_seconds=60.0)
    P, C = int(plan.points.shape[0]), len(plan.cells)
    evals = sz.seeds * P * sz.n_prompts
    return {
        "sizes": dataclasses.asdict(sz),
        "dtype": "float64",
        "rows": [{"points": P, "cells": C, "prompt_evals": evals, "median_s": timing.median_s,
                  "cells_per_s": C / timing.median_s, "prompt_evals_per_s": evals / timing.median_s,
                  "first_call_s": timing.first_call_s, "timing": timing.as_dict()}],
        "columns": ["points", "cells", "prompt_evals", "median_s", "cells_per_s", "prompt_evals_per_s", "first_call_s"],
        "notes": "one compiled call: lax.map over seeds and sweep points, vmap over prompts",
    }
