"""The run's recent history as the operator's page plots it: capacity, live shards,
deletions and validation accuracy of what is served, one point per event.

Points are recorded at start, after each deletion and at each retrain event, with the
run's status at that moment; ``val_accuracy`` is measured on (at most ``eval_size`` of) the
validation split, which is never deletable, by a model call through the service's model
lock. Measuring costs a model call, so after a change it is measured once, by a worker,
no more often than every ``eval_interval_s`` (an ``evaluation`` point); other points carry
``val_accuracy: null``. Kept in memory, bounded: it restarts with the server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("s3t.service")

KEEP_POINTS = 5000


class History:
    def __init__(self, status: Callable[[], dict], evaluate: Callable[[], float | None],
                 eval_interval_s: float = 5.0):
        self._status, self._evaluate = status, evaluate
        self.eval_interval_s = eval_interval_s
        self.points: deque[dict] = deque(maxlen=KEEP_POINTS)
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.val_accuracy: float | None = None

    def start(self) -> None:
        self.record("start")
        self._thread = threading.Thread(target=self._loop, name="s3t-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(30)

    def record(self, event: str, val_accuracy: float | None = None,
               status: dict | None = None) -> dict:
        """Append a point with the run's status (now, unless given); a change also schedules
        a measurement."""
        status = self._status() if status is None else status
        point = {"time": time.time(), "event": event, "capacity": status["capacity"],
                 "live_shards": status["live_shards"],
                 "deletion_requests": status["deletion_requests"],
                 "deleted": status["deleted"], "val_accuracy": val_accuracy}
        with self._lock:
            self.points.append(point)
        if event != "evaluation":
            self._dirty.set()
        return point

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.points)

    def _loop(self) -> None:
        last = 0.0
        while not self._stopping:
            self._dirty.wait()
            if self._stopping:
                break
            pause = last + self.eval_interval_s - time.monotonic()
            if pause > 0:
                time.sleep(min(pause, self.eval_interval_s))
                continue
            self._dirty.clear()
            last = time.monotonic()
            try:
                accuracy = self._evaluate()
            except Exception as err:  # e.g. no live route: nothing to measure
                log.debug("validation accuracy not measured: %s", err)
                continue
            if accuracy is not None:
                self.val_accuracy = accuracy
                self.record("evaluation", accuracy)
