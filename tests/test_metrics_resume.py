"""metrics.jsonl after an interruption (issue 12, items 7 and 2): after ``resume`` the file equals an
uninterrupted run's (timing fields aside), whether the run stopped just after a checkpoint, between
a metrics line and its checkpoint, or at a checkpoint between log steps; a run that fails before
its first step leaves no config.json behind.

checkpoint_every = 7 is not a multiple of log_every = 5, so checkpoints fall between log steps
(7, 14, 21, 28) and on one (35). float64; comparisons are exact (bitwise-equal runs).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import lintrans.train as train_module
from lintrans import checkpoint
from lintrans.train import TrainConfig, config_to_dict, train

CFG = TrainConfig(d_in=3, n_demos=6, n_layers=2, batch_size=8, steps=40, warmup_steps=5, lr=1e-2, dtype="float64",
                  checkpoint_every=7, log_every=5, seeds=2)
TIMING = ("steps_per_s", "prompts_per_s")


def _untimed(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in checkpoint.read_metrics(run_dir)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    train(CFG, run, quiet=True)
    return _untimed(run)


class _Stop(Exception):
    """Stands in for a kill: raised from a callback, it leaves the files as a kill at that point would."""


def _stop_at(step):
    def hook(arg):
        if (arg["step"] if isinstance(arg, dict) else arg) == step:
            raise _Stop
    return hook


@pytest.mark.parametrize("where, step, ckpts", [
    ("on_checkpoint", 14, [0, 7, 14]),      # just after a checkpoint between log steps (pending losses 11..14)
    ("on_log", 35, [0, 7, 14, 21, 28]),      # after the metrics line of 35, before checkpoint 35
    ("on_checkpoint", 35, [0, 7, 14, 21, 28, 35]),  # after a checkpoint on a log step
])
@pytest.mark.slow
def test_resume_reproduces_the_metrics_file(tmp_path, straight, where, step, ckpts):
    run = tmp_path / "run"
    with pytest.raises(_Stop):
        train(CFG, run, quiet=True, **{where: _stop_at(step)})
    assert checkpoint.list_checkpoints(run) == ckpts
    train(CFG, run, resume=True, quiet=True)
    assert [r["step"] for r in _untimed(run)] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert _untimed(run) == straight, "metrics after resume == uninterrupted run (timing fields aside)"


@pytest.mark.slow
def test_first_record_after_resume_averages_the_same_steps(tmp_path, straight):
    """Resume from checkpoint 7 (pending losses of steps 6, 7): record 10 averages steps 6..10."""
    run = tmp_path / "run"
    with pytest.raises(_Stop):
        train(CFG, run, quiet=True, on_checkpoint=_stop_at(7))
    state = checkpoint.load_state(run, CFG, 7)
    assert state.pending_loss.shape == (2, CFG.seeds), "losses of steps 6 and 7 stored with checkpoint 7"
    records = []
    train(CFG, run, resume=True, quiet=True, on_log=records.append)
    assert records[0]["step"] == 10 and records[0]["loss"] == straight[1]["loss"]


def test_failure_before_the_first_step_leaves_nothing(tmp_path, monkeypatch):
    """A run that cannot start (here: the compiled step fails) leaves no config.json, no directory;
    sizes beyond int32 indexing are refused before anything is compiled or written."""
    run = tmp_path / "new" / "run"

    def broken(*args, **kwargs):
        def step_fn(*a):
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory (simulated)")
        return step_fn

    monkeypatch.setattr(train_module, "make_train_step", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        train(CFG, run, quiet=True)
    assert not run.exists(), "nothing left behind"
    monkeypatch.undo()
    huge = TrainConfig(d_in=20, n_demos=40, batch_size=2**31 - 1, steps=1, warmup_steps=0)
    with pytest.raises(ValueError, match=r"training prompts .* beyond int32 indexing"):
        train(huge, run, quiet=True)
    assert not run.exists()
    with pytest.raises(ValueError, match="memory available"):
        from lintrans.limits import check_training_size
        check_training_size(TrainConfig(d_in=20, n_demos=40, batch_size=4096, seeds=4), limit=2**20)


CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    from lintrans.train import config_from_dict, train

    where, at = sys.argv[3], int(sys.argv[4])

    def kill(arg):
        if (arg["step"] if isinstance(arg, dict) else arg) == at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(config_from_dict(json.loads(sys.argv[2])), sys.argv[1], quiet=True, **{where: kill})
    print("finished without being killed")
""")


@pytest.mark.slow
@pytest.mark.parametrize("where, step", [("on_checkpoint", 14), ("on_log", 35)])
def test_kill_9_between_checkpoint_and_metrics(tmp_path, straight, where, step):
    """A real SIGKILL right after checkpoint 14's rename (before the next metrics line), or right
    after metrics line 35 (before its checkpoint): resume, and the metrics file is the uninterrupted one."""
    run = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), str(run), json.dumps(config_to_dict(CFG)), where, str(step)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == -signal.SIGKILL, f"child was not killed: rc={proc.returncode} {proc.stderr[-2000:]}"
    train(CFG, run, resume=True, quiet=True)
    assert _untimed(run) == straight
