"""SVD truncation of a parameter pytree, layer by layer and target by target (SPEC §6).

A *target* in layer ``k`` names the weight matrices clipped together with one clipping rate ``ξ``;
targets map to field names of the parameter pytree (:data:`TARGETS`)::

    K → w_k   Q → w_q   V → w_v   O → w_o   attn → (w_k, w_q, w_v)   mlp → (w_in, w_out)

Any NamedTuple or dataclass pytree (``flax.struct.dataclass`` included) whose fields with these
names are stacked ``(L, m, n)`` arrays works: :class:`lintrans.params.LinearAttentionParams` (``K``,
``Q``, ``V``, ``attn``) and the softmax transformer's ``SoftmaxParams`` (all six). A target whose
fields the pytree lacks (``O`` or ``mlp`` on linear attention) is a ``ValueError``.

Each matrix of the target keeps ``r = ⌊min(m, n)(1 − ξ)⌋`` singular values
(:func:`lintrans.pruning.kept_rank`; rule ``"exact"`` or ``"laser"``, ``min_rank``), its best rank-``r``
approximation ``W(r) = U_{:r} Σ_{:r} V_{:r}^T`` (Eckart–Young, exact SVD). Layer ``k`` is 1-based in
:func:`truncate_params` (the user-facing function) and 0-based (``layer_index``) in the traced
:func:`truncate_params_to_rank`. JAX arrays are immutable, so the input pytree is never modified:
every call cuts from the weights it is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.pruning import condition_number, kept_rank, truncate_to_rank

__all__ = [
    "TARGETS",
    "field_names",
    "replace_fields",
    "target_fields",
    "check_layer",
    "truncate_params",
    "truncate_params_to_rank",
    "target_ranks",
    "condition_numbers",
]

#: Targets (SPEC §6) → the parameter fields they clip with one ``ξ``.
TARGETS: dict[str, tuple[str, ...]] = {
    "K": ("w_k",),
    "Q": ("w_q",),
    "V": ("w_v",),
    "O": ("w_o",),
    "attn": ("w_k", "w_q", "w_v"),
    "mlp": ("w_in", "w_out"),
}


def field_names(params) -> tuple[str, ...]:
    """The field names of a NamedTuple or dataclass pytree; ``TypeError`` for anything else."""
    if isinstance(params, tuple) and hasattr(params, "_fields"):
        return tuple(params._fields)
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return tuple(f.name for f in dataclasses.fields(params))
    raise TypeError(
        f"params must be a NamedTuple or dataclass pytree of stacked weights, got {type(params).__name__}"
    )


def replace_fields(params, **updates):
    """A copy of ``params`` with some fields replaced (NamedTuple, flax.struct or plain dataclass)."""
    if isinstance(params, tuple) and hasattr(params, "_replace"):
        return params._replace(**updates)
    if hasattr(params, "replace") and callable(params.replace):  # flax.struct.dataclass
        return params.replace(**updates)
    return dataclasses.replace(params, **updates)


def target_fields(params, target: str) -> tuple[str, ...]:
    """The fields of ``params`` that ``target`` clips, after checking that they exist.

    Every field must be a floating ``(L, m, n)`` array and all must share ``L``. ``ValueError``
    naming the target, the allowed targets, or the missing fields.
    """
    if not isinstance(target, str) or target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    names = field_names(params)
    fields = TARGETS[target]
    missing = [f for f in fields if f not in names]
    if missing:
        raise ValueError(
            f"target {target!r} needs field(s) {missing}, which {type(params).__name__} does not have "
            f"(its fields: {list(names)}); linear attention has only K, Q, V and attn"
        )
    layers = set()
    for f in fields:
        a = getattr(params, f)
        if getattr(a, "ndim", None) != 3:
            raise ValueError(f"params.{f} must be a stacked (L, m, n) array, got shape {np.shape(a)}")
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"params.{f} must be floating point, got dtype {a.dtype}")
        layers.add(int(a.shape[0]))
    if len(layers) != 1:
        raise ValueError(f"the fields of target {target!r} disagree on the number of layers: {sorted(layers)}")
    return fields


def check_layer(layer, n_layers: int) -> int:
    """Return a 1-based layer ``k`` after checking ``1 ≤ k ≤ L``; ``ValueError`` otherwise."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"layer must be an integer 1..{n_layers} (1-based), got {layer!r}")
    if not 1 <= int(layer) <= n_layers:
        raise ValueError(f"layer must lie in 1..{n_layers} (1-based), got {layer}")
    return int(layer)


def target_ranks(params, target: str, xi: float, rule: str = "exact", min_rank: int = 0) -> dict[str, int]:
    """``{field: r}`` kept at rate ``xi`` by each matrix of ``target`` (the same for every layer)."""
    fields = target_fields(params, target)
    return {f: kept_rank(*getattr(params, f).shape[1:], xi, rule, min_rank) for f in fields}


def truncate_params(params, layer: int, target: str, xi: float, rule: str = "exact", min_rank: int = 0):
    """Clip the matrices of ``target`` in layer ``layer`` (1-based) at rate ``xi``.

    Args:
      params: NamedTuple/dataclass pytree with stacked ``(L, m, n)`` fields (never modified).
      layer: ``k`` in ``1..L``.
      target: a key of :data:`TARGETS`.
      xi: clipping rate ``ξ ∈ [0, 1)``.
      rule, min_rank: see :func:`lintrans.pruning.kept_rank`.

    Returns:
      ``(new_params, ranks)``: the clipped pytree (every other layer and field is the original
      array object) and ``{field: r}``. ``ξ = 0`` (or any ``r = min(m, n)``) leaves the matrix bit
      for bit.
    """
    ranks = target_ranks(params, target, xi, rule, min_rank)
    n_layers = int(getattr(params, next(iter(ranks))).shape[0])
    k = check_layer(layer, n_layers) - 1
    updates = {}
    for f, r in ranks.items():
        stacked = getattr(params, f)
        if r < min(stacked.shape[1:]):
            updates[f] = stacked.at[k].set(truncate_to_rank(stacked[k], r))
    return (replace_fields(params, **updates) if updates else params), ranks


def truncate_params_to_rank(params, layer_index, fields: Sequence[str], ranks):
    """Traced, vmappable truncation: layer ``layer_index`` (0-based) of each field cut to its rank.

    ``layer_index`` (scalar) and ``ranks`` (``(len(fields),)``, or a mapping field → rank) may be
    traced, so a sweep over (layer, rank) is one ``vmap``/``lax.map``; a rank ``≥ min(m, n)`` leaves
    the matrix bit for bit (:func:`lintrans.pruning.truncate_to_rank`). ``fields`` is static.
    No validation happens here (it would need concrete values): validate with
    :func:`target_fields` and :func:`check_layer` at the boundary.
    """
    if isinstance(ranks, Mapping):
        ranks = [ranks[f] for f in fields]
    updates = {}
    for j, f in enumerate(fields):
        stacked = getattr(params, f)
        cut = truncate_to_rank(jax.lax.dynamic_index_in_dim(stacked, layer_index, 0, keepdims=False), ranks[j])
        updates[f] = jax.lax.dynamic_update_index_in_dim(stacked, cut, layer_index, 0)
    return replace_fields(params, **updates)


def condition_numbers(params, fields: Sequence[str] | str | None = None) -> dict[str, np.ndarray]:
    """``κ = σ_max / σ_min`` of every layer's matrix: ``{field: (L,)}`` (``+∞`` for a singular one).

    ``fields``: field names, a target name (e.g. ``"attn"``), or ``None`` for every target field the
    pytree has.
    """
    names = field_names(params)
    if fields is None:
        fields = tuple(f for f in dict.fromkeys(sum(TARGETS.values(), ())) if f in names)
    elif isinstance(fields, str):
        fields = target_fields(params, fields) if fields in TARGETS else (fields,)
    out = {}
    for f in fields:
        if f not in names:
            raise ValueError(f"params ({type(params).__name__}) has no field {f!r}; its fields: {list(names)}")
        a = jnp.asarray(getattr(params, f))
        if a.ndim != 3:
            raise ValueError(f"params.{f} must be a stacked (L, m, n) array, got shape {tuple(a.shape)}")
        out[f] = np.asarray(condition_number(a))
    return out
