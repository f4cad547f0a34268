"""A standard GPT-2-style softmax transformer for in-context regression (Garg et al., 2022).

Architecture (pre-LayerNorm GPT-2, no dropout), on one prompt::

    e_j   = read_in(z_j) + pos_emb[j]                                       z_j ∈ R^D, e_j ∈ R^width
    for layer t = 1..L:
        a  = LN(e; ln1_scale[t], ln1_bias[t])
        e += MHA(a) = concat_heads(softmax_causal(q kᵀ/√d_head) v) w_o[t] + b_o[t],
             q = a w_q[t] + b_q[t],  k = a w_k[t] + b_k[t],  v = a w_v[t] + b_v[t]
        m  = LN(e; ln2_scale[t], ln2_bias[t])
        e += gelu(m w_in[t] + b_in[t]) w_out[t] + b_out[t]
    ŷ_j  = LN(e_j; lnf_scale, lnf_bias) read_out_w + read_out_b

Rows are tokens and weights act on the right (``(in, out)`` matrices), as in GPT-2. GELU is the
tanh approximation (GPT-2's ``gelu_new``); LayerNorm ``ε = 1e-5``.

Token sequence (Garg et al.): a prompt ``H (D, N+1)`` in the SPEC layout (columns ``[x_i; y_i]``,
query ``[x_q; 0]`` last, ``D = d_in + 1``) becomes the ``2N + 1`` tokens::

    [x_1; 0], [0…0; y_1], [x_2; 0], [0…0; y_2], …, [x_N; 0], [0…0; y_N], [x_q; 0]

with a causal mask. The prediction for ``x_k`` is read out at ``x_k``'s position ``2(k−1)`` (0-based),
where the model has seen pairs ``1..k−1``: one pass gives the predictions for every context size
``k − 1 = 0..N``; the last one (context size ``N``) is the query's. (Garg et al. put ``y`` in the
first coordinate of its token; the last is used here so a token is ``[x; y]`` as in the SPEC.)

Parameters are a :class:`SoftmaxParams` pytree with a stacked layer axis ``L`` (layer ``t = 1..L`` is
index ``t − 1``), addressed by field name; :data:`LAYER_MATRICES` names the per-layer weight
matrices the pruning code clips (attention ``w_k, w_q, w_v, w_o``; MLP ``w_in, w_out``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lintrans.io import load_npz, require_float_array, save_npz, require_int
from lintrans.numerics import einsum, mm

__all__ = [
    "SoftmaxConfig",
    "SoftmaxParams",
    "FIELDS",
    "LAYER_MATRICES",
    "param_shapes",
    "init_softmax",
    "validate_softmax_params",
    "interleave",
    "softmax_predict_all",
    "softmax_predict",
    "save_softmax_params",
    "load_softmax_params",
]

LN_EPS = 1e-5
INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class SoftmaxConfig:
    """Shape of the softmax transformer (hashable: pass it as a static argument).

    Attributes:
      d_in: input dimension ``d``; tokens are ``D = d_in + 1`` wide.
      n_demos_max: largest number of demonstrations ``N``; ``2N + 1`` positional embeddings.
      n_layers: ``L`` transformer blocks.
      width: residual-stream width (GPT-2's ``n_embd``).
      n_heads: attention heads; must divide ``width``.
      mlp_width: hidden width of the MLP (GPT-2 uses ``4·width``).
    """

    d_in: int = 5  # small default task dimension
    n_demos_max: int = 10  # 2·d_in demonstrations, as in the icl curves
    n_layers: int = 3  # trains on a CPU in minutes
    width: int = 64
    n_heads: int = 4
    mlp_width: int = 256  # 4·width, GPT-2's ratio

    def __post_init__(self):
        for name in ("d_in", "n_demos_max", "n_layers", "width", "n_heads", "mlp_width"):
            v = getattr(self, name)
            require_int(f"SoftmaxConfig.{name}", v)
        if self.width % self.n_heads:
            raise ValueError(f"SoftmaxConfig.n_heads={self.n_heads} must divide width={self.width}")

    @property
    def dim(self) -> int:
        """``D = d_in + 1``, the token width."""
        return self.d_in + 1

    @property
    def seq_len_max(self) -> int:
        """``2·n_demos_max + 1`` tokens."""
        return 2 * self.n_demos_max + 1

    @property
    def head_dim(self) -> int:
        return self.width // self.n_heads


@struct.dataclass
class SoftmaxParams:
    """Weights of the softmax transformer; per-layer arrays carry a leading layer axis ``L``.

    Shapes (``W`` = width, ``M`` = mlp_width, ``D = d_in + 1``, ``T = 2·n_demos_max + 1``):
      read_in_w ``(D, W)``, read_in_b ``(W,)``, pos_emb ``(T, W)``;
      ln1_scale, ln1_bias ``(L, W)``;
      w_q, w_k, w_v, w_o ``(L, W, W)``; b_q, b_k, b_v, b_o ``(L, W)``;
      ln2_scale, ln2_bias ``(L, W)``;
      w_in ``(L, W, M)``, b_in ``(L, M)``; w_out ``(L, M, W)``, b_out ``(L, W)``;
      lnf_scale, lnf_bias ``(W,)``; read_out_w ``(W, 1)``, read_out_b ``(1,)``.
    """

    read_in_w: jax.Array
    read_in_b: jax.Array
    pos_emb: jax.Array
    ln1_scale: jax.Array
    ln1_bias: jax.Array
    w_q: jax.Array
    b_q: jax.Array
    w_k: jax.Array
    b_k: jax.Array
    w_v: jax.Array
    b_v: jax.Array
    w_o: jax.Array
    b_o: jax.Array
    ln2_scale: jax.Array
    ln2_bias: jax.Array
    w_in: jax.Array
    b_in: jax.Array
    w_out: jax.Array
    b_out: jax.Array
    lnf_scale: jax.Array
    lnf_bias: jax.Array
    read_out_w: jax.Array
    read_out_b: jax.Array

    @property
    def n_layers(self) -> int:
        return self.w_q.shape[0]

    @property
    def dtype(self):
        return self.w_q.dtype


FIELDS = tuple(f.name for f in dataclasses.fields(SoftmaxParams))
#: Per-layer weight matrices by module group (SPEC §6 targets for the standard transformer).
LAYER_MATRICES = {"attn": ("w_k", "w_q", "w_v"), "O": ("w_o",), "mlp": ("w_in", "w_out")}
_LAYER_FIELDS = tuple(n for n in FIELDS if n.startswith(("ln1", "ln2", "w_", "b_")))


def param_shapes(config: SoftmaxConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every field of :class:`SoftmaxParams` for ``config``."""
    L, W, M, D, T = config.n_layers, config.width, config.mlp_width, config.dim, config.seq_len_max
    shapes = {
        "read_in_w": (D, W), "read_in_b": (W,), "pos_emb": (T, W),
        "lnf_scale": (W,), "lnf_bias": (W,), "read_out_w": (W, 1), "read_out_b": (1,),
        "w_in": (L, W, M), "b_in": (L, M), "w_out": (L, M, W),
    }
    for name in ("w_q", "w_k", "w_v", "w_o"):
        shapes[name] = (L, W, W)
    for name in ("b_q", "b_k", "b_v", "b_o", "b_out", "ln1_scale", "ln1_bias", "ln2_scale", "ln2_bias"):
        shapes[name] = (L, W)
    return {name: shapes[name] for name in FIELDS}


def init_softmax(key: jax.Array, config: SoftmaxConfig, dtype=jnp.float32) -> SoftmaxParams:
    """GPT-2 initialisation: weights and embeddings ``N(0, 0.02²)``, biases 0, LayerNorm scale 1.

    As in GPT-2 (and HF's ``GPT2Model``), the two projections that write into the residual stream
    (``w_o`` and ``w_out``) get std ``0.02/√(2L)``, so the stream's variance does not grow with depth.
    """
    if not isinstance(config, SoftmaxConfig):
        raise TypeError(f"config must be a SoftmaxConfig, got {type(config).__name__}")
    return _init_softmax(key, config, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_softmax(key, config, dtype):
    # One compiled program: eager sampling would compile a Threefry kernel per field shape.
    shapes = param_shapes(config)
    resid_std = INIT_STD / math.sqrt(2 * config.n_layers)
    gaussian = {"read_in_w": INIT_STD, "pos_emb": INIT_STD, "read_out_w": INIT_STD,
                "w_q": INIT_STD, "w_k": INIT_STD, "w_v": INIT_STD, "w_in": INIT_STD,
                "w_o": resid_std, "w_out": resid_std}
    keys = dict(zip(gaussian, jax.random.split(key, len(gaussian))))
    values = {}
    for name, shape in shapes.items():
        if name in gaussian:
            values[name] = gaussian[name] * jax.random.normal(keys[name], shape, dtype)
        elif name.endswith("_scale"):
            values[name] = jnp.ones(shape, dtype)
        else:
            values[name] = jnp.zeros(shape, dtype)
    return SoftmaxParams(**values)


def validate_softmax_params(params: SoftmaxParams, config: SoftmaxConfig) -> SoftmaxParams:
    """Check every field's shape against ``config``, float dtype, finiteness; return ``params``."""
    if not isinstance(params, SoftmaxParams):
        raise TypeError(f"params must be a SoftmaxParams, got {type(params).__name__}")
    dtypes = set()
    for name, shape in param_shapes(config).items():
        arr = require_float_array(name, getattr(params, name))
        if tuple(arr.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for {config}, got {tuple(arr.shape)}")
        dtypes.add(np.dtype(arr.dtype))
    if len(dtypes) != 1:
        raise TypeError(f"all SoftmaxParams fields must share one dtype, got {sorted(map(str, dtypes))}")
    return params


def interleave(H: jax.Array) -> jax.Array:
    """``(D, N+1)`` prompt → ``(2N+1, D)`` Garg token sequence ``x_1, y_1, …, x_N, y_N, x_q``.

    ``x`` tokens are ``[x_i; 0]`` (the label slot zeroed, also for the query), ``y`` tokens
    ``[0…0; y_i]``.
    """
    D, T = H.shape
    N = T - 1
    x_tok = H.at[D - 1].set(0.0).T  # (N+1, D)
    y_tok = jnp.zeros((N, D), H.dtype).at[:, D - 1].set(H[D - 1, :N])
    pairs = jnp.stack([x_tok[:N], y_tok], axis=1).reshape(2 * N, D)
    return jnp.concatenate([pairs, x_tok[N:]], axis=0)


def _layer_norm(x, scale, bias):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * scale + bias


def _block(config: SoftmaxConfig, e, lp):
    """One pre-LN block on ``e (T, W)``; ``lp`` holds one layer's slices of the stacked fields."""
    T = e.shape[0]
    n_h, d_h = config.n_heads, config.head_dim
    a = _layer_norm(e, lp["ln1_scale"], lp["ln1_bias"])
    q = (mm(a, lp["w_q"]) + lp["b_q"]).reshape(T, n_h, d_h)
    k = (mm(a, lp["w_k"]) + lp["b_k"]).reshape(T, n_h, d_h)
    v = (mm(a, lp["w_v"]) + lp["b_v"]).reshape(T, n_h, d_h)
    logits = einsum("thc,shc->hts", q, k) / math.sqrt(d_h)  # a Python float stays weakly typed: no float64 promotion under x64
    causal = jnp.tril(jnp.ones((T, T), bool))
    # Masked logits get the dtype's lowest value (not -inf), so exp underflows to exactly 0
    # without producing inf - inf; every row keeps its own diagonal, so no row is empty.
    logits = jnp.where(causal[None], logits, jnp.finfo(logits.dtype).min)
    attn = jax.nn.softmax(logits, axis=-1)
    heads = einsum("hts,shc->thc", attn, v).reshape(T, config.width)
    e = e + mm(heads, lp["w_o"]) + lp["b_o"]
    m = _layer_norm(e, lp["ln2_scale"], lp["ln2_bias"])
    hidden = jax.nn.gelu(mm(m, lp["w_in"]) + lp["b_in"], approximate=True)
    return e + mm(hidden, lp["w_out"]) + lp["b_out"]


def softmax_predict_all(params: SoftmaxParams, H: jax.Array, config: SoftmaxConfig) -> jax.Array:
    """Predictions at every ``x`` position of ONE prompt: ``(N+1,)``, entry ``k`` uses pairs ``1..k``.

    Args:
      params: :class:`SoftmaxParams` for ``config``.
      H: ``(D, N+1)`` prompt in the SPEC layout, ``D = config.d_in + 1``, any ``0 ≤ N ≤ n_demos_max``
        (positional embeddings ``pos_emb[:2N+1]``). Entry ``k`` (0-based) is the prediction for
        ``x_{k+1}`` from the ``k`` pairs before it; the last entry (``k = N``) is the query's.
      config: the static :class:`SoftmaxConfig`.

    Pure; ``lax.scan`` over layers; vmap over prompts at the call site.
    """
    if H.ndim != 2 or H.shape[0] != config.dim:
        raise ValueError(f"H must have shape (D={config.dim}, N+1) for d_in={config.d_in}, got {H.shape}")
    N = H.shape[1] - 1
    if not 0 <= N <= config.n_demos_max:
        raise ValueError(f"H has N={N} demonstrations; this model takes 0..n_demos_max={config.n_demos_max}")
    z = interleave(H.astype(params.dtype))
    T = z.shape[0]
    e = mm(z, params.read_in_w) + params.read_in_b + params.pos_emb[:T]
    layers = {name: getattr(params, name) for name in _LAYER_FIELDS}
    e, _ = jax.lax.scan(lambda e, lp: (_block(config, e, lp), None), e, layers)
    e = _layer_norm(e, params.lnf_scale, params.lnf_bias)
    out = mm(e, params.read_out_w)[:, 0] + params.read_out_b[0]
    return out[0::2]


def softmax_predict(params: SoftmaxParams, H: jax.Array, config: SoftmaxConfig) -> jax.Array:
    """The query's prediction (scalar) for ONE prompt ``H (D, N+1)``: ``softmax_predict_all(...)[-1]``."""
    return softmax_predict_all(params, H, config)[-1]


def save_softmax_params(path: str | os.PathLike, params: SoftmaxParams) -> None:
    """Write every field of ``params`` to an npz (atomic, no pickle), one array per field name."""
    if not isinstance(params, SoftmaxParams):
        raise TypeError(f"params must be a SoftmaxParams, got {type(params).__name__}")
    arrays = {}
    for name in FIELDS:
        arrays[name] = np.asarray(require_float_array(name, getattr(params, name)))
    save_npz(path, arrays)


def load_softmax_params(path: str | os.PathLike, config: SoftmaxConfig, dtype=None) -> SoftmaxParams:
    """Read an npz written by :func:`save_softmax_params`; validate names, shapes, dtypes, finiteness.

    Refuses missing or unexpected arrays and shapes that do not match ``config`` (``ValueError``
    naming the file and the field).
    """
    arrays = load_npz(path, required=FIELDS)
    extra = sorted(set(arrays) - set(FIELDS))
    if extra:
        raise ValueError(f"{path}: unexpected array(s) {extra}; a SoftmaxParams file holds {list(FIELDS)}")
    try:
        params = SoftmaxParams(**{n: jnp.asarray(require_float_array(n, arrays[n]), dtype=dtype) for n in FIELDS})
        return validate_softmax_params(params, config)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{path}: {e}") from None
