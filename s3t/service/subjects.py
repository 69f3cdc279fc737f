"""Erasure requests (OpenDSR-shaped, ``POST /v1/dsr``) on one server: their status records,
and one background thread that advances them and delivers their status callbacks.

The states live in the ledger (``s3t.run.subject``): ``received`` and ``exact`` are written
by the deletion's own transaction and ``erased`` by its outcome's, so the request path does
nothing more here. ``restored`` comes later, when a retrain (this server's child process, or
``s3t retrain``) brings the shards back: the thread notices the ledger changed and advances
every open request (``Ledger.advance_subjects``). The same thread sends the callbacks the
ledger queued: claimed for a while before each try, removed once the receiver answered 2xx,
tried again with a doubling back-off, and kept as failed after ``callback_attempts`` tries.
Nothing of it is on a deletion's path: the thread only takes the records lock for the
ledger's short writes, never while it waits on a receiver. A server that restarts sends
whatever was still pending.

Callbacks are signed over ``S3T-Timestamp`` + ``.`` + the body: ``S3T-Signature:
ed25519=<hex>`` with the run's key on a signed run (``S3T-Key-Id``; the public key is ``GET
/v1/keys``), else ``hmac-sha256=<hex>`` with the server's ``--callback-secret-file``. They go
only to hosts ``--callback-allow`` lists (``callback_hosts.py``), checked again before each
try: one queued for another host is given up unsent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import httpx

from s3t.contract import SubjectCallback
from s3t.errors import describe
from s3t.run.files import META_FILE
from s3t.run.signing import key_id
from s3t.run.subject import backoff, expected_completion, request_status, stages_left
from s3t.service import callback_hosts
from s3t.service.callback_hosts import allowed

if TYPE_CHECKING:
    from s3t.contract import Job
    from s3t.run.signing import Signer
    from s3t.service.guard import GuardedModel
    from s3t.service.retrainer import RetrainPolicy

log = logging.getLogger("s3t.service")

POLL_S = 0.5              # how often the ledger is looked at for a change
SEND_TIMEOUT_S = 5.0      # one callback's connect + answer
BATCH = 20                # callbacks claimed at once
STAGE_TIMES_S = 60.0      # how long a measured stage time is reused


def sign(body: bytes, timestamp: str, signer: Signer | None,
         secret: str | None) -> dict[str, str]:
    """The signature headers of a callback body (module docstring)."""
    message = timestamp.encode() + b"." + body
    if signer is not None:
        return {"S3T-Signature": "ed25519=" + signer.key.sign(message).hex(),
                "S3T-Key-Id": key_id(signer.public)}
    if secret is None:
        raise ValueError("no key to sign callbacks with")
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return {"S3T-Signature": "hmac-sha256=" + digest}


class Subjects:
    """The erasure requests of one server (module docstring)."""

    def __init__(self, model: GuardedModel, policy: RetrainPolicy, delay_s: float,
                 job: Callable[[], Job | None], secret: str | None = None,
                 attempts: int = 10, backoff_s: float = 2.0, poll_s: float = POLL_S,
                 allow: Sequence[str] = ()):
        self.model, self.policy, self.delay_s, self._job = model, policy, delay_s, job
        try:
            self.signer = model.records.signer()  # None on an unsigned run
        except Exception:  # a signed run without its key here: it cannot delete either
            self.signer = None
        self.secret, self.attempts, self.backoff_s, self.poll_s = secret, attempts, backoff_s, poll_s
        self.allow = tuple(allow)  # --callback-allow: checked again before each delivery
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._stamp: object = None
        self._mark: int | None = None  # Ledger.stage_mark when erased ones were looked at
        self._stage_seconds: tuple[float, float | None] = (-STAGE_TIMES_S, None)
        self._http = httpx.Client(timeout=SEND_TIMEOUT_S, follow_redirects=False)

    @property
    def signs(self) -> bool:
        """Whether callbacks can be signed (else requests with callback URLs are refused)."""
        return self.signer is not None or self.secret is not None

    # --- records --------------------------------------------------------------------------------
    def status(self, subject_request_id: str) -> dict | None:
        """The request's ``SubjectRequestStatus``, or None if the ledger has none."""
        return self._status(subject_request_id)[0]

    def _status(self, subject_request_id: str) -> tuple[dict | None, bool]:
        """The status record and whether a retrain will come for it."""
        with self.model.records_lock:
            ledger = self.model.records.ledger
            record = ledger.subject_request(subject_request_id)
            if record is None:
                return None, False
            served = ledger.served_depths()
            certificate = ledger.certificate(record["request_id"])
        retrains = self._retrains(served)
        transitions = dict(record["transitions"])
        return {"subject_request_id": subject_request_id,
                "request_status": request_status(record["state"], retrains),
                "state": record["state"], "submitted_time": record["submitted_time"],
                "received_time": transitions["received"],
                "expected_completion_time": self._expected(record, transitions, served,
                                                           retrains),
                "transitions": [{"state": s, "time": t} for s, t in record["transitions"]],
                "deletion_request_id": record["request_id"],
                "samples": 0 if certificate is None else len(certificate.samples),
                "status_callback_urls": record["callback_urls"],
                "callbacks_pending": record["callbacks_pending"],
                "callbacks_failed": record["callbacks_failed"]}, retrains

    def _retrains(self, served: dict[str, int]) -> bool:
        """Whether a retrain will come without an operator: the policy wants one, or a job
        is queued or running."""
        job = self._job()
        if job is not None and job.active:
            return True
        if self.policy.mode == "eager":
            return True
        if self.policy.mode == "capacity":
            full = len(served) * self.model.records.config.slices
            return full > 0 and sum(served.values()) / full < self.policy.threshold
        return False

    def _expected(self, record: dict, transitions: dict[str, str], served: dict[str, int],
                  retrains: bool) -> str | None:
        job = self._job()
        eta = job.eta_full_capacity_s if job is not None and job.active else None
        return expected_completion(record["state"], transitions, retrains,
                                   stages_left(record["targets"], served),
                                   self.stage_seconds(), self.delay_s, eta,
                                   datetime.now(timezone.utc))

    def stage_seconds(self) -> float | None:
        """Mean training seconds of a live stage, from the stages' recorded ``train_seconds``
        (their meta files); None when none recorded it."""
        at, value = self._stage_seconds
        if time.monotonic() - at < STAGE_TIMES_S:
            return value
        with self.model.records_lock:
            run = self.model.records
            paths = [run.store.path(r.shard, r.key) / META_FILE for r in run.ledger.stages()]
        seconds = []
        for path in paths[:64]:
            try:
                value = json.loads(path.read_text()).get("train_seconds")
            except (OSError, ValueError):
                continue
            if isinstance(value, (int, float)) and value >= 0:
                seconds.append(float(value))
        mean = sum(seconds) / len(seconds) if seconds else None
        self._stage_seconds = (time.monotonic(), mean)
        return mean

    # --- the thread -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="s3t-subjects", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._http.close()

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.tick()
                failures = 0
            except Exception as err:  # a full disk, a swapped ledger ...: tried again later
                failures += 1
                self._failed(err, failures)
            self._wake.wait(self.poll_s * 2 ** min(failures, 6))  # 32 s at most when failing
            self._wake.clear()

    def _failed(self, err: Exception, failures: int) -> None:
        """Log a failed tick: a storage fault (read-only, full disk, a swapped ledger ...) as
        the error table's one line (``s3t.errors``), anything else with its traceback. Each
        write is one transaction, so a failed one changed nothing; a callback whose delivery
        could not be settled stays claimed and is sent again (at least once)."""
        failure = describe(err, self.model.records.path)
        if failure is None or failure.status is None:
            log.error("erasure requests: advancing or sending callbacks failed (%d time(s) in a "
                      "row)", failures, exc_info=err)
            return
        log.error("erasure requests: advancing or sending callbacks failed (%d time(s) in a "
                  "row): %s", failures, failure.message,
                  extra={"error": failure.kind.kind, "failures": failures})

    def tick(self) -> None:
        """Advance the open requests if the ledger changed, then send what is due."""
        if self.model.records.read_only:  # a run that cannot be written: nothing to record
            return
        with self.model.records_lock:
            ledger = self.model.records.ledger
            stamp = ledger.change_stamp()
            advanced: list[str] = []
            if stamp != self._stamp:
                # Only a committed stage can restore a request, so the erased ones are looked
                # at once one was (a deletion only takes depth away); the others at any change.
                mark = ledger.stage_mark()
                advanced = ledger.advance_subjects(restore=mark != self._mark)
                self._mark, self._stamp = mark, ledger.change_stamp()
            if advanced:
                log.info("erasure requests advanced: %s", ", ".join(advanced[:20]),
                         extra={"subject_requests": advanced})
        for _ in range(10):  # bounded: the rest waits for the next tick
            if self._stop.is_set() or self.send_due() < BATCH:
                return

    def send_due(self) -> int:
        """Claim and send the callbacks due now; returns how many were claimed."""
        lease = max(SEND_TIMEOUT_S + 1, self.backoff_s)
        with self.model.records_lock:
            due = self.model.records.ledger.due_callbacks(time.time(), lease, BATCH)
        for callback in due:
            if self._stop.is_set():
                break
            self._send(callback)
        return len(due)

    def _send(self, callback: dict) -> None:
        if not allowed(callback["url"], self.allow):  # queued elsewhere, or before a restart
            refused = callback_hosts.not_listed(callback["url"], self.allow)
            with self.model.records_lock:
                self.model.records.ledger.callback_done(callback["id"], False, None, refused)
            log.error("callback %s (%s) to %s given up unsent: %s", f"cb-{callback['id']}",
                      callback["subject_request_id"], callback["url"], refused)
            return
        found, retrains = self._status(callback["subject_request_id"])
        status = found or {}
        transitions = {t["state"]: t["time"] for t in status.get("transitions", ())}
        state = callback["state"]
        body = SubjectCallback(
            subject_request_id=callback["subject_request_id"], state=state,
            request_status=request_status(state, retrains),
            time=transitions.get(state, ""),
            expected_completion_time=status.get("expected_completion_time"),
            delivery_id=f"cb-{callback['id']}").model_dump_json().encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "S3T-Timestamp": timestamp,
                   "S3T-Delivery": f"cb-{callback['id']}",
                   **sign(body, timestamp, self.signer, self.secret)}
        with self.model.records_lock:  # claimed before a swap: nothing goes out after it
            self.model.records.ledger.check_identity()
        error = None
        try:
            answer = self._http.post(callback["url"], content=body, headers=headers)
            if not 200 <= answer.status_code < 300:
                error = f"HTTP {answer.status_code}"
        except httpx.HTTPError as err:
            error = f"{type(err).__name__}: {err}"
        attempts = callback["attempts"]
        retry_at = None if error is None or attempts >= self.attempts else \
            time.time() + backoff(attempts, self.backoff_s)
        with self.model.records_lock:
            self.model.records.ledger.callback_done(callback["id"], error is None, retry_at,
                                                    error)
        if error is not None:
            (log.warning if retry_at is not None else log.error)(
                "callback %s (%s, %s) to %s failed, try %d of %d: %s%s",
                f"cb-{callback['id']}", callback["subject_request_id"], state,
                callback["url"], attempts, self.attempts, error,
                "" if retry_at is not None else "; given up")
