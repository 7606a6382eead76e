"""One owner per run directory: an exclusive OS lock held while a process writes there.

``with hold(run_dir):`` takes ``RUN_DIR/.lock`` with ``flock`` (released by the OS when the
process ends, however it ends, so a lock left by a killed process never blocks anyone) and
writes the owner's PID into it. A second writer, in this process or another, gets a
``FormalLMError`` naming the owner instead of interleaving its metrics and checkpoints with the
first one's.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from formal_lm.errors import FormalLMError, Problem

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock (documented in the README)
    fcntl = None

LOCK_FILE = ".lock"


def _owner(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {pid}" if pid else "another process"


@contextlib.contextmanager
def hold(run_dir: str | Path):
    """Holds the lock of ``run_dir`` (created) for the duration of the block."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise FormalLMError(Problem(f"cannot write to the run directory {run_dir}: "
                                    f"{e.strerror}", "choose a writable folder for --out")
                            ) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise FormalLMError(Problem(
                    f"the run directory {run_dir} is in use by {_owner(run_dir / LOCK_FILE)}",
                    "wait until it has finished, or write to another directory")) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield run_dir
    finally:
        os.close(fd)  # closing the descriptor releases the lock
