"""lintrans: in-context learning in stacked linear attention as implicit gradient descent, exactly.

Modules (one concept each; data flows down this list):

* :mod:`lintrans.params` — the parameter pytree ``LinearAttentionParams(w_k, w_q, w_v)``.
* :mod:`lintrans.tasks` — prompt samplers in the SPEC layout ``(D, N+1)``, query last.
* :mod:`lintrans.attention` — the layer, the stacked forward pass, masks, scale, readout.
* :mod:`lintrans.trajectory` — ``ΔW_t``, ``G_t``, ``W_t`` (Theorem 1).
* :mod:`lintrans.checks` — the identities T1–T6 as relative errors.
* :mod:`lintrans.constructions` — the gradient-descent construction.
* :mod:`lintrans.estimators` — least squares, ridge, GD and the other baselines (SPEC §5).
* :mod:`lintrans.transformer` — the GPT-2-style softmax transformer on Garg's interleaved tokens.
* :mod:`lintrans.models` — every trainable model by name (registry: init, loss, predictions, files).
* :mod:`lintrans.train_config`, :mod:`lintrans.train_state`, :mod:`lintrans.train`, :mod:`lintrans.checkpoint` — the
  training configuration, state and optimizer, the loop; atomic checkpoints (:mod:`lintrans.lock`: one writer per run).
* :mod:`lintrans.pruning` — SVD truncation of one matrix by clipping rate, condition numbers.
* :mod:`lintrans.truncation` — truncation of a parameter pytree by layer, target and rate.
* :mod:`lintrans.bound`, :mod:`lintrans.bound_sweep` — Theorem 2: contributions, C_t, the bound forms.
* :mod:`lintrans.search` — Algorithm 1, the clipping-rate search.
* :mod:`lintrans.trained` — the default small training runs the experiments share; :mod:`lintrans.seedstats` — intervals over seeds.
* :mod:`lintrans.sharding` — the data-parallel device mesh.
* :mod:`lintrans.variants` — linear attention with an MLP, LayerNorm, softmax attention (SPEC layout); :mod:`lintrans.implicit` — model-agnostic probes of implicit GD (issue 16).
* :mod:`lintrans.numerics`, :mod:`lintrans.io` — full-precision products, errors, files.
"""

from lintrans.attention import forward, forward_states, predict, predict_tokens
from lintrans.params import LinearAttentionParams, init_params, load_params, save_params
from lintrans.trajectory import Trajectory, trajectory

__version__ = "0.1.0"

__all__ = [
    "LinearAttentionParams",
    "init_params",
    "load_params",
    "save_params",
    "forward",
    "forward_states",
    "predict",
    "predict_tokens",
    "Trajectory",
    "trajectory",
]
