"""The vectorised pruning-under-shift sweep (lintrans.shift_study): cells equal clipping by hand, pairing, statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans import shift_study as ss
from lintrans.attention import predict
from lintrans.params import LinearAttentionParams
from lintrans.shift import parse_shift
from lintrans.trajectory import trajectory
from lintrans.truncation import truncate_params

D_IN, N, L, S = 3, 8, 2, 2
RATES = (0.0, 0.5, 0.9)


@jax.jit  # one compilation (op by op, every primitive compiles on its own)
def _draw_params(key):
    keys = jax.random.split(key, 3)
    D = D_IN + 1
    return LinearAttentionParams(*(0.3 * jax.random.normal(k, (S, L, D, D), jnp.float64) for k in keys))


def _params():
    return _draw_params(jax.random.PRNGKey(3))


def _seed(params, s):
    """Seed ``s``'s parameters, sliced in numpy and put back by jax.device_put (an eager slice or jnp.asarray compiles once per leaf shape)."""
    return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x)[s]), params)


def _sample(shift, key, n):
    """``n`` float64 prompts of ``shift`` (a model trained at d = D_IN, N), sampled by one compiled function."""
    task = parse_shift(shift).task(D_IN, N)
    return jax.jit(lambda k: task.sample(k, n, dtype=jnp.float64))(key)


def _sweep(measure, params, batch):
    p0 = _seed(params, 0)
    plan = ss.plan_sweep(p0, ("K", "V", "attn"), RATES)
    out = ss.sweep_points(params, measure, plan.fields, jnp.asarray(plan.layer_index), jnp.asarray(plan.points),
                          batch.H, batch.y_query, chunk=7, point_chunk=3)
    return plan, [np.asarray(o) for o in out]


@pytest.mark.parametrize("mask,scale,readout", [("demos", "1/N", 1),
                                                pytest.param("causal", "1", -1, marks=pytest.mark.slow)])
@pytest.mark.slow
def test_a_cell_equals_clipping_by_hand_and_scoring_directly(mask, scale, readout):
    """Every cell's per-prompt error, ‖G_t‖ and step equal truncate_params + attention.predict / trajectory (rtol 1e-10)."""
    params = _params()
    batch = _sample("shots=5,noise=0.5", jax.random.PRNGKey(0), 9)
    m = ss.LinearMeasure(D_IN, mask, scale, readout)
    plan, (err, g_tot, g_layer, steps) = _sweep(m, params, batch)
    assert err.shape == (S, plan.points.shape[0], 9)

    @jax.jit
    def direct(p, H):  # the reference: attention.predict and Theorem 1's trajectory, compiled once
        y_hat = jax.vmap(lambda h: predict(p, h, mask=mask, scale=scale, readout=readout))(H)
        return y_hat, jax.vmap(lambda h: trajectory(p, h, mask=mask, scale=scale).G)(H)

    for c in plan.cells:
        for s in range(S):
            ps = _seed(params, s)
            clipped, ranks = truncate_params(ps, c["layer"], c["target"], c["xi"])
            assert ranks == c["ranks"]
            y_hat, G = direct(clipped, batch.H)
            want = np.asarray((y_hat - batch.y_query) ** 2 / D_IN)
            np.testing.assert_allclose(err[s, c["point"]], want, rtol=1e-10, atol=1e-14)
            gn = np.sqrt(np.sum(np.asarray(G) ** 2, axis=(2, 3)))  # (B, L)
            np.testing.assert_allclose(g_layer[s, c["point"]], gn.mean(0), rtol=1e-10)
            np.testing.assert_allclose(g_tot[s, c["point"]], np.sqrt((gn**2).sum(1)), rtol=1e-10)
            w = np.asarray(clipped.w_v[:, -1, -1]) * np.trace(np.einsum("lji,ljk->lik", clipped.w_k, clipped.w_q)[:, :D_IN, :D_IN], axis1=1, axis2=2) / D_IN
            w = readout * w * (1.0 if scale == "1" else 1 / 5)
            np.testing.assert_allclose(steps[s, c["point"]], w, rtol=1e-10)


@pytest.mark.slow
def test_pairing_same_prompts_for_pruned_and_unpruned():
    """Point 0 is the unpruned model on the same prompts; ξ = 0 cells are point 0; paired stats use them."""
    params = _params()
    batch = _sample("none", jax.random.PRNGKey(1), 11)
    plan, (err, *_rest) = _sweep(ss.LinearMeasure(D_IN), params, batch)
    direct = np.asarray((jax.jit(jax.vmap(lambda p: jax.vmap(lambda h: predict(p, h))(batch.H)))(params) - batch.y_query) ** 2 / D_IN)
    np.testing.assert_allclose(err[:, 0], direct, rtol=1e-12)
    assert all(c["point"] == 0 for c in plan.cells if c["xi"] == 0.0)
    assert len({(int(plan.layer_index[i]), tuple(plan.points[i])) for i in range(len(plan.points))}) == len(plan.points)
    st = ss.cell_stats(err[:, 0], err[:, 0], null=1.0)
    assert st["rel_change"] == 0.0 and st["log_ratio"] == 0.0 and st["frac_improved"] == 0.0


def test_cell_stats_hand_case():
    """Two seeds, two prompts: means, relative change, log ratio, tails and divergence counted by hand."""
    e_u = np.array([[1.0, 3.0], [2.0, 2.0]])
    e_p = np.array([[0.5, 1.5], [4.0, 1e9]])
    st = ss.cell_stats(e_u, e_p, null=1.0)
    rel = np.array([1.0 / 2.0 - 1, (4.0 + 1e9) / 2 / 2.0 - 1])
    assert st["rel_change"] == pytest.approx(rel.mean(), rel=1e-12)
    assert st["log_ratio"] == pytest.approx(np.mean([np.log(0.5), 0.5 * (np.log(2) + np.log(5e8))]), rel=1e-12)
    assert st["diverged"] == 0 and st["diverged_pruned"] == 1
    assert st["tail_frac"] == 0.0 and st["tail_frac_pruned"] == 0.25
    assert st["frac_improved"] == 0.5 and not st["improves"]
    assert st["median"] == pytest.approx(2.0) and st["median_pruned"] == pytest.approx((1.0 + (4 + 1e9) / 2) / 2)


def test_plan_refuses_unknown_targets_and_layers():
    p0 = _seed(_params(), 0)
    with pytest.raises(ValueError, match="target 'mlp'.*allowed"):
        ss.plan_sweep(p0, ("mlp",), RATES)
    with pytest.raises(ValueError, match="layer 3 out of range"):
        ss.plan_sweep(p0, ("V",), RATES, layers=(3,))


def test_merge_results_concatenates_disjoint_models_and_refuses_overlap():
    part = lambda name, n: {"models": [{"model": name, "shifts": {}}], "timing": {"sweep_seconds": 2.0},  # noqa: E731
                            "cells": [{"model": name, "shift_label": "none", "rel_change": "nan"}] * n}
    merged = ss.merge_results([part("a", 2), part("b", 3)], jax.random.PRNGKey(0))
    assert [m["model"] for m in merged["models"]] == ["a", "b"] and len(merged["cells"]) == 5
    assert np.isnan(merged["cells"][0]["rel_change"])  # saved "nan" strings are numbers again
    assert merged["timing"]["cells_per_second"] == 5 / 4.0
    with pytest.raises(ValueError, match="share models.*'a'"):
        ss.merge_results([part("a", 1), part("a", 1)], jax.random.PRNGKey(0))


@pytest.mark.slow
def test_a_softmax_cell_equals_clipping_by_hand_and_scoring_directly():
    """The softmax transformer's cells (targets O, mlp, attn): the sweep's per-prompt error equals
    truncate_params + the run's own QueryError on every seed (rtol 1e-10), and its G/step outputs are empty."""
    from lintrans.train import TrainConfig, init_state
    from lintrans.trained import QueryError

    cfg = TrainConfig(model="softmax", d_in=D_IN, n_demos=N, n_layers=2, width=8, n_heads=2, mlp_width=16,
                      dtype="float64", seeds=2, init_std=0.3)
    params = init_state(cfg).params
    score = QueryError(cfg)
    batch = _sample("shots=4", jax.random.PRNGKey(2), 5)
    p0 = _seed(params, 0)
    plan = ss.plan_sweep(p0, ("O", "mlp", "attn"), (0.0, 0.5, 0.9))
    err, g_tot, g_layer, steps = (np.asarray(o) for o in ss.sweep_points(
        params, ss.SoftmaxMeasure(score), plan.fields, jnp.asarray(plan.layer_index), jnp.asarray(plan.points),
        batch.H, batch.y_query, chunk=4, point_chunk=2))
    assert err.shape == (2, plan.points.shape[0], 5) and g_layer.shape[-1] == 0 and steps.shape[-1] == 0
    direct = jax.jit(lambda p, H, y: jax.vmap(lambda h, t: score(p, h, t))(H, y))
    for c in plan.cells:
        for s in range(2):
            clipped, ranks = truncate_params(_seed(params, s), c["layer"], c["target"], c["xi"])
            assert ranks == c["ranks"]
            np.testing.assert_allclose(err[s, c["point"]], np.asarray(direct(clipped, batch.H, batch.y_query)),
                                       rtol=1e-10, atol=1e-14, err_msg=f"softmax cell {c}: sweep vs clipping by hand")


def test_printed_intervals_stay_short_when_a_clip_diverges():
    """A diverged clip's relative change can be 1e76: printed in scientific notation (not 80 digits);
    ordinary changes keep one decimal, in percent."""
    assert ss._fmt_iv(-0.202, (-0.897, 0.492)) == "-20.2 % [-89.7, +49.2]"
    big = ss._fmt_iv(4.1e76, (-9.0e76, 1.3e77))
    assert big == "+4.10e+78 % [-9.00e+78, +1.30e+79]" and len(big) < 40
    assert ss._fmt_iv(np.inf, (np.nan, np.inf)) == "+inf % [+nan, +inf]"
