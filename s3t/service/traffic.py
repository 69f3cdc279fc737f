"""This server's request rates, error counts and latency percentiles, as the operator's page
shows them (``GET /v1/status``, field ``traffic``; record ``contract.Traffic``).

``/metrics`` has the same requests as Prometheus histograms, made for a scraper that keeps
their history; a histogram's buckets give no exact percentile, and the page has no
scraper. So each kind of request (predictions, deletions, every request) also keeps here:

- its counts since the server started: requests, errors (answered 4xx or 5xx), server
  errors (5xx);
- its latency, in seconds, of the most recent ``WINDOW`` requests answered below 400 (a
  refused request is fast and says nothing of the service's speed), in a ring: p50 and p99
  are the nearest-rank percentiles of that window;
- its requests per whole second of the last ``RATE_S`` seconds (at most ``RATE_S`` counts):
  the rate is their sum over the seconds the window spans (less while the server is young).

Memory is bounded whatever the traffic; nothing reaches the disk; each server reports its
own requests (a restarted one starts afresh).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

WINDOW = 1000  # latencies kept per kind of request
RATE_S = 60    # seconds the rate is measured over

#: (method, route template) -> the kind of request it counts as, besides ``requests``.
KINDS = {("POST", "/v1/predict"): "predictions", ("POST", "/v1/generate"): "predictions",
         ("POST", "/v1/deletions"): "deletions"}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value that at least ``q`` percent of
    ``values`` do not exceed (always one of the values; None for none)."""
    if not values:
        return None
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q}: must be in (0, 100]")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


class RequestWindow:
    """One kind of request: counts since start, the latest latencies, the recent rate."""

    def __init__(self, window: int = WINDOW, rate_s: int = RATE_S):
        if window < 1 or rate_s < 1:
            raise ValueError("a request window needs room for at least one latency and second")
        self.rate_s = rate_s
        self.requests = self.errors = self.server_errors = 0
        self.latencies: deque[float] = deque(maxlen=window)
        self.per_second: deque[list[int]] = deque(maxlen=rate_s)  # [unix second, requests]

    def observe(self, status: int, seconds: float, now: float) -> None:
        self.requests += 1
        if status >= 400:
            self.errors += 1
            self.server_errors += status >= 500
        else:
            self.latencies.append(seconds)
        second = int(now)
        if self.per_second and self.per_second[-1][0] == second:
            self.per_second[-1][1] += 1
        else:
            self.per_second.append([second, 1])

    def summary(self, now: float, since: float) -> dict:
        """The ``contract.RequestStats`` of this kind at ``now`` (the server started at
        ``since``)."""
        recent = sum(n for second, n in self.per_second if second > now - self.rate_s)
        span = min(float(self.rate_s), max(now - since, 1.0))
        latencies = list(self.latencies)
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        return {"requests": self.requests, "errors": self.errors,
                "server_errors": self.server_errors, "rate_per_s": round(recent / span, 4),
                "window": len(latencies),
                "p50_ms": None if p50 is None else round(1000 * p50, 3),
                "p99_ms": None if p99 is None else round(1000 * p99, 3)}


class Traffic:
    """Every HTTP request of this server, by kind (``requests``: all of them, the page's own
    reads included; ``predictions``; ``deletions``)."""

    def __init__(self, window: int = WINDOW, rate_s: int = RATE_S,
                 clock: Callable[[], float] = time.time):
        self.window, self.rate_s, self.clock = window, rate_s, clock
        self.since = clock()
        self.kinds = {kind: RequestWindow(window, rate_s)
                      for kind in ("requests", "predictions", "deletions")}
        self._lock = threading.Lock()

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """One answered request (``endpoint``: its route template)."""
        now = self.clock()
        kind = KINDS.get((method, endpoint))
        with self._lock:
            self.kinds["requests"].observe(status, seconds, now)
            if kind is not None:
                self.kinds[kind].observe(status, seconds, now)

    def snapshot(self) -> dict:
        """The ``contract.Traffic`` record now."""
        now = self.clock()
        with self._lock:
            kinds = {name: w.summary(now, self.since) for name, w in self.kinds.items()}
        return {"time": now, "since": self.since, "window": self.window,
                "rate_s": self.rate_s, **kinds}
