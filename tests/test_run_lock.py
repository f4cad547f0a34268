"""One writer per run directory (lintrans.lock; issue 12, item 6): a second process is refused with
the holder's pid, a lock left by a killed process never blocks, train and ensure_run go through it."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from lintrans.lock import LOCK_FILE, RunInUseError, holder, run_lock
from lintrans.train import TrainConfig, train
from lintrans.trained import ensure_run

#: A child that takes the lock, says so, and waits (until killed or its stdin closes).
HOLDER = textwrap.dedent("""
    import sys
    from lintrans.lock import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
""")


def _hold(run_dir):
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert child.stdout.readline().strip() == "locked"
    return child


@pytest.mark.slow
def test_second_process_is_refused_with_the_holders_pid_and_a_killed_holder_never_blocks(tmp_path):
    run = tmp_path / "run"
    child = _hold(run)
    try:
        assert holder(run) == child.pid
        with pytest.raises(RunInUseError, match=rf"run is in use by process {child.pid}"):
            with run_lock(run):
                pass
        cfg = TrainConfig(d_in=2, n_demos=3, steps=2, warmup_steps=0, batch_size=4, checkpoint_every=2, log_every=2)
        with pytest.raises(ValueError, match=rf"in use by process {child.pid}"):
            train(cfg, run, quiet=True)
        with pytest.raises(ValueError, match=rf"in use by process {child.pid}"):
            ensure_run(cfg, run, quiet=True)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE], "the refused calls wrote nothing"
    finally:
        child.kill()  # SIGKILL: no cleanup runs in the holder
        child.wait()
    assert child.returncode == -signal.SIGKILL
    with run_lock(run):  # the kernel released the dead holder's lock
        assert holder(run) == os.getpid()


@pytest.mark.slow
def test_lock_is_reentrant_in_one_process_and_released_on_exit(tmp_path):
    run = tmp_path / "a" / "run"
    with run_lock(run):
        with run_lock(run):  # e.g. ensure_run → train
            assert holder(run) == os.getpid()
        # still held after the inner block: another process is refused
        probe = subprocess.run([sys.executable, "-c", HOLDER, str(run)], input="", capture_output=True, text=True,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert probe.returncode != 0 and f"in use by process {os.getpid()}" in probe.stderr
    probe = subprocess.run([sys.executable, "-c", HOLDER, str(run)], input="", capture_output=True, text=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert probe.returncode == 0 and probe.stdout.strip() == "locked", "released when the with-block ends"


@pytest.mark.slow
def test_train_icl_on_a_run_in_use_exits_2_with_one_error_line(tmp_path):
    """Two writers on one --out (issue 12, item 6): the second train_icl prints one error line naming
    the holder, exits 2, and writes nothing."""
    from pathlib import Path

    run = tmp_path / "run"
    child = _hold(run)
    try:
        script = Path(__file__).resolve().parent.parent / "experiments" / "train_icl.py"
        proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(run), "--resume", "--quiet"],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    finally:
        child.kill()
        child.wait()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"in use by process {child.pid}" in lines[0], lines
    assert "Traceback" not in proc.stderr and sorted(p.name for p in run.iterdir()) == [LOCK_FILE]
