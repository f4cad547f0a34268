"""Algorithm 1 (SPEC §8): layer selection, rate choice, clipping from the original weights, sweeps,
bad inputs; and the Student-t intervals over seeds (lintrans.seedstats)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lintrans.attention import predict
from lintrans.params import LinearAttentionParams, init_params
from lintrans.pruning import PAPER_RATES, kept_rank, truncate_to_rank
from lintrans.search import (
    candidate_errors,
    check_rates,
    choose_rate,
    clip_search,
    group_condition_numbers,
    group_fields,
    group_ranks,
    select_layer,
    sweep_errors,
    top_layers,
)
from lintrans.tasks import sample_linear

D_IN, N_DEMOS = 3, 8


def linear_error(params, H, y):
    return (predict(params, H, scale="1/N") - y) ** 2 / D_IN


def sample(key, n):
    batch = sample_linear(key, n, N_DEMOS, D_IN, dtype=jnp.float64)
    return batch.H, batch.y_query


def small_params(seed=0, n_layers=4):
    return init_params(jax.random.PRNGKey(seed), n_layers, D_IN + 1, 0.5, dtype=jnp.float64)


def diag_params(conds):
    """Layer t: W_K = diag(κ_t, …, 1) (condition number κ_t), W_Q = W_V = I."""
    D = D_IN + 1
    w_k = np.stack([np.diag(np.linspace(c, 1.0, D)) for c in conds])
    eye = np.broadcast_to(np.eye(D), w_k.shape)
    return LinearAttentionParams(jnp.asarray(w_k), jnp.asarray(eye.copy()), jnp.asarray(eye.copy()))


# ----------------------------------------------------------------------------- step 2: the layer


def test_select_layer_hand_cases():
    cond = [1.0, 5.0, 3.0, 4.0]
    assert top_layers(cond, 1) == (2,) and select_layer(cond, 1) == 2
    assert top_layers(cond, 2) == (2, 4) and select_layer(cond, 2) == 4
    assert top_layers(cond, 3) == (2, 3, 4) and select_layer(cond, 3) == 4
    # the deepest of the top k, not the worst conditioned
    assert select_layer([1.0, 9.0, 8.0, 0.5], 2) == 3
    # top_k above L: every layer competes
    assert top_layers(cond, 10) == (1, 2, 3, 4) and select_layer(cond, 10) == 4
    # a tie at the cut admits the deeper layer
    assert top_layers([9.0, 1.0, 1.0, 1.0], 2) == (1, 4)
    # a singular matrix (κ = +inf) outranks every finite one
    assert select_layer([np.inf, 2.0, 3.0], 1) == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([1.0, 2.0, 3.0, 10.0, 1e3, np.inf]), min_size=1, max_size=8),
    st.integers(1, 9),
)
def test_select_layer_is_deepest_layer_at_or_above_kth_largest(cond, top_k):
    """Property: the selected layer is the deepest t with κ_t ≥ the top_k-th largest κ."""
    v_k = sorted(cond, reverse=True)[min(top_k, len(cond)) - 1]
    expected = max(t + 1 for t, c in enumerate(cond) if c >= v_k)
    assert select_layer(cond, top_k) == expected
    assert len(top_layers(cond, top_k)) == min(top_k, len(cond))


def test_group_condition_numbers_hand_case():
    conds = [4.0, 100.0, 2.0, 7.0]
    cond = group_condition_numbers(diag_params(conds), "attn")
    # columns follow GROUPS["attn"] = (w_k, w_q, w_v); W_Q = W_V = I have κ = 1
    np.testing.assert_allclose(cond[:, 0], conds, rtol=1e-12, err_msg="κ(W_K) = σ_max/σ_min")
    np.testing.assert_allclose(cond[:, 1:], 1.0, rtol=1e-12, err_msg="κ(I) = 1")


# ----------------------------------------------------------------------------- step 3: the rate


def literal_choice(rates, scores):
    """SPEC §8 step 3 read literally: ascending ξ, keep the best, replace only on a strictly better score."""
    best = None
    for xi, s in sorted(zip(rates, scores)):
        if np.isfinite(s) and (best is None or s < best[1]):
            best = (xi, s)
    return best[0]


def test_choose_rate_ties_to_smaller_rate():
    assert choose_rate([0.0, 0.1, 0.5, 0.9], [0.5, 0.3, 0.3, 0.4]) == (0.1, 1)
    # order of the input does not matter; the index refers to the given order
    assert choose_rate([0.9, 0.5, 0.1], [0.2, 0.2, 0.3]) == (0.5, 1)
    # non-finite scores are never chosen
    assert choose_rate([0.0, 0.5], [np.nan, 7.0]) == (0.5, 1)
    assert choose_rate([0.0, 0.5], [np.inf, 7.0]) == (0.5, 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.1, 0.2, 0.3, np.nan]), min_size=8, max_size=8).filter(
    lambda s: any(np.isfinite(s))), st.permutations(list(PAPER_RATES)))
def test_choose_rate_matches_literal_algorithm(scores, rates):
    xi, index = choose_rate(rates, scores)
    assert xi == literal_choice(rates, scores)
    assert rates[index] == xi


@pytest.mark.parametrize(
    "rates, scores, match",
    [([], [], "non-empty"), ([0.0, 0.5], [1.0], "shape"), ([0.1, 0.1], [1.0, 2.0], "repeat"),
     ([0.0, 0.5], [np.nan, np.inf], "finite")],
)
def test_choose_rate_bad_inputs(rates, scores, match):
    with pytest.raises(ValueError, match=match):
        choose_rate(rates, scores)


def test_check_rates_sorts_and_validates():
    assert check_rates([0.9, 0.0, 0.5]) == (0.0, 0.5, 0.9)
    with pytest.raises(ValueError, match="rates.*empty"):
        check_rates([])
    with pytest.raises(ValueError, match="rates"):
        check_rates([0.0, 1.0])
    with pytest.raises(ValueError, match="rates"):
        check_rates([-0.1])
    with pytest.raises(ValueError, match="duplicates"):
        check_rates([0.5, 0.1, 0.5])
    with pytest.raises(TypeError, match="rates"):
        check_rates(["0.5"])


# ----------------------------------------------------------------------------- clipping


@pytest.mark.slow
def test_clip_search_selection_choice_and_report_on_a_hand_case():
    """κ per layer (4, 100, 2, 7), top_k 2 → layers 2, 4 → layer 4. The score is |tr W_K^4 − c|:
    W_K^4 = diag(7, 5, 3, 1) cut to r has trace 16, 15, 12, 7, 0 for r = 4..0, so c = 14.4 makes
    r = 3 best; rates 0.1 and 0.2 both give r = 3 and tie exactly → ξ* = 0.1."""
    p = diag_params([4.0, 100.0, 2.0, 7.0])

    def score(params, H, y):
        return jnp.abs(jnp.trace(params.w_k[3]) - 14.4) + 0.0 * H.sum() + 0.0 * y

    rates = (0.5, 0.0, 0.2, 0.1, 0.75, 0.995)
    res = clip_search(jax.random.PRNGKey(0), p, score, "attn", rates, top_k=2, sample_fn=sample, n_val=3, n_test=3)
    assert res.top_layers == (2, 4) and res.layer == 4
    assert res.rates.tolist() == sorted(rates), "curve reported in ascending ξ"
    assert res.ranks[:, 0].tolist() == [4, 3, 3, 2, 1, 0], "r = floor(4 (1 − ξ)) (SPEC §6)"
    np.testing.assert_allclose(res.val_curve, [1.6, 0.6, 0.6, 2.4, 7.4, 14.4], atol=1e-12, err_msg="|tr − c| per ξ")
    assert res.val_curve[1] == res.val_curve[2], "same r → identical score"
    assert (res.xi_star, res.index) == (0.1, 1), "tie goes to the smaller ξ"
    assert res.val_before == res.val_curve[0], "ξ = 0 is the unpruned model"
    np.testing.assert_allclose([res.test_before, res.test_after, res.test_delta], [1.6, 0.6, -1.0], atol=1e-12)
    np.testing.assert_array_equal(res.test_curve, res.val_curve, err_msg="prompt-independent score: test = validation")
    assert res.ranks_star.tolist() == [3, 3, 3], "one ξ for the whole group: every matrix keeps r = 3"
    np.testing.assert_allclose(np.diag(np.asarray(res.params.w_k[3])), [7, 5, 3, 0], atol=1e-12)
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["layer"] == 4 and doc["xi_star"] == 0.1


@pytest.mark.slow
def test_clip_search_always_clips_the_original_weights():
    """A score_fn that records every weight it sees: each candidate is the ORIGINAL selected layer
    cut to that candidate's rank (rates given out of order), every other layer is the original
    bit for bit, and the input pytree is left untouched."""
    p = small_params(seed=3)
    before = {f: np.array(getattr(p, f)) for f in p._fields}
    seen = []

    def score(params, H, y):
        jax.debug.callback(lambda k, q, v: seen.append((np.array(k), np.array(q), np.array(v))),
                           params.w_k, params.w_q, params.w_v)
        return linear_error(params, H, y)

    res = clip_search(jax.random.PRNGKey(1), p, score, "attn", (0.9, 0.0, 0.5, 0.25), top_k=2,
                      sample_fn=sample, n_val=2, n_test=2)
    t = res.layer - 1
    originals = [before["w_k"], before["w_q"], before["w_v"]]
    valid = {}
    for r in range(0, 5):
        valid[r] = [np.asarray(truncate_to_rank(jnp.asarray(w[t]), r)) for w in originals]
    assert len(seen) > 0
    ranks_seen = set()
    for mats in seen:
        for w, m in zip(originals, mats):
            assert np.array_equal(np.delete(w, t, 0), np.delete(m, t, 0)), "other layers are the original"
        matched = [r for r in valid if all(np.allclose(m[t], v, rtol=0, atol=1e-12) for m, v in zip(mats, valid[r]))]
        assert matched, "each candidate is the original layer cut to some rank, not a cut of a cut"
        ranks_seen.add(max(matched))
        if max(matched) == 4:
            assert all(np.array_equal(m[t], w[t]) for m, w in zip(mats, originals)), "ξ = 0: bitwise original"
    assert ranks_seen == {4, 3, 2, 0}, "every distinct candidate rank (ξ = 0, 0.25, 0.5, 0.9) is scored"
    for f in p._fields:
        assert np.array_equal(np.asarray(getattr(p, f)), before[f]), f"input params.{f} untouched"


@pytest.mark.slow
def test_sweep_errors_matches_direct_clipping():
    p = small_params(seed=5, n_layers=3)
    fields = group_fields(p, "attn")
    rates = (0.0, 0.5, 0.75)
    ranks = group_ranks(p, fields, rates)
    H, y = sample(jax.random.PRNGKey(7), 16)
    errs = np.asarray(sweep_errors(p, linear_error, fields, jnp.asarray(ranks), H, y, chunk=5))
    assert errs.shape == (3, 3, 16)
    batch_error = jax.jit(lambda params: jax.vmap(linear_error, (None, 0, 0))(params, H, y))
    unpruned = np.asarray(batch_error(p))
    for t in range(3):
        np.testing.assert_array_equal(errs[t, 0], errs[0, 0], err_msg="ξ = 0 is the same model at every layer")
        np.testing.assert_allclose(errs[t, 0], unpruned, rtol=1e-12, err_msg="ξ = 0 equals the unpruned model")
        for i, xi in enumerate(rates):
            r = kept_rank(4, 4, xi)
            direct = p._replace(**{f: getattr(p, f).at[t].set(truncate_to_rank(getattr(p, f)[t], r)) for f in fields})
            want = np.asarray(batch_error(direct))
            np.testing.assert_allclose(errs[t, i], want, rtol=1e-10, err_msg=f"layer {t + 1}, ξ = {xi}")
    one = np.asarray(candidate_errors(p, linear_error, fields, 1, jnp.asarray(ranks), H, y))
    np.testing.assert_allclose(one, errs[1], rtol=1e-12, err_msg="candidate_errors = one layer of the sweep")


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(group="ffn"), ValueError, "group must be one of"),
        (dict(group="mlp"), ValueError, "group 'mlp'.*needs field"),
        (dict(rates=()), ValueError, "rates"),
        (dict(rates=(0.0, 1.0)), ValueError, "rates"),
        (dict(rates=(0.5, 0.5)), ValueError, "duplicates"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(top_k=True), ValueError, "top_k"),
        (dict(top_k=1.5), ValueError, "top_k"),
        (dict(n_val=0), ValueError, "n_val"),
        (dict(rule="floaty"), ValueError, "rule"),
    ],
)
def test_clip_search_bad_inputs(kwargs, err, match):
    args = dict(group="attn", rates=PAPER_RATES, top_k=3, sample_fn=sample, n_val=4, n_test=4)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        clip_search(jax.random.PRNGKey(0), small_params(), linear_error, **args)


def test_nan_condition_number_is_reported():
    with pytest.raises(ValueError, match="NaN at layer"):
        select_layer([1.0, np.nan, 2.0], 1)


# ----------------------------------------------------------------------------- intervals over seeds


def test_t_quantile_known_values_and_seed_interval():
    from lintrans.seedstats import seed_interval, t_quantile

    # Student-t 97.5 % quantiles from tables (1, 2, 4, 10 degrees of freedom) and the normal limit
    for dof, want in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (100000, 1.9600)):
        assert abs(t_quantile(0.975, dof) - want) < 2e-4, f"t_(0.975, {dof})"
    iv = seed_interval([[1.0, 2.0], [2.0, 3.0], [3.0, 7.0]])
    np.testing.assert_allclose(iv.mean, [2.0, 4.0], rtol=1e-12)
    np.testing.assert_allclose(iv.se, [1 / np.sqrt(3), np.std([2, 3, 7], ddof=1) / np.sqrt(3)], rtol=1e-12)
    np.testing.assert_allclose(iv.half_width, t_quantile(0.975, 2) * iv.se, rtol=1e-12)
    one = seed_interval([[0.5, 0.7]])
    assert np.isnan(one.se).all() and one.n == 1, "one seed: no spread estimate, never 0"
    with pytest.raises(ValueError, match="NaN/Inf"):
        seed_interval([1.0, np.nan])


def test_prompt_mean_se_one_rule_for_one_prompt_and_nonfinite_rows():
    from lintrans.search import prompt_mean_se

    mean, se = prompt_mean_se(np.array([[1.0, 2.0, 3.0], [np.nan, 1.0, 1.0], [np.inf, 0.0, 0.0]]))
    np.testing.assert_allclose(mean[0], 2.0, rtol=1e-12)
    np.testing.assert_allclose(se[0], 1 / np.sqrt(3), rtol=1e-12, err_msg="s.e. = std(ddof 1)/√n")
    assert np.isnan(mean[1]) and np.isinf(mean[2]) and np.isnan(se[1:]).all(), "a broken clip keeps its NaN/Inf mean"
    _, se1 = prompt_mean_se(np.array([[0.5], [0.7]]))
    assert np.isnan(se1).all(), "one prompt: no spread estimate, never 0 (lintrans.stats' rule)"


@pytest.mark.slow
def test_clip_search_validates_the_rates_once(monkeypatch):
    """One clip_search call runs check_rates once and never re-validates them in choose_rate."""
    import lintrans.search as search

    calls = []
    real = search.check_rates
    monkeypatch.setattr(search, "check_rates", lambda rates: calls.append(rates) or real(rates))
    monkeypatch.setattr(search, "choose_rate", lambda *a: pytest.fail("choose_rate re-validates the rates"))
    res = search.clip_search(jax.random.PRNGKey(0), small_params(n_layers=2), linear_error, "attn", (0.5, 0.0), top_k=1,
                             sample_fn=sample, n_val=2, n_test=2)
    assert len(calls) == 1 and res.rates.tolist() == [0.0, 0.5]
