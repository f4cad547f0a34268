"""Algorithm 1 of the paper: choose one layer and one clipping rate by validation (SPEC §8).

Inputs: trained weights, a module group (``attn`` = {K, Q, V}; for a standard transformer also
``mlp`` = {W_in, W_out}, or a single matrix ``K``/``Q``/``V``/``O``), candidate clipping rates
``ξ``, ``top_k`` (default 3), and validation and test prompts drawn fresh from the task.

1. For each layer ``t`` the condition number ``κ = σ_max/σ_min`` of every matrix of the group;
   per layer the max, ``κ_t`` (:func:`group_condition_numbers`).
2. The ``top_k`` layers with the largest ``κ_t``; the deepest of them is selected
   (:func:`top_layers`, :func:`select_layer`).
3. For each candidate ``ξ`` in ascending order, clip that layer's group *from the original
   weights* (every matrix of the group to ``r = ⌊min(m, n)(1 − ξ)⌋``, SPEC §6), score on the
   validation prompts (mean ICL error, lower is better), keep the best; ties go to the smaller
   ``ξ`` (:func:`choose_rate`).
4. Report the test error before and after at ``ξ*``, the validation curve, and ``r`` for each
   ``ξ`` (:class:`ClipSearchResult`).

Symbols → code: ``ξ`` → ``rates``/``xi``; ``r`` → ``ranks`` (one per matrix of the group); layer
``t`` is 1-based in every result and ``t − 1`` as an array index; ``κ_t`` → ``cond_per_layer``.

Speed: all candidates are scored in one compiled call, vmapped over the candidate ranks and over
the prompts (:func:`candidate_errors`); each distinct rank tuple is scored once (several ``ξ``
share one ``r`` at small widths), which also makes equal-``r`` candidates tie exactly, so the
tie rule picks the smaller ``ξ`` among them. The SVD of the selected matrices is not batched over
candidates (its input is not), so it is computed once. The same machinery sweeps every
(layer, ξ) pair for the pruning-phenomenon experiment (:func:`sweep_errors`).

The parameter pytree is generic: any NamedTuple or dataclass pytree whose weight fields are
stacked ``(L, m, n)`` arrays named as in :data:`GROUPS` (``LinearAttentionParams``,
the softmax transformer's params); the clipping itself is
:func:`lintrans.truncation.truncate_params_to_rank` (vmappable in the layer and the ranks; every
candidate is cut from the weights it is given, i.e. from the original ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintrans import stats
from lintrans.io import require_int
from lintrans.pruning import PAPER_RATES, RANK_RULES, check_rate, condition_number, kept_rank
from lintrans.truncation import TARGETS, target_fields, truncate_params_to_rank

__all__ = [
    "GROUPS",
    "ClipSearchResult",
    "group_fields",
    "check_rates",
    "check_top_k",
    "group_condition_numbers",
    "top_layers",
    "select_layer",
    "choose_rate",
    "group_ranks",
    "prompt_mean_se",
    "candidate_errors",
    "sweep_errors",
    "clip_search",
]

#: Module groups → the parameter fields they clip together with one ``ξ`` (SPEC §6); the
#: targets of :mod:`lintrans.truncation`.
GROUPS: dict[str, tuple[str, ...]] = TARGETS

#: A per-prompt error: ``score_fn(params, H (D, N+1), y_query ()) -> scalar``, lower is better.
ScoreFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- validation


def group_fields(params, group: str) -> tuple[str, ...]:
    """The field names of ``params`` that ``group`` clips; ``ValueError`` naming what is allowed.

    The group must be known (:data:`GROUPS`) and every one of its fields must be a stacked
    ``(L, m, n)`` array of ``params`` with one ``L`` (e.g. ``mlp`` on the linear-attention stack,
    which has no MLP, is refused). Checked by :func:`lintrans.truncation.target_fields`.
    """
    if not isinstance(group, str) or group not in GROUPS:
        raise ValueError(f"group must be one of {sorted(GROUPS)}, got {group!r}")
    try:
        return target_fields(params, group)
    except ValueError as e:
        raise ValueError(f"group {group!r}: {e}") from None


def check_rates(rates: Sequence[float]) -> tuple[float, ...]:
    """Candidate rates, validated and sorted ascending.

    ``ValueError`` for an empty set, a rate outside ``[0, 1)`` or a repeated rate (a duplicate
    cannot be ordered against itself by the tie rule); ``TypeError`` for a non-number.
    """
    try:
        rates = list(rates)
    except TypeError:
        raise TypeError(f"rates must be a sequence of numbers in [0, 1), got {rates!r}") from None
    if not rates:
        raise ValueError("rates must hold at least one candidate clipping rate, got an empty set")
    checked = []
    for xi in rates:
        try:
            checked.append(check_rate(xi))
        except (TypeError, ValueError) as e:
            raise type(e)(f"rates: {e}") from None
    if len(set(checked)) != len(checked):
        dup = sorted({x for x in checked if checked.count(x) > 1})
        raise ValueError(f"rates must not repeat a value, got duplicates {dup}")
    return tuple(sorted(checked))


def check_top_k(top_k) -> int:
    """``top_k`` as an int ≥ 1; ``ValueError`` otherwise."""
    require_int("top_k", top_k)
    return int(top_k)


# ----------------------------------------------------------------------------- steps 1–2


@partial(jax.jit, static_argnames=("fields",))
def _cond(params, fields):
    return jnp.stack([condition_number(getattr(params, f)) for f in fields], axis=-1)


def group_condition_numbers(params, group: str) -> np.ndarray:
    """Step 1: ``κ`` of each layer's matrices in the group, ``(L, n_fields)`` (``+∞`` if singular).

    The per-layer value of Algorithm 1 is the max over the last axis.
    """
    fields = group_fields(params, group)
    return np.asarray(_cond(params, fields))


def _check_cond(cond_per_layer) -> np.ndarray:
    cond = np.asarray(cond_per_layer, dtype=np.float64)
    if cond.ndim != 1 or cond.size < 1:
        raise ValueError(f"cond_per_layer must be a non-empty vector (L,), got shape {cond.shape}")
    if np.any(np.isnan(cond)):
        bad = (np.flatnonzero(np.isnan(cond)) + 1).tolist()
        raise ValueError(f"cond_per_layer is NaN at layer(s) {bad} (non-finite weights?)")
    return cond


def top_layers(cond_per_layer, top_k: int) -> tuple[int, ...]:
    """Step 2a: the (1-based, ascending) layers with the ``top_k`` largest condition numbers.

    ``top_k`` larger than ``L`` takes every layer. Equal values are ranked deeper-first, so a tie
    at the cut admits the deeper layer (a singular matrix, ``κ = +∞``, ranks above every finite
    one). ``ValueError`` for NaN entries or ``top_k < 1``.
    """
    cond = _check_cond(cond_per_layer)
    k = min(check_top_k(top_k), cond.size)
    layers = np.arange(cond.size)
    # lexsort: last key is primary; sort by value descending, then by depth descending.
    order = np.lexsort((-layers, -cond))
    return tuple(sorted(int(i) + 1 for i in order[:k]))


def select_layer(cond_per_layer, top_k: int) -> int:
    """Step 2b: the deepest of the ``top_k`` layers with the largest ``κ_t``; 1-based."""
    return max(top_layers(cond_per_layer, top_k))


# ----------------------------------------------------------------------------- step 3


def choose_rate(rates, scores) -> tuple[float, int]:
    """Step 3's choice: the ``ξ`` with the lowest score, ties to the smaller ``ξ``.

    Args:
      rates: ``(R,)`` distinct candidate rates, any order.
      scores: ``(R,)`` validation errors (lower is better). Non-finite scores are never chosen.

    Returns:
      ``(xi_star, index)`` with ``index`` into the given arrays. ``ValueError`` when the lengths
      differ, the set is empty, a rate repeats or no score is finite.
    """
    rates = np.asarray(rates, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if rates.ndim != 1 or rates.size == 0:
        raise ValueError(f"rates must be a non-empty vector, got shape {rates.shape}")
    if scores.shape != rates.shape:
        raise ValueError(f"scores must have the shape of rates {rates.shape}, got {scores.shape}")
    if len(set(rates.tolist())) != rates.size:
        raise ValueError(f"rates must not repeat a value, got {rates.tolist()}")
    return _choose(rates, scores)


def _choose(rates: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """:func:`choose_rate` on rates already validated (:func:`check_rates`): the choice alone."""
    finite = np.isfinite(scores)
    if not finite.any():
        raise ValueError(f"no candidate has a finite validation score (scores: {scores.tolist()})")
    best = np.min(scores[finite])
    tied = np.flatnonzero(finite & (scores == best))
    index = int(tied[np.argmin(rates[tied])])
    return float(rates[index]), index


def group_ranks(params, fields: Sequence[str], rates: Sequence[float], rule: str = "exact", min_rank: int = 0) -> np.ndarray:
    """``r`` kept by each matrix of the group at each rate: ``(R, n_fields)`` ints (SPEC §6)."""
    if rule not in RANK_RULES:
        raise ValueError(f"rule must be one of {RANK_RULES}, got {rule!r}")
    return np.array(
        [[kept_rank(*getattr(params, f).shape[1:], xi, rule, min_rank) for f in fields] for xi in rates],
        dtype=np.int32,
    ).reshape(len(rates), len(fields))


def _prompt_errors(score_fn, params, H, y, chunk):
    return jax.lax.map(lambda hy: score_fn(params, hy[0], hy[1]), (H, y), batch_size=min(chunk, H.shape[0]))


@partial(jax.jit, static_argnames=("score_fn", "fields", "chunk"))
def candidate_errors(params, score_fn: ScoreFn, fields: tuple[str, ...], layer_index, ranks, H, y, chunk: int = 4096):
    """Per-prompt errors of every candidate clip of one layer: ``(R, B)``, one compiled call.

    Args:
      params: the original weights (never modified).
      score_fn: per-prompt error ``(params, H (D, N+1), y ()) -> ()``; pass the same object on
        every call so the compiled function is reused.
      fields: the group's fields (static).
      layer_index: 0-based layer (may be traced).
      ranks: ``(R, n_fields)`` int ranks, one row per candidate.
      H, y: ``(B, D, N+1)`` prompts and ``(B,)`` query labels.
      chunk: prompts evaluated at once (vmapped inside, ``lax.map`` across chunks) to bound memory.
    """
    return jax.vmap(lambda r: _prompt_errors(score_fn, truncate_params_to_rank(params, layer_index, fields, r), H, y, chunk))(ranks)


@partial(jax.jit, static_argnames=("score_fn", "fields", "chunk"))
def sweep_errors(params, score_fn: ScoreFn, fields: tuple[str, ...], ranks, H, y, chunk: int = 4096):
    """Per-prompt errors for every (layer, candidate) clip of one group: ``(L, R, B)``.

    Layers run one after another (``lax.map``, bounding memory), candidates and prompts are
    vmapped; one compiled call for the whole sweep. Each entry clips a single layer of the
    original weights.
    """
    n_layers = getattr(params, fields[0]).shape[0]
    return jax.lax.map(
        lambda t: candidate_errors(params, score_fn, fields, t, ranks, H, y, chunk), jnp.arange(n_layers)
    )


# ----------------------------------------------------------------------------- the algorithm


class ClipSearchResult(NamedTuple):
    """Everything Algorithm 1 reports (step 4). Layers are 1-based.

    Attributes:
      group, fields, rule: the module group, its parameter fields, the rank rule.
      cond: ``(L, n_fields)`` condition numbers; ``cond_per_layer``: ``(L,)`` their max per layer.
      top_layers: the ``top_k`` layers with the largest ``κ_t``; ``layer``: the deepest of them.
      rates: ``(R,)`` candidates, ascending; ``ranks``: ``(R, n_fields)`` ``r`` kept per matrix;
      full_ranks: ``(n_fields,)`` ``min(m, n)`` per matrix.
      val_curve, val_se: ``(R,)`` mean validation error per candidate and its standard error over
        prompts; ``val_before``: the unpruned model's validation error.
      xi_star, index: the chosen rate and its index in ``rates``; ``ranks_star``: its ranks.
      test_before, test_after (+ ``_se``): mean test error of the unpruned and the clipped model
        on the same test prompts, with standard errors over prompts; ``test_delta``/``_se``: the
        paired difference ``after − before``; ``test_curve``: ``(R,)`` test error of every
        candidate (an oracle view of the choice, not used to make it).
      nonfinite_rates: candidates whose validation score was NaN/Inf (never chosen).
      n_val, n_test: prompt counts. ``params``: the clipped weights at ``ξ*``.
    """

    group: str
    fields: tuple[str, ...]
    rule: str
    cond: np.ndarray
    cond_per_layer: np.ndarray
    top_layers: tuple[int, ...]
    layer: int
    rates: np.ndarray
    ranks: np.ndarray
    full_ranks: np.ndarray
    val_curve: np.ndarray
    val_se: np.ndarray
    val_before: float
    xi_star: float
    index: int
    ranks_star: np.ndarray
    test_before: float
    test_before_se: float
    test_after: float
    test_after_se: float
    test_delta: float
    test_delta_se: float
    test_curve: np.ndarray
    nonfinite_rates: tuple[float, ...]
    n_val: int
    n_test: int
    params: Any

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready (without the weights)."""
        d = self._asdict()
        d.pop("params")
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def prompt_mean_se(errors, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean over prompts and its standard error (:func:`lintrans.stats.prompt_interval`: ddof 1,
    NaN for one prompt). Rows holding a NaN/Inf error (a clip that broke the model) keep their
    non-finite mean and get a NaN standard error instead of being refused."""
    errors = np.moveaxis(np.asarray(errors, dtype=np.float64), axis, -1)
    mean = np.asarray(errors.mean(axis=-1))
    se = np.full(mean.shape, np.nan)
    ok = np.all(np.isfinite(errors), axis=-1)
    if ok.any():
        iv = stats.prompt_interval(errors[ok], axis=-1)
        mean[ok], se[ok] = iv.mean, iv.se
    return mean, se


def clip_search(
    key: jax.Array,
    params,
    score_fn: ScoreFn,
    group: str = "attn",
    rates: Sequence[float] = PAPER_RATES,
    top_k: int = 3,
    *,
    sample_fn: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]],
    n_val: int = 1024,
    n_test: int = 4096,
    rule: str = "exact",
    min_rank: int = 0,
    chunk: int = 4096,
) -> ClipSearchResult:
    """Algorithm 1 (SPEC §8) on one model.

    Args:
      key: draws the validation and the test prompts from disjoint branches (``split``).
      params: trained weights (stacked pytree); left untouched.
      score_fn: per-prompt ICL error ``(params, H, y_query) -> scalar``, lower is better.
      group: a key of :data:`GROUPS` the model has.
      rates: candidate clipping rates, distinct, in ``[0, 1)`` (sorted here).
      top_k: how many of the worst-conditioned layers compete; the deepest is taken.
      sample_fn: ``(key, n) -> (H (n, D, N+1), y_query (n,))`` fresh prompts of the task.
      n_val, n_test: validation and test prompt counts.
      rule, min_rank: the rank rule of SPEC §6.
      chunk: prompts per vmapped chunk.

    Returns:
      :class:`ClipSearchResult`. ``ValueError`` names the bad argument.
    """
    fields = group_fields(params, group)
    rates = check_rates(rates)  # the one validation of the rates in this call; below they are trusted
    top_k = check_top_k(top_k)
    for name, v in (("n_val", n_val), ("n_test", n_test), ("chunk", chunk)):
        require_int(name, v)
    ranks = group_ranks(params, fields, rates, rule, min_rank)
    full = np.array([min(getattr(params, f).shape[1:]) for f in fields], dtype=np.int32)

    cond = group_condition_numbers(params, group)
    cond_per_layer = cond.max(axis=1)
    tops = top_layers(cond_per_layer, top_k)
    layer = max(tops)

    k_val, k_test = jax.random.split(key)
    H_val, y_val = sample_fn(k_val, int(n_val))
    H_test, y_test = sample_fn(k_test, int(n_test))

    # Each distinct rank tuple is scored once, the unpruned one (full ranks) included; validation
    # and test prompts go through one compiled call (the test errors of the candidates that were
    # not chosen are reported too, as the oracle curve the validation choice can be judged by).
    unique, inverse = np.unique(np.vstack([full[None], ranks]), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    H_all = jnp.concatenate([H_val, H_test.astype(H_val.dtype)])
    y_all = jnp.concatenate([y_val, y_test.astype(y_val.dtype)])
    err = np.asarray(candidate_errors(params, score_fn, fields, layer - 1, jnp.asarray(unique), H_all, y_all, chunk))
    val_err, test_err = err[:, : int(n_val)], err[:, int(n_val):]
    val_mean_u, val_se_u = prompt_mean_se(val_err)
    val_before = float(val_mean_u[inverse[0]])
    val_curve, val_se = val_mean_u[inverse[1:]], val_se_u[inverse[1:]]
    nonfinite = tuple(float(x) for x, v in zip(rates, val_curve) if not np.isfinite(v))
    xi_star, index = _choose(np.asarray(rates), val_curve)

    test_mean_u, _ = prompt_mean_se(test_err)
    before, after = test_err[inverse[0]], test_err[inverse[1 + index]]
    (tb, ta), (tb_se, ta_se) = prompt_mean_se(np.stack([before, after]))
    delta, delta_se = prompt_mean_se(after - before)
    clipped = truncate_params_to_rank(params, layer - 1, fields, jnp.asarray(ranks[index]))
    return ClipSearchResult(
        group=group,
        fields=tuple(fields),
        rule=rule,
        cond=cond,
        cond_per_layer=cond_per_layer,
        top_layers=tops,
        layer=int(layer),
        rates=np.asarray(rates),
        ranks=ranks,
        full_ranks=full,
        val_curve=val_curve,
        val_se=val_se,
        val_before=val_before,
        xi_star=xi_star,
        index=index,
        ranks_star=ranks[index],
        test_before=float(tb),
        test_before_se=float(tb_se),
        test_after=float(ta),
        test_after_se=float(ta_se),
        test_delta=float(delta),
        test_delta_se=float(delta_se),
        test_curve=test_mean_u[inverse[1:]],
        nonfinite_rates=nonfinite,
        n_val=int(n_val),
        n_test=int(n_test),
        params=clipped,
    )
