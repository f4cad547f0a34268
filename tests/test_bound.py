"""Theorem 2 (SPEC §7): contributions, C_t, the bound forms, the risks, the sweep and its script."""

import importlib.util
import json
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans import bound, bound_factored, bound_sweep
from lintrans.attention import predict
from lintrans.bound import TermStats, bound_summands, contributions, noise_covariance, term_stats
from lintrans.params import LinearAttentionParams
from lintrans.tasks import sample_linear
from lintrans.trajectory import trajectory
from lintrans.truncation import truncate_params

RTOL = 1e-12
SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "bound_vs_layer.py"


def _setup(d_in=3, n_demos=24, L=3, B=4, noise=0.0, seed=0, scale=0.3):
    """Weights 0.35·(I + scale·√D·Z) (κ ≈ 3, I + W_t near I): generic, and conditioned well enough that the smallest
    eigenvalues of C_t (≈ 1e-6 λ_max) keep ~10 digits in a d × d eigh (absolute error ≈ ε·λ_max)."""
    return _setup_jit(jax.random.PRNGKey(seed), d_in, n_demos, L, B, noise, scale)


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _setup_jit(key, d_in, n_demos, L, B, noise, scale):
    # one compiled call per shape (eager sampling compiles every small op separately)
    D = d_in + 1
    k_w, k_x = jax.random.split(key)
    z = scale / np.sqrt(D) * jax.random.normal(k_w, (3, L, D, D), jnp.float64)
    params = LinearAttentionParams(*(0.35 * (jnp.eye(D) + np.sqrt(D) * a) for a in z))
    batch = sample_linear(k_x, B, n_demos, d_in, noise_std=noise, dtype=jnp.float64)
    return params, batch


@partial(jax.jit, static_argnames=("b",))
def _stats_H(params, H, b):
    return jax.vmap(lambda h: term_stats(params, h, b, scale="1/N"))(H)


def _stats(params, batch, b):
    return _stats_H(params, batch.H, b)


@partial(jax.jit, static_argnames=("mask",))
def _contrib_and_traj(params, H, mask):
    return contributions(params, H, mask=mask, scale="1/N"), trajectory(params, H, mask=mask, scale="1/N")


_noise_covariance = jax.jit(noise_covariance, static_argnums=1)  # one compilation per shape and b


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)


# ----------------------------------------------------------------------------- contributions, C_t


@pytest.mark.parametrize("mask", ["demos", "causal"])
def test_contributions_sum_to_G_and_gradients_average_to_vec_G(mask):
    params, batch = _setup()
    H = batch.H[0]
    g, traj = _contrib_and_traj(params, H, mask)
    u = np.asarray(jax.jit(bound.demo_gradients)(g))
    g, G = np.asarray(g), np.asarray(traj.G)  # sums in numpy: no eager op to compile
    assert g.shape == (3, 24, 4, 4)
    assert _rel(g.sum(axis=1), G) <= RTOL, "Σ_i g_{t,i} = G_t (rtol 1e-12)"
    assert _rel(u.mean(axis=1), G.reshape(3, 16)) <= RTOL, "mean_i ∇ℓ_i = vec G_t (rtol 1e-12)"


def test_noise_covariance_definition_and_zero_at_b_equal_N():
    params, batch = _setup()
    g = np.asarray(_contrib_and_traj(params, batch.H[0], "demos")[0])[1]
    N = g.shape[0]
    u = np.asarray(jax.jit(bound.demo_gradients)(g))
    G = u.mean(axis=0)
    b = 5
    expected = (N - b) / (b * (N - 1)) * (u.T @ u / N - np.outer(G, G))
    assert _rel(_noise_covariance(g, b), expected) <= 1e-10, "C_t = c_b((1/N)Σ∇ℓ∇ℓᵀ − vec G vec Gᵀ) (rtol 1e-10)"
    assert np.all(np.asarray(_noise_covariance(g, N)) == 0), "C_t = 0 at b = N"


def test_C_t_matches_monte_carlo_covariance_of_the_mean_of_b_draws_without_replacement():
    """Sample size 40 000 subsets of b = 5 of N = 24 (fixed key); tolerance 0.05 in relative Frobenius
    norm, several standard errors of a covariance estimate from 4·10⁴ samples (≈ √(2/n)·few ≈ 0.01)."""
    params, batch = _setup()
    g = np.asarray(_contrib_and_traj(params, batch.H[0], "demos")[0])[2]
    b, n_mc = 5, 40_000

    @jax.jit  # the keys, the draws and their means in one compilation
    def subset_means(key, g):
        u = bound.demo_gradients(g)
        keys = jax.random.split(key, n_mc)
        return jax.vmap(lambda k: u[jax.random.permutation(k, 24)[:b]].mean(axis=0))(keys)

    mc = np.cov(np.asarray(subset_means(jax.random.PRNGKey(7), g)), rowvar=False, bias=True)
    assert _rel(_noise_covariance(g, b), mc) <= 0.05, "C_t vs Monte Carlo (n = 40000, tol 0.05)"


@pytest.mark.parametrize("d_in, noise, predicted", [(3, 0.0, 6), (3, 0.5, 10), (2, 0.5, 6)])
def test_rank_of_C_t_and_G_t_in_its_support(d_in, noise, predicted):
    """rank C_t = d_in(d_in+1)/2 noiseless, D(D+1)/2 with label noise (N = 24 > both); vec G_t ∈ supp C_t."""
    params, batch = _setup(d_in=d_in, noise=noise)
    stats, _ = _stats(params, batch, 8)
    out = bound_summands(stats, (d_in + 1) ** 2)
    assert np.all(np.asarray(out["rank"]) == predicted), f"rank C_t = {predicted}"
    assert np.all(np.asarray(stats.support_residual) <= 1e-10), "vec G_t lies in the support of C_t (residual ≤ 1e-10)"


def test_fast_factored_path_equals_direct_eigh_path():
    params, batch = _setup(noise=0.3)
    direct, W_direct = _stats(params, batch, 8)
    r0 = bound_factored.factor_rank(batch.H)
    assert r0 == 10, "token second-moment covariance has rank D(D+1)/2 = 10 with label noise"

    @jax.jit  # the factored path in one compilation (op by op, every primitive compiles on its own)
    def factored(params, H):
        S, Y, E = jax.vmap(lambda h: bound_factored.covariance_factor(h, r0))(H)
        return jax.vmap(lambda s, y, e: bound_factored.fast_term_stats(params, s, y, e, 24, 8, "1/N"))(S, Y, E)

    fast, A_L = factored(params, batch.H)
    for name in ("sq_printed", "sq_proof", "trace"):
        assert _rel(getattr(fast, name), getattr(direct, name)) <= 1e-10, f"{name}: fast = direct (rtol 1e-10)"
    assert _rel(fast.eigvals, direct.eigvals[..., -r0:]) <= 1e-10, "non-zero eigenvalues of C_t agree (rtol 1e-10)"
    assert np.all(np.asarray(fast.support_residual) <= 1e-10)
    assert _rel(np.asarray(A_L) - np.eye(4), W_direct) <= RTOL, "A_L − I = W_L (rtol 1e-12)"
    d = 16
    a, b = bound_summands(fast, d), bound_summands(direct, d)
    # ε ≥ 1e-6 only: the direct path's structurally zero eigenvalues carry rounding noise ≈ 1e-16 λ_max,
    # which log(λ + ε_t) resolves once ε_t approaches it (the factored path has exact zeros).
    for name in ("printed_support", "proof_support", "printed_ridge", "proof_ridge"):
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if "ridge" in name:
            x, y = x[1:], y[1:]
        assert _rel(x, y) <= 1e-9, f"{name}: fast = direct (rtol 1e-9)"


# ----------------------------------------------------------------------------- bound forms


def test_summands_nonnegative_in_every_form_including_pruned_models():
    for noise, xi, target in [(0.0, 0.0, "attn"), (0.5, 0.5, "V"), (0.0, 0.75, "K"), (0.5, 0.9, "attn")]:
        params, batch = _setup(noise=noise, seed=3)
        params, _ = truncate_params(params, 2, target, xi)
        out = bound_summands(_stats(params, batch, 8)[0], 16)
        for name in ("printed_support_prompt", "printed_ridge_prompt", "proof_support", "proof_ridge"):
            v = np.asarray(out[name])
            assert np.all(v >= -1e-9), f"{name} ≥ 0 (AM–GM), got min {v.min()} at ξ = {xi}, {target}"


def test_each_summand_invariant_under_scaling_G_and_C():
    """(G_t, C_t) → (cG_t, c²C_t): scale W_V of the last layer by c (only term L moves, by exactly that)."""
    params, batch = _setup()
    c = 3.7
    w_v = np.array(params.w_v)  # scaled in numpy: no eager op to compile
    w_v[-1] *= c
    scaled = params._replace(w_v=jax.device_put(w_v))
    s0, _ = _stats(params, batch, 8)
    s1, _ = _stats(scaled, batch, 8)
    n0, n1 = jax.tree_util.tree_map(np.asarray, (s0, s1))
    assert _rel(n1.sq_proof[:, -1], c**2 * n0.sq_proof[:, -1]) <= RTOL
    assert _rel(n1.eigvals[:, -1], c**2 * n0.eigvals[:, -1]) <= 1e-10
    # ε ≥ 1e-6: below, rounding noise of the structurally zero eigenvalues of the d × d C_t shows
    eps = (1e-6, 1e-3, 1.0)
    a, b = bound_summands(s0, 16, eps=eps), bound_summands(s1, 16, eps=eps)
    for name in ("printed_support", "proof_support", "printed_ridge", "proof_ridge"):
        assert _rel(a[name], b[name]) <= 1e-9, f"{name} unchanged under (cG, c²C) (rtol 1e-9)"
    # and at the level of the formula, with a synthetic spectrum of full rank (the raw form is finite)
    lam = np.array([[[0.5, 1.0, 2.0, 3.0]]])
    st = TermStats(np.array([[2.0]]), np.array([[1.5]]), lam.sum(-1), lam, np.array([[4]]), np.zeros((1, 1)))
    st2 = TermStats(*(c**2 * x for x in st[:4]), st.rank, st.support_residual)
    for name in ("printed_raw", "proof_raw", "printed_support", "printed_ridge"):
        assert _rel(bound_summands(st, 4)[name], bound_summands(st2, 4)[name]) <= 1e-12


def test_locality_pruning_layer_k_leaves_summands_before_k_bitwise_equal():
    params, batch = _setup(noise=0.5)
    base = bound_summands(_stats(params, batch, 8)[0], 16)
    for k in (2, 3):
        pruned, _ = truncate_params(params, k, "attn", 0.5)
        out = bound_summands(_stats(pruned, batch, 8)[0], 16)
        for name in ("printed_support", "proof_support", "printed_ridge", "proof_ridge", "rank"):
            a, b = np.asarray(base[name])[..., : k - 1], np.asarray(out[name])[..., : k - 1]
            assert np.array_equal(a, b), f"{name}: terms t < k = {k} bitwise equal (T6 locality)"
        assert not np.allclose(np.asarray(base["printed_support"])[k - 1], np.asarray(out["printed_support"])[k - 1])


def test_hand_case_known_bound():
    """D = 2, L = 1, W_K = W_Q = W_V = I, s = 1, tokens [1,0],[0,1],[1,1],[1,−1], N = 4, b = 2.

    g_i = h_i h_iᵀ, G = ΔW = S = 3I (‖G‖² = 18, ‖ΔW‖²‖I‖² = 36); C = (4/3) Σ_i vec Z_i vec Z_iᵀ,
    Z_i = h_i h_iᵀ − (3/4) I, with eigenvalues {16/3, 4/3, 2/3, 0}: rank 3, tr 22/3, pdet 128/27.
    """
    eye = np.eye(2)
    params = LinearAttentionParams(eye[None], eye[None], eye[None])
    H = np.array([[1.0, 0.0, 1.0, 1.0, 0.5], [0.0, 1.0, 1.0, -1.0, 0.0]])
    stats, _ = term_stats(params, H, 2)
    st = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], stats)  # numpy: no eager op to compile
    np.testing.assert_allclose(st.eigvals[0, 0], [0, 2 / 3, 4 / 3, 16 / 3], atol=1e-14)
    eps = (1e-3, 1.0)
    out = jax.tree_util.tree_map(np.asarray, bound_summands(st, 4, eps=eps))
    tr, pdet = 22 / 3, 128 / 27
    assert int(out["rank"][0, 0]) == 3
    assert float(out["printed_support"][0]) == pytest.approx(3 * np.log((36 + tr) / 3) - np.log(pdet), rel=RTOL)
    assert float(out["proof_support"][0]) == pytest.approx(3 * np.log((18 + tr) / 3) - np.log(pdet), rel=RTOL)
    for j, e in enumerate(eps):
        et = e * tr / 4
        logdet = np.log(16 / 3 + et) + np.log(4 / 3 + et) + np.log(2 / 3 + et) + np.log(et)
        assert float(out["printed_ridge"][j, 0]) == pytest.approx(4 * np.log((36 + tr + 4 * et) / 4) - logdet, rel=RTOL)
        assert float(out["proof_ridge"][j, 0]) == pytest.approx(4 * np.log((18 + tr + 4 * et) / 4) - logdet, rel=RTOL)
    assert np.isinf(out["printed_raw"][0]) and np.isinf(out["proof_raw"][0]), "C singular → the printed bound is +∞"
    expected = np.sqrt((3 * np.log((18 + tr) / 3) - np.log(pdet)) / 4)
    assert float(bound.bound_value(out["proof_support"], 4)) == pytest.approx(expected, rel=RTOL)


def test_support_form_is_infinite_with_reason_when_G_leaves_the_support():
    """N = 2 ≤ D(D+1)/2: two tokens, C has rank 1 and vec G = vec(S) is outside its span."""
    eye = np.eye(2)
    params = LinearAttentionParams(eye[None], eye[None], eye[None])
    stats, _ = term_stats(params, np.array([[1.0, 0.0, 0.3], [0.0, 1.0, 0.0]]), 1)
    out = jax.tree_util.tree_map(np.asarray, bound_summands(jax.tree_util.tree_map(lambda x: np.asarray(x)[None], stats), 4))
    assert not bool(out["in_support"][0, 0]) and np.isinf(out["proof_support"][0])
    reasons = bound.describe_bounds({"proof_support": float(out["proof_support"][0]), "printed_raw": np.inf},
                                    d=4, rank_min=1, rank_max=1, n_out=1)
    assert "outside the support" in reasons["proof_support"] and "singular" in reasons["printed_raw"]


# ----------------------------------------------------------------------------- risks


def test_risks_closed_form_monte_carlo_and_prediction():
    params, batch = _setup(noise=0.4)
    rk = jax.tree_util.tree_map(np.asarray, bound.risks(params, batch, noise_std=0.4, scale="1/N"))
    # the model's W_L and predictions in one compilation (op by op, every primitive compiles on its own)
    W, y_hat = jax.jit(jax.vmap(lambda h: (trajectory(params, h, scale="1/N").W[-1],
                                           predict(params, h, scale="1/N"))))(batch.H)
    mc_risk = jax.jit(lambda k, W, w: bound.population_risk_mc(k, W, w, 200_000, noise_std=0.4))
    H, w, W = np.asarray(batch.H), np.asarray(batch.w), np.asarray(W)  # indexed in numpy below
    for j in range(4):
        mc = mc_risk(jax.random.PRNGKey(j), W[j], w[j])
        # the loss is L_mu·χ²₁: its mean over 2·10⁵ samples has relative standard error √(2/2·10⁵) = 0.0032
        assert float(mc) == pytest.approx(float(rk.L_mu[j]), rel=0.016), "closed-form L_μ vs Monte Carlo (5 s.e.)"
        X, y = H[j, :-1, :-1].T, H[j, -1, :-1]
        direct = np.mean((X @ (W[j][-1, :-1]) - y) ** 2)
        assert float(rk.L_S[j]) == pytest.approx(float(direct), rel=RTOL)
    y_q = np.asarray(batch.y_query)
    assert _rel(rk.test_error, (np.asarray(y_hat) - y_q) ** 2 / 3) <= 1e-10, "test error from W_L = model prediction (T1)"
    assert _rel(rk.gap, rk.L_mu - rk.L_S) <= RTOL and _rel(rk.loss_var, 2 * rk.L_mu**2) <= RTOL
    zero = np.zeros((4, 4))
    assert float(jax.jit(lambda W, w: bound.population_risk(W, w, noise_std=0.4))(zero, w[0])) == pytest.approx(
        float(np.sum(w[0] ** 2)) + 0.16, rel=RTOL
    ), "W = 0 predicts 0: L_μ = ‖w‖² + σ²"


# ----------------------------------------------------------------------------- sweep and bad inputs


@pytest.mark.slow
def test_sweep_reuse_of_unpruned_prefix_equals_full_recomputation():
    """The sweep copies terms t < k from the unpruned model (T6); evaluating the points batched
    (chunk = 2) recomputes them. Sizes and options as in the script's smoke run (shared compile)."""
    params, batch = _setup(L=2, B=4, n_demos=12)
    params = jax.tree_util.tree_map(lambda a: 0.5 * a, params)  # s = 1 here: keep I + W_t near I
    kw = dict(rates=(0.0, 0.5, 0.9), targets=("V", "attn"), readout=-1)
    fast = bound_sweep.bound_sweep(params, batch, 4, **kw)
    full = bound_sweep.bound_sweep(params, batch, 4, chunk=2, **kw)
    # batched points reorder floating-point work; an eigenvalue carries ≈ ε·λ_max of rounding, so
    # log λ_min, hence a summand, carries ≈ ε·λ_max/λ_min: the tolerance scales with that ratio
    kept = fast.arrays["smallest_kept_rel"]
    rtol = max(1e-10, 100 * np.finfo(np.float64).eps / float(np.min(kept[np.isfinite(kept)])))
    assert fast.points.shape == (1 + 2 * 2 * 2, 4), "ξ = 0 maps to the unpruned point; ξ ∈ {0.5, 0.9} × 2 targets × 2 layers"
    assert fast.index[(2, 0.0, "attn")] == 0
    # ridge at ε ≥ 1e-6 only: clipped layers add structurally zero eigenvalues, computed to rounding noise
    for name in ("printed_support", "proof_support", "printed_ridge", "gap", "test_error", "rank_min"):
        x, y = fast.arrays[name], full.arrays[name]
        if "ridge" in name:
            x, y = x[:, 1:], y[:, 1:]
        assert _rel(x, y) <= rtol, f"{name}: reuse = recomputation (rtol {rtol:.1e})"
    e = fast.entry(fast.index[(2, 0.9, "V")])
    assert e["sq_printed"][-1] == 0 and e["printed_support"][-1] == 0, "a layer clipped to rank 0 passes nothing"
    assert "singular" in e["reasons"]["printed_raw"]
    assert np.all(fast.arrays["d_test_error"][0] == 0), "paired difference of the unpruned model to itself"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"b": 24}, "b .shot count. must be < N"),
        ({"b": 0}, "1..N"),
        ({"layers": (0,)}, "1..3"),
        ({"layers": (4,)}, "1..3"),
        ({"eps": (0.0,)}, "eps"),
        ({"rates": (1.0,)}, r"\[0, 1\)"),
        ({"targets": ("O",)}, "does not have"),
        ({"targets": ("X",)}, "target must be one of"),
        ({"method": "factored", "mask": "causal"}, "demos"),
    ],
)
def test_sweep_bad_inputs(kwargs, match):
    params, batch = _setup()
    b = kwargs.pop("b", 8)
    with pytest.raises(ValueError, match=match):
        bound_sweep.bound_sweep(params, batch, b, **kwargs)


def test_noise_covariance_and_shots_bad_inputs():
    g = np.zeros((5, 2, 2))
    with pytest.raises(ValueError, match="1..N=5"):
        noise_covariance(g, 6)
    with pytest.raises(ValueError, match="must be < N"):
        bound.check_shots(5, 5)


# ----------------------------------------------------------------------------- the script


def _load_script():
    spec = importlib.util.spec_from_file_location("bound_vs_layer", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_script_smoke_run_plot_only_and_merged_rows(tmp_path, capsys):
    mod = _load_script()
    out_json = tmp_path / "r.json"
    argv = ["--quick", "--n-prompts", "4", "--n-demos", "12", "--shots", "4", "--rates", "0,0.3,0.5,0.9",
            "--targets", "V,attn", "--seeds", "2", "--eps", "1e-6,1e-3", "--json", str(out_json),
            "--figures-dir", str(tmp_path), "--quiet"]
    assert mod.main(argv) == 0
    written = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote: ")]
    doc = json.loads(out_json.read_text())
    res = doc["results"]["settings"]["small"]
    # ξ = 0 keeps every rank (the unpruned row); ξ = 0.3 and 0.5 both keep r = 2 of D = 4: one merged row
    assert len(res["rows"]) == 2 * 8 * 2 and all(r["xis"] in ([0.3, 0.5], [0.9]) for r in res["rows"])
    assert res["checks"]["min_summand_reported"] >= -1e-9 and res["checks"]["rank_C_measured"] == [6, 6]
    assert doc["config"]["weight_noise"] is None and res["setting"]["n_layers"] == 8, "only what was used"
    names = ("bound_vs_layer", "bound_terms", "pruning_gap_vs_layer", "bound_continuity")
    assert {Path(w[len("wrote: "):]).name for w in written} == {"r.json", *(f"{n}_quick.png" for n in names)}
    assert mod.main(["--plot-only", "--json", str(out_json), "--figures-dir", str(tmp_path)]) == 0
    cont = res["continuity"]["noise"]
    assert np.all(np.isfinite(cont["proof_ridge"])) and cont["levels"][-1] == 0.0


@pytest.mark.parametrize("argv, match", [
    (["--seeds", "0"], "--seeds"),
    (["--mask", "causal", "--checkpoint", "{dir}"], "--mask is for --params only"),
    (["--mask", "foo"], "--mask"),
    (["--mask", "causal"], "--mask is for --params only"),
    (["--step", "5"], "--step has no meaning without --checkpoint"),
    (["--n-layers", "2", "--params", "{file}"], "--n-layers has no meaning with a loaded model"),
    (["--weight-noise", "0.1", "--params", "{file}"], "--weight-noise has no meaning"),
    (["--weight-noise", "-1"], "--weight-noise"),
    (["--weight-noise", "nan"], "finite"),
    (["--n-layers", "0"], "--n-layers"),
    (["--params", "{dir}"], "is a directory"),
    (["--params", "{file}", "--checkpoint", "{dir}"], "give one"),
    (["--shots", "12", "--n-demos", "12"], "--shots must be < --n-demos"),
    (["--rates", "0,1.5"], "--rates"),
    (["--targets", "mlp"], "--targets"),
    (["--settings", "huge"], "--settings"),
    (["--plot-eps", "0.5"], "must be one of --eps"),
    (["--form", "printed_support"], "--form"),
    (["--tag", "a/b"], "--tag"),
])
def test_script_bad_flags_one_error_line_exit_2(tmp_path, capsys, argv, match):
    """Each bad input of the reliability issue is refused at parse time: exit 2, one `error:` line naming it."""
    mod = _load_script()
    f = tmp_path / "w.npz"
    f.write_bytes(b"")
    argv = [a.format(dir=tmp_path, file=f) for a in argv] + ["--json", str(tmp_path / "x.json"),
                                                            "--figures-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not (tmp_path / "x.json").exists(), "nothing written"
