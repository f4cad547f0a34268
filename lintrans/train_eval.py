"""Scoring a trained run on a fixed test set: model errors, the estimators, and what the model matches.

Used by ``experiments/train_icl.py`` (``RUN/final.json``). Everything takes plain values (a
:class:`~lintrans.train_config.TrainConfig`, parameters with a seed axis, test options).

* :func:`score_run`: the test error ``E (ŷ − y_q)²/d`` of every seed with a 95 % interval on
  ``test_prompts`` prompts from ``fold_in(PRNGKey(test_seed), 2)``; every estimator of
  :data:`lintrans.estimators.ESTIMATORS` on the same prompts (ridge at ``ridge_lam``; one-step GD at
  ``η* = 1/(N+d+1+σ²)``; ``L``-step GD at the best constant ``η`` tuned on separate validation
  prompts); ratios; the prediction distance ``E (ŷ_model − ŷ_est)²/d`` per estimator; and, for a
  one-layer linear model with the ``demos`` mask, the effective step size.
* :func:`effective_step_size`: one trained linear-attention layer read as one GD step. With
  ``h_q = [x_q; 0]``, ``ŷ = ρ s v S P x_q`` where ``v = e_yᵀW_V``, ``P = (W_Kᵀ W_Q)[:, :d]`` and
  ``S = Σ_i h_i h_iᵀ``; its ``Σ_i y_i x_iᵀ Γ x_q`` part, ``Γ = ρ s v_y P_x`` (``d × d``), is one
  preconditioned GD step from ``w_0 = 0``. Isotropic data make ``Γ = η I`` optimal, so
  ``η_eff = tr Γ / d`` (the sum convention of :func:`lintrans.estimators.gd_one_step`, ``s``
  included) and ``anisotropy = ‖Γ − η_eff I‖_F / ‖Γ‖_F``. For SPEC §4's construction
  (``W_V = [[0,0],[0,−η]]``, ``W_K = W_Q = [[I,0],[0,0]]``, ``s = 1``, ``ρ = −1``) ``Γ = η I`` exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lintrans import attention, models
from lintrans.curves import closest_estimators
from lintrans.estimators import (
    gd_one_step,
    gd_one_step_optimal_error,
    gd_one_step_optimal_eta,
    icl_error,
    mean_ci95,
    predict_batch,
    tune_gd_eta,
)
from lintrans.params import LinearAttentionParams
from lintrans.tasks import sample_linear
from lintrans.train import predict_query
from lintrans.train_config import TrainConfig
from lintrans.train_state import test_key, validation_key

__all__ = ["effective_step_size", "estimator_table", "score_run", "test_size"]


def effective_step_size(params: LinearAttentionParams, *, scale: str, readout: int, n_demos: int) -> dict[str, Any]:
    """One trained linear-attention layer read as one step of GD (module docstring).

    Args:
      params: one layer, arrays ``(1, D, D)``, ``D = d + 1``.
      scale, readout, n_demos: the model's ``s`` option, ``ρ`` and ``N``.

    Returns:
      ``{"eta_eff": tr Γ / d, "anisotropy": ‖Γ − η_eff I‖_F/‖Γ‖_F, "gamma": Γ (d, d)}`` with
      ``Γ = ρ s (W_V)[D-1, D-1] (W_Kᵀ W_Q)[:d, :d]``.
    """
    if params.n_layers != 1:
        raise ValueError(f"effective_step_size reads one layer; the model has {params.n_layers}")
    D = params.dim
    d = D - 1
    s = attention.scale_factor(scale, n_demos)
    w_v = np.asarray(params.w_v[0], np.float64)
    kq = np.asarray(params.w_k[0], np.float64).T @ np.asarray(params.w_q[0], np.float64)
    gamma = readout * s * w_v[D - 1, D - 1] * kq[:d, :d]
    eta = float(np.trace(gamma) / d)
    norm = float(np.linalg.norm(gamma))
    aniso = float(np.linalg.norm(gamma - eta * np.eye(d)) / norm) if norm > 0 else 0.0
    return {"eta_eff": eta, "anisotropy": aniso, "gamma": gamma}


def _ci(errors) -> dict[str, float]:
    ci = mean_ci95(np.asarray(errors))
    return {"mean": float(ci.mean), "ci95": float(ci.half_width), "n": ci.n}


@functools.lru_cache(maxsize=64)
def _estimator(name: str, opts: tuple) -> Callable:
    """One jitted batched estimator per (name, options): repeated runs reuse its compilation."""
    return jax.jit(functools.partial(predict_batch, name, **dict(opts)))


def estimator_table(tc: TrainConfig, H, y_query, *, ridge_lam: float, test_seed: int,
                    tune_prompts: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(table, predictions)``: every estimator's error (mean, 95 % interval, options) on ``H``."""
    tuning = tune_gd_eta(validation_key(test_seed), tc.n_layers, tc.n_demos, tc.d_in,
                         noise_std=tc.noise_std, n_prompts=tune_prompts, dtype=H.dtype)
    opts = {"zero": {}, "least_squares": {}, "ridge": {"lam": ridge_lam}, "averaging": {}, "knn3": {},
            "gd_1step_opt": {"noise_std": tc.noise_std},
            "gd_Lstep": {"eta": tuning.eta, "n_steps": tc.n_layers}}
    table, preds = {}, {}
    for name, o in opts.items():
        y_hat = _estimator(name, tuple(sorted(o.items())))(H)
        preds[name] = np.asarray(y_hat)
        table[name] = {**_ci(icl_error(y_hat, y_query, tc.d_in)), "opts": o}
    table["gd_Lstep"]["val_error"] = tuning.val_error
    table["gd_1step_opt"]["opts"]["eta"] = gd_one_step_optimal_eta(tc.n_demos, tc.d_in, tc.noise_std)
    table["gd_1step_opt"]["expected"] = gd_one_step_optimal_error(tc.n_demos, tc.d_in, tc.noise_std)
    return table, preds


def test_size(tc: TrainConfig, test_prompts: int) -> int:
    """Elements of the test prompts' token array ``(test_prompts, D, N+1)`` (for a size check)."""
    return test_prompts * tc.dim * (tc.n_demos + 1)


def score_run(tc: TrainConfig, params, *, test_prompts: int, test_seed: int, tune_prompts: int,
              ridge_lam: float) -> dict[str, Any]:
    """Score every seed of ``params`` (seed axis) and every estimator on the fixed test set (module docstring)."""
    test = sample_linear(test_key(test_seed), test_prompts, tc.n_demos, tc.d_in, noise_std=tc.noise_std,
                         dtype=tc.jnp_dtype)
    estimators, est_preds = estimator_table(tc, test.H, test.y_query, ridge_lam=ridge_lam, test_seed=test_seed,
                                            tune_prompts=tune_prompts)
    seeds, distances, eff, y_hats = [], {name: [] for name in est_preds}, [], []
    # The read-back needs the plain (w_k, w_q, w_v) layer: the linear-attention parameter type.
    one_gd_layer = models.get(tc.model).params_type is LinearAttentionParams and tc.n_layers == 1 and tc.mask == "demos"
    for i in range(tc.seeds):
        p = jax.tree_util.tree_map(lambda x, i=i: x[i], params)
        y_hat = predict_query(tc, p, test.H)
        y_hats.append(np.asarray(y_hat))
        seeds.append({"seed": tc.seed + i, **_ci(icl_error(y_hat, test.y_query, tc.d_in))})
        for name, pred in est_preds.items():
            distances[name].append(float(np.mean((np.asarray(y_hat) - pred) ** 2) / tc.d_in))
        if one_gd_layer:
            e = effective_step_size(p, scale=tc.scale, readout=tc.readout, n_demos=tc.n_demos)
            y_gd = jax.vmap(lambda h: gd_one_step(h[:-1, :-1].T, h[-1, :-1], h[:-1, -1], e["eta_eff"]))(test.H)
            diff = float(jnp.linalg.norm(y_hat - y_gd) / jnp.linalg.norm(y_hat))
            eff.append({"seed": tc.seed + i, "eta_eff": e["eta_eff"], "anisotropy": e["anisotropy"],
                        "prediction_rel_diff_vs_gd_at_eta_eff": diff,
                        "gd_at_eta_eff_error": float(jnp.mean(icl_error(y_gd, test.y_query, tc.d_in)))})
    model_mean = float(np.mean([s["mean"] for s in seeds]))
    out: dict[str, Any] = {
        "test_prompts": test_prompts,
        "model": {"name": tc.model, "n_layers": tc.n_layers, "seeds": seeds, "mean_over_seeds": model_mean},
        "estimators": estimators,
        "ratios": {f"model_over_{n}": model_mean / estimators[n]["mean"] for n in ("gd_1step_opt", "gd_Lstep")},
        "prediction_distance": {n: float(np.mean(v)) for n, v in distances.items()},
        # Joined by "≈" with every estimator not measurably farther (lintrans.curves.closest_estimators),
        # so one-layer runs do not flip between gd_1step_opt and gd_Lstep, which nearly coincide there.
        "closest_estimator": closest_estimators([np.stack(y_hats)], {n: [np.asarray(q)] for n, q in est_preds.items()},
                                                tc.d_in)[0],
    }
    if eff:
        out["effective_step_size"] = {
            "seeds": eff, "eta_optimal": gd_one_step_optimal_eta(tc.n_demos, tc.d_in, tc.noise_std),
            "convention": "w = eta * sum_i y_i x_i (sum over demonstrations; s included)"}
    return out
