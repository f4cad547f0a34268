"""Theorem 2's reported bound (SPEC §7): the form registry, continuity in the weights, ranks with a stated
tolerance beside the structural upper bound, and the public entry point theorem2_bound."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans import bound_forms
from lintrans.bound import bound_summands, structural_rank_bound
from lintrans.bound_eval import prompt_stats, theorem2_bound
from lintrans.bound_forms import FORMS, REPORTED, THE_BOUND
from lintrans.bound_report import continuity_path, noisy_gd_construction, xi_path_params
from lintrans.params import LinearAttentionParams
from lintrans.tasks import sample_linear
from lintrans.truncation import truncate_params

D_IN, N, L, B, BSHOT = 3, 16, 3, 4, 4


@partial(jax.jit, static_argnums=(1, 2, 3))
def _prompts(key, n_demos=N, n_prompts=B, noise=0.0):
    return sample_linear(key, n_prompts, n_demos, D_IN, noise_std=noise, dtype=jnp.float64).H


def _generic(seed=0, D=D_IN + 1, layers=L, scale=0.3):
    z = scale / np.sqrt(D) * jax.random.normal(jax.random.PRNGKey(seed), (3, layers, D, D), jnp.float64)
    return LinearAttentionParams(*(0.35 * (jnp.eye(D) + np.sqrt(D) * a) for a in z))


_t2 = jax.jit(theorem2_bound, static_argnames=("b", "form", "mask", "scale", "method"))  # one compile per shape
_bound = partial(_t2, b=BSHOT)
_stats = jax.jit(prompt_stats, static_argnames=("b", "mask", "scale", "method"))


# ----------------------------------------------------------------------------- the registry


@pytest.mark.slow
def test_registry_describes_every_form_and_only_finite_continuous_ones_are_reported():
    assert set(REPORTED) == {n for n, f in FORMS.items() if f.finite and f.continuous} == {"printed_ridge", "proof_ridge"}
    assert THE_BOUND in REPORTED and bound_forms.EPS_DEFAULT in bound_forms.EPS_GRID
    for name, f in FORMS.items():
        assert f.name == name and f.expectation in ("printed", "proof") and f.covariance in ("raw", "ridge", "support")
        assert f.origin in ("paper", "this project") and f.bounds and f.note
    assert FORMS["printed_support"].origin == "this project" and not FORMS["proof_support"].continuous
    params, H = _generic(), _prompts(jax.random.PRNGKey(1))
    out = bound_summands(_stats(params, H, BSHOT), 16)
    assert set(FORMS) <= set(out), "bound_summands computes every registry form"
    for name in ("printed_support", "proof_raw"):
        with pytest.raises(ValueError, match="cannot be reported as the bound"):
            theorem2_bound(params, H, BSHOT, form=name)
    with pytest.raises(ValueError, match="form must be one of"):
        bound_forms.get_form("ridge")


# ----------------------------------------------------------------------------- continuity


def test_reported_bound_is_continuous_as_weight_noise_goes_to_zero_while_the_support_form_jumps():
    """Weight noise 1e-2 … 1e-8 → 0 on the GD construction (exact: rank C_t = d_in, generic: 6).

    The reported forms converge: measured |f(σ) − f(0)|/f(0) ≈ 3e-3 at 1e-4, 3e-7 at 1e-6, 2e-9 at 1e-8
    (quadratic); asserted ≤ 10·σ. The support-restricted diagnostic jumps (by > 10 %) between 1e-8 and 0.
    """
    levels = jnp.array([1e-2, 1e-4, 1e-6, 1e-8, 0.0])  # 5 models: the same compiled call as the ξ path's 5 ranks
    fam = noisy_gd_construction(jax.random.PRNGKey(0), D_IN, N, L, levels)
    path = continuity_path(fam, _prompts(jax.random.PRNGKey(1)), BSHOT, eps=1e-3)
    for form in REPORTED:
        f = path[form]
        assert np.all(np.isfinite(f)), f"{form} finite at every noise level"
        rel = np.abs(f[:-1] - f[-1]) / f[-1]
        assert np.all(rel[1:] <= 10 * np.asarray(levels[1:-1])), f"{form}: |f(σ) − f(0)|/f(0) ≤ 10σ, got {rel}"
    assert np.all(path["rank_min"][-1] == D_IN) and np.all(path["rank_max"][:-1] == 6), "rank d_in exact, 6 generic"
    jump = abs(path["proof_support"][-2] - path["proof_support"][-1]) / path["proof_support"][-1]
    assert jump > 0.1, f"the support form is discontinuous at exact weights (jump {jump:.3g}), hence not reported"


def test_reported_bound_along_xi_changes_only_where_the_kept_rank_changes_and_is_continuous_in_the_singular_values():
    params, H = _generic(seed=2), _prompts(jax.random.PRNGKey(3))
    xis = np.linspace(0.0, 0.99, 34)
    fam, ranks, where = xi_path_params(params, 2, "V", xis)
    path = continuity_path(fam, H, BSHOT, eps=1e-3)
    f = path["proof_ridge"][where]
    same = ranks[1:] == ranks[:-1]
    assert np.all(f[1:][same] == f[:-1][same]), "equal kept rank → the same clip → the same value (bitwise)"
    assert np.all(f[1:][~same] != f[:-1][~same]) and np.sum(~same) == 4, "a step at each of the 4 rank changes"
    # at a rank change the clipped matrix moves continuously if its last singular value shrinks to 0
    u, s, vt = np.linalg.svd(np.asarray(params.w_v[1]))
    alphas = jnp.array([1e-2, 1e-4, 1e-6, 1e-8, 0.0])
    soft = jax.vmap(lambda a: params._replace(w_v=params.w_v.at[1].set(
        jnp.asarray(u) @ jnp.diag(jnp.asarray(s).at[-1].multiply(a)) @ jnp.asarray(vt))))(alphas)
    g = continuity_path(soft, H, BSHOT, eps=1e-3)["proof_ridge"]
    clipped = f[np.flatnonzero(ranks == 3)[0]]
    assert g[-1] == pytest.approx(clipped, rel=1e-10), "α = 0 is the rank-3 clip (rtol 1e-10: two SVDs)"
    assert np.all(np.abs(g[:-1] - g[-1]) / g[-1] <= 10 * np.asarray(alphas[:-1])), f"continuous as α → 0: {g}"


# ----------------------------------------------------------------------------- ranks


@partial(jax.jit, static_argnames=("mask", "method"))
def _ranks_jit(params, H, mask, method):
    st = prompt_stats(params, H, 2, mask=mask, method=method)
    return st, jax.vmap(lambda h: structural_rank_bound(h, params.n_layers, mask=mask))(H)


def _ranks(params, H, mask="demos", method="auto"):
    st, bnd = _ranks_jit(params, H, mask=mask, method=method)
    return np.asarray(st.rank), np.asarray(bnd), st


@pytest.mark.slow
@pytest.mark.parametrize("method", ["factored", "direct"])
def test_rank_of_C_t_beside_its_structural_bound_in_every_case(method):
    """Each case of the rank statement (SPEC §7), on both paths (the direct one also under the causal mask);
    tolerance σ_max·max(k, d)·ε_mach on the singular values of C_t's factor (a scale bound of it on the
    direct path)."""
    gen = _generic(seed=4)
    # generic weights, N = 16 > 6: rank d_in(d_in+1)/2 = 6 = the bound; with label noise D(D+1)/2 = 10
    r, bnd, _ = _ranks(gen, _prompts(jax.random.PRNGKey(5)), method=method)
    assert np.all(r == 6) and np.all(bnd == 6)
    r, bnd, _ = _ranks(gen, _prompts(jax.random.PRNGKey(5), N, B, 0.5), method=method)
    assert np.all(r == 10) and np.all(bnd == 10)
    # small N = 4: at most N − 1 = 3 centred directions
    r, bnd, _ = _ranks(gen, _prompts(jax.random.PRNGKey(6), 4, B), method=method)
    assert np.all(r == 3) and np.all(bnd == 3), "rank C_t = N − 1 when N − 1 < d_in(d_in+1)/2"
    # the exact GD construction: d_in, with or without label noise (the bound stays 6 / 10)
    gd = noisy_gd_construction(jax.random.PRNGKey(0), D_IN, N, L, 0.0)
    for noise, b_ in ((0.0, 6), (0.5, 10)):
        r, bnd, _ = _ranks(gd, _prompts(jax.random.PRNGKey(7), N, B, noise), method=method)
        assert np.all(r == D_IN) and np.all(bnd == b_), f"GD construction: rank d_in (label noise {noise})"
    # W_V of layer 2 clipped to rank 1 (ξ = 0.75): that term drops to d_in, the others stay 6
    clipped, _ = truncate_params(gen, 2, "V", 0.75)
    r, _, _ = _ranks(clipped, _prompts(jax.random.PRNGKey(5)), method=method)
    assert np.all(r[:, 1] == D_IN) and np.all(r[:, [0, 2]] == 6)
    # small weight directions (singular values 1 … 1e-6): genuine eigenvalues far below 1e-12·λ_max are counted
    u = jax.random.orthogonal(jax.random.PRNGKey(8), 4, (3, L), jnp.float64)
    sv = jnp.array([1.0, 0.3, 1e-4, 1e-6])
    small = LinearAttentionParams(*(0.4 * u[i] @ (sv[:, None] * jnp.swapaxes(u[(i + 1) % 3], -1, -2)) for i in range(3)))
    r, _, st = _ranks(small, _prompts(jax.random.PRNGKey(5)), method=method)
    lam = np.asarray(st.eigvals)
    kept_min = np.min(np.take_along_axis(lam, lam.shape[-1] - r[..., None], axis=-1)[..., 0] / lam[..., -1])
    assert np.all(r == 6), "trained-like weights: every generic direction counted"
    assert kept_min < 1e-12, f"… including eigenvalues below the old 1e-12·λ_max cut (smallest kept {kept_min:.1e})"
    if method == "direct":  # the causal mask: each token moves by its own matrix from layer 2 on
        r, bnd, _ = _ranks(gen, _prompts(jax.random.PRNGKey(5)), mask="causal", method=method)
        assert np.all(r[:, 0] == 6) and np.all(bnd[:, 0] == 6), "layer 1 sees the raw tokens: d_in(d_in+1)/2"
        assert np.all(r[:, 1:] > 6) and np.all(r[:, 1:] <= bnd[:, 1:]) and np.all(bnd[:, 1:] == 10), "≤ D(D+1)/2"


# ----------------------------------------------------------------------------- the public entry point


@pytest.mark.slow
def test_theorem2_bound_agrees_across_paths_vmaps_over_models_and_matches_the_formula():
    params, H = _generic(seed=9), _prompts(jax.random.PRNGKey(10))
    out = _bound(params, H)
    direct = _bound(params, H, method="direct")
    assert out.summands.shape == (L,) and out.rank.shape == (B, L) and out.rank_bound.shape == (B, L)
    np.testing.assert_allclose(out.summands, direct.summands, rtol=1e-10, err_msg="factored = direct path (rtol 1e-10)")
    assert float(out.over_R) == pytest.approx(np.sqrt(float(out.total) / N), rel=1e-14)
    st = _stats(params, H, BSHOT)
    ref = bound_summands(st, 16, eps=(1e-3,))["proof_ridge"][0]
    np.testing.assert_allclose(out.summands, ref, rtol=1e-12, err_msg="= bound_summands' proof_ridge (rtol 1e-12)")
    fam = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a]), params)
    both = _bound(fam, H)
    half = _bound(jax.tree_util.tree_map(lambda a: 0.5 * a, params), H)
    assert both.total.shape == (2,) and both.rank.shape == (2, B, L)
    np.testing.assert_allclose(both.summands, np.stack([out.summands, half.summands]), rtol=1e-12)
    assert np.all(np.asarray(out.summands) >= 0), "summands ≥ 0 (AM–GM)"


@pytest.mark.parametrize("kwargs, match", [
    ({"b": N}, "must be < N"),
    ({"eps": 0.0}, "eps must be"),
    ({"eps": float("nan")}, "eps must be"),
    ({"mask": "causal", "method": "factored"}, "demos"),
    ({"method": "eigh"}, "method must be"),
    ({"mask": "full"}, "mask"),
])
def test_theorem2_bound_bad_inputs(kwargs, match):
    params, H = _generic(), _prompts(jax.random.PRNGKey(1))
    b = kwargs.pop("b", BSHOT)
    with pytest.raises(ValueError, match=match):
        theorem2_bound(params, H, b, **kwargs)
    with pytest.raises(ValueError, match="float64"):
        theorem2_bound(params, H.astype(jnp.float32), BSHOT)
    with pytest.raises(ValueError, match="shape"):
        theorem2_bound(params, H[0], BSHOT)
