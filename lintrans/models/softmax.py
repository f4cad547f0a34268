"""Registry entry ``"softmax"``: the GPT-2-style transformer of :mod:`lintrans.transformer` (Garg et al.).

Parameters :class:`~lintrans.transformer.SoftmaxParams`; Garg's interleaved ``x, y`` tokens with a
causal mask. The training loss is Garg's: the mean of ``(ŷ_j − y_j)² / d_active`` over **every**
``x`` position ``j = 0..N`` (position ``j`` has seen ``j`` pairs; ``j = N`` is the query), restricted
to ``j ≤ n_active`` under the curriculum, so one model covers every context size. Theorem 1 does
not apply (softmax attention, MLPs, LayerNorm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lintrans.io import load_npz
from lintrans.models.base import Model, check_loaded_dtype
from lintrans.transformer import (
    FIELDS,
    SoftmaxConfig,
    SoftmaxParams,
    init_softmax,
    load_softmax_params,
    save_softmax_params,
    softmax_predict,
    softmax_predict_all,
)

__all__ = ["MODEL", "softmax_config", "init", "loss", "predict_query", "predict_positions"]


def softmax_config(config) -> SoftmaxConfig:
    """The :class:`lintrans.transformer.SoftmaxConfig` of a run (``n_demos_max = N``)."""
    return SoftmaxConfig(d_in=config.d_in, n_demos_max=config.n_demos, n_layers=config.n_layers,
                         width=config.width, n_heads=config.n_heads, mlp_width=config.mlp_width)


def init(key: jax.Array, config, init_std=None) -> SoftmaxParams:
    """:func:`lintrans.transformer.init_softmax` (GPT-2's initialisation; ``init_std`` is not read)."""
    return init_softmax(key, softmax_config(config), config.jnp_dtype)


def loss(config, params: SoftmaxParams, batch, path: str) -> jax.Array:
    """Garg's loss: mean ``(ŷ_j − y_j)²/d_active`` over positions ``j ≤ n_active`` and the batch."""
    scfg = softmax_config(config)
    preds = jax.vmap(lambda h: softmax_predict_all(params, h, scfg))(batch.H)  # (B, N+1)
    weight = (jnp.arange(config.n_demos + 1) <= batch.n_active).astype(preds.dtype)
    err = (preds - batch.targets) ** 2
    return jnp.sum(err * weight[None, :]) / (jnp.sum(weight) * preds.shape[0]) / batch.d_active


def predict_query(config, params: SoftmaxParams, H: jax.Array) -> jax.Array:
    """The query's prediction after ``N' ≤ n_demos`` pairs (:func:`lintrans.transformer.softmax_predict`)."""
    return softmax_predict(params, H, softmax_config(config))


def predict_positions(config, params: SoftmaxParams, H: jax.Array) -> jax.Array:
    """Predictions ``(N'+1,)`` at every ``x`` position (:func:`lintrans.transformer.softmax_predict_all`)."""
    return softmax_predict_all(params, H, softmax_config(config))


def _load_params(path, config) -> SoftmaxParams:
    check_loaded_dtype(path, load_npz(path, required=FIELDS))
    return load_softmax_params(path, softmax_config(config), dtype=config.jnp_dtype)


def _check_config(config) -> None:
    softmax_config(config)  # validates width / n_heads


MODEL = Model(
    name="softmax",
    summary="GPT-2-style softmax transformer on Garg et al.'s interleaved tokens (attention + MLP)",
    layout="interleaved",
    targets="positions",
    params_type=SoftmaxParams,
    groups=("attn", "mlp"),
    theorem1=False,
    reads_gram=False,
    uses_width=True,
    context_limited=True,
    init=init,
    loss=loss,
    predict_query=predict_query,
    predict_positions=predict_positions,
    save_params=save_softmax_params,
    load_params=_load_params,
    check_config=_check_config,
    architecture=softmax_config,
)
