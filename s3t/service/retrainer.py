"""Background retraining: the service's retrain policy, its jobs, and the worker that runs them.

A job is one ``s3t retrain RUN --events`` child process, niced, so training never holds a
lock of this server and never shares its interpreter or torch threads with the serving
path: predictions and deletions go on as before while it trains. The child is the run's
single writer (the run's retrain lock); each stage it trains goes live, and its shard
re-routes, in the stage's own commit (``Scheduler.commit``), and this server serves it from
its next model call, which re-reads the routes. A deletion that lands while a stage trains
makes the version check discard that stage; the policy then starts another job for what is
still missing. Why a process and not a thread: a crash, a diverging stage or ``kill -9`` of
the trainer cannot take the service down, and ``kill`` is a safe way to stop training (the
run is crash-safe at every point; see docs/design.md).

Policies: ``manual`` (only ``POST /v1/retrain``), ``eager`` (as soon as a stage is missing)
and ``capacity:T`` (when capacity falls below ``T``); ``delay_s`` waits until no deletion
arrived for that long, so a burst of deletions is retrained once. A failed job is retried by
the policy after an exponential back-off (10 s doubling up to 5 min); a manual request
always starts one.

What a job's child reports reaches the operator three ways: each event (one JSON line on
its stdout) and each line it writes on stderr (warnings, errors, a traceback) is logged by
the server (``s3t.retrain``, with the job id and the request id of the request that
triggered the job), kept with the job (the last ``KEEP_LOG_LINES``, ``GET
/v1/jobs/{id}/log``) and appended to ``RUN/service/retrain.log`` (started afresh once it
passes ``MAX_LOG_BYTES``). (That file used to hold the child's stderr alone, which is empty
when training goes well: the events went to the server's parser only.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from s3t.contract import Job, JobEvent
from s3t.errors import redact
from s3t.service.logs import request_id
from s3t.train.parent import child_environment

log = logging.getLogger("s3t.service")
child_log = logging.getLogger("s3t.retrain")

POLL_S = 1.0
BACKOFF_S = (10.0, 300.0)
KEEP_JOBS = 50
NICE = 10
KEEP_LOG_LINES = 2000
MAX_LOG_BYTES = 10_000_000


@dataclass(frozen=True)
class RetrainPolicy:
    """When the service retrains on its own (module docstring)."""

    mode: str = "manual"
    threshold: float = 1.0

    @classmethod
    def parse(cls, text: str) -> RetrainPolicy:
        text = text.strip().lower()
        if text in ("manual", "eager"):
            return cls(text)
        if text.startswith("capacity:"):
            try:
                threshold = float(text.split(":", 1)[1])
            except ValueError:
                threshold = float("nan")
            if not 0 < threshold <= 1:
                raise ValueError(f"retrain policy {text!r}: the capacity threshold must be a "
                                 "number in (0, 1], e.g. capacity:0.8")
            return cls("capacity", threshold)
        raise ValueError(f"unknown retrain policy {text!r}: use manual, eager or "
                         "capacity:<threshold> (e.g. capacity:0.8)")

    def __str__(self) -> str:
        return f"capacity:{self.threshold:g}" if self.mode == "capacity" else self.mode

    def wants(self, status: dict) -> bool:
        """Whether the run's state calls for a retrain under this policy."""
        if self.mode == "eager":
            return status["live_stages"] < status["stages_total"]
        if self.mode == "capacity":
            return status["capacity"] < self.threshold
        return False


class Retrainer:
    """Starts retrain jobs by policy or request and follows their progress events.

    ``status()`` reads the run's state (``Run.status()`` plus ``stages_total``);
    ``on_event(name)`` is told ``retrain-start``, ``route-switch`` and ``retrain-end``.
    """

    def __init__(self, run_dir: Path, policy: RetrainPolicy, delay_s: float,
                 status: Callable[[], dict], on_event: Callable[[str, Job], object],
                 log_path: Path | None = None):
        self.run_dir, self.policy, self.delay_s = run_dir, policy, delay_s
        self._status, self._on_event = status, on_event
        self.log_path = log_path
        self.jobs: deque[Job] = deque(maxlen=KEEP_JOBS)
        self._logs: dict[str, deque[str]] = {}  # job id -> its child's last output lines
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._last_change = time.monotonic()
        self._failures = 0
        self._retry_at = 0.0
        self._count = 0
        self._last_request: str | None = None  # of the last deletion through this server
        self._log_lock = threading.Lock()
        self._planned_at: float | None = None  # when the running job's child planned

    # --- control ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="s3t-retrainer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop following jobs; a running trainer is terminated (the run is crash-safe)."""
        self._stopping = True
        self._wake.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        if self._thread is not None:
            self._thread.join(timeout)

    def request(self) -> Job:
        """A manual retrain: the active job if there is one, else a new queued job."""
        with self._lock:
            job = self.current()
            if job is None:
                job = self._new_job("manual", request_id.get())
        self._wake.set()
        return job

    def note_deletion(self, request: str | None = None) -> None:
        """A deletion was committed (by the request ``request``): the policy's delay starts
        again; a job the policy starts next keeps that request id."""
        self._last_change = time.monotonic()
        self._last_request = request
        self._wake.set()

    # --- reads --------------------------------------------------------------------------------
    def current(self) -> Job | None:
        return next((job for job in self.jobs if job.active), None)

    def last(self) -> Job | None:
        return self.jobs[-1] if self.jobs else None

    def job(self, job_id: str) -> Job | None:
        return next((job for job in self.jobs if job.id == job_id), None)

    def describe(self) -> dict:
        last = self.last()
        return {"policy": str(self.policy), "delay_s": self.delay_s,
                "job": None if last is None else last.model_dump()}

    def log_of(self, job_id: str) -> list[str]:
        """The last lines its child process wrote (events and stderr), oldest first."""
        with self._log_lock:
            return list(self._logs.get(job_id, ()))

    # --- the worker ---------------------------------------------------------------------------
    def _new_job(self, trigger: str, request: str | None = None) -> Job:
        self._count += 1
        job = Job(id=f"retrain-{int(time.time())}-{self._count}", trigger=trigger,
                  request_id=request)
        self.jobs.append(job)
        with self._log_lock:  # the logs of the jobs still kept, and this one's
            kept = {j.id for j in self.jobs}
            self._logs = {k: v for k, v in self._logs.items() if k in kept}
            self._logs[job.id] = deque(maxlen=KEEP_LOG_LINES)
        return job

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.wait(POLL_S)
            self._wake.clear()
            if self._stopping:
                break
            job = None
            try:
                job = self._next_job()
                if job is not None:
                    self._run(job)
            except Exception as err:  # never let the worker die: record, back off, go on
                log.exception("retrainer")
                if job is not None and job.active:
                    job.state, job.finished = "failed", time.time()
                    job.error = redact(f"{type(err).__name__}: {err}", self.run_dir)
                    self._on_event("retrain-end", job)
                self._retry_at = time.monotonic() + BACKOFF_S[0]

    def _next_job(self) -> Job | None:
        with self._lock:
            queued = next((job for job in self.jobs if job.state == "queued"), None)
        if queued is not None:
            return queued
        if self.policy.mode == "manual":
            return None
        now = time.monotonic()
        if now < self._retry_at or now - self._last_change < self.delay_s:
            return None
        status = self._status()
        if status.get("training") == "running" or not self.policy.wants(status):
            return None  # another process is retraining this run, or nothing to do
        with self._lock:
            return self.current() or self._new_job("policy", self._last_request)

    def _run(self, job: Job) -> None:
        token = request_id.set(job.request_id)  # this thread's log lines: the job's request
        try:
            self._run_job(job)
        finally:
            request_id.reset(token)

    def _run_job(self, job: Job) -> None:
        job.state, job.started = "running", time.time()
        self._planned_at = None
        child_log.info("retrain job %s started (%s)", job.id, job.trigger,
                       extra={"job_id": job.id})
        self._on_event("retrain-start", job)
        command = [sys.executable, "-m", "s3t.cli", "retrain", str(self.run_dir), "--events"]
        file = self._open_log()
        stderr_tail: list[str] = []
        try:
            # The child nices itself and dies with this process (s3t/train/parent.py): no
            # preexec_fn, which is unsafe in a threaded server.
            self._process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                text=True, errors="replace", env=child_environment(NICE))
            assert self._process.stdout is not None and self._process.stderr is not None
            reader = threading.Thread(target=self._read_stderr, name="s3t-retrain-stderr",
                                      args=(job, self._process.stderr, file, stderr_tail),
                                      daemon=True)
            reader.start()
            for line in self._process.stdout:
                self._note(job, file, "event", line)
                self._follow(job, line)
            returncode = self._process.wait()
            reader.join(10)
        finally:
            self._process = None
            file.close()
        job.finished, job.current_stage = time.time(), None
        if self._stopping and returncode != 0:
            job.state, job.error = "cancelled", "the server stopped while it trained"
        elif returncode == 0:
            job.state, self._failures = "succeeded", 0
        else:
            job.state = "failed"
            job.error = redact(f"s3t retrain exited with {returncode}" + (
                f": {stderr_tail[-1]}" if stderr_tail else ""), self.run_dir)  # no path: jobs
            # may be open (--open-status)
            self._failures += 1
            pause = min(BACKOFF_S[0] * 2 ** (self._failures - 1), BACKOFF_S[1])
            self._retry_at = time.monotonic() + pause
            log.warning("retrain job %s failed (%s); the policy retries in %.0f s",
                        job.id, job.error, pause, extra={"job_id": job.id})
        child_log.info("retrain job %s %s: %d stage(s) committed, %d discarded, in %.1f s",
                       job.id, job.state, job.stages_done, job.stages_discarded,
                       job.finished - (job.started or job.finished), extra={"job_id": job.id})
        self._on_event("retrain-end", job)

    def _read_stderr(self, job: Job, stream: IO[str], file: IO[str], tail: list[str]) -> None:
        token = request_id.set(job.request_id)
        try:
            for line in stream:
                if line.strip():
                    tail[:] = [*tail[-4:], line.strip()]
                    self._note(job, file, "stderr", line)
                    child_log.warning("retrain job %s: %s", job.id, line.rstrip(),
                                      extra={"job_id": job.id})
        finally:
            request_id.reset(token)

    def _note(self, job: Job, file: IO[str], stream: str, line: str) -> None:
        """Keep one line of the child's output with the job and in the log file."""
        text = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {stream} {line.rstrip()}"
        with self._log_lock:
            self._logs.setdefault(job.id, deque(maxlen=KEEP_LOG_LINES)).append(text)
            try:
                file.write(f"{job.id} {text}\n")
                file.flush()
            except (OSError, ValueError):  # a full disk, or closed: the job goes on
                pass

    def _follow(self, job: Job, line: str) -> None:
        try:
            event = JobEvent.model_validate_json(line)
        except ValidationError:
            return  # not an event (a library printing to stdout)
        fields = event.model_dump(include={"key", "shard", "prefix", "seconds", "route_switched",
                                           "stages"}, exclude_none=True)
        child_log.info("retrain job %s: %s%s", job.id, event.event,
                       f" {event.key}" if event.key else "",
                       extra={"job_id": job.id, "event": event.event, **fields})
        now = time.time()
        if event.event == "plan":
            self._planned_at = now
        switched = follow(job, event, now)
        end = estimate_end(job, self._planned_at, now)
        if end is not None:
            job.estimated_end = end
        if switched:
            self._on_event("route-switch", job)

    def _open_log(self) -> IO[str]:
        if self.log_path is None:
            return open(os.devnull, "w")
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            fresh = self.log_path.exists() and self.log_path.stat().st_size > MAX_LOG_BYTES
            return open(self.log_path, "w" if fresh else "a", encoding="utf-8")
        except OSError as err:
            log.warning("cannot write %s (%s): the job's output goes to the server log only",
                        self.log_path, err)
            return open(os.devnull, "w")


def follow(job: Job, event: JobEvent, now: float | None = None) -> bool:
    """Bring ``job``'s progress up to date with one event of its retrain process (phase,
    stages planned, done, discarded, cancelled), received at ``now`` (unix seconds); True
    when the event switched a route."""
    now = time.time() if now is None else now
    if event.phase is not None:
        job.phase = event.phase
    if "eta_full_capacity_s" in event.model_fields_set:
        eta = job.eta_full_capacity_s = event.eta_full_capacity_s
        job.eta_full_capacity_at = None if eta is None else round(now + eta, 3)
    if event.event == "plan":
        job.stages_total = event.stages
    elif event.event == "replan":  # what is left now, on the new versions, joins this job
        job.replans += 1
        job.stages_total = job.stages_done + (event.stages or 0)
    elif event.event == "stage-start":
        job.current_stage = event.stage()
    elif event.event == "stage-commit":
        job.stages_done += 1
        job.current_stage = None
        if event.route_switched:
            job.last_route_switch = now
            return True
    elif event.event in ("stage-discard", "stage-cancel"):
        job.stages_discarded += 1
        job.stages_cancelled += event.event == "stage-cancel"
        job.current_stage = None
    return False


def estimate_end(job: Job, planned_at: float | None, now: float) -> float | None:
    """When ``job`` should end (unix seconds): the wall time per settled (committed or
    discarded) stage since its plan (at ``planned_at``), times the stages left, from
    ``now``; never before the scheduler's full capacity. None before a stage settles."""
    settled = job.stages_done + job.stages_discarded
    if planned_at is None or not settled or job.stages_total is None:
        return None
    left = max(job.stages_total - job.stages_done, 0)
    end = now + (now - planned_at) / settled * left
    if job.eta_full_capacity_at is not None:
        end = max(end, job.eta_full_capacity_at)
    return round(end, 3)
