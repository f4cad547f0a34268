"""The overshoot case (issue 13): a one-layer model tuned for N shots overshoots on N' < N, and clipping W_V helps.

Weights: ``W_K = [I_d 0; 0 0]``, ``W_Q = I``, ``s = 1/N``, ``W_V`` Gaussian (std 0.3) with last row
``[0, …, 0, c]``, ``c = N/(N + d + 1)``: the prediction ``ŷ = (c/N') Σ_i y_i x_iᵀ x_q`` plus noise terms, whose
coefficient is optimal at ``N`` shots and too large at ``N' < N`` (Remark 2's overshoot). Clipping ``W_V``
to rank 1 shrinks its last row's ``y`` entry and with it the step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans import onelayer
from lintrans import shift_study as ss
from lintrans.params import LinearAttentionParams
from lintrans.shift import parse_shift

D_IN, N = 4, 16


def _params():
    D = D_IN + 1
    c = N / (N + D_IN + 1)
    w_k = jnp.zeros((1, D, D)).at[0, :D_IN, :D_IN].set(jnp.eye(D_IN))
    w_v = (0.3 * jax.random.normal(jax.random.PRNGKey(0), (1, D, D))).at[0, D_IN, :D_IN].set(0.0).at[0, D_IN, D_IN].set(c)
    return LinearAttentionParams(w_k, jnp.eye(D)[None], w_v)


@pytest.mark.slow
def test_clipping_v_lowers_the_error_on_fewer_shots_only():
    """Closed form: at N shots clipping V to rank 1 hurts; at N/8 shots (overshoot, error > 1) it helps."""
    p = _params()
    for shift, helps in (("none", False), ("shots=N/8", True)):
        res = onelayer.clip_errors(p, parse_shift(shift).task(D_IN, N), scale="1/N", targets=("V",), rates=(0.75,))
        assert (res["cells"][0]["rank"], res["cells"][0]["error"] < res["unpruned"]) == (1, helps), (shift, res)
    assert onelayer.expected_error(p, parse_shift("shots=N/8").task(D_IN, N), scale="1/N") > 1.0


@pytest.mark.slow
def test_measured_overshoot_gain_is_significant_and_matches_theory():
    """Measured on 4000 shifted prompts by the sweep: the paired change of clipping V (ξ = 0.75, rank 1) is
    below 0 by more than 3 standard errors and within 3 s.e. of the closed form's change."""
    p = _params()
    task = parse_shift("shots=N/8").task(D_IN, N)
    b = task.sample(jax.random.PRNGKey(1), 4000, dtype=jnp.float64)
    params = jax.tree_util.tree_map(lambda x: x[None], p)
    plan = ss.plan_sweep(p, ("V",), (0.0, 0.75))
    err = np.asarray(ss.sweep_points(params, ss.LinearMeasure(D_IN, "demos", "1/N", 1), plan.fields,
                                     jnp.asarray(plan.layer_index), jnp.asarray(plan.points), b.H, b.y_query)[0])
    cell = next(c for c in plan.cells if c["xi"] == 0.75)
    diff = err[0, cell["point"]] - err[0, 0]
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    assert diff.mean() < -3 * se
    th = onelayer.clip_errors(p, task, scale="1/N", targets=("V",), rates=(0.75,))
    assert abs(diff.mean() - (th["cells"][0]["error"] - th["unpruned"])) < 3 * se
