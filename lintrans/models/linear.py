"""Registry entry ``"linear"``: the stacked linear-attention model of SPEC §2 (:mod:`lintrans.attention`).

Parameters :class:`~lintrans.params.LinearAttentionParams` ``(w_k, w_q, w_v)``, each ``(L, D, D)``.
It predicts the query only (``ŷ = ρ e_yᵀ h^L_{N+1}``); the training loss is ``(ŷ − y_q)² / d_active``
averaged over the batch. Forward paths (``path``): ``"batched"`` (:func:`lintrans.batched.linear_predict_gram`
on the batch's Gram matrix, the fast path; the causal mask always takes the token path), ``"gram"``
(:func:`lintrans.attention.predict` vmapped), ``"tokens"`` (:func:`lintrans.attention.predict_tokens`).
Theorem 1 holds exactly. Initialisation: i.i.d. ``N(0, init_std²)`` entries (:mod:`lintrans.train`
explains why).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lintrans import attention
from lintrans.batched import attention_scale, linear_predict_batch, linear_predict_gram, linear_query_predict
from lintrans.io import load_npz
from lintrans.models.base import Model, check_loaded_dtype
from lintrans.params import FIELDS, LinearAttentionParams, init_params, load_params as _load, save_params as _save

__all__ = ["MODEL", "init", "loss", "predict_query"]


def init(key: jax.Array, config, init_std=None) -> LinearAttentionParams:
    """Every entry ``init_std · z``, ``z ~ N(0, 1)`` i.i.d. (:func:`lintrans.params.init_params` at unit
    entry std, then scaled)."""
    init_std = config.init_std if init_std is None else init_std
    # init_scale = √D is unit entry std (√D/√D is exactly 1); init_std may be traced, so one
    # compiled init serves every init_std. The cast: init_params' NumPy float64 factor would
    # promote float32 weights to float64 under x64.
    unit = init_params(key, config.n_layers, config.dim, math.sqrt(config.dim), config.jnp_dtype)
    return jax.tree_util.tree_map(lambda x: (init_std * x).astype(config.jnp_dtype), unit)


def loss(config, params: LinearAttentionParams, batch, path: str) -> jax.Array:
    """Mean ``(ŷ − y_q)² / d_active`` over the batch's prompts."""
    n_true = batch.n_true
    if path == "batched" and config.mask == "demos":
        if batch.gram is None or batch.query is None:  # a batch built from tokens only
            y_hat = linear_predict_batch(params, batch.H, n_true, scale=config.scale, readout=config.readout)
        else:
            s = attention_scale(config.scale, config.n_demos, n_true, batch.query.shape[0], batch.query.dtype)
            y_hat = linear_predict_gram(params, batch.gram, batch.query, s, readout=config.readout)
        return jnp.mean((y_hat - batch.targets) ** 2) / batch.d_active

    if batch.H is None:
        raise ValueError(f"path={path!r} reads the prompt tokens, which sampler='wishart' does not draw; "
                         "use path='batched'")

    def one(h, k):
        return linear_query_predict(params, h, k, mask=config.mask, scale=config.scale,
                                    readout=config.readout, path=path)

    y_hat = jax.vmap(one)(batch.H, n_true) if n_true is not None else jax.vmap(lambda h: one(h, None))(batch.H)
    err = (y_hat - batch.targets) ** 2
    return jnp.mean(err) / batch.d_active


def predict_query(config, params: LinearAttentionParams, H: jax.Array) -> jax.Array:
    """:func:`lintrans.attention.predict` with the run's mask, scale (``s`` follows the prompt's own
    ``N'``) and readout, on ONE prompt ``H (D, N'+1)``."""
    return attention.predict(params, H, mask=config.mask, scale=config.scale, readout=config.readout)


def _load_params(path, config) -> LinearAttentionParams:
    check_loaded_dtype(path, load_npz(path, required=FIELDS))
    params = _load(path, dtype=config.jnp_dtype)
    want = (config.n_layers, config.dim, config.dim)
    if tuple(params.w_k.shape) != want:
        raise ValueError(f"{path}: weights are {tuple(params.w_k.shape)}, the config implies (L, D, D) = {want}")
    return params


def _check_config(config) -> None:
    return None


MODEL = Model(
    name="linear",
    summary="stacked linear attention (SPEC §2): implicit gradient descent, Theorem 1 exact",
    layout="spec",
    targets="query",
    params_type=LinearAttentionParams,
    groups=("attn",),
    theorem1=True,
    reads_gram=True,
    uses_width=False,
    context_limited=False,
    init=init,
    loss=loss,
    predict_query=predict_query,
    predict_positions=None,
    save_params=_save,
    load_params=_load_params,
    check_config=_check_config,
    architecture=lambda config: None,
)
