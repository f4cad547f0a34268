"""Sizes the machine can hold: refuse arrays beyond int32 indexing or beyond memory before compiling.

XLA indexes arrays with int32 in places: a batch whose token array has more than ``2**31 − 1``
elements overflows (``f32[1,-294967296]``) and aborts the process in C++; an array larger than the
memory makes XLA fail at allocation with a traceback. :func:`check_size` refuses both with a
``ValueError`` naming the quantity, the estimate and the limit; :func:`check_training_size` applies
it to the arrays one training step of a :class:`~lintrans.train_config.TrainConfig` holds.

Memory limit: the default device's ``bytes_limit`` when JAX reports one (GPUs), else the host's
available memory (``MemAvailable`` of ``/proc/meminfo``, or the physical memory).
"""

from __future__ import annotations

import os

import jax

from lintrans import models

__all__ = ["INT32_MAX", "available_memory", "check_size", "training_arrays", "check_training_size"]

INT32_MAX = 2**31 - 1


def _fmt(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n_bytes < 1024 or unit == "PiB":
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} PiB"


def available_memory() -> int:
    """Bytes the default JAX device can hold (see the module docstring)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    except Exception:  # noqa: BLE001 - memory_stats is unsupported on some backends
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_size(n_elements: int, what: str, itemsize: int = 4, limit: int | None = None) -> None:
    """``ValueError`` if an array of ``n_elements`` overflows int32 indexing or exceeds memory.

    ``what`` names the array and its shape for the message; ``limit``: bytes (default
    :func:`available_memory`).
    """
    n = int(n_elements)
    if n > INT32_MAX:
        raise ValueError(f"{what}: {n:,} elements, beyond int32 indexing (2**31 - 1 = {INT32_MAX:,}); "
                         "choose smaller sizes")
    limit = available_memory() if limit is None else int(limit)
    if n * itemsize > limit:
        raise ValueError(f"{what}: about {_fmt(n * itemsize)}, more than the {_fmt(limit)} of memory available")


def training_arrays(config) -> list[tuple[str, int]]:
    """``(description, elements)`` of the largest arrays one training step of ``config`` holds (all seeds).

    Counted: the sampled prompts ``S·B·(N+1)·D``; for models scoring the query, the Gram matrices
    ``S·B·D²``; for models with a residual stream, the activations ``S·B·T·max(width, mlp_width)``
    and attention weights ``S·B·heads·T²`` of one layer (``T = 2N+1`` interleaved tokens). A lower
    bound on the step's memory: the backward pass keeps every layer's, counted in
    :func:`check_training_size`.
    """
    S, B, N, D = config.seeds, config.batch_size, config.n_demos, config.dim
    spec = models.get(config.model)
    T = 2 * N + 1 if spec.layout == "interleaved" else N + 1
    out = [(f"training prompts (seeds × batch × (N+1) × D = {S}×{B}×{N + 1}×{D})", S * B * (N + 1) * D)]
    if spec.targets == "query":
        out.append((f"Gram matrices (seeds × batch × D × D = {S}×{B}×{D}×{D})", S * B * D * D))
    if spec.uses_width:
        wide = max(config.width, config.mlp_width)
        out.append((f"activations of one layer (seeds × batch × tokens × width = {S}×{B}×{T}×{wide})", S * B * T * wide))
        out.append((f"attention weights of one layer (seeds × batch × heads × tokens² = {S}×{B}×{config.n_heads}×{T}²)",
                    S * B * config.n_heads * T * T))
    return out


def check_training_size(config, limit: int | None = None) -> None:
    """Refuse a training config whose step would overflow int32 indexing or exceed memory (``ValueError``).

    Each array of :func:`training_arrays` must fit int32 indexing; their total (the per-layer ones
    times the layers, kept for the backward pass; everything twice, for the gradients) must fit in
    ``limit`` bytes (default :func:`available_memory`). The estimate is rough (a lower bound of what
    XLA allocates); it exists to turn a certain crash into a message, not to predict the peak.
    """
    itemsize = 8 if config.dtype == "float64" else 4
    arrays = training_arrays(config)
    for what, n in arrays:
        if n > INT32_MAX:
            check_size(n, what, itemsize)
    total = 2 * itemsize * sum(n * (config.n_layers if "one layer" in what else 1) for what, n in arrays)
    limit = available_memory() if limit is None else int(limit)
    if total > limit:
        raise ValueError(f"one training step of the {config.model} model: about {_fmt(total)} (estimated), more "
                         f"than the {_fmt(limit)} of memory available; reduce batch_size, seeds or the sizes")
