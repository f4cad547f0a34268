"""The transformer-component variants of linear attention (lintrans.variants, issue 16), float64."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans import attention, variants as V
from lintrans.numerics import rel_err
from lintrans.params import LinearAttentionParams
from lintrans.tasks import random_prompts
from lintrans.trajectory import trajectory
from lintrans.truncation import truncate_params

D, N, L, M = 4, 6, 3, 5


def _params(name, key=1, init_std=0.3):
    return V.init_variant(jax.random.PRNGKey(key), V.get_variant(name), L, D, mlp_width=M, init_std=init_std,
                          dtype=jnp.float64)


def _prompt(key=0, n=N):
    return random_prompts(jax.random.PRNGKey(key), 1, n, D - 1, dtype=jnp.float64)[0]


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["1", "1/N"])
def test_linear_variant_is_the_paper_layer(scale):
    """linear_attn with scale s: states, prediction and ΔW_t equal lintrans.attention / trajectory (rel 1e-12)."""
    v = V.Variant(scale=scale)
    p = _params("linear_attn")
    H = _prompt()
    assert isinstance(p, LinearAttentionParams)
    assert rel_err(V.forward_states(v, p, H), attention.forward_states(p, H, scale=scale)) <= 1e-12
    assert rel_err(V.predict(v, p, H), attention.predict(p, H, scale=scale)) <= 1e-12
    assert rel_err(V.delta_ws(v, p, H), trajectory(p, H, scale=scale).delta_w) <= 1e-12
    assert rel_err(V.layer_readouts(v, p, H), V.forward_states(v, p, H)[1:, -1, -1]) == 0


@pytest.mark.parametrize("name", list(V.VARIANTS))
def test_context_does_not_see_the_query(name):
    """Mask "demos" in every variant: changing the query leaves every demonstration state bitwise
    unchanged (what the Theorem 1 probes assume), and the query's own state does change."""
    v, p, H = V.get_variant(name), _params(name), _prompt()
    H2 = H.at[:-1, -1].set(H[:-1, -1] + 1.0)
    s1, s2 = jax.jit(jax.vmap(lambda h: V.forward_states(v, p, h)))(jnp.stack([H, H2]))
    assert s1.shape == (L + 1, D, N + 1)
    assert bool(jnp.all(s1[:, :, :-1] == s2[:, :, :-1]))
    assert float(jnp.linalg.norm(s1[-1, :, -1] - s2[-1, :, -1])) > 0.1


def test_softmax_approaches_its_first_order_expansion_at_rate_eps():
    """Softmax attention with logits scaled by ε: out = v̄ + ΔW u_q + O(ε²) with ΔW = O(ε), so the
    deviation relative to the first-order term decays like ε. Fitted log-log slope on
    ε = 10^-1 … 10^-4: 1 ± 0.05 (relative), 2 ± 0.05 (absolute); the tolerance covers the
    curvature of the remainder at the largest ε."""
    kw, ku = jax.random.split(jax.random.PRNGKey(3))
    w_k, w_q, w_v = jax.random.normal(kw, (3, D, D), jnp.float64)
    U = jax.random.normal(ku, (D, N + 1), jnp.float64)
    eps = np.logspace(-1, -4, 7)
    rel, absolute = [], []
    for e in eps:
        out = V.softmax_attention(w_k, w_q, w_v, U, float(e))
        mean, dw = V.softmax_first_order(w_k, w_q, w_v, U, float(e))
        first = mean[:, None] + dw @ U
        rel.append(float(jnp.linalg.norm(out - first) / jnp.linalg.norm(dw @ U)))
        absolute.append(float(jnp.linalg.norm(out - first)))
    slope_rel = np.polyfit(np.log(eps), np.log(rel), 1)[0]
    slope_abs = np.polyfit(np.log(eps), np.log(absolute), 1)[0]
    assert abs(slope_rel - 1) <= 0.05, slope_rel
    assert abs(slope_abs - 2) <= 0.05, slope_abs


def test_softmax_attention_averages_values():
    """Equal value vectors: every token receives exactly that vector (weights sum to 1), any logits."""
    w_k, w_q = jax.random.normal(jax.random.PRNGKey(4), (2, D, D), jnp.float64)
    w_v = jnp.zeros((D, D), jnp.float64).at[:, 0].set(1.0)
    U = _prompt().at[0].set(1.0)  # first coordinate 1 → every value is W_V u_i = e-column 0
    out = V.softmax_attention(w_k, w_q, w_v, U, 1.0)
    assert rel_err(out, jnp.broadcast_to(w_v[:, :1], out.shape)) <= 1e-14


def test_layer_norm_is_scale_invariant_up_to_eps():
    """LN(c·U) = LN(U) up to ε (the design note): a token of variance v changes by the factor
    √((v + ε)/(v + ε/c²)) − 1 ≤ ε/(2v), so for c = 10 the difference is ≤ ε / min v."""
    U = _prompt()
    one, zero = jnp.ones(D, jnp.float64), jnp.zeros(D, jnp.float64)
    v_min = float(jnp.min(jnp.var(U, axis=0)))
    assert rel_err(V.layer_norm(10 * U, one, zero), V.layer_norm(U, one, zero)) <= V.LN_EPS / v_min
    # each normalised token has mean 0 and variance var/(var + ε) ≈ 1
    out = V.layer_norm(U, one, zero)
    assert float(jnp.max(jnp.abs(jnp.mean(out, axis=0)))) <= 1e-14


def test_mlp_with_zero_output_is_attention_only():
    """W_out = 0, b_out = 0 switches the MLP branch off: linear_attn_mlp equals linear_attn bitwise."""
    p = _params("linear_attn_mlp")
    p0 = p._replace(w_out=jnp.zeros_like(p.w_out))
    H = _prompt()
    base = LinearAttentionParams(p.w_k, p.w_q, p.w_v)
    assert bool(jnp.all(V.forward_states(V.get_variant("linear_attn_mlp"), p0, H)
                        == V.forward_states(V.get_variant("linear_attn"), base, H)))


def test_unit_layernorm_on_normalised_tokens_is_the_plain_layer_to_eps():
    """On tokens that already have mean 0 and variance 1, LN (scale 1, bias 0) changes them by the
    factor 1/√(1 + ε): one linear_attn_ln layer equals one linear_attn layer to ~ε (rtol 1e-4)."""
    H = _prompt()
    H = (H - H.mean(0)) / H.std(0)
    p = V.init_variant(jax.random.PRNGKey(1), V.get_variant("linear_attn_ln"), 1, D, init_std=0.3, dtype=jnp.float64)
    base = LinearAttentionParams(p.w_k, p.w_q, p.w_v)
    a = V.forward_states(V.get_variant("linear_attn_ln"), p, H)[1]
    b = V.forward_states(V.get_variant("linear_attn"), base, H)[1]
    assert rel_err(a, b) <= 1e-4


def test_truncation_by_field_name():
    """lintrans.truncation addresses the variants' fields: mlp clips w_in and w_out of one layer only;
    linear attention has no mlp target."""
    p = _params("linear_attn_mlp")
    cut, ranks = truncate_params(p, 2, "mlp", 0.5)
    assert ranks == {"w_in": 2, "w_out": 2}
    assert int(np.linalg.matrix_rank(np.asarray(cut.w_in[1]))) == 2
    assert bool(jnp.all(cut.w_in[0] == p.w_in[0])) and bool(jnp.all(cut.w_k == p.w_k))
    with pytest.raises(ValueError, match="mlp"):
        truncate_params(_params("softmax_attn"), 1, "mlp", 0.5)


@pytest.mark.parametrize("name", list(V.VARIANTS))
def test_init_shapes_and_validation(name):
    v = V.get_variant(name)
    p = _params(name)
    assert type(p) is v.params_class
    assert V.validate_variant_params(v, p, D) is p
    assert all(getattr(p, f).shape[0] == L for f in p._fields)


def test_bad_inputs():
    with pytest.raises(ValueError, match="variant"):
        V.get_variant("gpt")
    with pytest.raises(ValueError, match="attention"):
        V.Variant(attention="relu")
    with pytest.raises(ValueError, match="norm"):
        V.Variant(norm="batchnorm")
    with pytest.raises(ValueError, match="readout"):
        V.Variant(readout=True)
    with pytest.raises(ValueError, match="n_layers"):
        V.init_variant(jax.random.PRNGKey(0), V.Variant(), 0, D)
    with pytest.raises(ValueError, match="init_std"):
        V.init_variant(jax.random.PRNGKey(0), V.Variant(), 1, D, init_std=-1.0)
    with pytest.raises(TypeError, match="variant"):
        V.init_variant(jax.random.PRNGKey(0), "linear_attn", 1, D)
    p = _params("linear_attn_mlp")
    with pytest.raises(TypeError, match="AttnMLPParams"):
        V.validate_variant_params(V.get_variant("linear_attn_mlp"), LinearAttentionParams(p.w_k, p.w_q, p.w_v))
    with pytest.raises(ValueError, match="b_in"):
        V.validate_variant_params(V.get_variant("linear_attn_mlp"), p._replace(b_in=p.b_in[:, :2]))
    with pytest.raises(ValueError, match="w_k contains NaN"):
        V.validate_variant_params(V.get_variant("linear_attn_mlp"), p._replace(w_k=p.w_k.at[0, 0, 0].set(math.nan)))
    with pytest.raises(ValueError, match="D = 4"):
        V.validate_variant_params(V.get_variant("linear_attn_mlp"), p, dim=7)
    with pytest.raises(ValueError, match="what"):
        V.VariantFn(V.Variant(), "loss")
