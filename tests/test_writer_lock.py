"""The writer lock (one fit or retrain per run) and the probe that asks whether it is held.

``writer_running`` (the service's status, ``open``'s sweep) probes the lock from other
processes by taking it for an instant; a writer starting in that instant must not be told
that another retrain runs, while a real holder is still refused at once."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from s3t.run.locks import PROBE_GRACE_S, is_locked, try_lock


def test_a_probe_sees_a_holder_and_not_a_free_lock(tmp_path: Path) -> None:
    lock = tmp_path / "writer.lock"
    assert not is_locked(lock), "no file: nobody holds it"
    lock.touch()
    assert not is_locked(lock)
    holder = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert is_locked(lock)
    finally:
        os.close(holder)
    assert not is_locked(lock), "released with its holder"


def test_a_writer_waits_out_a_probe_s_instant(tmp_path: Path) -> None:
    """A probe (here held for 50 ms, far longer than a real one) delays the writer; it does
    not refuse it."""
    lock = tmp_path / "writer.lock"
    lock.touch()
    probe = os.open(lock, os.O_RDWR)
    fcntl.flock(probe, fcntl.LOCK_SH)  # what is_locked takes for an instant
    threading.Timer(0.05, os.close, (probe,)).start()
    writer = os.open(lock, os.O_RDWR)
    try:
        assert try_lock(writer), "a probe made the writer think another writer runs"
        assert is_locked(lock)
    finally:
        os.close(writer)


def test_a_real_holder_still_refuses_the_writer(tmp_path: Path) -> None:
    lock = tmp_path / "writer.lock"
    lock.touch()
    holder, writer = os.open(lock, os.O_RDWR), os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        assert not try_lock(writer)
        assert time.monotonic() - started < PROBE_GRACE_S + 1.0, "refused without waiting long"
    finally:
        os.close(holder)
        os.close(writer)
