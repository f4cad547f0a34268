"""Training state: seed keys, initial parameters, the optimizer and :class:`TrainState` (SPEC §5; issue 3).

Split from :mod:`lintrans.train` (which re-exports every name here) so that
:mod:`lintrans.checkpoint` can build and check states without importing the training loop:
``train_config → train_state → checkpoint → train`` (no import circle).

Keys. Seed ``i`` of a run (0-based) has seed value ``seed + i`` and root key ``PRNGKey(seed + i)``;
its init key is ``fold_in(root, 0)`` and its data key ``fold_in(root, 1)``. Test and validation
prompts come from other branches (``fold_in(PRNGKey(test_seed), 2)`` and ``…, 3``), never from a
data key.

Optimizer: Adam, linear warm-up from 0 to ``lr`` over ``warmup_steps`` then cosine decay to
``lr · final_lr_frac`` at ``steps``, after global-norm gradient clipping at ``clip_norm``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lintrans import models
from lintrans.train_config import TrainConfig, seed_values

__all__ = ["seed_keys", "test_key", "validation_key", "init_model", "learning_rate", "make_optimizer",
           "TrainState", "init_state", "check_dtype"]


def seed_keys(config: TrainConfig) -> tuple[jax.Array, jax.Array]:
    """``(init_keys, data_keys)``, each ``(S, 2)`` uint32: ``fold_in(PRNGKey(seed_i), 0 | 1)``."""
    roots = [jax.random.PRNGKey(s) for s in seed_values(config)]
    return (jnp.stack([jax.random.fold_in(r, 0) for r in roots]),
            jnp.stack([jax.random.fold_in(r, 1) for r in roots]))


def test_key(test_seed: int) -> jax.Array:
    """Key of the fixed test set: ``fold_in(PRNGKey(test_seed), 2)`` (disjoint from data keys)."""
    return jax.random.fold_in(jax.random.PRNGKey(test_seed), 2)


def validation_key(test_seed: int) -> jax.Array:
    """Key of validation prompts (e.g. tuning GD's η): ``fold_in(PRNGKey(test_seed), 3)``."""
    return jax.random.fold_in(jax.random.PRNGKey(test_seed), 3)


def init_model(key: jax.Array, config: TrainConfig):
    """Initial parameters of ONE seed (no seed axis): the registered model's ``init``
    (linear: i.i.d. ``N(0, init_std²)`` entries; softmax: GPT-2's, :func:`lintrans.transformer.init_softmax`)."""
    return models.get(config.model).init(key, config, config.init_std)


def learning_rate(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up ``0 → lr`` over ``warmup_steps``, cosine decay to ``lr·final_lr_frac`` at ``steps``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.lr, warmup_steps=config.warmup_steps,
        decay_steps=max(config.steps, config.warmup_steps + 1), end_value=config.lr * config.final_lr_frac)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (unless ``clip_norm = 0``) then Adam on :func:`learning_rate`."""
    adam = optax.adam(learning_rate(config))
    if config.clip_norm == 0:
        return optax.chain(optax.identity(), adam)
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adam)


class TrainState(NamedTuple):
    """Parameters and optimizer state with a leading seed axis ``S``, and the step reached.

    ``pending_loss``: ``None`` or ``(k, S)``, the per-step losses since the last metrics record
    (``k = step mod log_every`` at a checkpoint between log steps), so that the first record after
    a resume averages the same steps as an uninterrupted run.
    """

    params: Any
    opt_state: Any
    step: int
    pending_loss: Any = None


def check_dtype(config: TrainConfig) -> None:
    """``ValueError`` for a float64 run without ``jax_enable_x64``."""
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype float64 needs jax_enable_x64 (jax.config.update('jax_enable_x64', True), "
                         "or JAX_ENABLE_X64=1 in the environment)")


def init_state(config: TrainConfig) -> TrainState:
    """The state at step 0 for every seed (vmapped init)."""
    check_dtype(config)
    init_keys, _ = seed_keys(config)
    # The init depends on the shapes only (init_std is a traced argument; Adam's state is zeros).
    shape_only = TrainConfig(model=config.model, d_in=config.d_in, n_demos=config.n_demos,
                             n_layers=config.n_layers, width=config.width, n_heads=config.n_heads,
                             mlp_width=config.mlp_width, dtype=config.dtype)
    params, opt_state = _cached_init(shape_only)(init_keys, jnp.asarray(config.init_std, config.jnp_dtype))
    return TrainState(params, opt_state, 0)


@functools.lru_cache(maxsize=32)
def _cached_init(config: TrainConfig) -> Callable:
    spec = models.get(config.model)

    def init(init_keys, init_std):
        params = jax.vmap(lambda k: spec.init(k, config, init_std))(init_keys)
        return params, jax.vmap(make_optimizer(config).init)(params)

    return jax.jit(init)
