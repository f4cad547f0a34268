"""The parameter pytree of a stack of linear-attention layers (SPEC §2).

Trained, constructed (``lintrans.constructions``) and pruned (``lintrans.pruning``) weights all
share :class:`LinearAttentionParams`, addressed by field name. Layer ``t = 1..L`` (paper
numbering) is index ``t − 1`` of the stacked axis.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.io import load_npz, require_float_array, save_npz, require_int

__all__ = ["LinearAttentionParams", "init_params", "validate_params", "save_params", "load_params"]

FIELDS = ("w_k", "w_q", "w_v")


class LinearAttentionParams(NamedTuple):
    """Weights of ``L`` linear-attention layers, each array ``(L, D, D)``.

    Attributes:
      w_k: key matrices ``W_K^t``.
      w_q: query matrices ``W_Q^t``.
      w_v: value matrices ``W_V^t``.
    """

    w_k: jax.Array
    w_q: jax.Array
    w_v: jax.Array

    @property
    def n_layers(self) -> int:
        return self.w_k.shape[0]

    @property
    def dim(self) -> int:
        """``D = d_in + d_out``, the token width."""
        return self.w_k.shape[-1]

    @property
    def dtype(self):
        return self.w_k.dtype


def init_params(
    key: jax.Array, n_layers: int, dim: int, init_scale: float, dtype=jnp.float32
) -> LinearAttentionParams:
    """I.i.d. Gaussian weights ``N(0, (init_scale/√D)²)`` for ``n_layers`` layers of width ``dim``.

    ``init_scale = 1`` is the classical ``1/√D`` scale, at which states overflow within 5–7 layers
    (SPEC §3); ``0.1`` with ``s = 1/N`` or ``0.05`` with ``s = 1`` stay finite to L = 16.
    """
    require_int("n_layers", n_layers)
    require_int("dim", dim)
    if not (isinstance(init_scale, (int, float)) and np.isfinite(init_scale) and init_scale >= 0):
        raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
    k_k, k_q, k_v = jax.random.split(key, 3)
    # a Python float is weakly typed: an np.float64 here would promote float32 weights to float64 under x64
    std = float(init_scale) / float(np.sqrt(dim))
    shape = (n_layers, dim, dim)
    return LinearAttentionParams(
        w_k=std * jax.random.normal(k_k, shape, dtype),
        w_q=std * jax.random.normal(k_q, shape, dtype),
        w_v=std * jax.random.normal(k_v, shape, dtype),
    )


def validate_params(params: LinearAttentionParams, dim: int | None = None) -> LinearAttentionParams:
    """Check a parameter pytree at a public boundary; return it unchanged.

    Each of ``w_k, w_q, w_v`` must be a finite float array ``(L, D, D)`` with the same ``L`` and
    ``D`` (and ``D == dim`` when given). Raises ``TypeError``/``ValueError`` naming the field.
    """
    if not isinstance(params, LinearAttentionParams):
        raise TypeError(f"params must be a LinearAttentionParams, got {type(params).__name__}")
    shapes = {}
    for name in FIELDS:
        arr = require_float_array(name, getattr(params, name), ndim=3)
        if arr.shape[1] != arr.shape[2]:
            raise ValueError(f"{name} must have shape (L, D, D), got {tuple(arr.shape)}")
        if arr.shape[0] < 1:
            raise ValueError(f"{name} must hold at least one layer, got shape {tuple(arr.shape)}")
        shapes[name] = tuple(arr.shape)
    if len(set(shapes.values())) != 1:
        raise ValueError(f"w_k, w_q, w_v must have the same shape (L, D, D), got {shapes}")
    if len({np.dtype(getattr(params, n).dtype) for n in FIELDS}) != 1:
        raise TypeError("w_k, w_q, w_v must share one dtype")
    D = shapes["w_k"][1]
    if dim is not None and D != dim:
        raise ValueError(f"params have D = {D} but the prompts have D = {dim}")
    return params


def save_params(path: str | os.PathLike, params: LinearAttentionParams) -> None:
    """Write ``w_k, w_q, w_v`` to an npz file (atomic, no pickle)."""
    validate_params(params)
    save_npz(path, {name: np.asarray(getattr(params, name)) for name in FIELDS})


def load_params(path: str | os.PathLike, dtype=None) -> LinearAttentionParams:
    """Read and validate an npz with arrays ``w_k, w_q, w_v``, each ``(L, D, D)``."""
    arrays = load_npz(path, required=FIELDS)
    for name in FIELDS:
        try:
            require_float_array(name, arrays[name], ndim=3)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{path}: {e}") from None
        # float16 keeps ~3 digits: no identity or bound of this library can be checked on it, and
        # a silent upcast would report float64 numbers for weights that never had them.
        if np.asarray(arrays[name]).dtype not in (np.float32, np.float64):
            raise TypeError(f"{path}: {name} is {np.asarray(arrays[name]).dtype}; weights must be float32 or float64")
    params = LinearAttentionParams(*(jnp.asarray(arrays[n], dtype=dtype) for n in FIELDS))
    try:
        return validate_params(params)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{path}: {e}") from None

