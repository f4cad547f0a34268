"""Run directories (lintrans.checkpoint): atomic round trips, resume after SIGKILL, refusals."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from lintrans import checkpoint
from lintrans.params import LinearAttentionParams
from lintrans.train import TrainConfig, TrainState, config_to_dict, init_state, train

#: Same as tests/test_train.py's TINY (shared compiled step when the suite runs in one process).
TINY = dict(d_in=3, n_demos=6, n_layers=2, batch_size=8, steps=30, warmup_steps=5, lr=1e-2, dtype="float64",
            checkpoint_every=10, log_every=5)
#: Same as tests/test_train.py's SOFTMAX.
SOFTMAX = dict(model="softmax", d_in=3, n_demos=6, n_layers=2, width=8, n_heads=2, mlp_width=16, dtype="float64")


def _at_step(state, step):
    """``state`` moved to ``step``, its optimizer step counts with it (a consistent checkpoint)."""
    def count(path, x):
        return np.full_like(np.asarray(x), step) if jax.tree_util.keystr(path).endswith("count") else x

    return state._replace(opt_state=jax.tree_util.tree_map_with_path(count, state.opt_state), step=step)


def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "softmax"])
def test_round_trip_is_bitwise_and_atomic(tmp_path, kind):
    cfg = TrainConfig(**(TINY if kind == "linear" else SOFTMAX), seeds=2)
    state = init_state(cfg)
    run = tmp_path / "run"
    assert checkpoint.prepare_run_dir(run, cfg, resume=False) is None
    state = _at_step(TrainState(jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.5, state.params), state.opt_state, 0), 7)
    checkpoint.save_checkpoint(run, cfg, state)
    assert sorted(p.name for p in run.iterdir()) == ["ckpt_00000007.npz", "config.json"], "no temporary files left"
    assert checkpoint.list_checkpoints(run) == [7]
    back = checkpoint.load_state(run, cfg, 7)
    assert back.step == 7
    _leaves_equal(back.params, state.params)
    _leaves_equal(back.opt_state, state.opt_state)
    params, cfg_dict, step = checkpoint.load_run(run)
    assert step == 7 and cfg_dict == json.loads(json.dumps(config_to_dict(cfg)))
    _leaves_equal(params, state.params)
    if kind == "linear":
        one, _ = checkpoint.load_linear_params(run, seed_index=1)
        assert isinstance(one, LinearAttentionParams)
        np.testing.assert_array_equal(np.asarray(one.w_v), np.asarray(state.params.w_v[1]))
        with pytest.raises(ValueError, match="not a 'softmax' run"):
            checkpoint.load_softmax_run_params(run)
    else:
        one, scfg, _ = checkpoint.load_softmax_run_params(run, seed_index=1)
        assert scfg.width == 8 and scfg.n_demos_max == 6
        np.testing.assert_array_equal(np.asarray(one.w_in), np.asarray(state.params.w_in[1]))
        with pytest.raises(ValueError, match="not a 'linear' run"):
            checkpoint.load_linear_params(run)
    loader = checkpoint.load_linear_params if kind == "linear" else checkpoint.load_softmax_run_params
    with pytest.raises(ValueError, match="seed_index"):
        loader(run, seed_index=2)
    with pytest.raises(ValueError, match="no checkpoint at step 3"):
        checkpoint.load_run(run, step=3)


def test_corrupt_truncated_and_wrong_model_checkpoints_are_refused(tmp_path):
    cfg = TrainConfig(**TINY)
    run = tmp_path / "run"
    checkpoint.prepare_run_dir(run, cfg, resume=False)
    path = checkpoint.save_checkpoint(run, cfg, _at_step(init_state(cfg), 10))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="ckpt_00000010.npz"):
        checkpoint.load_run(run)
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="ckpt_00000010.npz"):
        checkpoint.load_run(run)
    # A checkpoint that claims to be of the other model.
    path.write_bytes(data)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["__meta__"].tobytes().decode())
    arrays["__meta__"] = np.frombuffer(json.dumps({**meta, "model": "softmax"}).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"ckpt_00000010.npz: a checkpoint of a 'softmax' model"):
        checkpoint.load_run(run)
    # A linear run's checkpoint read with a softmax config: shapes do not match.
    path.write_bytes(data)
    with pytest.raises(ValueError, match="ckpt_00000010.npz"):
        checkpoint.load_state(run, TrainConfig(**{**SOFTMAX, "d_in": 3}), 10)
    # An array with the wrong shape.
    arrays = {k: v for k, v in arrays.items()}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    arrays["params/w_k"] = arrays["params/w_k"][:, :1]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="params/w_k"):
        checkpoint.load_run(run)


def test_adam_step_count_must_equal_the_checkpoint_step(tmp_path):
    """A checkpoint whose optimizer step count disagrees with its step is refused, naming both (issue 12, item 8)."""
    cfg = TrainConfig(**TINY)
    run = tmp_path / "run"
    checkpoint.prepare_run_dir(run, cfg, resume=False)
    path = checkpoint.save_checkpoint(run, cfg, _at_step(init_state(cfg), 10))
    assert checkpoint.load_state(run, cfg, 10).step == 10
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    counts = [k for k in arrays if k.startswith("opt_state/") and k.endswith("/count")]
    assert counts, "Adam's state has step counts"
    arrays[counts[0]] = arrays[counts[0]] + 3
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=rf"ckpt_00000010.npz: optimizer step count '{counts[0]}' is \[13\], "
                                         r"but the checkpoint is at step 10"):
        checkpoint.load_state(run, cfg, 10)


def test_existing_run_needs_resume_and_the_same_config(tmp_path):
    cfg = TrainConfig(**TINY)
    run = tmp_path / "run"
    checkpoint.prepare_run_dir(run, cfg, resume=False)
    with pytest.raises(ValueError, match="already holds a run"):
        checkpoint.prepare_run_dir(run, cfg, resume=False)
    with pytest.raises(ValueError, match=r"different config \(lr"):
        checkpoint.prepare_run_dir(run, TrainConfig(**{**TINY, "lr": 0.5}), resume=True)
    assert checkpoint.prepare_run_dir(run, cfg, resume=True) is None  # no checkpoint yet: from scratch


CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    from lintrans.train import config_from_dict, train

    def on_log(record):
        if record["step"] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # mid-run: after the checkpoint at 20, before 30

    train(config_from_dict(json.loads(sys.argv[2])), sys.argv[1], quiet=True, on_log=on_log)
    print("finished without being killed")
""")


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    cfg = TrainConfig(**TINY)
    run = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), str(run), json.dumps(config_to_dict(cfg)), "25"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == -signal.SIGKILL, f"child was not killed: rc={proc.returncode} {proc.stderr[-2000:]}"
    assert checkpoint.list_checkpoints(run) == [0, 10, 20]
    assert [r["step"] for r in checkpoint.read_metrics(run)] == [5, 10, 15, 20, 25]

    resumed = train(cfg, run, resume=True, quiet=True)
    assert resumed.resumed_from == 20
    assert [r["step"] for r in checkpoint.read_metrics(run)] == [5, 10, 15, 20, 25, 30], "metrics past 20 replaced"
    straight = train(cfg, quiet=True)
    _leaves_equal(resumed.state.params, straight.state.params)  # bitwise
    _leaves_equal(resumed.state.opt_state, straight.state.opt_state)
    on_disk, _, step = checkpoint.load_run(run)
    assert step == 30
    _leaves_equal(on_disk, straight.state.params)
    # A finished run resumes to itself.
    again = train(cfg, run, resume=True, quiet=True)
    assert again.resumed_from == 30
    _leaves_equal(again.state.params, straight.state.params)
