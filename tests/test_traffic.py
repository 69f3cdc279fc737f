"""The request window behind the operator page's rates, error counts and p50/p99 latencies
(``s3t/service/traffic.py``): exact nearest-rank percentiles over a bounded window of the
latest requests, errors counted but kept out of the latencies, rates over the last minute."""

from __future__ import annotations

import random

import numpy as np
import pytest

from s3t.contract import Traffic as TrafficRecord
from s3t.service.traffic import RequestWindow, Traffic, percentile


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_percentile_is_the_nearest_rank_and_agrees_with_numpy():
    rng = random.Random(4)
    for n in (1, 2, 3, 7, 100, 999, 1000):
        values = [rng.expovariate(1.0) for _ in range(n)]
        for q in (1, 50, 90, 99, 100):
            expected = float(np.percentile(values, q, method="inverted_cdf"))
            assert percentile(values, q) == expected, (n, q)
    assert percentile([5.0, 1.0, 3.0, 2.0], 50) == 2.0  # rank ceil(0.5 * 4) = 2 of 1,2,3,5
    assert percentile([5.0, 1.0, 3.0, 2.0], 99) == 5.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="must be in"):
        percentile([1.0], 0)


def test_the_window_keeps_only_the_latest_latencies():
    window = RequestWindow(window=100)
    for _ in range(500):  # old and slow
        window.observe(200, 2.0, 10.0)
    for i in range(100):  # recent and fast: 1 ms .. 100 ms
        window.observe(200, (i + 1) / 1000, 11.0)
    assert len(window.latencies) == 100
    summary = window.summary(11.0, since=0.0)
    assert summary["requests"] == 600 and summary["window"] == 100
    assert summary["p50_ms"] == 50.0 and summary["p99_ms"] == 99.0


def test_errors_are_counted_and_kept_out_of_the_latencies():
    window = RequestWindow(window=10)
    window.observe(200, 0.010, 5.0)
    window.observe(401, 0.0001, 5.0)   # a refused request: fast, says nothing of the service
    window.observe(503, 0.0002, 5.0)
    window.observe(500, 0.0003, 5.0)
    summary = window.summary(5.0, since=0.0)
    assert (summary["requests"], summary["errors"], summary["server_errors"]) == (4, 3, 2)
    assert summary["window"] == 1 and summary["p50_ms"] == summary["p99_ms"] == 10.0
    empty = RequestWindow().summary(5.0, since=0.0)
    assert empty["p50_ms"] is None and empty["p99_ms"] is None and empty["rate_per_s"] == 0


def test_the_rate_is_over_the_last_minute_or_the_servers_life_if_shorter():
    window = RequestWindow(rate_s=60)
    for second in range(100, 220):  # two requests a second for two minutes
        window.observe(200, 0.001, second + 0.2)
        window.observe(200, 0.001, second + 0.7)
    assert len(window.per_second) == 60  # bounded: one count per second
    assert window.summary(219.9, since=0.0)["rate_per_s"] == 2.0
    assert window.summary(249.9, since=0.0)["rate_per_s"] == 1.0  # half the minute was quiet
    assert window.summary(400.0, since=0.0)["rate_per_s"] == 0.0
    young = RequestWindow(rate_s=60)
    for _ in range(10):
        young.observe(200, 0.001, 1004.5)
    assert young.summary(1005.0, since=1000.0)["rate_per_s"] == 2.0  # 10 in its 5 s of life


def test_traffic_sorts_requests_by_kind_and_matches_the_contract():
    clock = Clock()
    traffic = Traffic(window=50, rate_s=60, clock=clock)
    traffic.observe("POST", "/v1/predict", 200, 0.020)
    traffic.observe("POST", "/v1/predict", 413, 0.001)
    traffic.observe("POST", "/v1/deletions", 200, 0.004)
    traffic.observe("GET", "/v1/deletions", 200, 0.003)  # the log: not a deletion
    traffic.observe("GET", "/v1/status", 401, 0.001)
    clock.now += 2
    snapshot = TrafficRecord.model_validate(traffic.snapshot())
    assert snapshot.time == clock.now and snapshot.window == 50 and snapshot.rate_s == 60
    assert (snapshot.predictions.requests, snapshot.predictions.errors) == (2, 1)
    assert snapshot.predictions.p50_ms == snapshot.predictions.p99_ms == 20.0
    assert (snapshot.deletions.requests, snapshot.deletions.errors) == (1, 0)
    assert snapshot.deletions.p50_ms == 4.0
    assert (snapshot.requests.requests, snapshot.requests.errors) == (5, 2)
    assert snapshot.requests.rate_per_s == 2.5  # 5 requests in the server's 2 s
