"""Benchmark section ``core``: prompts per second of the forward pass and the full trajectory.

What is timed (float32, mask ``demos``, ``s = 1``, each a single ``jax.jit(jax.vmap(...))`` call
over the whole batch, warmed up first, median of the repeats; see ``_bench_util.time_jitted``):

* ``predict`` — :func:`lintrans.attention.predict`, the fast path: one Gram matrix
  ``S = H_s H_sᵀ`` (``2D²N`` flops), then ``O(D³)`` per layer whatever N is.
* ``predict_tokens`` — :func:`lintrans.attention.predict_tokens`, the ΔW-form forward on every
  token (``≈ 8D²N + 2D³`` flops per layer).
* ``trajectory`` — :func:`lintrans.trajectory.trajectory`: ``ΔW_t, G_t, W_t`` and every state
  ``H^0…H^L`` (the ΔW-form forward plus ``2D³`` per layer for ``G_t``; its output alone is
  ``B·(L+1)·D·(N+1)`` floats: 1.8 GB at N = 400).
* ``naive`` — the reference that builds the masked ``(N+1)×(N+1)`` attention matrix explicitly,
  ``H ← H + s·W_V H ((W_K H)ᵀ(W_Q H) ∘ M)`` (``≈ 6D²(N+1) + 4D(N+1)²`` flops per layer). It lives
  here and in the tests only, never in ``lintrans/``. Run over the batch with
  ``lax.map(batch_size=naive_chunk)`` so the ``(B, N+1, N+1)`` scores do not need 2.6 GB at
  N = 400 (inside a chunk it is vmapped).
* ``naive_states`` — the same, returning every state (the naive counterpart of ``trajectory``).

The flop counts count matrix-product flops only (``2mnk``); ``GFLOP/s`` divides them by the median
time, so it can be compared with the reference matmul rate of the harness. After timing, the
section records whether ``predict``, ``predict_tokens`` and ``naive`` agree (relative error of
the predictions over the batch), so the speeds compare implementations of the same function.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from _bench_util import per_second, sized, time_jitted
from lintrans.attention import predict, predict_tokens
from lintrans.numerics import mm, rel_err
from lintrans.params import LinearAttentionParams, init_params
from lintrans.tasks import random_prompts
from lintrans.trajectory import trajectory

__all__ = ["CoreSizes", "FULL", "SMALL", "SIZE_FLAGS", "sizes_for", "memory", "naive_layer", "naive_states",
           "naive_predict", "run"]


@dataclasses.dataclass(frozen=True)
class CoreSizes:
    d_in: int = 20  # Garg et al.'s d = 20, D = 21
    n_demos: tuple[int, ...] = (40, 400)  # N: the verifier's size and 10× more (where N² bites)
    n_layers: int = 12  # L = 12, GPT-2 small's depth
    batch: int = 4096  # prompts per jitted call
    naive_chunk: int = 512  # lax.map chunk of the naive reference (bounds its (B, N+1, N+1) memory)


#: Per measurement: stop repeating after this many seconds of timed calls (at least 3 repeats).
#: Only the naive reference at N = 400 (~10 s a call on 2 CPU cores) reaches it.
MAX_SECONDS = 30.0

FULL = CoreSizes()
SMALL = CoreSizes(d_in=4, n_demos=(8,), n_layers=2, batch=32, naive_chunk=16)  # CI smoke: compile-bound
#: The harness's size flags this section obeys (``--d-in``, ``--n-prompts``).
SIZE_FLAGS = ("d_in", "n_prompts")


def sizes_for(config) -> CoreSizes:
    """The preset (``--small`` or full) with ``--d-in`` and ``--n-prompts`` applied."""
    return sized(SMALL if config.small else FULL, config, d_in="d_in", batch="n_prompts")


def memory(config) -> list[tuple[int, str, float]]:
    """The largest arrays (elements, what, how many at once), checked by the harness before the run."""
    s = sizes_for(config)
    D, N, B = s.d_in + 1, max(s.n_demos), s.batch
    return [(B * D * (N + 1), f"{B} prompts of D×(N+1) = {D}×{N + 1}", 4),
            (B * (s.n_layers + 1) * D * (N + 1), "trajectory states B·(L+1)·D·(N+1)", 2),
            (min(s.naive_chunk, B) * (N + 1) ** 2, "naive attention scores chunk·(N+1)²", 3),
            (s.n_layers * D * D, "weights L·D²", 3)]


def _init_scale(n_demos: int) -> float:
    """Weights at a scale where the states stay finite (SPEC §3: 0.05/√D at N = 40 with s = 1,
    shrinking like N^{-1/3}), so no timing runs on NaN/Inf or denormals."""
    return 0.05 * (40.0 / n_demos) ** (1.0 / 3.0)


def _mask(n_tokens: int, dtype) -> jax.Array:
    """``M[i, j] = 1`` when key ``i`` is a demonstration (mask ``demos``: nothing attends to the query)."""
    return jnp.broadcast_to((jnp.arange(n_tokens) < n_tokens - 1)[:, None], (n_tokens, n_tokens)).astype(dtype)


def naive_layer(w_k, w_q, w_v, H: jax.Array, s: float) -> jax.Array:
    """One layer through the explicit attention matrix: ``H + s · V (Kᵀ Q ∘ M)``.

    Column ``j`` of ``V (KᵀQ ∘ M)`` is ``Σ_i M_ij (W_V h_i)(W_K h_i)ᵀ W_Q h_j``, the same
    ``ΔW_t h_j`` as the library's ΔW form (paper Eq. 1). ``H``: ``(D, N+1)``.
    """
    K, Q, V = mm(w_k, H), mm(w_q, H), mm(w_v, H)
    scores = mm(K.T, Q) * _mask(H.shape[1], H.dtype)  # (N+1, N+1), scores[i, j] = k_i · q_j
    return H + s * mm(V, scores)


def naive_states(params: LinearAttentionParams, H: jax.Array, s: float = 1.0) -> jax.Array:
    """Every state ``H^0…H^L`` through the attention matrix: ``(L+1, D, N+1)``."""

    def step(H_prev, w):
        H_next = naive_layer(*w, H_prev, s)
        return H_next, H_next

    _, states = jax.lax.scan(step, H, tuple(params))
    return jnp.concatenate([H[None], states], axis=0)


def naive_predict(params: LinearAttentionParams, H: jax.Array, s: float = 1.0) -> jax.Array:
    """``ŷ = (h^L_{N+1})[D-1]`` (readout +1) through the attention matrix."""

    def step(H_prev, w):
        return naive_layer(*w, H_prev, s), None

    H_last, _ = jax.lax.scan(step, H, tuple(params))
    return H_last[-1, -1]


def flops_per_prompt(impl: str, D: int, N: int, L: int) -> float:
    """Matrix-product flops (``2mnk``) of one prompt; formulas in the module docstring."""
    T = N + 1
    per_layer_dw = 2 * (3 * D * D * N + D**3 + D * D * T)  # values, keys, V Kᵀ, ·W_Q, ΔW·H
    return {
        "predict": 2 * D * D * N + L * 12 * D**3,
        "predict_tokens": L * per_layer_dw,
        "trajectory": L * (per_layer_dw + 2 * D**3),
        "naive": L * 2 * (3 * D * D * T + 2 * D * T * T),
        "naive_states": L * 2 * (3 * D * D * T + 2 * D * T * T),
    }[impl]


def _functions(chunk: int) -> dict[str, Any]:
    def chunked(f):
        return lambda p, H: jax.lax.map(lambda h: f(p, h), H, batch_size=chunk)

    return {
        "predict": jax.jit(jax.vmap(lambda p, h: predict(p, h), in_axes=(None, 0))),
        "predict_tokens": jax.jit(jax.vmap(lambda p, h: predict_tokens(p, h), in_axes=(None, 0))),
        "trajectory": jax.jit(jax.vmap(lambda p, h: trajectory(p, h), in_axes=(None, 0))),
        "naive": jax.jit(chunked(naive_predict)),
        "naive_states": jax.jit(chunked(naive_states)),
    }


def run(config, progress) -> dict[str, Any]:
    """The ``core`` section. ``config``: the harness Config (``small``, ``repeats``, ``seed``);
    ``progress``: a :class:`lintrans.progress.Progress` (``update(0, info)`` per step)."""
    sizes = sizes_for(config)
    dtype = jnp.float32
    D, L, B = sizes.d_in + 1, sizes.n_layers, sizes.batch
    rows, agreement = [], []
    for N in sizes.n_demos:
        key_p, key_h = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), N))
        params = init_params(key_p, L, D, _init_scale(N), dtype)
        H = random_prompts(key_h, B, N, sizes.d_in, 1, dtype)
        fns = _functions(min(sizes.naive_chunk, B))
        timings = {}
        for impl, fn in fns.items():
            progress.update(0, info=f"core N={N} {impl}")
            timings[impl] = time_jitted(fn, params, H, repeats=config.repeats, max_seconds=MAX_SECONDS)
        # The implementations must compute the same function for their speeds to be comparable.
        y = {k: fns[k](params, H) for k in ("predict", "predict_tokens", "naive")}
        agreement.append(
            {
                "N": N,
                "all_finite": all(bool(jnp.all(jnp.isfinite(v))) for v in y.values()),
                "predict_vs_naive_rel_err": float(rel_err(y["predict"], y["naive"])),
                "predict_tokens_vs_naive_rel_err": float(rel_err(y["predict_tokens"], y["naive"])),
            }
        )
        del y
        for impl, t in timings.items():
            flops = flops_per_prompt(impl, D, N, L) * B
            reference = "naive_states" if impl == "trajectory" else "naive"
            rows.append(
                {
                    "N": N,
                    "impl": impl,
                    "prompts_per_s": per_second(B, t),
                    "median_s": t.median_s,
                    "gflop_per_s": flops / t.median_s / 1e9,
                    "speedup_vs_naive": (
                        timings[reference].median_s / t.median_s if not impl.startswith("naive") else None
                    ),
                    "first_call_s": t.first_call_s,
                    "recompiled": t.recompiled,
                    "timing": t.as_dict(),
                }
            )
    return {
        "sizes": dataclasses.asdict(sizes),
        "dtype": "float32",
        "mask": "demos",
        "scale": "1",
        "init_scale": {str(N): _init_scale(N) for N in sizes.n_demos},
        "rows": rows,
        "agreement": agreement,
        "columns": ["N", "impl", "prompts_per_s", "median_s", "gflop_per_s", "speedup_vs_naive", "first_call_s"],
    }

