"""The model interface: what the training loop, the checkpoints and the experiments need of a model.

A model is one :class:`Model` value (a frozen record of functions and facts), registered by name in
:mod:`lintrans.models`. Functions take the run's :class:`lintrans.train_config.TrainConfig` (read by
field name; this module imports no training code) and ONE seed's parameters (no seed axis); the
training code vmaps over seeds and prompts at the call site.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["Model", "LAYOUTS", "TARGETS", "check_loaded_dtype"]

#: Token layouts: ``"spec"`` is the SPEC's ``(D, N+1)`` prompt read as it is (columns ``[x_i; y_i]``,
#: query ``[x_q; 0]`` last); ``"interleaved"`` is Garg et al.'s ``x_1, y_1, …, x_N, y_N, x_q``
#: sequence built from it inside the model.
LAYOUTS = ("spec", "interleaved")
#: What the training loss scores: ``"query"`` (the query's prediction only; a shorter context is
#: written as zeroed demonstrations with their true count ``n_true``, so ``k_min`` and the
#: curriculum's demonstration count apply) or ``"positions"`` (Garg's loss at every ``x`` position
#: ``j = 0..N``; the curriculum restricts it to ``j ≤ n_active``).
TARGETS = ("query", "positions")


@dataclasses.dataclass(frozen=True)
class Model:
    """One registered model.

    Attributes:
      name: the registry key, stored as ``TrainConfig.model`` and in ``config.json``.
      summary: one line for ``--help`` and the docs.
      layout: the token layout, one of :data:`LAYOUTS`.
      targets: what the training loss scores, one of :data:`TARGETS`.
      params_type: the parameter pytree's class (e.g. :class:`lintrans.params.LinearAttentionParams`).
      groups: the module groups truncation can address (SPEC §6), e.g. ``("attn",)`` or ``("attn", "mlp")``.
      theorem1: whether Theorem 1's trajectory (``ΔW_t``, ``G_t``, ``W_t``) describes the model exactly.
      reads_gram: under ``mask="demos"`` the model sees a prompt only through its demonstrations'
        Gram matrix and its query, so ``sampler="wishart"`` and the Gram fast path apply.
      uses_width: the model has a residual stream: ``width``, ``n_heads``, ``mlp_width`` matter
        (and appear in default run names).
      context_limited: predictions exist only for prompts of at most the run's ``n_demos``
        demonstrations (positional embeddings); otherwise any ``N'``.
      init: ``init(key, config, init_std=None) -> params`` of one seed (``init_std``: a traced value
        overriding ``config.init_std``, so one compiled init serves every ``init_std``; models that
        do not read it ignore it). ``init`` may read only the shape fields ``model, d_in, n_demos,
        n_layers, width, n_heads, mlp_width, dtype`` (one compiled init is shared by configs
        that agree on them, :func:`lintrans.train_state.init_state`).
      loss: ``loss(config, params, batch, path) -> scalar``, the training loss on a
        :class:`lintrans.train.Batch` (``path``: the linear model's forward path, validated by the caller).
      predict_query: ``predict_query(config, params, H) -> scalar``, the query's prediction for
        ONE prompt ``H (D, N'+1)`` in the SPEC layout.
      predict_positions: ``None``, or ``predict_positions(config, params, H) -> (N'+1,)``: the
        prediction at every ``x`` position (entry ``k``: ``k`` pairs seen).
      save_params: ``save_params(path, params)``, one seed's parameters as an npz (atomic, no pickle).
      load_params: ``load_params(path, config) -> params``: read and validate one seed's parameters
        for ``config`` (shapes, float32/float64 only, finite); ``ValueError``/``TypeError`` naming the file.
      check_config: ``check_config(config) -> None``: the model's own validation of a TrainConfig
        (run by ``TrainConfig.__post_init__`` after the generic checks).
      architecture: ``architecture(config) -> hashable | None``, the static shape object of the
        network (:class:`lintrans.transformer.SoftmaxConfig` for the softmax transformer; recorded
        under ``"softmax"`` in ``config.json`` when it is one).
    """

    name: str
    summary: str
    layout: str
    targets: str
    params_type: type
    groups: tuple[str, ...]
    theorem1: bool
    reads_gram: bool
    uses_width: bool
    context_limited: bool
    init: Callable[..., Any]
    loss: Callable[..., Any]
    predict_query: Callable[..., Any]
    predict_positions: Callable[..., Any] | None
    save_params: Callable[..., None]
    load_params: Callable[..., Any]
    check_config: Callable[[Any], None]
    architecture: Callable[[Any], Any]

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"Model {self.name!r}: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.targets not in TARGETS:
            raise ValueError(f"Model {self.name!r}: targets must be one of {TARGETS}, got {self.targets!r}")
        if not self.groups or not all(isinstance(g, str) for g in self.groups):
            raise ValueError(f"Model {self.name!r}: groups must be a non-empty tuple of names, got {self.groups!r}")


def check_loaded_dtype(path, arrays, allowed=("float32", "float64")) -> None:
    """Refuse arrays of a file whose dtype is not float32/float64 (e.g. float16), naming the file and array."""
    for name, arr in arrays.items():
        if str(arr.dtype) not in allowed:
            raise TypeError(f"{path}: array {name!r} is {arr.dtype}; parameters must be one of {allowed}")
