"""The run's recent history as the operator's page plots it (``GET /v1/history``).

``points``: capacity, live shards and deletions after each stage commit and each deletion,
derived from the run's ledger (``s3t/run/timeline.py``), so every server on one run, and a
restarted one, reports the same points. ``evaluations``: the validation accuracy of what
this server served, measured by this server: on (at most ``eval_size`` of) the validation
split, which is never deletable, by a model call, once after a change (a deletion or a
retrain event) and no more often than every ``eval_interval_s``. Measurements are kept in
memory only, bounded, and restart with the server: an accuracy is computed from served
weights, which a deletion may erase, so it is never written to disk.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable

from s3t.run import IntegrityError, NoLiveShardError
from s3t.service.errors import BusyError

log = logging.getLogger("s3t.service")

# Failures that are states of the run, not faults: no live route, the server stopping, a
# stage erased or damaged (the model calls report that), the ledger busy.
NOT_MEASURABLE = (NoLiveShardError, BusyError, IntegrityError, sqlite3.OperationalError)

KEEP_POINTS = 5000


class History:
    def __init__(self, points: Callable[[], list[dict]], evaluate: Callable[[], float | None],
                 eval_interval_s: float = 5.0):
        self._points, self._evaluate = points, evaluate
        self.eval_interval_s = eval_interval_s
        self.evaluations: deque[dict] = deque(maxlen=KEEP_POINTS)
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()  # wakes the loop's pause at once
        self._thread: threading.Thread | None = None
        self.val_accuracy: float | None = None

    def start(self) -> None:
        self.changed()
        self._thread = threading.Thread(target=self._loop, name="s3t-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(30)

    def changed(self) -> None:
        """What is served may have changed: measure it (soon, at most every interval)."""
        self._dirty.set()

    def snapshot(self) -> dict:
        """``points`` from the ledger (the last ``KEEP_POINTS``) and this server's
        ``evaluations``, oldest first."""
        with self._lock:
            evaluations = list(self.evaluations)
        return {"points": self._points()[-KEEP_POINTS:], "evaluations": evaluations}

    def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                break
            pause = last + self.eval_interval_s - time.monotonic()
            if pause > 0:
                self._stop.wait(min(pause, self.eval_interval_s))
                continue
            self._dirty.clear()
            last = time.monotonic()
            try:
                accuracy = self._evaluate()
            except NOT_MEASURABLE as err:  # a state of the run: nothing to measure now
                log.debug("validation accuracy not measured: %s", err)
                continue
            except Exception:  # not a state of the run: the operator must see it
                log.error("validation accuracy not measured: unexpected failure", exc_info=True)
                continue
            if accuracy is not None:
                self.val_accuracy = accuracy
                with self._lock:
                    self.evaluations.append({"time": time.time(), "val_accuracy": accuracy})
