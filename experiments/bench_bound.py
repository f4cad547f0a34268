"""Benchmark section ``bound``: the Theorem 2 sweep over (layer, ξ, target) as one compiled call.

What is timed (float64 — the bound needs it — mask ``demos``, ``s = 1``, readout −1): the whole sweep
of :func:`lintrans.bound_sweep.prepare_sweep` for the GD construction with 1 % weight noise, ``L = 8``
layers, the paper's 8 clipping rates, targets ``K, Q, V, attn``, ``4096`` noiseless prompts,
``d_in = 3``, ``N = 64``, ``b = 16`` (``_bench_util.time_jitted``: first call with compilation apart,
median of the repeats). One call computes, per prompt, the factor of the token second-moment
covariance (an SVD of the 64 × 16 centred token moments) and, for the unpruned model and every distinct
clip (the 8 rates give 4 distinct ranks < D = 4, so 8 · 4 · 4 = 128 points), every term's ``C_t`` spectrum
(an SVD of its 6 × 16 factor, ``r0 = d_in(d_in+1)/2``), ``‖ΔW_t‖``, ``‖G_t‖``, ``tr C_t``, the support
check, the summands of every form of :data:`lintrans.bound_forms.FORMS` and the risks. Terms ``t < k`` of a clip of layer ``k`` are copied from the unpruned model
(T6), so ``8 + 128 · 4.5 = 584`` term evaluations per prompt instead of ``129 · 8 = 1032``.

Columns: ``sweep_points`` (distinct points incl. the unpruned one), ``entries`` ((layer, ξ, target)
triples), ``term_evals`` (prompt × term spectra), ``median_s``, ``entries_per_s``, ``term_evals_per_s``,
``first_call_s`` (compilation included).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from _bench_util import time_jitted
from lintrans.bound_forms import REPORTED
from lintrans.bound_report import noisy_gd_construction
from lintrans.pruning import PAPER_RATES
from lintrans.tasks import sample_linear

__all__ = ["BoundSizes", "FULL", "SMALL", "run"]


@dataclasses.dataclass(frozen=True)
class BoundSizes:
    d_in: int = 3  # the small task
    n_demos: int = 64  # N
    shots: int = 16  # b
    n_layers: int = 8  # L
    n_prompts: int = 4096  # prompts in the one call
    rates: tuple[float, ...] = PAPER_RATES  # the paper's 8 candidates
    targets: tuple[str, ...] = ("K", "Q", "V", "attn")


FULL = BoundSizes()
SMALL = BoundSizes(n_layers=2, n_prompts=64, n_demos=16, shots=4)  # CI smoke


def run(config, progress) -> dict[str, Any]:
    """The ``bound`` section (float64 inside ``jax.enable_x64``; the harness default is untouched)."""
    from lintrans.bound_sweep import prepare_sweep

    sizes = SMALL if config.small else FULL
    with jax.enable_x64(True):
        N, d = sizes.n_demos, sizes.d_in
        keys = jax.random.split(jax.random.PRNGKey(config.seed), 2)
        p = noisy_gd_construction(keys[0], d, N, sizes.n_layers, 0.01)
        batch = sample_linear(keys[1], sizes.n_prompts, N, d, dtype=jnp.float64)
        progress.update(0, info="bound: prepare")
        prep = prepare_sweep(p, batch, sizes.shots, rates=sizes.rates, targets=sizes.targets, readout=-1)
        progress.update(0, info=f"bound: sweep of {prep.points.shape[0]} points × {sizes.n_prompts} prompts")
        timing = time_jitted(prep.fn, *prep.args, repeats=config.repeats, max_seconds=60.0)
        res = prep.run()
    L = sizes.n_layers
    layers = prep.points[1:, 0]
    term_evals = sizes.n_prompts * (L + int(np.sum(L - layers + 1)))
    entries = len(prep.index)
    u = res.entry(0)
    return {
        "sizes": dataclasses.asdict(sizes),
        "dtype": "float64",
        "rows": [{
            "sweep_points": int(prep.points.shape[0]),
            "entries": entries,
            "term_evals": term_evals,
            "median_s": timing.median_s,
            "entries_per_s": entries / timing.median_s,
            "term_evals_per_s": term_evals / timing.median_s,
            "first_call_s": timing.first_call_s,
            "recompiled": timing.recompiled,
            "timing": timing.as_dict(),
        }],
        "checks": {
            "rank_C_unpruned": [int(np.min(u["rank_min"])), int(np.max(u["rank_max"]))],
            "nonfinite_prompts": int(np.sum(res.arrays["nonfinite"])),
            "min_reported_summand": float(min(np.min(res.arrays[f"{f}_min" if f.startswith("printed") else f])
                                              for f in REPORTED)),
        },
        "columns": ["sweep_points", "entries", "term_evals", "median_s", "entries_per_s", "term_evals_per_s",
                    "first_call_s"],
    }
