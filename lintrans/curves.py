"""In-context error against the number of examples ``k`` (Garg et al.'s curves; the paper's Figs 2.1, 2.2).

For a prompt with ``N`` demonstrations and ``k = 1 … N``, the error ``E (ŷ − y_q)²/d`` (SPEC §5) of

* a **linear-attention** run (trained with ``k_min = 1``, so it saw every ``k``): the prompt's
  first ``k`` demonstrations kept, the rest zeroed — they then contribute exactly nothing
  (:func:`lintrans.batched.linear_query_predict`; with ``s = 1/N`` the kept ones are rescaled so
  that ``s = 1/k``), one compiled function for every ``k``;
* a **softmax** run: the prompt sliced to its first ``k`` pairs and the query (:func:`sliced`);
* an **estimator** of :mod:`lintrans.estimators`: the same slice.

So every curve predicts the same query from the same ``k`` examples. Intervals are over prompts
(95 %, normal approximation: :func:`lintrans.estimators.mean_ci95`, ≥ 1000 prompts).

:func:`closest_estimators` says which algorithm a model's predictions match (Garg et al.'s
comparison): the estimator with the smallest ``E (ŷ_model − ŷ_est)²/d``, together with every
estimator not distinguishable from it (paired 95 % interval of the difference over prompts
contains 0), so the label never flips between two estimators that predict the same (e.g. at
``k ≤ 3``, where 3-nearest-neighbours is the mean label).

Every function takes plain arguments (training configs, arrays); ``experiments/icl_curves.py``
composes them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lintrans import checkpoint, models
from lintrans.batched import linear_query_predict
from lintrans.estimators import mean_ci95, predict_batch
from lintrans.train import Curriculum, TrainConfig, predict_query
from lintrans.trained import ensure_run, run_name

__all__ = [
    "ESTIMATOR_CURVES",
    "linear_train_config",
    "softmax_train_config",
    "run_dir_for",
    "ensure_trained",
    "sliced",
    "model_predictions",
    "estimator_predictions",
    "errors",
    "curve",
    "prediction_distance",
    "closest_estimators",
    "checkpoint_steps",
]

#: The estimators drawn next to the models, in the order used to break exact ties.
ESTIMATOR_CURVES = ("least_squares", "averaging", "knn3", "gd_1step_opt")


def _every(steps: int, checkpoints: int) -> dict:
    return dict(warmup_steps=max(steps // 20, 1), checkpoint_every=max(steps // checkpoints, 1),
                log_every=max(steps // 50, 1))


def linear_train_config(d_in: int, n_layers: int, *, steps: int, lr: float, batch: int, scale: str,
                        seed: int, seeds: int, dtype: str, checkpoints: int) -> TrainConfig:
    """A linear-attention run over ``k ~ U{1..N}`` (``k_min = 1``), ``N = 2 d_in``; warm-up 5 %,
    ``checkpoints`` evenly spaced checkpoints (the training-steps figure reads them)."""
    return TrainConfig(model="linear", d_in=d_in, n_demos=2 * d_in, n_layers=n_layers, scale=scale, k_min=1,
                       steps=steps, batch_size=batch, lr=lr, seed=seed, seeds=seeds, dtype=dtype,
                       **_every(steps, checkpoints))


def softmax_train_config(d_in: int, *, n_layers: int, width: int, heads: int, mlp_width: int, steps: int,
                         lr: float, batch: int, curriculum_every: int, seed: int, seeds: int, dtype: str,
                         checkpoints: int) -> TrainConfig:
    """The GPT-2-style run with Garg's loss over every position (one model covers every ``k``).

    Curriculum (Garg et al.): ``d`` from ``min(2, d)`` by 1 and ``N`` from ``2·min(2, d)`` by 2
    every ``curriculum_every`` steps (``N = 2d`` at every stage; 0: none). Measured at d = 5, L = 3,
    width 64, 4000 steps: error at k = 2d 0.12 with it, 0.58 and 0.96 (two seeds) without (the
    model sat on the zero-estimator plateau).
    """
    d0 = min(2, d_in)
    curriculum = (Curriculum(d_start=d0, d_step=1, n_start=2 * d0, n_step=2, every=curriculum_every)
                  if curriculum_every else None)
    return TrainConfig(model="softmax", d_in=d_in, n_demos=2 * d_in, n_layers=n_layers, curriculum=curriculum,
                       width=width, n_heads=heads, mlp_width=mlp_width, steps=steps, batch_size=batch, lr=lr,
                       seed=seed, seeds=seeds, dtype=dtype, **_every(steps, checkpoints))


def run_dir_for(runs_dir, tc: TrainConfig) -> Path:
    """``runs_dir/icl_<run_name>``: the name carries a hash of the WHOLE training config
    (:func:`lintrans.trained.run_name`), so a smaller run never occupies a larger run's folder."""
    return Path(runs_dir) / f"icl_{run_name(tc)}"


def ensure_trained(tc: TrainConfig, run_dir, *, quiet: bool = False) -> str:
    """Reuse a finished run of ``tc`` in ``run_dir``, resume an unfinished one, or train it.
    Returns ``"reused"``, ``"resumed"`` or ``"trained"`` (:func:`lintrans.trained.ensure_run`)."""
    run_dir = Path(run_dir)
    existed = (run_dir / checkpoint.CONFIG_FILE).exists()
    _, trained = ensure_run(tc, run_dir, quiet=quiet)
    return "reused" if not trained else ("resumed" if existed else "trained")


def sliced(H: jax.Array, k: int) -> jax.Array:
    """Prompts ``(B, D, N+1)`` cut to their first ``k`` demonstrations and the query: ``(B, D, k+1)``."""
    return jnp.concatenate([H[:, :, :k], H[:, :, -1:]], axis=2)


@functools.partial(jax.jit, static_argnums=0)
def _linear_at(tc: TrainConfig, params, H, k):
    """``(S, B)`` query predictions of every seed with ``k`` demonstrations (the rest zeroed)."""
    N = H.shape[2] - 1
    keep = (jnp.arange(N + 1) < k) | (jnp.arange(N + 1) == N)
    Hk = H * keep[None, None, :].astype(H.dtype)

    def one_seed(p):
        return jax.vmap(lambda h: linear_query_predict(p, h, k, mask=tc.mask, scale=tc.scale, readout=tc.readout))(Hk)

    return jax.vmap(one_seed)(params)


def model_predictions(tc: TrainConfig, params, H: jax.Array, ks: Sequence[int]) -> list[np.ndarray]:
    """Per ``k``, the ``(S, B)`` query predictions of a run's seeds (``params`` with the seed axis).

    A model trained on the query only (registry ``targets == "query"``: the linear stack, trained
    over ``k``) sees ``k`` real demonstrations and zeros; one trained at every position sees the
    prompt sliced to ``k`` pairs."""
    if models.get(tc.model).targets == "query":
        return [np.asarray(_linear_at(tc, params, H, jnp.asarray(k))) for k in ks]
    seeds = [jax.tree_util.tree_map(lambda x, i=i: x[i], params) for i in range(tc.seeds)]
    return [np.stack([np.asarray(predict_query(tc, p, sliced(H, k))) for p in seeds]) for k in ks]


@functools.lru_cache(maxsize=16)
def _estimator(name: str):
    """One jitted batched estimator per name (compiled once per prompt shape, reused across runs)."""
    return jax.jit(functools.partial(predict_batch, name))


def estimator_predictions(name: str, H: jax.Array, ks: Sequence[int]) -> list[np.ndarray]:
    """Per ``k``, the ``(B,)`` predictions of an estimator on the prompts sliced to ``k`` demonstrations."""
    return [np.asarray(_estimator(name)(sliced(H, k))) for k in ks]


def errors(preds: Sequence[np.ndarray], y_query, d_in: int) -> list[np.ndarray]:
    """Per ``k``, the per-prompt error ``(ŷ − y)²/d`` (averaged over the seed axis when there is one)."""
    y = np.asarray(y_query)
    return [np.mean((p - y) ** 2, axis=0) / d_in if p.ndim == 2 else (p - y) ** 2 / d_in for p in preds]


def curve(errors_by_k: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """``{"mean": [...], "ci95": [...]}`` over prompts, one entry per ``k``."""
    cis = [mean_ci95(e) for e in errors_by_k]
    return {"mean": [float(c.mean) for c in cis], "ci95": [float(c.half_width) for c in cis]}


def _per_prompt_distance(p: np.ndarray, q: np.ndarray, d_in: int) -> np.ndarray:
    """``(ŷ_model − ŷ_est)²/d`` per prompt, averaged over the model's seeds: ``(B,)``."""
    return np.mean((p - q[None]) ** 2, axis=0) / d_in


def prediction_distance(preds: Sequence[np.ndarray], est_preds: dict[str, Sequence[np.ndarray]],
                        d_in: int) -> dict[str, list[float]]:
    """``{estimator: [E (ŷ_model − ŷ_est)²/d at each k]}`` on the same prompts."""
    return {n: [float(np.mean(_per_prompt_distance(p, q, d_in))) for p, q in zip(preds, qs)]
            for n, qs in est_preds.items()}


def closest_estimators(preds: Sequence[np.ndarray], est_preds: dict[str, Sequence[np.ndarray]],
                       d_in: int) -> list[str]:
    """Per ``k``, the estimator nearest to the model, joined by ``"≈"`` with every estimator that
    is not measurably farther: the paired 95 % interval over prompts of
    ``dist(est) − dist(best)`` contains 0 (:func:`lintrans.estimators.mean_ci95`). Names in the
    order of ``est_preds``, so the label is the same for the same numbers. Two estimators that
    predict identically (difference exactly 0) always share the label."""
    names = list(est_preds)
    out = []
    for j, p in enumerate(preds):
        dist = {n: _per_prompt_distance(p, est_preds[n][j], d_in) for n in names}
        best = min(names, key=lambda n: float(np.mean(dist[n])))
        tied = []
        for n in names:
            diff = dist[n] - dist[best]
            ci = mean_ci95(diff) if diff.size >= 2 else None
            if n == best or not np.any(diff) or (ci is not None and ci.mean - ci.half_width <= 0.0):
                tied.append(n)
        out.append("≈".join(tied))
    return out


def checkpoint_steps(run_dir, n: int = 5) -> list[int]:
    """Up to ``n`` checkpoint steps of a run, evenly spread from the first to the last."""
    steps = checkpoint.list_checkpoints(run_dir)
    if not steps:
        raise ValueError(f"{run_dir}: no checkpoints")
    return sorted({steps[int(round(i))] for i in np.linspace(0, len(steps) - 1, min(len(steps), n))})
