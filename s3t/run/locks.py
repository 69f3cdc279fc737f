"""Locks between processes on one host: who holds a run's writer lock or a spill folder, and
whether a process still lives. ``flock`` works across processes and containers sharing the
kernel; it cannot see a process on another host sharing the disk."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO, Any


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_locked(lock: Path) -> bool:
    """Whether a live process holds ``lock`` (flock works across processes and containers
    sharing this kernel; it cannot see a process on another host sharing the disk). The
    probe holds a shared lock for an instant: ``try_lock`` waits that out."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


#: How long ``try_lock`` waits out another process's ``is_locked`` probe (which holds the lock
#: for microseconds) before it calls the lock taken.
PROBE_GRACE_S = 0.25


def try_lock(fd: int | IO[Any]) -> bool:
    """Take ``fd``'s exclusive flock without waiting for a holder; only a probe's instant is
    waited out (so ``is_locked`` elsewhere never makes a writer think another one runs)."""
    deadline = time.monotonic() + PROBE_GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
