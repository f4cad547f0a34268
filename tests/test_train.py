"""The training loop (lintrans.train): losses, zeroed demonstrations, curriculum, seeds, NaN guard.

Identities in float64 (tests/conftest.py enables x64) at rtol 1e-12.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lintrans import attention, checkpoint
from lintrans.batched import TINY_MATMUL_MAX_DIM
from lintrans.numerics import rel_err
from lintrans.params import init_params
from lintrans.tasks import sample_linear
from lintrans.trajectory import trajectory
from lintrans.train import (
    Curriculum,
    TrainConfig,
    TrainingDivergedError,
    batch_loss,
    config_from_dict,
    config_to_dict,
    init_state,
    learning_rate,
    linear_query_predict,
    make_train_step,
    sample_batch,
    seed_keys,
    softmax_config,
    train,
)

RTOL = 1e-12

#: The tiny run shared with tests/test_checkpoint.py (one compiled step serves both files).
TINY = dict(d_in=3, n_demos=6, n_layers=2, batch_size=8, steps=30, warmup_steps=5, lr=1e-2, dtype="float64",
            checkpoint_every=10, log_every=5)
#: The tiny softmax model shared with tests/test_checkpoint.py.
SOFTMAX = dict(model="softmax", d_in=3, n_demos=6, n_layers=2, width=8, n_heads=2, mlp_width=16, dtype="float64")


@jax.jit  # one compilation per tree (eagerly, rel_err's primitives compile once per leaf shape)
def _tree_rel_errs(a, b):
    return jnp.stack([rel_err(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))])


def _tree_rel_err(a, b):
    """The largest rel_err over the leaves (NaN if any is NaN)."""
    return float(np.max(np.asarray(_tree_rel_errs(a, b))))


def _seed(tree, i):
    """Seed ``i``'s slice of every leaf, sliced in numpy and put back by jax.device_put (an eager slice or jnp.asarray compiles once per leaf shape)."""
    return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x)[i]), tree)


@pytest.mark.slow
@pytest.mark.parametrize("d_in", [3, TINY_MATMUL_MAX_DIM])  # D = 4 (fused products), D = 9 (einsum)
def test_fast_loss_and_gradients_equal_token_reference(d_in):
    """Training loss through the batched and Gram paths == token-by-token forward, gradients too (float64),
    3 layers, at a D on each side of lintrans.batched.TINY_MATMUL_MAX_DIM.

    With k_min (zeroed demonstrations, true count in s = 1/k); tests/test_icl_scripts.py checks
    s = 1 against the benchmark's naive attention matrix."""
    cfg = TrainConfig(**{**TINY, "n_layers": 3, "d_in": d_in}, k_min=2, init_std=0.3)
    params = _seed(init_state(cfg).params, 0)
    batch = jax.jit(lambda key: sample_batch(cfg, key, 1))(seed_keys(cfg)[1][0])

    @functools.partial(jax.jit, static_argnums=1)
    def value_and_grad(p, path):
        return jax.value_and_grad(lambda q: batch_loss(cfg, q, batch, path))(p)

    ref = value_and_grad(params, "tokens")
    assert float(ref[0]) > 0
    for path in ("batched", "gram"):
        fast = value_and_grad(params, path)
        assert float(rel_err(fast[0], ref[0])) <= RTOL, f"loss, D={d_in + 1}: {path} path vs token-by-token, rtol 1e-12"
        assert _tree_rel_err(fast[1], ref[1]) <= RTOL, f"gradients, D={d_in + 1}: {path} path vs token-by-token, rtol 1e-12"


@jax.jit
def _zeroed_vs_truncated(params, H):
    """rel. errors, every (k, mask, scale, path): zeroed demos with true count k vs the sliced prompt.

    The zeroed prompts share one shape, so they run vmapped over k (half the program to compile);
    each truncated prompt has its own shape."""
    N = H.shape[1] - 1
    ks = jnp.arange(1, N + 1)
    col = jnp.arange(N + 1)
    zeroed = jax.vmap(lambda k: jnp.where((col >= k) & (col < N), 0.0, H))(ks)  # demos k+1..N set to 0
    # ŷ is one coordinate of the final query state q_L, computed with the rest of it, so the error is
    # relative to max(|ŷ|, ‖q_L‖): a coordinate that nearly cancels (seed 1482, k = 2: ŷ = 4.7e-4 with
    # ‖q_L‖ = O(1)) cannot be computed to 1e-12 of itself (it failed at 6.8e-12 of |ŷ| by rounding alone).
    errs = []
    for mask in ("demos", "causal"):
        for scale in ("1", "1/N"):
            trunc = [jnp.concatenate([H[:, :k], H[:, N:]], axis=1) for k in range(1, N + 1)]
            want = jnp.stack([attention.predict_tokens(params, h, mask=mask, scale=scale) for h in trunc])
            q_norm = jnp.stack([jnp.linalg.norm(trajectory(params, h, mask=mask, scale=scale).states[-1][:, -1])
                                for h in trunc])
            for path in ("gram", "tokens"):
                got = jax.vmap(lambda h, k: linear_query_predict(params, h, k, mask=mask, scale=scale,
                                                                 readout=1, path=path))(zeroed, ks)
                errs.append(jnp.abs(got - want) / jnp.maximum(jnp.abs(want), q_norm))
    return jnp.concatenate(errs)


@jax.jit  # weights and one prompt in one compilation (op by op, every primitive compiles on its own)
def _weights_and_prompt(key, N=5, d=3):
    k_p, k_h = jax.random.split(key)
    return init_params(k_p, 3, d + 1, 0.8, jnp.float64), sample_linear(k_h, 1, N, d, dtype=jnp.float64).H[0]


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_zeroed_demonstrations_equal_truncated_prompt(seed):
    """Zeroing demonstrations k+1..N (true count k in the scale) == the prompt sliced to k demos,
    for every k, both masks, both scales, both forward paths (error ≤ 1e-12 of max(|ŷ|, ‖q_L‖))."""
    N = 5
    params, H = _weights_and_prompt(jax.random.PRNGKey(seed))
    errs = np.asarray(_zeroed_vs_truncated(params, H))
    assert errs.shape == (N * 8,)
    assert errs.max() <= RTOL, f"zeroed vs truncated prompt: max error relative to max(|y|, |q_L|) {errs.max():.2e} > 1e-12"


def test_zero_demonstration_contributes_nothing_to_delta_w():
    """A zero token adds nothing to ΔW_t, G_t, W_t at any layer and stays exactly zero."""
    d, N = 3, 5
    params = jax.jit(lambda k: init_params(k, 3, d + 1, 0.8, jnp.float64))(jax.random.PRNGKey(1))
    H = np.asarray(jax.jit(lambda k: sample_linear(k, 1, N, d, dtype=jnp.float64).H[0])(jax.random.PRNGKey(2)))
    padded = np.concatenate([H[:, :N], np.zeros((d + 1, 2)), H[:, N:]], axis=1)

    @jax.jit  # both trajectories and their errors, one compilation
    def compare(params, H, padded):
        a = trajectory(params, H, mask="demos", scale="1")
        b = trajectory(params, padded, mask="demos", scale="1")
        return [rel_err(getattr(a, name), getattr(b, name)) for name in ("delta_w", "G", "W")], b.states

    errs, states = compare(params, H, padded)
    for name, err in zip(("delta_w", "G", "W"), errs):  # exact in exact arithmetic; summation order differs
        assert float(err) <= RTOL, f"{name}: two zero demos appended"
    np.testing.assert_array_equal(np.asarray(states)[:, :, N:N + 2], 0.0, err_msg="zero tokens stay zero")


def test_curriculum_batch_zero_pads_inputs_and_demonstrations():
    cur = Curriculum(d_start=2, d_step=1, n_start=3, n_step=2, every=5)
    cfg = TrainConfig(**TINY, curriculum=cur)
    assert [tuple(map(int, cur.active(t, 3, 6))) for t in (1, 5, 6, 11, 100)] == [(2, 3), (2, 3), (3, 5), (3, 6), (3, 6)]
    sample = jax.jit(lambda key: sample_batch(cfg, key, 1))
    b = sample(jax.random.PRNGKey(0))
    H = np.asarray(b.H)
    assert int(b.d_active) == 2 and int(b.n_active) == 3
    np.testing.assert_array_equal(H[:, 2, :], 0.0, err_msg="inactive input coordinate is zero")
    np.testing.assert_array_equal(H[:, :, 3:6], 0.0, err_msg="inactive demonstrations are zero")
    assert np.all(np.abs(H[:, :2, :3]) > 0) and np.all(np.abs(H[:, :2, 6]) > 0)
    np.testing.assert_array_equal(np.asarray(b.n_true), 3)
    b2 = sample(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(b2.H), H, err_msg="same key, same batch")


def test_variable_k_draws_the_documented_range():
    cfg = TrainConfig(**{**TINY, "batch_size": 512}, k_min=2)
    b = jax.jit(lambda key: sample_batch(cfg, key, 1))(jax.random.PRNGKey(3))
    n = np.asarray(b.n_true)
    assert n.min() == 2 and n.max() == 6
    H = np.asarray(b.H)
    for i in range(20):
        np.testing.assert_array_equal(H[i, :, n[i]:6], 0.0)
        assert np.all(H[i, :3, : n[i]] != 0)


@pytest.mark.slow
def test_softmax_curriculum_loss_equals_truncated_prompts():
    """Softmax model with n_active < N: the loss only sees positions 0..n_active == truncated prompts."""
    from lintrans.transformer import softmax_predict_all

    cur = Curriculum(d_start=3, d_step=0, n_start=2, n_step=1, every=100)
    cfg = TrainConfig(**{**TINY, **SOFTMAX}, seeds=2, curriculum=cur)
    params = _seed(init_state(cfg).params, 0)
    b = jax.jit(lambda key: sample_batch(cfg, key, 1))(jax.random.PRNGKey(4))
    got = jax.jit(lambda p: batch_loss(cfg, p, b))(params)
    scfg = softmax_config(cfg)

    @jax.jit
    def want_fn(p):
        trunc = b.H[:, :, :3]  # x_1, x_2 demonstrations and x_3 as the query
        preds = jax.vmap(lambda h: softmax_predict_all(p, h, scfg))(trunc)
        return jnp.mean((preds - b.H[:, -1, :3]) ** 2) / 3

    want = want_fn(params)
    assert float(rel_err(got, want)) <= RTOL, "softmax curriculum loss vs truncated prompts, rtol 1e-12"


@pytest.mark.slow
def test_vmapped_seeds_equal_separate_runs_and_same_seed_same_numbers():
    """Seed index i of a 2-seed run equals a 1-seed run with seed 3+i. The identity is the step: loss
    and gradient of the vmapped step equal the one-seed step's to rtol 1e-12 (read after step 1, whose
    learning rate is 0 at the start of the warm-up, so Adam's moments are 0.1·g and 0.001·g²). The
    30-step runs agree to 1e-6, not 1e-12: the two programs sum in other orders (vmap changes the
    batched shapes), and Adam's g/(√ν + ε) turns the ~1e-16 absolute rounding of a gradient entry of
    size ~ε = 1e-8 into a ~1e-8 relative change of that entry's step (measured 5.8e-8 after 30 steps,
    3.4e-16 after 5); tests/test_sharding.py bounds the same effect the same way."""
    cfg = TrainConfig(**TINY, seed=3, seeds=2)
    bad = jnp.full((2, 2), -1, jnp.int32)
    s0 = init_state(cfg)
    step_two = make_train_step(cfg)(s0.params, s0.opt_state, seed_keys(cfg)[1], jnp.int32(1), bad)
    assert _tree_rel_err(step_two[0], s0.params) == 0.0, "step 1 must not move the weights (warm-up from lr 0)"
    together = train(cfg, quiet=True).state
    for i in range(2):
        one = dataclasses.replace(cfg, seed=3 + i, seeds=1)
        s1 = init_state(one)
        step_one = make_train_step(one)(s1.params, s1.opt_state, seed_keys(one)[1], jnp.int32(1), bad[:1])
        for what, a, b in (("Adam moments after step 1 (the gradient)", step_two[1], step_one[1]),
                           ("loss at step 1", step_two[2], step_one[2])):
            fa, fb = ([x for x in jax.tree_util.tree_leaves(t) if jnp.issubdtype(x.dtype, jnp.floating)] for t in (a, b))
            assert _tree_rel_err(_seed(fa, i), _seed(fb, 0)) <= RTOL, f"seed index {i}: {what}, vmapped vs alone, rtol 1e-12"
        alone = train(one, quiet=True).state
        assert _tree_rel_err(_seed(together.params, i), _seed(alone.params, 0)) <= 1e-6, \
            f"seed index {i}: 30 Adam steps, vmapped vs separate run, rtol 1e-6"
    again = train(cfg, quiet=True).state
    for a, b in zip(jax.tree_util.tree_leaves(together), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg="same seed, same numbers (bitwise)")
    assert not np.array_equal(np.asarray(together.params.w_k[0]), np.asarray(together.params.w_k[1]))


@pytest.mark.slow
def test_what_seed_index_i_shares_with_a_one_seed_run():
    """Seed index i of a run with seed a and a one-seed run with seed a+i: bitwise the same initial
    state and the same training prompts at every step (the sampler is elementwise in the keys, also
    under vmap); the trained weights then agree to rounding (previous test), not bitwise."""
    cfg = TrainConfig(**TINY, seed=3, seeds=3, k_min=2)
    together = init_state(cfg)
    keys = seed_keys(cfg)[1]
    sample_all = jax.jit(jax.vmap(lambda k, t: sample_batch(cfg, jax.random.fold_in(k, t), t), in_axes=(0, None)))
    batches = sample_all(keys, 7)
    for i in range(3):
        one = dataclasses.replace(cfg, seed=3 + i, seeds=1)
        alone = init_state(one)
        for a, b in zip(jax.tree_util.tree_leaves((together.params, together.opt_state)),
                        jax.tree_util.tree_leaves((alone.params, alone.opt_state))):
            np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b)[0], err_msg="initial state, bitwise")
        mine = sample_all(seed_keys(one)[1], 7)
        for field in ("H", "targets", "n_true", "query"):
            np.testing.assert_array_equal(np.asarray(getattr(batches, field))[i], np.asarray(getattr(mine, field))[0],
                                          err_msg=f"batch {field} at step 7, bitwise")


# sampler="tokens": the draws this divergence was set up on (with other draws Adam's ν can overflow
# to Inf before any weight does, which the guard does not check; issue 14's report).
NAN_CFG = dict(d_in=3, n_demos=6, n_layers=4, steps=40, batch_size=8, lr=0.1, warmup_steps=0, clip_norm=0.0,
               init_std=0.25, dtype="float32", checkpoint_every=2, log_every=1, scale="1", sampler="tokens")


@pytest.mark.slow
def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(**NAN_CFG)
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"non-finite (loss|weights or optimizer state) at step \d+") as info:
        train(cfg, run, quiet=True)
    bad_step = info.value.step
    steps = checkpoint.list_checkpoints(run)
    assert steps and max(steps) < bad_step, "no checkpoint at or after the bad step"
    assert f"last good checkpoint: step {max(steps)}" in str(info.value)
    params, _, step = checkpoint.load_run(run)  # validates: finite, right shapes
    assert step == max(steps)
    # The named step is the first non-finite one, checked with the step function directly.
    step_fn = make_train_step(cfg)
    state = init_state(cfg)
    p, o = state.params, state.opt_state
    bad = jnp.full((1, 2), -1, jnp.int32)
    for t in range(1, bad_step + 1):
        if t - 1 == max(steps):
            np.testing.assert_array_equal(np.asarray(p.w_k), np.asarray(params.w_k), err_msg="checkpoint intact")
        p, o, loss, _, bad = step_fn(p, o, seed_keys(cfg)[1], jnp.int32(t), bad)
        leaves = [x for x in jax.tree_util.tree_leaves((p, o)) if jnp.issubdtype(x.dtype, jnp.floating)]
        finite = bool(jnp.isfinite(loss).all()) and all(bool(jnp.isfinite(x).all()) for x in leaves)
        assert finite == (t < bad_step), f"step {t}: finite={finite}, named step {bad_step}"


def test_learning_rate_schedule():
    cfg = TrainConfig(**{**TINY, "steps": 100, "warmup_steps": 10, "lr": 0.5, "final_lr_frac": 0.1})
    lr = learning_rate(cfg)
    assert float(lr(0)) == 0.0 and math.isclose(float(lr(10)), 0.5, rel_tol=1e-6)
    assert math.isclose(float(lr(5)), 0.25, rel_tol=1e-6)
    assert math.isclose(float(lr(100)), 0.05, rel_tol=1e-6)
    assert math.isclose(float(lr(55)), 0.05 + 0.45 * 0.5, rel_tol=1e-5), "cosine midpoint"


def test_config_round_trip_and_validation():
    cfg = TrainConfig(**TINY, curriculum=Curriculum(1, 1, 2, 1, 3), k_min=2)
    d = config_to_dict(cfg)
    assert d["softmax"] is None and d["seed_values"] == [0]
    assert config_from_dict(d) == cfg
    s = config_to_dict(TrainConfig(model="softmax", d_in=4, n_demos=5, width=8, n_heads=2))
    assert s["softmax"] == {"d_in": 4, "n_demos_max": 5, "n_layers": 1, "width": 8, "n_heads": 2, "mlp_width": 256}
    bad = [({"model": "mlp"}, "model"), ({"n_layers": 0}, "n_layers"), ({"scale": "2"}, "scale"),
           ({"k_min": 7}, "k_min"), ({"lr": 0.0}, "lr"), ({"warmup_steps": 99}, "warmup_steps"),
           ({"dtype": "float16"}, "dtype"), ({"model": "softmax", "k_min": 2}, "k_min"),
           ({"model": "softmax", "width": 10, "n_heads": 4}, "n_heads")]
    for change, word in bad:
        with pytest.raises(ValueError, match=word):
            TrainConfig(**{**TINY, **change})
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict({**d, "colour": 1})
