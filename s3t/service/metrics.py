"""Prometheus metrics of one service instance, in its own ``CollectorRegistry``.

From the run's ledger, read at each scrape (``LedgerCollector``), so every server on one run
reports the same values, whoever made the change (this server, another replica, ``s3t
forget`` or ``s3t retrain``):

- counters ``s3t_deletions_total`` (deletion requests committed: certificates),
  ``s3t_deleted_samples_total``, ``s3t_stages_trained_total`` (stages ever committed),
  ``s3t_stages_retrained_total`` (committed after a deletion changed one of their slices)
  and ``s3t_stages_erased_total``;
- gauges ``s3t_live_shards``, ``s3t_capacity`` (mean served depth / slices) and
  ``s3t_live_stages``;
- erasure requests (``POST /v1/dsr``): ``s3t_erasure_requests{state}`` (received, exact,
  erased, restored: how many are in each state now), ``s3t_erasure_callbacks_pending`` and
  ``s3t_erasure_callbacks_failed``.

Of this process:

- ``s3t_http_requests_total{method, endpoint, status}``,
  ``s3t_http_request_duration_seconds{method, endpoint}`` and ``s3t_http_requests_in_flight``:
  every HTTP request, labelled by its route template (``/v1/deletions/{request_id}``, never
  the raw path, so the label set stays small; unmatched paths are ``other``);
- ``s3t_model_call_seconds{call}`` (``predict``: one batched call; ``generate``;
  ``evaluate``: the history's validation accuracy), ``s3t_predict_batch_inputs`` (inputs per
  batched call) and ``s3t_predict_queue_requests`` (predict requests waiting);
- this server's retrain jobs: ``s3t_retrain_running``, ``s3t_retrain_stages_done`` and
  ``s3t_retrain_stages_total`` (of the running job), ``s3t_retrain_jobs_total{state}`` (jobs
  that ended), ``s3t_route_switches_total`` and ``s3t_last_route_switch_timestamp_seconds``;
- ``s3t_build_info{version, torch_version, python_version}`` and the process collector's
  ``process_*`` (CPU seconds, resident memory, open files, start time).

The same requests feed ``traffic`` (``traffic.py``): rates, error counts and exact p50/p99
latencies of recent requests, which ``/v1/status`` reports for the operator's page.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from s3t.service.traffic import Traffic

if TYPE_CHECKING:
    from s3t.service.retrainer import Job

T = TypeVar("T")

CONTENT_TYPE = CONTENT_TYPE_LATEST
log = logging.getLogger("s3t.service")

#: What ``LedgerCollector`` reports: name -> (kind, help).
LEDGER_METRICS = {
    "s3t_deletions": ("counter", "Deletion requests committed on this run (the ledger's "
                                 "certificates, by any process)"),
    "s3t_deleted_samples": ("counter", "Samples deleted from this run (the ledger)"),
    "s3t_stages_trained": ("counter", "Stages committed on this run, training and retraining "
                                      "(the ledger)"),
    "s3t_stages_retrained": ("counter", "Stages committed after a deletion changed one of "
                                        "their slices (the ledger)"),
    "s3t_stages_erased": ("counter", "Stages taken out of service for good (the ledger)"),
    "s3t_erasure_requests": ("gauge", "Erasure requests (POST /v1/dsr) on this run by state: "
                                      "received, exact, erased, restored (the ledger)"),
    "s3t_erasure_callbacks_pending": ("gauge", "Erasure status callbacks not delivered yet "
                                               "(the ledger)"),
    "s3t_erasure_callbacks_failed": ("gauge", "Erasure status callbacks given up after their "
                                              "tries (the ledger)"),
    "s3t_live_shards": ("gauge", "Shards with a live route"),
    "s3t_capacity": ("gauge", "Mean served route depth over slices (1 = full)"),
    "s3t_live_stages": ("gauge", "Stages live in the ledger"),
}


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


class LedgerCollector(Collector):
    """The run's counters and gauges, read from its ledger at each scrape (``read``: a dict
    with every name of ``LEDGER_METRICS``, or None when the ledger cannot be read now: the
    last values read are reported then)."""

    def __init__(self, read: Callable[[], dict | None]):
        self.read = read
        self.last: dict | None = None

    def collect(self) -> Iterator[Metric]:
        try:
            values = self.read()
        except Exception as err:  # a scrape never fails for it: the last values stand
            log.warning("metrics: the ledger could not be read: %s", err)
            values = None
        if values is not None:
            self.last = values
        if self.last is None:
            return
        for name, (kind, text) in LEDGER_METRICS.items():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            value = self.last[name]
            if isinstance(value, Mapping):  # by state
                metric = family(name, text, labels=["state"])
                for label, count in value.items():
                    metric.add_metric([label], count)
                yield metric
            else:
                yield family(name, text, value=value)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.traffic = Traffic()
        self.requests = Counter("s3t_http_requests", "HTTP requests by endpoint and status",
                                ["method", "endpoint", "status"], registry=registry)
        self.latency = Histogram("s3t_http_request_duration_seconds",
                                 "HTTP request latency by endpoint", ["method", "endpoint"],
                                 registry=registry, buckets=(.001, .0025, .005, .01, .025, .05,
                                                             .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.in_flight = Gauge("s3t_http_requests_in_flight", "HTTP requests being handled",
                               registry=registry)
        self.model_calls = Histogram("s3t_model_call_seconds", "Model call latency, by call",
                                     ["call"], registry=registry,
                                     buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30,
                                              60))
        self.queue = Gauge("s3t_predict_queue_requests", "Predict requests waiting for a model "
                           "call", registry=registry)
        self.batch_inputs = Histogram("s3t_predict_batch_inputs", "Inputs per batched model call",
                                      registry=registry,
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.retrain_running = Gauge("s3t_retrain_running", "1 while a retrain job of this "
                                     "server trains", registry=registry)
        self.retrain_done = Gauge("s3t_retrain_stages_done", "Stages the running retrain job "
                                  "committed", registry=registry)
        self.retrain_total = Gauge("s3t_retrain_stages_total", "Stages the running retrain job "
                                   "planned", registry=registry)
        self.retrain_jobs = Counter("s3t_retrain_jobs", "Retrain jobs that ended, by state",
                                    ["state"], registry=registry)
        self.route_switches = Counter("s3t_route_switches", "Route switches by retrained "
                                      "stages", registry=registry)
        self.last_switch = Gauge("s3t_last_route_switch_timestamp_seconds", "When a retrained "
                                 "stage last switched a route (unix time)", registry=registry)

        ProcessCollector(registry=registry)
        Info("s3t_build", "Versions of this server", registry=registry).info({
            "version": package_version("s3t"), "torch_version": package_version("torch"),
            "python_version": platform.python_version()})

    def watch(self, ledger: Callable[[], dict | None], waiting: Callable[[], float]) -> None:
        """Read the ledger's counters (``ledger``) and the predict queue (``waiting``) at
        each scrape."""
        self.registry.register(LedgerCollector(ledger))
        self.queue.set_function(waiting)

    def timed(self, call: str, function: Callable[..., T]) -> Callable[..., T]:
        """``function``, its latency observed as a model call named ``call``."""
        histogram = self.model_calls.labels(call)

        def timed_call(*args: object) -> T:
            started = time.perf_counter()
            try:
                return function(*args)
            finally:
                histogram.observe(time.perf_counter() - started)

        return timed_call

    def observe_retrainer(self, job: Job | None) -> None:
        running = job is not None and job.state == "running"
        self.retrain_running.set(1 if running else 0)
        self.retrain_done.set(job.stages_done if running and job else 0)
        self.retrain_total.set((job.stages_total or 0) if running and job else 0)

    def observe_job(self, event: str, job: Job) -> None:
        """A retrainer event (``retrain-start``, ``route-switch``, ``retrain-end``)."""
        if event == "route-switch":
            self.route_switches.inc()
            if job.last_route_switch is not None:
                self.last_switch.set(job.last_route_switch)
        elif event == "retrain-end":
            self.retrain_jobs.labels(job.state).inc()
        self.observe_retrainer(job if job.active else None)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count and time every HTTP request, those refused by the middleware below it (401,
    413) included: ``paths`` (the application's route templates) name the endpoint of a
    request that never reached the router."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, paths: Sequence[str] = ()):
        self.app, self.metrics = app, metrics
        self.paths = [(compile_path(path)[0], path) for path in paths]

    def endpoint(self, scope: Scope) -> str:
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        return next((path for regex, path in self.paths if regex.match(scope["path"])), "other")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.in_flight.dec()
            endpoint, method = self.endpoint(scope), scope["method"]
            self.metrics.requests.labels(method, endpoint, str(status)).inc()
            seconds = time.perf_counter() - started
            self.metrics.latency.labels(method, endpoint).observe(seconds)
            self.metrics.traffic.observe(method, endpoint, status, seconds)
