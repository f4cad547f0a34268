"""The GPT-2-style softmax transformer: shapes, causal information flow, a NumPy reference, files."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans import transformer as T
from lintrans.io import save_npz
from lintrans.numerics import rel_err

CFG = T.SoftmaxConfig(d_in=3, n_demos_max=6, n_layers=2, width=16, n_heads=2, mlp_width=32)
F64 = jnp.float64


def _generic_params(seed=0, cfg=CFG, scale=0.3):
    """All fields N(0, scale²) (LayerNorm scales around 1): a generic point, unlike the tiny init."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, shape in T.param_shapes(cfg).items():
        v = scale * rng.normal(size=shape)
        values[name] = jax.device_put(1.0 + v if name.endswith("_scale") else v)  # no compilation (jnp.asarray: one per shape)
    return T.SoftmaxParams(**values)


def _prompt(seed, n, d=CFG.d_in):
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(d + 1, n + 1))
    H[d, n] = 0.0
    return jax.device_put(H)


def _reference_predict_all(params, H, cfg):
    """Straightforward NumPy GPT-2 forward (per-head loop, explicit masked softmax)."""
    p = {k: np.asarray(v) for k, v in dataclasses.asdict(params).items()}
    D, n1 = H.shape
    H = np.asarray(H)
    seq = []
    for j in range(n1):
        seq.append(np.append(H[: D - 1, j], 0.0))
        if j < n1 - 1:
            seq.append(np.append(np.zeros(D - 1), H[D - 1, j]))
    z = np.array(seq)
    Tn = len(seq)

    def ln(x, s, b):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * s + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    e = z @ p["read_in_w"] + p["read_in_b"] + p["pos_emb"][:Tn]
    dh = cfg.width // cfg.n_heads
    for t in range(cfg.n_layers):
        a = ln(e, p["ln1_scale"][t], p["ln1_bias"][t])
        q, k, v = (a @ p[f"w_{c}"][t] + p[f"b_{c}"][t] for c in "qkv")
        out = np.zeros_like(e)
        for h in range(cfg.n_heads):
            sl = slice(h * dh, (h + 1) * dh)
            for i in range(Tn):
                logits = np.array([q[i, sl] @ k[j, sl] / math.sqrt(dh) for j in range(i + 1)])
                wts = np.exp(logits - logits.max())
                wts /= wts.sum()
                out[i, sl] = wts @ v[: i + 1, sl]
        e = e + out @ p["w_o"][t] + p["b_o"][t]
        m = ln(e, p["ln2_scale"][t], p["ln2_bias"][t])
        e = e + gelu(m @ p["w_in"][t] + p["b_in"][t]) @ p["w_out"][t] + p["b_out"][t]
    e = ln(e, p["lnf_scale"], p["lnf_bias"])
    return (e @ p["read_out_w"])[:, 0][0::2] + p["read_out_b"][0]


predict_all = jax.jit(T.softmax_predict_all, static_argnums=2)


# ---------------------------------------------------------------- config, init, shapes


def test_config_validation_and_hashable():
    assert hash(CFG) == hash(dataclasses.replace(CFG)), "a frozen config is hashable (a static argument)"
    assert CFG.dim == 4 and CFG.seq_len_max == 13 and CFG.head_dim == 8
    with pytest.raises(ValueError, match="n_heads=3 must divide width=16"):
        dataclasses.replace(CFG, n_heads=3)
    with pytest.raises(ValueError, match="n_layers"):
        dataclasses.replace(CFG, n_layers=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.width = 8


def test_init_shapes_and_scales():
    cfg = T.SoftmaxConfig()  # the small defaults: width 64, 4 heads, 3 layers, mlp 256
    params = T.init_softmax(jax.random.PRNGKey(0), cfg, F64)
    assert T.validate_softmax_params(params, cfg) is params
    for name, shape in T.param_shapes(cfg).items():
        assert getattr(params, name).shape == shape and getattr(params, name).dtype == F64, name
    assert params.w_k.shape == (3, 64, 64) and params.w_in.shape == (3, 64, 256) and params.w_out.shape == (3, 256, 64)
    for name in ("w_q", "w_k", "w_v", "w_in", "read_in_w", "pos_emb"):  # numpy std: no eager op to compile
        assert abs(float(np.std(np.asarray(getattr(params, name)))) / 0.02 - 1) < 0.1, f"{name}: std 0.02 (10 %)"
    for name in ("w_o", "w_out"):
        assert abs(float(np.std(np.asarray(getattr(params, name)))) / (0.02 / math.sqrt(6)) - 1) < 0.1, f"{name}: 0.02/√(2L)"
    assert np.all(np.asarray(params.ln1_scale) == 1) and np.all(np.asarray(params.b_q) == 0)
    with pytest.raises(TypeError, match="SoftmaxConfig"):
        T.init_softmax(jax.random.PRNGKey(0), {"width": 4})


def test_interleave_hand_case():
    H = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])  # d_in = 2, N = 2, query label 9 ignored
    expected = [[1, 4, 0], [0, 0, 7], [2, 5, 0], [0, 0, 8], [3, 6, 0]]
    np.testing.assert_array_equal(np.asarray(jax.jit(T.interleave)(H)), expected)  # one compilation


@pytest.mark.parametrize("n", [0, 2, 6])
def test_shapes_query_and_reference(n):
    params = _generic_params(1)
    H = _prompt(n, n)
    out = predict_all(params, H, CFG)
    assert out.shape == (n + 1,)
    q = jax.jit(T.softmax_predict, static_argnums=2)(params, H, CFG)
    assert q.shape == () and float(q) == float(np.asarray(out)[-1]), "softmax_predict = last of softmax_predict_all"
    ref = _reference_predict_all(params, H, CFG)
    assert jax.jit(rel_err)(out, ref) <= 1e-12, f"forward = NumPy GPT-2 reference (rtol 1e-12), N={n}"


def test_bad_prompts():
    params = _generic_params(0)
    with pytest.raises(ValueError, match="n_demos_max=6"):
        T.softmax_predict_all(params, _prompt(0, 7), CFG)
    with pytest.raises(ValueError, match=r"H must have shape \(D=4"):
        T.softmax_predict_all(params, _prompt(0, 3, d=4), CFG)


# ---------------------------------------------------------------- causal information flow


def test_jacobian_is_causal():
    """∂ŷ_k/∂H is non-zero exactly on x_1..x_{k+1} and y_1..y_k (0-based prediction index k)."""
    n = 5
    jac = jax.jit(jax.jacobian(T.softmax_predict_all, argnums=1), static_argnums=2)
    J = np.asarray(jac(_generic_params(2), _prompt(3, n), CFG))
    d = CFG.d_in
    for k in range(n + 1):
        for j in range(n + 1):
            dx = np.abs(J[k, :d, j]).max()
            dy = abs(J[k, d, j])
            if j <= k:
                assert dx > 1e-8, f"prediction {k} must depend on x_{j + 1}"
            else:
                assert dx == 0.0, f"prediction {k} must not depend on the later x_{j + 1}"
            if j < k:
                assert dy > 1e-8, f"prediction {k} must depend on y_{j + 1}"
            else:
                assert dy == 0.0, f"prediction {k} must not depend on y_{j + 1} (not yet shown / query slot)"


def test_later_tokens_never_change_earlier_predictions():
    n = CFG.n_demos_max
    params = _generic_params(4)
    H = np.asarray(_prompt(5, n))  # perturbed in numpy: no eager op to compile
    base = np.asarray(predict_all(params, H, CFG))
    rng = np.random.default_rng(6)
    for i in range(n + 1):
        # x_{i+1} (column i) is seen by predictions i..n only.
        Hx = H.copy()
        Hx[: CFG.d_in, i] += 3.0 * rng.normal(size=CFG.d_in)
        out = np.asarray(predict_all(params, Hx, CFG))
        np.testing.assert_array_equal(out[:i], base[:i], err_msg=f"changing x_{i + 1} changed an earlier prediction")
        assert np.all(out[i:] != base[i:]), f"changing x_{i + 1} must change predictions {i}..{n}"
        if i < n:
            # y_{i+1} is seen by predictions i+1..n only.
            Hy = H.copy()
            Hy[CFG.d_in, i] += 2.5
            out = np.asarray(predict_all(params, Hy, CFG))
            np.testing.assert_array_equal(out[: i + 1], base[: i + 1], err_msg=f"changing y_{i + 1} changed prediction ≤ {i}")
            assert np.all(out[i + 1 :] != base[i + 1 :]), f"changing y_{i + 1} must change predictions {i + 1}..{n}"


def test_prefix_prompts_agree_with_one_pass():
    """Prompt truncated to n demos (x_{n+1} as query) gives the first n+1 predictions of the full pass."""
    params = _generic_params(7)
    H = np.asarray(_prompt(8, CFG.n_demos_max))  # sliced in numpy: no eager op to compile
    full = np.asarray(predict_all(params, H, CFG))
    for n in (0, 1, 3):
        Hn = H[:, : n + 1].copy()
        Hn[CFG.d_in, n] = 0.0
        np.testing.assert_allclose(np.asarray(predict_all(params, Hn, CFG)), full[: n + 1], rtol=1e-12, atol=1e-14,
                                   err_msg=f"prefix N={n} = first {n + 1} predictions of one pass")


# ---------------------------------------------------------------- transforms


@pytest.mark.slow
def test_jit_equals_eager_and_vmap_equals_loop():
    params = _generic_params(9)
    Hb = np.stack([np.asarray(_prompt(s, 4)) for s in range(3)])  # numpy rows: the loop below slices nothing eagerly
    eager = np.stack([np.asarray(T.softmax_predict_all(params, jax.device_put(h), CFG)) for h in Hb])
    batched = jax.jit(jax.vmap(T.softmax_predict_all, in_axes=(None, 0, None)), static_argnums=2)(params, Hb, CFG)
    np.testing.assert_allclose(np.asarray(batched), eager, rtol=1e-12, atol=1e-14, err_msg="jit∘vmap = eager loop")


def test_every_field_gets_a_gradient():
    params = _generic_params(10)
    H = _prompt(11, 3)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(T.softmax_predict_all(p, H, CFG) ** 2)))(params)
    for name in T.FIELDS:
        g = np.asarray(getattr(grads, name))
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, f"{name} must influence the output"


# ---------------------------------------------------------------- files


def test_save_load_round_trip_and_bad_files(tmp_path):
    params = _generic_params(12)
    path = tmp_path / "p.npz"
    T.save_softmax_params(path, params)
    loaded = T.load_softmax_params(path, CFG)
    for name in T.FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(loaded, name)), np.asarray(getattr(params, name)), err_msg=name)
    f32 = T.load_softmax_params(path, CFG, dtype=jnp.float32)
    assert f32.w_q.dtype == jnp.float32

    with pytest.raises(ValueError, match=r"must have shape \(3, 16\) for SoftmaxConfig"):
        T.load_softmax_params(path, dataclasses.replace(CFG, n_layers=3))
    arrays = {n: np.asarray(getattr(params, n)) for n in T.FIELDS}
    cases = {
        "missing": ({k: v for k, v in arrays.items() if k != "w_o"}, ValueError, "missing array"),
        "extra": ({**arrays, "junk": np.zeros(2)}, ValueError, "unexpected array"),
        "nan": ({**arrays, "b_k": np.full_like(arrays["b_k"], np.nan)}, ValueError, "b_k contains NaN"),
        "int": ({**arrays, "pos_emb": arrays["pos_emb"].astype(np.int64)}, TypeError, "pos_emb must be a floating"),
        "mixed": ({**arrays, "w_in": arrays["w_in"].astype(np.float32)}, TypeError, "share one dtype"),
    }
    for label, (arrs, exc, match) in cases.items():
        bad = tmp_path / f"{label}.npz"
        save_npz(bad, arrs)
        with pytest.raises(exc, match=match):
            T.load_softmax_params(bad, CFG)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz: not a readable npz"):
        T.load_softmax_params(truncated, CFG)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz: "):  # numpy takes it for a pickle: refused
        T.load_softmax_params(junk, CFG)
    with pytest.raises(ValueError, match="no such file"):
        T.load_softmax_params(tmp_path / "absent.npz", CFG)
    with pytest.raises(TypeError, match="SoftmaxParams"):
        T.save_softmax_params(tmp_path / "x.npz", {"w_q": 1})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no temporary files left"
