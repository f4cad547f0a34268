"""One writer per run directory: an exclusive ``flock`` on ``RUN/.lock`` (issue 12, item 6).

:func:`run_lock` is a context manager. It creates the directory if needed, opens ``RUN/.lock`` and
takes ``fcntl.flock(LOCK_EX | LOCK_NB)``; on success it writes its process id into the file (for
the message below). A second process gets :class:`RunInUseError` (a ``ValueError``):
``RUN is in use by process N``, and the CLIs turn it into ``error: …``, exit 2.

Why ``flock``: the kernel releases the lock when its holder exits, however it exits (``kill -9``
included), so a lock left by a crash never blocks the next run — there is nothing to detect or
clean, and the pid left in the file is only read while someone really holds the lock. The lock
file itself is never deleted (deleting it would let two processes lock two different files of the
same name). Re-entrant within a process: a nested ``run_lock`` on the same directory (e.g.
:func:`lintrans.trained.ensure_run` around :func:`lintrans.train.train`) shares the held lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_FILE", "RunInUseError", "run_lock", "holder"]

LOCK_FILE = ".lock"

#: Locks held by this process: resolved run directory → [file descriptor, depth].
_HELD: dict[Path, list[int]] = {}


class RunInUseError(ValueError):
    """Another process holds the run directory's lock."""


def holder(run_dir: str | os.PathLike) -> int | None:
    """The pid recorded in ``RUN/.lock`` (``None`` if there is none or it is unreadable)."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) for the ``with`` block.

    Raises:
      RunInUseError: another process holds it (message names the directory and the process).
      OSError: the directory cannot be created or the lock file opened.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield run_dir
        finally:
            _HELD[key][1] -= 1
        return
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = holder(run_dir)
        who = f"process {pid}" if pid is not None else "another process"
        raise RunInUseError(f"{run_dir} is in use by {who} (one writer per run directory; wait for it "
                            "to finish or use another directory)") from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        yield run_dir
    finally:
        _HELD.pop(key, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
