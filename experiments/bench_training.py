"""Benchmark section ``training``: optimizer steps per second of the linear model, fast vs naive.

What is timed (float32, one seed, mask ``demos``, ``s = 1/N``, each a whole jitted training step:
fresh prompts sampled inside the step from ``fold_in(key, step)``, ``value_and_grad`` of the loss,
global-norm clipping and the Adam update; warmed up first, median of the repeats, see
``_bench_util.time_jitted``):

* ``library`` — :func:`lintrans.train.make_train_step`, the step the training loop runs: the loss
  goes through :func:`lintrans.attention.predict` (one Gram matrix ``S = H_s H_sᵀ``, then ``O(D³)``
  per layer whatever N is; the prediction is the label row of ``(I + W_L) h_q``).
* ``library_wishart`` — the library's step with ``sampler="wishart"``: the prompts drawn as their
  sufficient statistic (the demonstrations' Gram matrix, exact Bartlett draws,
  :mod:`lintrans.gram_sampler`), ``O(d²)`` per prompt instead of ``O(N·d)``; same law, other draws.
* ``tokens`` — the same step with ``path="tokens"``: the library's ΔW form on every token,
  :func:`lintrans.attention.predict_tokens` (``O(N·D²)`` per layer).
* ``naive`` — the same loss through the explicit ``(N+1)×(N+1)`` attention matrix
  (``bench_core.naive_predict``: ``H ← H + s·V (KᵀQ ∘ M)`` per layer, ``O(N²·D)``), with the same
  sampling and optimizer: the straightforward implementation the targets are measured against.
* ``library_no_sampling``, ``naive_no_sampling`` — both steps on a fixed batch (no sampling): the
  gap between the two algorithms without the sampling cost they share (``speedup_vs_naive`` of
  ``library_no_sampling`` is against ``naive_no_sampling``).
* ``sampling_tokens``, ``sampling_wishart`` — :func:`lintrans.train.sample_batch` alone, the
  arrays the step reads (Gram matrix, query, labels): ``B·(N+1)·d`` normals and ``B·D²·N`` for the
  Gram matrix, or ``O(B·D²)`` Bartlett draws; at each N and at a larger one.

Targets (issue 3): ``library`` ≥ 4× ``naive`` at N = 40 and ≥ 40× at N = 400 (L = 4, d = 20,
batch 256). After timing, the section records the relative difference between the library loss
and the naive loss on the same batch (float32), so the speeds compare one function.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from _bench_util import Timing, per_second, sized, time_jitted
from bench_core import naive_predict
from lintrans.numerics import rel_err
from lintrans.train import (
    TrainConfig,
    batch_loss,
    init_state,
    make_optimizer,
    make_train_step,
    sample_batch,
    seed_keys,
)

__all__ = ["TrainingSizes", "FULL", "SMALL", "SIZE_FLAGS", "sizes_for", "memory", "naive_loss", "naive_train_step",
           "run"]


@dataclasses.dataclass(frozen=True)
class TrainingSizes:
    d_in: int = 20  # Garg et al.'s d
    n_demos: tuple[int, ...] = (40, 400)  # the two sizes
    n_layers: int = 4
    batch: int = 256
    sampling_n_demos: tuple[int, ...] = (40, 400, 4000)  # sampling alone, up to where it dominates
    targets: tuple[float | None, ...] = (4.0, 40.0)  # library / naive speed-up targets at each n_demos
    impls: tuple[str, ...] = ("library", "library_wishart", "tokens", "naive", "library_no_sampling",
                              "naive_no_sampling")


FULL = TrainingSizes()
# CI smoke: compile-bound, so only the two steps the targets compare; no targets at toy sizes.
SMALL = TrainingSizes(d_in=3, n_demos=(6,), n_layers=2, batch=8, sampling_n_demos=(6,), targets=(None,),
                      impls=("library", "library_wishart", "naive"))
#: The harness's size flags this section obeys (``--d-in``, ``--batch``).
SIZE_FLAGS = ("d_in", "batch")


def sizes_for(config) -> TrainingSizes:
    """The preset (``--small`` or full) with ``--d-in`` and ``--batch`` applied."""
    return sized(SMALL if config.small else FULL, config, d_in="d_in", batch="batch")


def memory(config) -> list[tuple[int, str, float]]:
    """The largest arrays (elements, what, how many at once), checked by the harness before the run."""
    s = sizes_for(config)
    D, B = s.d_in + 1, s.batch
    N = max(*s.n_demos, *s.sampling_n_demos)
    n_naive = max(s.n_demos)
    return [(B * D * (N + 1), f"a batch of {B} prompts of D×(N+1) = {D}×{N + 1}", 4),
            (B * (n_naive + 1) ** 2, "naive step's attention scores B·(N+1)²", 3 * s.n_layers),
            (s.n_layers * D * D, "weights L·D²", 8)]


MAX_SECONDS = 20.0  # per measurement, over all rounds (at least 3 repeats per round)
ROUNDS = 3  # round-robin passes over the implementations (see _interleaved)
MIN_REPEATS = 10  # timed calls per round at least: the steps take milliseconds


def _config(sizes: TrainingSizes, n_demos: int) -> TrainConfig:
    return TrainConfig(model="linear", d_in=sizes.d_in, n_demos=n_demos, n_layers=sizes.n_layers,
                       scale="1/N", batch_size=sizes.batch, steps=1000, warmup_steps=10, dtype="float32")


def naive_loss(config: TrainConfig, params, batch) -> jax.Array:
    """The training loss of :func:`lintrans.train.batch_loss` (``k = N``, no curriculum) through the
    attention matrix: ``mean((ρ·naive_predict(H) − y_q)²) / d``."""
    s = 1.0 if config.scale == "1" else 1.0 / config.n_demos
    y_hat = config.readout * jax.vmap(lambda h: naive_predict(params, h, s))(batch.H)
    return jnp.mean((y_hat - batch.targets) ** 2) / batch.d_active


@functools.lru_cache(maxsize=8)
def naive_train_step(config: TrainConfig):
    """:func:`lintrans.train.make_train_step`'s step with :func:`naive_loss` (same sampling, optimizer)."""
    optimizer = make_optimizer(config)

    def one_seed(params, opt_state, data_key, step):
        def loss_fn(p):
            batch = sample_batch(config, jax.random.fold_in(data_key, step), step)
            return naive_loss(config, p, batch)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, None)))


def _no_sampling_step(config: TrainConfig, naive: bool = False):
    optimizer = make_optimizer(config)
    loss_fn = naive_loss if naive else batch_loss

    def one_seed(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(config, p, batch))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, None)))


def _interleaved(calls: dict, rounds: int, repeats: int, progress) -> dict[str, Timing]:
    """Time every ``(fn, args)`` of ``calls`` in ``rounds`` round-robin passes and pool the repeats.

    Everything is compiled and kept alive first, then measured in turns, so a slow spell of the
    machine (or of the process: on this CPU the same compiled step took 10 ms or 23 ms depending on
    what the process had run before it) falls on every implementation alike instead of on whichever
    happened to run then.
    """
    first = {}
    for key, (fn, args) in calls.items():
        progress.update(0, info=f"training: compile {key}")
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        first[key] = time.perf_counter() - start
    pooled = {key: [] for key in calls}
    recompiled = {key: False for key in calls}
    for r in range(rounds):
        for key, (fn, args) in calls.items():
            progress.update(0, info=f"training: round {r + 1}/{rounds} {key}")
            t = time_jitted(fn, *args, repeats=repeats, max_seconds=MAX_SECONDS / rounds)
            pooled[key].extend(t.times_s)
            recompiled[key] = recompiled[key] or bool(t.recompiled)
    out = {}
    for key, times in pooled.items():
        out[key] = Timing(first_call_s=first[key], median_s=statistics.median(times), min_s=min(times),
                          max_s=max(times), times_s=tuple(times), repeats=len(times), number=1,
                          recompiled=recompiled[key])
    return out


def run(config, progress) -> dict[str, Any]:
    """The ``training`` section. ``config``: the harness Config (``small``, ``repeats``, ``seed``)."""
    sizes = sizes_for(config)
    rows, agreement, speedups = [], [], []
    calls, configs = {}, {}
    for N in sizes.n_demos:
        tc = dataclasses.replace(_config(sizes, N), seed=config.seed)
        configs[N] = tc
        state = init_state(tc)
        keys = seed_keys(tc)[1]
        step = jnp.int32(1)
        bad = jnp.full((1, 2), -1, jnp.int32)
        # Without sampling both steps read the same token array (the library computes the Gram
        # matrix from it inside the step, as the naive step computes its attention matrices).
        batch = jax.jit(lambda k, tc=tc: sample_batch(tc, jax.random.fold_in(k, 1), 1))(keys[0])
        batch = batch._replace(gram=None, query=None)
        every = {
            "library": (make_train_step(tc), (state.params, state.opt_state, keys, step, bad)),
            "library_wishart": (make_train_step(dataclasses.replace(tc, sampler="wishart")),
                                (state.params, state.opt_state, keys, step, bad)),
            "tokens": (make_train_step(tc, "tokens"), (state.params, state.opt_state, keys, step, bad)),
            "naive": (naive_train_step(tc), (state.params, state.opt_state, keys, step)),
            "library_no_sampling": (_no_sampling_step(tc), (state.params, state.opt_state, batch)),
            "naive_no_sampling": (_no_sampling_step(tc, naive=True), (state.params, state.opt_state, batch)),
        }
        for impl in sizes.impls:
            calls[(N, impl)] = every[impl]
        p0 = jax.tree_util.tree_map(lambda x: x[0], state.params)
        lib = jax.jit(lambda p, tc=tc, batch=batch: batch_loss(tc, p, batch))(p0)
        nai = jax.jit(lambda p, tc=tc, batch=batch: naive_loss(tc, p, batch))(p0)
        agreement.append({"N": N, "library_vs_naive_loss_rel_err": float(rel_err(lib, nai)),
                          "loss": float(lib), "finite": bool(jnp.isfinite(lib) & jnp.isfinite(nai))})
    for N in sizes.sampling_n_demos:
        for sampler in ("tokens", "wishart"):
            tc = dataclasses.replace(_config(sizes, N), sampler=sampler)
            # what the training step reads: the Gram matrix, the query and the labels
            fn = jax.jit(lambda k, tc=tc: (lambda b: (b.gram, b.query, b.targets))(
                sample_batch(tc, jax.random.fold_in(k, 1), 1)))
            calls[(N, f"sampling_{sampler}")] = (fn, (jax.random.PRNGKey(config.seed),))
    timings = _interleaved(calls, ROUNDS, max(config.repeats, MIN_REPEATS), progress)
    for N, target in zip(sizes.n_demos, sizes.targets):
        mine = {impl: t for (n, impl), t in timings.items() if n == N and not impl.startswith("sampling")}
        for impl, t in mine.items():
            ref = "naive_no_sampling" if impl == "library_no_sampling" else "naive"
            speedup = mine[ref].median_s / t.median_s if not impl.startswith("naive") and ref in mine else None
            rows.append({"N": N, "impl": impl, "steps_per_s": per_second(1, t),
                         "prompts_per_s": per_second(sizes.batch, t), "median_s": t.median_s,
                         "speedup_vs_naive": speedup, "first_call_s": t.first_call_s,
                         "recompiled": t.recompiled, "timing": t.as_dict()})
        for impl in ("library", "library_wishart"):
            if impl in mine:
                ratio = mine["naive"].median_s / mine[impl].median_s
                speedups.append({"N": N, "impl": impl, "over_naive": ratio, "target": target,
                                 "target_met": None if target is None else ratio >= target})
    for (N, impl), t in timings.items():
        if impl.startswith("sampling"):
            rows.append({"N": N, "impl": impl, "steps_per_s": per_second(1, t),
                         "prompts_per_s": per_second(sizes.batch, t), "median_s": t.median_s, "speedup_vs_naive": None,
                         "first_call_s": t.first_call_s, "recompiled": t.recompiled, "timing": t.as_dict()})
    return {
        "sizes": dataclasses.asdict(sizes),
        "dtype": "float32",
        "mask": "demos",
        "scale": "1/N",
        "rows": rows,
        "speedups": speedups,
        "agreement": agreement,
        "columns": ["N", "impl", "steps_per_s", "prompts_per_s", "median_s", "speedup_vs_naive", "first_call_s"],
        "notes": "; ".join(f"N={s['N']}: {s['impl']}/naive {s['over_naive']:.1f}x" + (
            "" if s["target"] is None else
            f" (target {s['target']:g}x, {'met' if s['target_met'] else 'NOT met'})") for s in speedups),
    }
