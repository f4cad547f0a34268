"""The statistics behind the pruning-phenomenon and Algorithm 1 claims (lintrans.phenomenon,
lintrans.clip_seeds): rank correlation with depth, the prompt bootstrap, when a verdict is drawn."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lintrans import clip_seeds, phenomenon


def test_spearman_with_depth_hand_cases():
    s = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0], [1.0, 3.0, 2.0, 4.0]])
    rho = phenomenon.spearman_with_depth(s)
    # ρ = 1 − 6 Σ d² / (n (n² − 1)); row 4: d = (0, 1, −1, 0) → 1 − 12/60 = 0.8
    np.testing.assert_allclose(rho, [1.0, -1.0, 0.0, 0.8], atol=1e-12, err_msg="Spearman hand cases")
    # ties share their average rank: (1, 1, 2) against (1, 2, 3) → ranks (1.5, 1.5, 3): ρ = √3/2
    np.testing.assert_allclose(phenomenon.spearman_with_depth(np.array([1.0, 1.0, 2.0])), np.sqrt(3) / 2, atol=1e-12)
    assert phenomenon.spearman_with_depth(np.array([[7.0]])).tolist() == [0.0], "one layer: no ordering"


def _errors(rng, S, L, R, B, step, noise):
    """Per-prompt errors (S, L, 1 + R, B): unpruned ≈ 1, clipping layer t raises the error by
    1 + 0.1 · (L − t) · step (falling with depth), plus independent prompt noise of std ``noise``."""
    base = 1.0 + noise * rng.standard_normal((S, 1, 1, B))
    errs = np.repeat(np.repeat(base, L, axis=1), 1 + R, axis=2).copy()
    for t in range(L):
        errs[:, t, 1:] *= 1 + 0.1 * (L - t) * step
        errs[:, t, 1:] += noise * rng.standard_normal((S, R, B))
    return np.abs(errs)


def test_prompt_bootstrap_resolves_a_real_trend_and_not_noise():
    rng = np.random.default_rng(0)
    changed = np.array([True, True])
    clear = phenomenon.prompt_bootstrap_rho(jax.random.PRNGKey(0), _errors(rng, 2, 4, 2, 400, 1.0, 0.01), changed)
    assert clear["high"] < 0 and clear["mean"] < -0.9, "a depth trend far above the prompt noise is resolved"
    tiny = phenomenon.prompt_bootstrap_rho(jax.random.PRNGKey(0), _errors(rng, 2, 4, 2, 400, 1e-3, 0.3), changed)
    assert tiny["low"] < 0 < tiny["high"], "differences of 1e-4 under prompt noise 0.3 are not resolved"
    assert tiny["used"] == tiny["n_boot"] == phenomenon.N_BOOT


def _trend(per_seed):
    return phenomenon.depth_trend(np.asarray(per_seed, dtype=np.float64))


def test_depth_verdict_needs_seeds_and_prompts():
    deep = [[3.0, 2.0, 1.0, 0.5], [2.5, 2.2, 0.9, 0.1], [4.0, 3.0, 1.0, 0.2]]
    resolved = {"mean": -0.95, "low": -1.0, "high": -0.8, "used": 200}
    unresolved = {"mean": -0.4, "low": -1.0, "high": 0.3, "used": 200}
    assert phenomenon.depth_verdict(_trend(deep), resolved).startswith("deep layers are steadier")
    text = phenomenon.depth_verdict(_trend(deep), unresolved)
    assert text.startswith("inconclusive") and "not resolved by the test prompts" in text
    one = phenomenon.depth_verdict(_trend(deep[:1]), resolved)
    assert one.startswith("inconclusive") and "n = 1" in one, "one seed: no interval, no claim"
    mixed = [[3.0, 2.0, 1.0, 0.5], [0.5, 1.0, 2.0, 3.0]]
    text = phenomenon.depth_verdict(_trend(mixed), resolved)
    assert text.startswith("inconclusive") and "contains 0" in text
    shallow = [list(reversed(r)) for r in deep]
    assert phenomenon.depth_verdict(_trend(shallow), {"mean": 0.9, "low": 0.8, "high": 1.0, "used": 200}).startswith(
        "shallow layers are steadier")


def test_steadiness_statistics_hand_case():
    lr = np.array([[[0.0, 0.3, -0.1, 2.0]]])  # (S=1, L=1, R=4); ξ = 0 (first) changes nothing
    st = phenomenon.steadiness(lr, np.array([False, True, True, True]))
    assert (st["worst"].item(), st["best"].item()) == (2.0, -0.1)
    np.testing.assert_allclose([st["spread"].item(), st["frac_improve"].item()], [2.1, 1 / 3], atol=1e-12)


def _report(rel, rel_se, before=1.0, layer=4):
    return {"xi_star": 0.5, "test_before": before, "test_after": before * (1 + rel), "test_delta": before * rel,
            "test_delta_se": before * rel_se, "layer": layer, "ranks_star": [2, 2, 2]}


def test_clip_summary_interval_is_not_tighter_than_the_prompt_noise():
    """Three seeds agreeing to 1e-6 while each seed's prompt interval (±2 %) crosses 0: the mean's
    interval is the prompt noise, the verdict inconclusive, no seed resolved."""
    s = clip_seeds.summarize([_report(4e-4 + 1e-6 * i, 0.01) for i in range(3)])
    c = s["relative_change"]
    assert c["interval_basis"] == "prompt noise"
    z = 1.959963984540054
    np.testing.assert_allclose(c["half_width"], z * np.sqrt(3 * 0.01**2) / 3, rtol=1e-9, err_msg="z √(Σ se²) / S")
    assert c["low_shown"] < 0 < c["high_shown"] and c["verdict"].startswith("inconclusive")
    assert s["resolved_seeds"] == 0 and s["improved_seeds"] == 0
    # a clear, consistent improvement over seeds, far beyond the prompt noise: a verdict
    s = clip_seeds.summarize([_report(-0.10 - 0.01 * i, 0.001) for i in range(3)])
    assert s["relative_change"]["interval_basis"] == "seeds (t)"
    assert s["relative_change"]["verdict"].startswith("clipping at ξ* lowers the test error")
    assert s["resolved_seeds"] == s["significant_improvement_seeds"] == 3
    one = clip_seeds.summarize([_report(-0.10, 0.001)])
    assert one["relative_change"]["verdict"].startswith("inconclusive") and np.isnan(one["xi_star"]["se"])


def test_clip_table_prints_interval_and_verdict():
    rows = [{"model": "linear", "group": "attn", "summary": clip_seeds.summarize([_report(4e-4, 0.01)] * 2)}]
    text = clip_seeds.table({"rows": rows})
    assert "test error before → after" in text and "linear/attn: inconclusive" in text
    assert "± 0.00 %" not in text


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((3, 3))])
def test_n_seeds_of_refuses_ragged_seed_axes(bad):
    tree = {"a": np.zeros((2, 4)), "b": bad}
    if bad.shape[0] == 2:
        assert phenomenon.n_seeds_of(tree) == 2
    else:
        with pytest.raises(ValueError, match="one leading seed axis"):
            phenomenon.n_seeds_of(tree)
