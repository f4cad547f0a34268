"""Training in-context regressors: one jitted, seed-vmapped optimizer step (SPEC §5; issue 3).

Every model registered in :mod:`lintrans.models` trains through one loop, chosen by
``TrainConfig.model``; the loop asks the registry entry for the initialisation, the loss and what
the batch must hold (``targets``: the query, or every position). The two registered today:

* ``"linear"``: the stacked linear-attention model of SPEC §2 (:mod:`lintrans.attention`),
  parameters :class:`~lintrans.params.LinearAttentionParams`. It predicts the query only; the loss
  is ``(ŷ − y_q)² / d`` averaged over the batch. The fast path (``path="batched"``, the default)
  is :func:`linear_predict_batch`: one Gram matrix ``S = H_s H_sᵀ`` per prompt, then ``O(D³)`` per
  layer whatever N is — the recursion of :func:`lintrans.attention.predict` written on the whole
  batch so that XLA sees large matrix products. ``path="gram"`` vmaps
  :func:`lintrans.attention.predict`; ``path="tokens"`` runs the token-by-token forward pass
  :func:`lintrans.attention.predict_tokens`, the straightforward reference the fast one is tested
  against (loss and gradients, float64, rtol 1e-12). The causal mask always takes the token path.
  The sampled batch carries the Gram matrix computed from the draws (:mod:`lintrans.batched`), or,
  with ``sampler="wishart"``, drawn directly in ``O(d²)`` (:mod:`lintrans.gram_sampler`); the
  default ``sampler="auto"`` takes the Wishart draws on the batched path wherever they need fewer
  random bits (:func:`lintrans.train_config.resolve_sampler`), so ``train(config)`` and
  ``train(config, path="tokens")`` see the same law but different draws.
* ``"softmax"``: the GPT-2-style transformer of :mod:`lintrans.transformer` on Garg et al.'s
  interleaved ``x, y`` tokens with a causal mask. Its loss is Garg's: the mean of
  ``(ŷ_j − y_j)² / d`` over **every** ``x`` position ``j = 0..N`` (position ``j`` has seen ``j``
  pairs; ``j = N`` is the query), so one model covers every context size ``k = 0..N``.

The step. :func:`make_train_step` returns ONE ``jax.jit``-ed function that, for each of ``S``
seeds at once (``jax.vmap`` over a leading seed axis of the parameters, the optimizer state and the
data keys), samples a fresh batch inside the step from ``fold_in(data_key, step)``
(:func:`lintrans.tasks.sample_linear`), takes ``value_and_grad`` of the loss and applies the optax
update: Adam, linear warm-up from 0 to ``lr`` over ``warmup_steps`` then cosine decay to
``lr · final_lr_frac`` at ``steps``, after global-norm gradient clipping at ``clip_norm``. Steps are
numbered ``1..steps``; the state after step ``t`` is "at step ``t``" (``t`` updates done).

Keys (:mod:`lintrans.train_state`). Seed ``i`` of a run (0-based) has seed value ``seed + i`` and
root key ``PRNGKey(seed + i)``; its init key is ``fold_in(root, 0)`` and its data key
``fold_in(root, 1)``. What this gives, exactly: seed index ``i`` of a run with ``seed = a`` starts
from bitwise the same parameters as a one-seed run with ``seed = a + i`` and is trained on bitwise
the same prompts (the sampler is elementwise in the keys; with Wishart draws the draws are the
same, the Gram matrix and label computed from them agree to rounding). The trajectories agree to
rounding, not bitwise: the step vmaps the seeds, and XLA compiles the seed-batched matrix products and reductions
differently from the one-seed ones, so the summation order differs; training can amplify the
difference (the float64 test bounds it at 1e-12 after 30 steps; float32 runs were reported 1e-4
apart after 3000 steps). Bitwise: the same config gives the same numbers. Test and validation
prompts come from other branches (``fold_in(PRNGKey(test_seed), 2)`` and ``…, 3``), never from a
data key.

Variable context size (linear model). The linear model reads only the query, so a curve over the
number ``k`` of in-context examples needs a model trained over a range of ``k``. With
``k_min`` set, each prompt draws ``k ~ Uniform{k_min..N}`` and demonstrations ``k+1..N`` are
zeroed, keeping shapes fixed (nothing recompiles). A zero token contributes exactly nothing to
``ΔW_t = s Σ_i (W_V h_i)(W_K h_i)ᵀ W_Q`` and stays zero at every layer (both masks: its own update
is ``ΔW h = 0``), so the query sees exactly the first ``k`` demonstrations. With ``scale="1/N"``
the scale must be ``1/k``, not ``1/N``: the demonstrations are multiplied by ``c = √(N/k)`` before
the forward pass, which is exactly ``s = 1/k`` (the query's update is ``s Σ (W_V h_i)(W_K h_i)ᵀ W_Q``,
quadratic in the demonstrations, and by induction each demonstration's state stays ``c`` times
its state at ``s = 1/k``). Tested against slicing the prompt to ``k`` demonstrations.

Curriculum (Garg et al.). ``Curriculum(d_start, d_step, n_start, n_step, every)``: at step ``t``
the active input dimension is ``min(d_in, d_start + d_step·⌊(t−1)/every⌋)`` and the active number of
demonstrations likewise. Inactive input coordinates are zero (``x = diag(1…1, 0…0) z``, so
``y = wᵀx`` uses the active ones only; the loss divides by the active ``d``). Inactive
demonstrations: zeroed for the linear model (true count in the scale, as above); for the softmax
model the loss is restricted to positions ``j ≤ n_active``, which under the causal mask is exactly
training on prompts truncated to ``n_active + 1`` points. Shapes stay fixed: one compilation.

NaN guard. Each step reports, per seed, whether the loss and the new weights and optimizer state are finite; the first
step where either is not is kept on the device and read at every log or checkpoint step. A
non-finite value stops the run with :class:`TrainingDivergedError` naming the step, the seed and
the quantity; no checkpoint is written at or after that step, so the last good one stays intact.

Files (:mod:`lintrans.checkpoint`): ``run_dir/config.json``, ``ckpt_<step:08d>.npz`` every
``checkpoint_every`` steps and at the end, ``metrics.jsonl`` (one JSON object per log step).
``resume=True`` continues from the latest checkpoint and ends bitwise equal to an uninterrupted run,
with the same ``metrics.jsonl`` (timing fields aside): a step's metrics line is written before its
checkpoint, and a checkpoint between log steps stores the losses since the last record. One writer
per directory: :func:`train` holds the run's lock (:mod:`lintrans.lock`) throughout; a second
process gets ``ValueError: RUN is in use by process N``. ``config.json`` and the step-0 checkpoint
are written only once the first step has run, so a run refused or crashed before that (a size XLA
cannot compile, an out-of-memory) leaves no ``config.json`` that would block the same command.
Sizes beyond int32 indexing or memory are refused before compiling (:mod:`lintrans.limits`).

Linear-model initialisation: i.i.d. ``N(0, init_std²)`` entries, ``init_std = 0.02`` by default.
Why: the prediction is cubic per layer in the weights, so small weights start the model near the
zero estimator with small, well-conditioned gradients, and Adam's normalised steps grow them at a
controlled rate. ``W_K = W_Q = I`` diverged at ``L = 4`` in a quick trial (issue 3), and the
``1/√D`` scale overflows within 5–7 layers (SPEC §3). The scale ``s = 1/N`` is the default here:
it makes ``s·S`` an average, ``O(1)`` whatever ``N`` is.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lintrans import checkpoint as ckpt
from lintrans import models
from lintrans.batched import demo_gram, linear_predict_batch, linear_query_predict
from lintrans.gram_sampler import sample_linear_gram
from lintrans.limits import check_training_size
from lintrans.lock import LOCK_FILE, run_lock
from lintrans.progress import Progress
from lintrans.sharding import constrain_batch
from lintrans.tasks import sample_linear_split, tokens_from_xy
from lintrans.train_state import (
    TrainState,
    check_dtype,
    init_model,
    init_state,
    learning_rate,
    make_optimizer,
    seed_keys,
    test_key,
    validation_key,
)
from lintrans.train_config import (
    DTYPES,
    MODELS,
    PATHS,
    SAMPLERS,
    Curriculum,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    resolve_sampler,
    seed_values,
    softmax_config,
)

__all__ = [
    "MODELS",
    "DTYPES",
    "PATHS",
    "SAMPLERS",
    "Curriculum",
    "TrainConfig",
    "config_to_dict",
    "config_from_dict",
    "softmax_config",
    "seed_values",
    "seed_keys",
    "test_key",
    "validation_key",
    "init_model",
    "make_optimizer",
    "learning_rate",
    "TrainState",
    "init_state",
    "Batch",
    "sample_batch",
    "linear_query_predict",
    "linear_predict_batch",
    "batch_loss",
    "make_loss",
    "make_train_step",
    "TrainingDivergedError",
    "TrainResult",
    "train",
    "predict_query",
    "predict_positions",
]

# optax >= 0.2.4 names the global norm optax.tree.norm; older releases optax.global_norm.
_tree_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm



# ----------------------------------------------------------------------------------------------
# Batches and losses
# ----------------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One training batch.

    Attributes:
      H: ``(B, D, N+1)`` prompts; inactive coordinates / zeroed demonstrations are 0. ``None``
        with ``sampler="wishart"`` (no tokens are drawn).
      targets: linear ``(B,)`` query labels; softmax ``(B, N+1)`` labels of every ``x`` position.
      n_true: ``(B,)`` int, demonstrations each prompt really has (``None``: all N, no zeroing).
      d_active, n_active: scalars, the curriculum's active dimension and demonstration count.
      gram: linear model ``(B, D, D)``, the demonstrations' Gram matrix ``S = H_s H_sᵀ`` (zeroed
        demonstrations left out), computed from the draws (:func:`lintrans.batched.demo_gram`) so
        that the fast path never needs the token array; softmax ``None``.
      query: linear model ``(B, D)``, the query token ``[x_q; 0]``; softmax ``None``.
    """

    H: jax.Array
    targets: jax.Array
    n_true: jax.Array | None
    d_active: jax.Array
    n_active: jax.Array
    gram: jax.Array | None = None
    query: jax.Array | None = None


def sample_batch(config: TrainConfig, key: jax.Array, step, path: str | None = None) -> Batch:
    """Fresh training prompts for one seed from ``key`` (already ``fold_in(data_key, step)``).

    ``path``: the forward path that will read the batch; ``sampler="auto"`` resolves through
    :func:`lintrans.train_config.resolve_sampler` with it (``None``: a batch every path can read,
    i.e. tokens).
    """
    sampler = resolve_sampler(config, path)
    B, N, d = config.batch_size, config.n_demos, config.d_in
    k_task, k_count = jax.random.split(key)
    if config.curriculum is not None:
        d_active, n_active = config.curriculum.active(step, d, N)
        cov_sqrt = jnp.diag((jnp.arange(d) < d_active).astype(config.jnp_dtype))
    else:
        d_active, n_active, cov_sqrt = jnp.asarray(d), jnp.asarray(N), None
    spec = models.get(config.model)
    n_true = None
    if spec.targets == "query":  # shorter contexts as zeroed demonstrations with their true count
        if config.k_min is not None:
            n_true = jax.random.randint(k_count, (B,), config.k_min, n_active + 1)
        elif config.curriculum is not None:
            n_true = jnp.broadcast_to(n_active, (B,))
    if sampler == "wishart":
        g = sample_linear_gram(k_task, B, N, d, n_true=n_true, noise_std=config.noise_std, cov_sqrt=cov_sqrt,
                               dtype=config.jnp_dtype)
        return Batch(None, g.y_query, n_true, d_active, n_active, g.gram, g.query)
    draws = sample_linear_split(k_task, B, N, d, noise_std=config.noise_std, cov_sqrt=cov_sqrt,
                                dtype=config.jnp_dtype)
    # Built lazily: XLA drops the token array when only the Gram matrix and the query are read
    # (the linear model's batched path).
    X, y = draws.joined()
    H = jax.vmap(tokens_from_xy)(X, y)
    if spec.targets == "positions":
        return Batch(H, y, None, d_active, n_active)
    keep = None
    if n_true is not None:
        keep = jnp.arange(N + 1)[None, :] < n_true[:, None]
        keep = keep.at[:, N].set(True)  # the query column
        H = H * keep[:, None, :].astype(H.dtype)
        keep = keep[:, :N].astype(H.dtype)
    gram = demo_gram(draws.X_s, draws.y_s, keep)
    query = jnp.concatenate([draws.x_q, jnp.zeros((B, 1), draws.x_q.dtype)], axis=1)
    return Batch(H, draws.y_q, n_true, d_active, n_active, gram, query)


def batch_loss(config: TrainConfig, params, batch: Batch, path: str = "batched") -> jax.Array:
    """The training loss of one seed's parameters on ``batch``: the registered model's ``loss``
    (linear: mean ``(ŷ − y_q)²/d_active``; softmax: Garg's mean over positions ``j ≤ n_active``)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    return models.get(config.model).loss(config, params, batch, path)


def make_loss(config: TrainConfig, path: str = "batched", mesh=None) -> Callable:
    """``loss(params, data_key, step)`` for ONE seed: sample ``fold_in(data_key, step)``, score.

    ``mesh``: a :func:`lintrans.sharding.make_mesh` mesh; the sampled prompts and targets are then
    split over its ``data`` axis (the parameters stay replicated), so XLA runs each device's share
    of the batch and all-reduces the gradient. ``None``: no sharding constraint.
    """

    def loss(params, data_key, step):
        batch = sample_batch(config, jax.random.fold_in(data_key, step), step, path)
        if mesh is not None:
            batch = batch._replace(**{f: constrain_batch(getattr(batch, f), mesh)
                                      for f in ("H", "targets", "gram", "query") if getattr(batch, f) is not None})
        return batch_loss(config, params, batch, path)

    return loss


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves))


def make_train_step(config: TrainConfig, path: str = "batched", mesh=None) -> Callable:
    """ONE jitted step for all seeds (cached: configs that differ only in seeds or file cadence share it).

    ``step_fn(params, opt_state, data_keys, step, bad) -> (params, opt_state, loss, grad_norm, bad)``:
    ``params``/``opt_state`` carry the seed axis ``S``; ``data_keys (S, 2)``; ``step`` the 1-based
    step number (an int32 array, so no recompilation); ``bad (S, 2)`` int32, the first step at which
    ``[loss, weights or optimizer state]`` were non-finite (``-1``: never), updated here. ``loss, grad_norm (S,)``.
    ``mesh``: split each batch over the devices of a :mod:`lintrans.sharding` mesh (data
    parallelism; the batch size must be divisible by the device count); ``None``: one device.
    """
    if mesh is not None and config.batch_size % mesh.size:
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the mesh's {mesh.size} devices")
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    # The step depends on neither the seed values (they enter through data_keys) nor the seed
    # count (a shape, retraced by jit) nor the file cadence; "auto" is the sampler it resolves to,
    # so an "auto" config and its resolved one share one compiled step.
    return _cached_train_step(dataclasses.replace(config, seed=0, seeds=1, checkpoint_every=1, log_every=1,
                                                  sampler=resolve_sampler(config, path)), path, mesh)


@functools.lru_cache(maxsize=32)
def _cached_train_step(config: TrainConfig, path: str, mesh=None) -> Callable:
    optimizer = make_optimizer(config)
    loss_fn = make_loss(config, path, mesh)

    def one_seed(params, opt_state, data_key, step):
        loss, grads = jax.value_and_grad(loss_fn)(params, data_key, step)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # The optimizer state too: Adam's second moment can overflow a step before the weights do,
        # and a checkpoint holding it could not be loaded (checkpoint validation refuses it).
        finite = jnp.stack([jnp.isfinite(loss), _all_finite((params, opt_state))])
        return params, opt_state, loss, _tree_norm(grads), finite

    def step_fn(params, opt_state, data_keys, step, bad):
        params, opt_state, loss, gnorm, finite = jax.vmap(one_seed, in_axes=(0, 0, 0, None))(
            params, opt_state, data_keys, step)
        bad = jnp.where((bad < 0) & ~finite, step, bad)
        return params, opt_state, loss, gnorm, bad

    return jax.jit(step_fn)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


class TrainingDivergedError(RuntimeError):
    """A non-finite loss or weight appeared; the message names the step, seed and quantity."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class TrainResult(NamedTuple):
    """What :func:`train` returns: the final state (seed axis) and where it was written."""

    state: TrainState
    config: TrainConfig
    run_dir: Path | None
    resumed_from: int


def _raise_if_bad(bad: np.ndarray, config: TrainConfig, last_ckpt: int | None, run_dir) -> None:
    if not (bad >= 0).any():
        return
    bad = bad.astype(np.int64)
    steps = np.where(bad >= 0, bad, np.iinfo(np.int64).max)
    seed_idx, what = np.unravel_index(np.argmin(steps), steps.shape)
    step = int(steps[seed_idx, what])
    quantity = "loss" if what == 0 else "weights or optimizer state"
    where = (f"last good checkpoint: step {last_ckpt} in {run_dir}" if last_ckpt is not None
             else "no checkpoint was written")
    raise TrainingDivergedError(
        f"training stopped: non-finite {quantity} at step {step} (seed index {seed_idx}, seed value "
        f"{config.seed + int(seed_idx)}); {where}; lower lr or init_std", step)


def train(config: TrainConfig, run_dir: str | Path | None = None, *, resume: bool = False, quiet: bool = False,
          on_log: Callable[[dict[str, Any]], None] | None = None,
          on_checkpoint: Callable[[int], None] | None = None, path: str = "batched") -> TrainResult:
    """Train ``config.seeds`` seeds of ``config.model`` for ``config.steps`` steps.

    Args:
      config: the run.
      run_dir: where ``config.json``, checkpoints and ``metrics.jsonl`` go (``None``: nothing is
        written). An existing run directory needs ``resume=True``, and its ``config.json`` must
        equal ``config``. Held under the run's lock (:mod:`lintrans.lock`) for the whole call.
      resume: continue from the latest checkpoint (from scratch if there is none).
      quiet: no progress line.
      on_log: called with each metrics record after it is written (before that step's checkpoint).
      on_checkpoint: called with the step after each checkpoint is written.
      path: the linear model's forward path, one of :data:`PATHS` (``"batched"``: fastest).

    Raises:
      TrainingDivergedError: a non-finite loss or weight (no checkpoint at or after that step).
      ValueError: bad config, sizes beyond int32 indexing or memory, an existing run without
        ``resume``, a config mismatch, a corrupt checkpoint (named), a run directory in use by
        another process (:class:`lintrans.lock.RunInUseError`).
    """
    check_dtype(config)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    check_training_size(config)
    if run_dir is None:
        return _train(config, None, None, quiet, on_log, on_checkpoint, path)
    if isinstance(run_dir, str) and not run_dir.strip():
        raise ValueError("run_dir must name a directory, got an empty string")
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        with run_lock(run_dir):
            state = ckpt.open_run(run_dir, config, resume=resume)
            return _train(config, run_dir, state, quiet, on_log, on_checkpoint, path)
    finally:
        # A directory this call created and that holds nothing but the lock (refused or failed
        # before the first step): removed, so nothing is left half-way.
        if created and run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            shutil.rmtree(run_dir, ignore_errors=True)


def _train(config, run_dir, state, quiet, on_log, on_checkpoint, path) -> TrainResult:
    # Written once the first step has run (below), not before: a run that fails to compile or
    # allocate leaves no config.json behind.
    unstarted = run_dir is not None and not (run_dir / ckpt.CONFIG_FILE).exists()
    if state is None:
        state = init_state(config)
    start = state.step
    if run_dir is not None:
        ckpt.truncate_metrics(run_dir, start)
    last_ckpt = start if (run_dir is not None and start > 0) else None

    step_fn = make_train_step(config, path)
    _, data_keys = seed_keys(config)
    schedule = learning_rate(config)
    params, opt_state = state.params, state.opt_state
    bad = jnp.full((config.seeds, 2), -1, jnp.int32)
    progress = Progress(config.steps - start, f"train {config.model} L={config.n_layers}",
                        quiet=quiet or start >= config.steps, unit="steps")
    # Losses since the last metrics record (restored from the checkpoint after a resume).
    losses = [] if state.pending_loss is None else list(state.pending_loss)
    gnorms = []
    t_last, s_last = time.perf_counter(), start - len(losses)
    for step in range(start + 1, config.steps + 1):
        params, opt_state, loss, gnorm, bad = step_fn(params, opt_state, data_keys, jnp.int32(step), bad)
        if step == start + 1 and run_dir is not None and (unstarted or start == 0):
            loss.block_until_ready()  # the step compiled and ran: the run has really started
            if unstarted:
                ckpt.start_run(run_dir, config)
            if start == 0:
                ckpt.save_checkpoint(run_dir, config, state)
                last_ckpt = 0
        losses.append(loss)
        gnorms.append(gnorm)
        is_log = step % config.log_every == 0 or step == config.steps
        is_ckpt = step % config.checkpoint_every == 0 or step == config.steps
        if not (is_log or is_ckpt):
            continue
        _raise_if_bad(np.asarray(bad), config, last_ckpt, run_dir)
        if is_log:
            now = time.perf_counter()
            mean_loss = np.asarray(jnp.mean(jnp.stack(losses), axis=0))
            rate = (step - s_last) / max(now - t_last, 1e-12)
            record = {
                "step": step, "loss": mean_loss.tolist(), "loss_mean": float(mean_loss.mean()),
                "grad_norm": np.asarray(gnorms[-1]).tolist(), "lr": float(schedule(step - 1)),
                "steps_per_s": rate, "prompts_per_s": rate * config.batch_size * config.seeds,
            }
            if config.curriculum is not None:
                d_a, n_a = config.curriculum.active(step, config.d_in, config.n_demos)
                record["d_active"], record["n_active"] = int(d_a), int(n_a)
            # Before this step's checkpoint: a kill between the two then loses nothing (the
            # resume starts before this step and writes the record again).
            if run_dir is not None:
                ckpt.append_metrics(run_dir, record)
            progress.update(step - s_last, f"loss {record['loss_mean']:.4g} lr {record['lr']:.2e} (last {step - s_last} steps: {rate:.0f} steps/s)")
            if on_log is not None:
                on_log(record)
            losses, gnorms = [], []
            t_last, s_last = now, step
        if is_ckpt and run_dir is not None:
            pending = jnp.stack(losses) if losses else None
            ckpt.save_checkpoint(run_dir, config, TrainState(params, opt_state, step, pending))
            last_ckpt = step
            if on_checkpoint is not None:
                on_checkpoint(step)
    final = TrainState(params, opt_state, max(config.steps, start))
    return TrainResult(final, config, run_dir, start)


# ----------------------------------------------------------------------------------------------
# Prediction with trained parameters (one seed)
# ----------------------------------------------------------------------------------------------


def predict_query(config: TrainConfig, params, H: jax.Array) -> jax.Array:
    """Query predictions ``(B,)`` of ONE seed's parameters on prompts ``H (B, D, N'+1)``.

    Any ``N'`` (linear: ``s`` follows the prompt's own ``N'``; softmax: ``N' ≤ n_demos``).
    """
    return _predict_query(config, params, H)


def predict_positions(config: TrainConfig, params, H: jax.Array) -> jax.Array:
    """Predictions ``(B, N'+1)`` at every ``x`` position (entry ``k``: ``k`` pairs seen), for models that
    have them (softmax); ``ValueError`` for a model that predicts the query only (linear)."""
    if models.get(config.model).predict_positions is None:
        raise ValueError(f"predict_positions is for models that predict at every position (softmax); the "
                         f"{config.model} model predicts the query only")
    return _predict_positions(config, params, H)


def _predict_query_impl(config: TrainConfig, params, H):
    spec = models.get(config.model)
    return jax.vmap(lambda h: spec.predict_query(config, params, h))(H)


def _predict_positions_impl(config: TrainConfig, params, H):
    spec = models.get(config.model)
    return jax.vmap(lambda h: spec.predict_positions(config, params, h))(H)


_predict_query = jax.jit(_predict_query_impl, static_argnums=0)
_predict_positions = jax.jit(_predict_positions_impl, static_argnums=0)
