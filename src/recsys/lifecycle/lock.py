"""One retrain at a time: an exclusive ``flock`` on a file next to the artifacts.

The kernel releases the lock when its holder exits, however it exits, so a lock file left by a
dead process never blocks the next run; the file only says who holds the lock now.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsys.bundle.manifest import utc_now
from recsys.errors import RecsysError


class AlreadyRunning(RecsysError):
    """Another process holds the lock."""


def _holder(fd: int, wait_s: float = 1.0) -> str:
    """Who holds the lock, as its holder wrote it.

    The holder writes its line just after it takes the lock, so a process refused in that
    instant waits up to ``wait_s`` for the line rather than reporting an empty file.
    """
    deadline = time.monotonic() + wait_s
    while True:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text or time.monotonic() >= deadline:
            return text or "pid unknown"
        time.sleep(0.02)


@contextmanager
def exclusive(path: str | Path, what: str = "retrain") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block.

    Raises:
        AlreadyRunning: another process holds it; the message names its pid and start time.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise AlreadyRunning(
            f"another {what} is running ({holder}); it holds {target}. Wait for it to end."
        ) from None
    try:
        line = f"pid {os.getpid()}, since {utc_now()}\n".encode()
        os.pwrite(fd, line, 0)
        os.ftruncate(fd, len(line))  # write, then cut: the file is never empty while held
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
