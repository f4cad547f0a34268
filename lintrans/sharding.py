"""Data parallelism over many devices with ``jax.sharding`` (one mesh helper for the project).

One 1-D :class:`jax.sharding.Mesh` over the available devices with a single axis ``"data"``:
batches (prompts, seeds of a sweep, sweep points) are split along their leading axis, parameters
and optimizer state are replicated. The computation stays one jitted function; XLA inserts the
collectives (a gradient mean becomes an all-reduce). With one device every sharding is trivial and
numbers are unchanged.

Multi-host: call ``jax.distributed.initialize()`` on every host before anything else; then
``jax.devices()`` lists the devices of all hosts and :func:`make_mesh` spans them. The code path
is the same (see the README).

Known limitation, simulated CPU devices with jaxlib 0.10 (``--xla_force_host_platform_device_count``
> 1): jaxlib's CPU LAPACK kernels (SVD, eigh, Cholesky) split a batch over the host thread pool
and block on it, so several devices running them at once can starve the pool and hang (seen: a
batched SVD under 4 devices on 2 cores). Sharded code that only needs matrix products is not
affected (:func:`lintrans.checks.identity_errors` is Theorem 1's check without the SVD). A public
report says jaxlib 0.11 builds these kernels without the parallel path; not tested here. On GPUs
and with one CPU device nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "make_mesh", "data_sharding", "replicated", "shard_batch", "replicate", "constrain_batch"]

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None, n_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all of ``jax.devices()``).

    ``n_devices`` takes the first ``n`` devices (``1 ≤ n ≤ len(devices)``), e.g. ``n_devices=1``
    for the single-device reference run.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must be a non-empty sequence of jax devices")
    if n_devices is not None:
        if isinstance(n_devices, bool) or not isinstance(n_devices, (int, np.integer)) or not 1 <= n_devices <= len(devices):
            raise ValueError(f"n_devices must be an integer in 1..{len(devices)}, got {n_devices!r}")
        devices = devices[:n_devices]
    return Mesh(np.array(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Split the leading axis over ``"data"``; the other ``ndim − 1`` axes stay whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, keys)."""
    return NamedSharding(mesh, PartitionSpec())


def _check_divisible(tree, mesh: Mesh) -> None:
    n = mesh.size
    for leaf in jax.tree_util.tree_leaves(tree):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % n:
            raise ValueError(
                f"the leading (batch) axis must be divisible by the {n} devices of the mesh; "
                f"got an array of shape {np.shape(leaf)}"
            )


def shard_batch(tree, mesh: Mesh):
    """``device_put`` every leaf with its leading axis split over the mesh's ``"data"`` axis."""
    _check_divisible(tree, mesh)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, data_sharding(mesh, np.ndim(x))), tree)


def replicate(tree, mesh: Mesh):
    """``device_put`` every leaf fully replicated over the mesh."""
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, replicated(mesh)), tree)


def constrain_batch(tree, mesh: Mesh):
    """Inside ``jit``: ask XLA to keep a batch (e.g. prompts sampled in the step) split over ``"data"``."""
    return jax.tree_util.tree_map(
        lambda x: jax.lax.with_sharding_constraint(x, data_sharding(mesh, x.ndim)), tree
    )
