"""Linear attention with the components of a standard transformer, in the SPEC token layout (issue 16).

Each variant is a named model on one prompt ``H`` of shape ``(D, N+1)`` (columns are tokens
``[x_i; y_i]``, the query ``[x_q; 0]`` last, SPEC §1) with the paper's ``(L, D, D)`` key, query and
value matrices, and the paper's read-out ``ŷ = ρ · (h^L_{N+1})[D-1]``. Layer ``t`` (pre-norm, as in
GPT-2; mask ``"demos"``: keys and values come from the N demonstrations only)::

    U      = LN_1(H^{t-1})                    (norm="layernorm"; else U = H^{t-1})
    H'     = H^{t-1} + A_t(U)                 attention on every token j:
               linear:   A_t(U)_j = ΔW_t u_j,   ΔW_t = s W_V U_s (W_K U_s)^T W_Q       (paper Eq. 3)
               softmax:  A_t(U)_j = Σ_i softmax_i(c · (W_K u_i)^T W_Q u_j) W_V u_i,  c = 1/√D
    H^t    = H' + W_out gelu(W_in LN_2(H') + b_in) + b_out     (mlp="gelu"; else H^t = H')

``U_s = U[:, :N]``; ``s`` is the scale option of :mod:`lintrans.attention` (``"1/N"`` by default,
as in training), ``c`` the softmax logit scale. With ``attention="linear"`` and no other component
the layer is :func:`lintrans.attention.layer` (tested to rounding). Symbols → code: ``W_K, W_Q,
W_V`` → ``w_k, w_q, w_v`` ``(L, D, D)``; ``W_in`` → ``w_in (L, M, D)``, ``b_in (L, M)``, ``W_out``
→ ``w_out (L, D, M)``, ``b_out (L, D)``; ``LN_1, LN_2`` → ``ln1_scale, ln1_bias, ln2_scale,
ln2_bias`` ``(L, D)``. Parameters are NamedTuples with a stacked layer axis, one class per set of
components, so :mod:`lintrans.truncation` addresses them by field name (``K, Q, V, attn``, and
``mlp`` where there is one).

Design notes (why, not what):

* The MLP acts on every token, demonstrations included, so later layers see transformed contexts.
* LayerNorm normalises a token over its ``D`` coordinates. ``LN(c·h) = LN(h)`` up to ``ε``, so the
  attention branch only sees the direction of ``[x_q; 0]``: a pre-norm model is linear in ``x_q``
  only through its residual path. That is a property of the component in this layout, and it is
  what the probes of :mod:`lintrans.implicit` measure; it is not hidden by a wider embedding.
* No final LayerNorm: the read-out is the label slot of the residual stream, as in the paper; a
  final norm with no read-out layer after it would fix the prediction's scale.
* Softmax attention has no ``s``: its weights average over the demonstrations (like ``s = 1/N``).
  Around uniform attention (``c → 0``) its first-order expansion is the mean of the values plus a
  linear-attention term with centred keys (:func:`softmax_first_order`), which is the
  ``ΔW_t`` reported for it by :func:`attention_update`.

Only ``mask="demos"``: the probes' Theorem 1 quantities need a context that does not depend on
the query. Every function acts on one prompt; vmap at the call site. ``lax.scan`` over layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.attention import SCALES, READOUTS, scale_factor
from lintrans.io import require_float_array, require_int
from lintrans.numerics import mm
from lintrans.params import LinearAttentionParams

__all__ = [
    "ATTENTIONS",
    "MLPS",
    "NORMS",
    "Variant",
    "VARIANTS",
    "get_variant",
    "AttnMLPParams",
    "AttnNormParams",
    "AttnNormMLPParams",
    "LN_EPS",
    "init_variant",
    "validate_variant_params",
    "layer_norm",
    "softmax_attention",
    "softmax_first_order",
    "layer",
    "attention_update",
    "forward_states",
    "delta_ws",
    "predict",
    "layer_readouts",
    "VariantFn",
    "model_fns",
]

ATTENTIONS = ("linear", "softmax")
MLPS = ("none", "gelu")
NORMS = ("none", "layernorm")
#: LayerNorm's ε, GPT-2's (the softmax transformer of :mod:`lintrans.transformer` uses the same).
LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class Variant:
    """Which components a model has (hashable: a static argument of jitted code).

    Attributes:
      attention: ``"linear"`` (the paper's) or ``"softmax"``.
      mlp: ``"none"`` or ``"gelu"`` (a two-layer GELU MLP after each attention, residual).
      norm: ``"none"`` or ``"layernorm"`` (pre-norm before the attention and before the MLP).
      scale: linear attention's ``s`` option (``"1"`` or ``"1/N"``); ignored by softmax attention.
      readout: ``ρ = ±1`` (:mod:`lintrans.attention`).
    """

    attention: str = "linear"
    mlp: str = "none"
    norm: str = "none"
    scale: str = "1/N"
    readout: int = 1

    def __post_init__(self):
        for name, allowed in (("attention", ATTENTIONS), ("mlp", MLPS), ("norm", NORMS), ("scale", SCALES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if isinstance(self.readout, bool) or self.readout not in READOUTS:
            raise ValueError(f"readout must be +1 or -1, got {self.readout!r}")

    @property
    def params_class(self) -> type:
        """The NamedTuple that holds this variant's weights."""
        return {("none", "none"): LinearAttentionParams, ("gelu", "none"): AttnMLPParams,
                ("none", "layernorm"): AttnNormParams, ("gelu", "layernorm"): AttnNormMLPParams}[(self.mlp, self.norm)]

    @property
    def components(self) -> tuple[str, ...]:
        """What the variant adds to linear attention, e.g. ``("softmax", "mlp")``; ``()`` for none."""
        return tuple(c for c, on in (("softmax", self.attention == "softmax"), ("mlp", self.mlp != "none"),
                                     ("layernorm", self.norm != "none")) if on)


#: The named models: linear attention, each component added alone, and all of them together.
VARIANTS: dict[str, Variant] = {
    "linear_attn": Variant(),
    "linear_attn_mlp": Variant(mlp="gelu"),
    "linear_attn_ln": Variant(norm="layernorm"),
    "softmax_attn": Variant(attention="softmax"),
    "softmax_attn_ln_mlp": Variant(attention="softmax", mlp="gelu", norm="layernorm"),
}


def get_variant(name: str) -> Variant:
    """The :class:`Variant` called ``name``; ``ValueError`` naming the allowed names otherwise."""
    if not isinstance(name, str) or name not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {name!r}")
    return VARIANTS[name]


class AttnMLPParams(NamedTuple):
    """Linear/softmax attention + MLP. ``w_k, w_q, w_v (L, D, D)``, ``w_in (L, M, D)``,
    ``b_in (L, M)``, ``w_out (L, D, M)``, ``b_out (L, D)``."""

    w_k: jax.Array
    w_q: jax.Array
    w_v: jax.Array
    w_in: jax.Array
    b_in: jax.Array
    w_out: jax.Array
    b_out: jax.Array


class AttnNormParams(NamedTuple):
    """Attention with pre-LayerNorm. ``w_k, w_q, w_v (L, D, D)``, ``ln1_scale, ln1_bias (L, D)``."""

    w_k: jax.Array
    w_q: jax.Array
    w_v: jax.Array
    ln1_scale: jax.Array
    ln1_bias: jax.Array


class AttnNormMLPParams(NamedTuple):
    """Attention + MLP, each with pre-LayerNorm (fields of :class:`AttnMLPParams` and
    :class:`AttnNormParams`, plus ``ln2_scale, ln2_bias (L, D)`` before the MLP)."""

    w_k: jax.Array
    w_q: jax.Array
    w_v: jax.Array
    ln1_scale: jax.Array
    ln1_bias: jax.Array
    w_in: jax.Array
    b_in: jax.Array
    w_out: jax.Array
    b_out: jax.Array
    ln2_scale: jax.Array
    ln2_bias: jax.Array


def _field_shapes(variant: Variant, n_layers: int, dim: int, mlp_width: int) -> dict[str, tuple[int, ...]]:
    L, D, M = n_layers, dim, mlp_width
    shapes = {"w_k": (L, D, D), "w_q": (L, D, D), "w_v": (L, D, D)}
    if variant.norm != "none":
        shapes.update(ln1_scale=(L, D), ln1_bias=(L, D))
    if variant.mlp != "none":
        shapes.update(w_in=(L, M, D), b_in=(L, M), w_out=(L, D, M), b_out=(L, D))
        if variant.norm != "none":
            shapes.update(ln2_scale=(L, D), ln2_bias=(L, D))
    return {f: shapes[f] for f in variant.params_class._fields}


def init_variant(key: jax.Array, variant: Variant, n_layers: int, dim: int, *, mlp_width: int = 32,
                 init_std: float = 0.02, dtype=jnp.float32):
    """Initial weights of ``variant``: ``L = n_layers`` layers, tokens ``D = dim`` wide.

    ``W_K, W_Q, W_V`` and ``W_out``: i.i.d. ``N(0, init_std²)`` (the linear model's training
    initialisation, :mod:`lintrans.train`: small weights start near the zero estimator, and
    ``W_out`` small starts the MLP branch near 0). ``W_in``: ``N(0, 1/D)`` so that the GELU sees
    unit-scale inputs; biases 0; LayerNorm scales 1 and biases 0. One key per field (split).
    """
    if not isinstance(variant, Variant):
        raise TypeError(f"variant must be a Variant, got {type(variant).__name__}")
    require_int("n_layers", n_layers)
    require_int("dim", dim, 2)
    require_int("mlp_width", mlp_width)
    if isinstance(init_std, (int, float)) and not (math.isfinite(init_std) and init_std >= 0):
        raise ValueError(f"init_std must be a finite number >= 0, got {init_std!r}")
    shapes = _field_shapes(variant, n_layers, dim, mlp_width)
    keys = dict(zip(shapes, jax.random.split(key, len(shapes))))
    values = {}
    for name, shape in shapes.items():
        if name in ("w_k", "w_q", "w_v", "w_out"):
            values[name] = (init_std * jax.random.normal(keys[name], shape, dtype)).astype(dtype)
        elif name == "w_in":
            values[name] = jax.random.normal(keys[name], shape, dtype) / float(np.sqrt(dim))
        elif name.endswith("_scale"):
            values[name] = jnp.ones(shape, dtype)
        else:
            values[name] = jnp.zeros(shape, dtype)
    return variant.params_class(**values)


def validate_variant_params(variant: Variant, params, dim: int | None = None):
    """Check ``params`` at a public boundary (class, field shapes, float dtype, finiteness); return it.

    ``TypeError``/``ValueError`` naming the field; ``dim``: the prompts' ``D`` when given.
    """
    if not isinstance(variant, Variant):
        raise TypeError(f"variant must be a Variant, got {type(variant).__name__}")
    cls = variant.params_class
    if type(params) is not cls:
        raise TypeError(f"params of variant {variant} must be a {cls.__name__}, got {type(params).__name__}")
    w_k = require_float_array("w_k", params.w_k, ndim=3)
    L, D = int(w_k.shape[0]), int(w_k.shape[-1])
    if L < 1:
        raise ValueError(f"w_k must hold at least one layer, got shape {tuple(w_k.shape)}")
    M = int(params.w_in.shape[1]) if variant.mlp != "none" else 1
    for name, shape in _field_shapes(variant, L, D, M).items():
        arr = require_float_array(name, getattr(params, name))
        if tuple(arr.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(arr.shape)}")
    if dim is not None and D != dim:
        raise ValueError(f"params have D = {D} but the prompts have D = {dim}")
    return params


# ---------------------------------------------------------------------------------- components


def layer_norm(U: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """LayerNorm of every token (column) of ``U (D, T)`` over its ``D`` coordinates, ``ε = LN_EPS``:
    ``(u − mean u) / √(var u + ε) ⊙ scale + bias``; ``scale, bias (D,)``."""
    mean = jnp.mean(U, axis=0, keepdims=True)
    var = jnp.mean(jnp.square(U - mean), axis=0, keepdims=True)
    return (U - mean) * jax.lax.rsqrt(var + LN_EPS) * scale[:, None] + bias[:, None]


def softmax_attention(w_k, w_q, w_v, U: jax.Array, logit_scale: float) -> jax.Array:
    """Softmax attention of every token of ``U (D, N+1)`` over the N demonstrations (mask ``"demos"``).

    ``out_j = Σ_i a_ij W_V u_i``, ``a_ij = softmax_i(c · (W_K u_i)^T (W_Q u_j))``, ``c = logit_scale``.
    Returns ``(D, N+1)``. The ``(N, N+1)`` weight matrix is formed (softmax has no ``ΔW`` shortcut).
    """
    n_demos = U.shape[1] - 1
    U_s = U[:, :n_demos]
    logits = logit_scale * mm(mm(w_k, U_s).T, mm(w_q, U))  # (N, N+1)
    weights = jax.nn.softmax(logits, axis=0)
    return mm(mm(w_v, U_s), weights)


def softmax_first_order(w_k, w_q, w_v, U: jax.Array, logit_scale: float) -> tuple[jax.Array, jax.Array]:
    """First-order expansion of :func:`softmax_attention` in the logit scale ``c`` around ``c = 0``.

    ``softmax_i(c ℓ_i) = (1/N)(1 + c (ℓ_i − ℓ̄)) + O(c²)``, so with ``v_i = W_V u_i``, ``k_i = W_K u_i``::

        out_j = v̄ + ΔW u_j + O(c²),      ΔW = (c/N) Σ_i v_i (k_i − k̄)^T W_Q
                                             = (c/N) W_V U_s P (W_K U_s)^T W_Q,   P = I_N − 𝟙𝟙ᵀ/N

    the mean of the values plus linear attention with centred keys and ``s = c/N``.
    Returns ``(v̄ (D,), ΔW (D, D))``.
    """
    n_demos = U.shape[1] - 1
    U_s = U[:, :n_demos]
    values, keys = mm(w_v, U_s), mm(w_k, U_s)
    centred = keys - jnp.mean(keys, axis=1, keepdims=True)
    return jnp.mean(values, axis=1), (logit_scale / n_demos) * mm(mm(values, centred.T), w_q)


def _logit_scale(dim: int) -> float:
    """Scaled dot-product attention's ``c = 1/√D`` (a Python float: no dtype promotion)."""
    return 1.0 / math.sqrt(dim)


def _attention_input(variant: Variant, lp: dict, H: jax.Array) -> jax.Array:
    return layer_norm(H, lp["ln1_scale"], lp["ln1_bias"]) if variant.norm != "none" else H


def attention_update(variant: Variant, lp: dict, H: jax.Array) -> jax.Array:
    """The ``(D, D)`` implicit update ``ΔW_t`` of layer ``t``'s attention on the tokens ``H = H^{t-1}``.

    Linear attention: the paper's Eq. 3, ``ΔW_t = s W_V U_s (W_K U_s)^T W_Q``, on the attention's
    input ``U`` (``LN_1(H)`` with ``norm="layernorm"``). Softmax attention: the linear term of its
    first-order expansion (:func:`softmax_first_order`). Without MLP and LayerNorm, linear
    attention moves the query by exactly ``I + ΔW_t``; every other component adds what this
    matrix leaves out, which is what the probes' ``G``-form residual measures.
    """
    U = _attention_input(variant, lp, H)
    if variant.attention == "linear":
        s = scale_factor(variant.scale, H.shape[1] - 1)
        U_s = U[:, :-1]
        return s * mm(mm(mm(lp["w_v"], U_s), mm(lp["w_k"], U_s).T), lp["w_q"])
    return softmax_first_order(lp["w_k"], lp["w_q"], lp["w_v"], U, _logit_scale(H.shape[0]))[1]


def layer(variant: Variant, lp: dict, H: jax.Array) -> jax.Array:
    """One layer on all tokens: ``H^{t-1} (D, N+1) → H^t (D, N+1)`` (the module docstring's rule).

    ``lp``: one layer's slices of the stacked fields (``{name: array}``, no layer axis).
    """
    U = _attention_input(variant, lp, H)
    if variant.attention == "linear":
        out = mm(attention_update(variant, lp, H), U)
    else:
        out = softmax_attention(lp["w_k"], lp["w_q"], lp["w_v"], U, _logit_scale(H.shape[0]))
    H = H + out
    if variant.mlp != "none":
        M_in = layer_norm(H, lp["ln2_scale"], lp["ln2_bias"]) if variant.norm != "none" else H
        hidden = jax.nn.gelu(mm(lp["w_in"], M_in) + lp["b_in"][:, None], approximate=True)
        H = H + mm(lp["w_out"], hidden) + lp["b_out"][:, None]
    return H


def _layers(params) -> dict:
    return dict(params._asdict())


def _scan(variant: Variant, params, H: jax.Array, record):
    def step(H_prev, lp):
        H_next = layer(variant, lp, H_prev)
        return H_next, record(lp, H_prev, H_next)

    return jax.lax.scan(step, H, _layers(params))


def forward_states(variant: Variant, params, H: jax.Array) -> jax.Array:
    """All token states ``H^0 … H^L``: ``(L+1, D, N+1)`` (``states[0] = H``)."""
    _, states = _scan(variant, params, H, lambda lp, H_prev, H_next: H_next)
    return jnp.concatenate([H[None], states], axis=0)


def delta_ws(variant: Variant, params, H: jax.Array) -> jax.Array:
    """``ΔW_1 … ΔW_L`` (:func:`attention_update` on each layer's input tokens): ``(L, D, D)``."""
    _, dws = _scan(variant, params, H, lambda lp, H_prev, H_next: attention_update(variant, lp, H_prev))
    return dws


def layer_readouts(variant: Variant, params, H: jax.Array) -> jax.Array:
    """The read-out after every layer, ``ρ · (h^t_{N+1})[D-1]`` for t = 1..L: ``(L,)``."""
    _, outs = _scan(variant, params, H, lambda lp, H_prev, H_next: variant.readout * H_next[-1, -1])
    return outs


def predict(variant: Variant, params, H: jax.Array) -> jax.Array:
    """``ŷ = ρ · (h^L_{N+1})[D-1]`` (scalar) for one prompt ``H (D, N+1)``."""
    H_last, _ = _scan(variant, params, H, lambda lp, H_prev, H_next: None)
    return variant.readout * H_last[-1, -1]


_FNS = {"predict": predict, "readouts": layer_readouts, "states": forward_states, "delta_ws": delta_ws}


@dataclasses.dataclass(frozen=True)
class VariantFn:
    """``f(params, H)`` for one variant and one role (``"predict"``, ``"readouts"``, ``"states"``,
    ``"delta_ws"``), hashable by value: a static argument of the jitted probes
    (:func:`lintrans.implicit.probe_batch`) that compiles once per variant, not once per call."""

    variant: Variant
    what: str

    def __post_init__(self):
        if self.what not in _FNS:
            raise ValueError(f"what must be one of {list(_FNS)}, got {self.what!r}")

    def __call__(self, params, H: jax.Array) -> jax.Array:
        return _FNS[self.what](self.variant, params, H)


def model_fns(variant: Variant) -> tuple[VariantFn, VariantFn, VariantFn]:
    """``(readouts, states, delta_ws)`` of ``variant``, the arguments of :func:`lintrans.implicit.probe_batch`."""
    return VariantFn(variant, "readouts"), VariantFn(variant, "states"), VariantFn(variant, "delta_ws")
