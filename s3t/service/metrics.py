"""Prometheus metrics of one service instance, in its own ``CollectorRegistry``.

- ``s3t_http_requests_total{method, endpoint, status}`` and
  ``s3t_http_request_duration_seconds{method, endpoint}``: every HTTP request, labelled by
  its route template (``/v1/deletions/{request_id}``, never the raw path, so the label set
  stays small; unmatched paths are ``other``);
- ``s3t_deletions_total``: deletion requests this server committed (idempotent replays and
  requests answered with an earlier certificate are not counted);
- ``s3t_predict_batch_inputs``: inputs per model call of the dynamic batcher;
- gauges ``s3t_live_shards``, ``s3t_capacity`` (mean served depth / slices) and
  ``s3t_live_stages``, refreshed at start, after each deletion and at each scrape;
- the background retrainer: ``s3t_retrain_running``, ``s3t_retrain_stages_done`` and
  ``s3t_retrain_stages_total`` (of the running job), ``s3t_retrain_jobs_total{state}`` (jobs
  that ended), ``s3t_route_switches_total`` and ``s3t_last_route_switch_timestamp_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from s3t.service.retrainer import Job

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("s3t_http_requests", "HTTP requests by endpoint and status",
                                ["method", "endpoint", "status"], registry=registry)
        self.latency = Histogram("s3t_http_request_duration_seconds",
                                 "HTTP request latency by endpoint", ["method", "endpoint"],
                                 registry=registry, buckets=(.001, .0025, .005, .01, .025, .05,
                                                             .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.deletions = Counter("s3t_deletions", "Deletion requests committed by this server",
                                 registry=registry)
        self.batch_inputs = Histogram("s3t_predict_batch_inputs", "Inputs per batched model call",
                                      registry=registry,
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.live_shards = Gauge("s3t_live_shards", "Shards with a live route", registry=registry)
        self.capacity = Gauge("s3t_capacity", "Mean served route depth over slices (1 = full)",
                              registry=registry)
        self.live_stages = Gauge("s3t_live_stages", "Stages live in the ledger", registry=registry)
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

    def observe_status(self, status: dict) -> None:
        """Set the gauges from a run status (``Run.status()``)."""
        self.live_shards.set(status["live_shards"])
        self.capacity.set(status["capacity"])
        self.live_stages.set(status["live_stages"])

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

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            endpoint, method = self.endpoint(scope), scope["method"]
            self.metrics.requests.labels(method, endpoint, str(status)).inc()
            self.metrics.latency.labels(method, endpoint).observe(time.perf_counter() - started)
