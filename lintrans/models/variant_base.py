"""Registry entries for the transformer-component variants of :mod:`lintrans.variants` (issue 16).

:func:`variant_model` turns a named :class:`lintrans.variants.Variant` into a
:class:`~lintrans.models.base.Model`; each variant has its own file (``linear_attn_mlp.py`` …) with
one ``MODEL = variant_model(...)`` line, and one entry in :mod:`lintrans.models`.

The variants read the SPEC layout and predict the query only (``targets="query"``): the training
loss is ``(ŷ − y_q)² / d_active`` over the batch, ``ŷ`` from :func:`lintrans.variants.predict` on the
batch's tokens (no Gram fast path: softmax, LayerNorm and MLP see the tokens themselves). The
attention scale ``s`` and the read-out sign come from the run's ``scale`` and ``readout``; the MLP
width from ``mlp_width``. Refused (``check_config``): ``mask="causal"`` (the variants have the
``"demos"`` mask only), ``k_min`` and a curriculum (both shorten the context by zeroing
demonstrations, which is exact for linear attention only: a zero token still gets softmax weight,
and an MLP bias moves it), and ``sampler="wishart"`` (no tokens are drawn).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lintrans import variants
from lintrans.io import load_npz, require_float_array, save_npz
from lintrans.models.base import Model, check_loaded_dtype

__all__ = ["variant_model"]


def variant_model(name: str, summary: str) -> Model:
    """The registry entry of the variant ``name`` in :data:`lintrans.variants.VARIANTS`."""
    base = variants.get_variant(name)

    def variant_of(config) -> variants.Variant:
        return variants.Variant(base.attention, base.mlp, base.norm, scale=config.scale, readout=config.readout)

    def init(key, config, init_std=None):
        return variants.init_variant(key, base, config.n_layers, config.dim, mlp_width=config.mlp_width,
                                     init_std=config.init_std if init_std is None else init_std,
                                     dtype=config.jnp_dtype)

    def predict_query(config, params, H):
        return variants.predict(variant_of(config), params, H)

    def loss(config, params, batch, path):
        if batch.H is None:
            raise ValueError(f"model {name!r} reads the prompt tokens, which sampler='wishart' does not draw")
        v = variant_of(config)
        y_hat = jax.vmap(lambda h: variants.predict(v, params, h))(batch.H)
        return jnp.mean((y_hat - batch.targets) ** 2) / batch.d_active

    def save_params(path, params):
        variants.validate_variant_params(base, params)
        save_npz(path, {f: jnp.asarray(getattr(params, f)) for f in params._fields})

    def load_params(path, config):
        fields = base.params_class._fields
        arrays = load_npz(path, required=fields)
        check_loaded_dtype(path, {f: arrays[f] for f in fields})
        try:
            params = base.params_class(**{f: jnp.asarray(require_float_array(f, arrays[f]), dtype=config.jnp_dtype)
                                          for f in fields})
            variants.validate_variant_params(base, params, config.dim)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{path}: {e}") from None
        want = (config.n_layers, config.dim, config.dim)
        if tuple(params.w_k.shape) != want:
            raise ValueError(f"{path}: w_k is {tuple(params.w_k.shape)}, the config implies (L, D, D) = {want}")
        if base.mlp != "none" and params.w_in.shape[1] != config.mlp_width:
            raise ValueError(f"{path}: w_in has width {params.w_in.shape[1]}, the config's mlp_width is {config.mlp_width}")
        return params

    def check_config(config) -> None:
        if config.mask != "demos":
            raise ValueError(f"model {name!r} has the 'demos' mask only, got mask={config.mask!r}")
        if config.k_min is not None or config.curriculum is not None:
            raise ValueError(f"model {name!r} trains at the full context: k_min and curriculum zero demonstrations, "
                             "which is exact for linear attention only")
        if config.sampler not in ("tokens", "auto"):  # "auto" resolves to tokens: reads_gram is False
            raise ValueError(f"model {name!r} reads tokens: sampler must be 'tokens' or 'auto', got {config.sampler!r}")

    return Model(
        name=name, summary=summary, layout="spec", targets="query", params_type=base.params_class,
        groups=("attn", "mlp") if base.mlp != "none" else ("attn",), theorem1=False, reads_gram=False,
        uses_width=base.mlp != "none", context_limited=False, init=init, loss=loss, predict_query=predict_query,
        predict_positions=None, save_params=save_params, load_params=load_params, check_config=check_config,
        architecture=lambda config: None,
    )
