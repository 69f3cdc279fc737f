"""The loaded run behind its locks: the service's concurrency model.

Model calls (a batched ``predict`` for a whole dynamic batch, ``generate``, the history's
validation accuracy) run concurrently, in worker threads, without a lock: serving never
mutates the shared backbone. Each call starts by taking one snapshot of the served routes
(``S3T.served()``: memoised on the ledger's change counters; when the ledger changed, the
routes are re-read and the changed ones materialised, one refresh at a time) and then
computes with that snapshot alone (``s3t/serve/ensemble.py``). A call never waits for
another call, nor for a retrain (a separate process: ``retrainer.py``).

Deletions never wait for a model call. They run on a second, torch-free view of the run
(:class:`~s3t.run.Run`, its own SQLite connection) under the RECORDS lock, which also
serialises the ledger reads (status, audit, certificates): the
deletion is validated, committed durably and its invalidated stage files erased, and the
certificate is sent. Client keys (``request_id``) are the run's: recorded in the deletion's
own ledger transaction, and the run alone decides what is a replay (``s3t.run.deletion``).
Every deletion first checks that ``ledger.sqlite`` is still the file this server holds
(``s3t.run.identity``); once it is not, deletions are refused (503), as are readiness and
audit. Why no prediction that starts after that can use an erased stage: its
model call begins after the commit, and its snapshot is taken after the commit: the commit
changed the ledger's ``data_version``, so the memo is stale and the snapshot is re-read,
dropping the erased stages from the weights it holds and materialising the new routes. A
call already running keeps the snapshot it started with (it began before the
acknowledgement); if it needs to read a stage file that the deletion just erased, it starts
again. The routes a response reports are the ones its snapshot held (``Prediction.routes``).
Each of these runs in a worker thread (``asyncio.to_thread``), so the event loop never
waits on a lock. Deletions from other processes reach this server through the same ledger
counters; across processes they serialise on the ledger's write lock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from s3t.run import IntegrityError, Run, sweep
from s3t.run.chain import chain_problems
from s3t.run.subject import STATES, SubjectOpening
from s3t.run.timeline import timeline
from s3t.service.errors import BusyError

if TYPE_CHECKING:  # the engine imports torch: loaded when the app starts, not on import
    from s3t.engine import S3T, Generation, Prediction

log = logging.getLogger("s3t.service")

Routes = dict[str, str]  # shard -> the stage key serving it
ROUTE_TRIES = 3


MODEL_NICE = 5  # model-call threads yield the CPU to deletions and the event loop


def lower_priority(nice: int = MODEL_NICE) -> None:
    """Make the calling thread ``nice`` steps nicer (Linux: per thread), so that on a busy
    machine a deletion or the event loop is scheduled before model computation."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError):  # not Linux, or not allowed: nothing to do
        pass


@dataclass
class DeletionOutcome:
    certificate: dict
    committed: bool    # a new deletion was committed by this request
    replayed: bool     # answered from the client key's record


class GuardedModel:
    def __init__(self, model: S3T):
        self.model = model
        self.records_lock = threading.Lock()  # deletions, keys and ledger reads
        self._calls = 0                       # model calls running (close waits for them)
        self._idle = threading.Condition()
        self._closing = False
        self._history_niced = False
        if model.run is None:
            raise RuntimeError("the service needs a loaded run")
        self.records = Run.open(model.run.path, repair=False)
        self._timeline: tuple[object, list[dict]] | None = None  # (ledger stamp, points)

    # --- model calls --------------------------------------------------------------------------
    @contextmanager
    def _call(self) -> Iterator[None]:
        """One model call: counted, so ``close`` waits for those running."""
        with self._idle:
            if self._closing:
                raise BusyError("the server is shutting down")
            self._calls += 1
        try:
            yield
        finally:
            with self._idle:
                self._calls -= 1
                self._idle.notify_all()

    def _routes(self) -> Routes:
        return {str(shard): route.stage for shard, route in self.model.served().items()}

    def warm(self) -> Routes:
        """Load the backbone and materialise the live routes."""
        with self._call():
            return self._routes()

    def predict(self, inputs: list[str]) -> tuple[Prediction, Routes]:
        with self._call():
            for _ in range(ROUTE_TRIES):
                try:
                    prediction = self.model.predict(inputs)
                except IntegrityError as err:
                    self._retry_or_raise(err)
                    continue
                return prediction, self._reported(prediction.routes)
        raise BusyError("stage files kept disappearing during the call (deletions): retry")

    def generate(self, prompt: str, max_new_tokens: int, greedy: bool, temperature: float,
                 seed: int) -> tuple[Generation, Routes]:
        with self._call():
            for _ in range(ROUTE_TRIES):
                try:
                    result = self.model.generate(prompt, max_new_tokens=max_new_tokens,
                                                 greedy=greedy, temperature=temperature,
                                                 seed=seed)
                except IntegrityError as err:
                    self._retry_or_raise(err)
                    continue
                return result, self._reported(result.routes)
        raise BusyError("stage files kept disappearing during the call (deletions): retry")

    def val_accuracy(self, limit: int) -> float | None:
        """Accuracy of what is served on (the first ``limit`` of) the validation split, which
        is never deletable; None for causal LMs, runs without one, or no live route."""
        if self.model.task == "causal_lm":
            return None
        if not self._history_niced:  # the history's own thread: a model call, niced as those
            lower_priority()
            self._history_niced = True
        with self.records_lock:
            rows = self.records.ledger.eval_samples()[:limit]
        if not rows:
            return None
        with self._call():
            prediction = self.model.predict([row[2] for row in rows])
        if prediction.live_shards == 0:
            return None
        return float(np.mean(prediction.label_ids == np.asarray([row[1] for row in rows])))

    def _reported(self, used: dict[int, str]) -> Routes:
        return {str(shard): stage for shard, stage in used.items()}

    def _retry_or_raise(self, err: IntegrityError) -> None:
        """A stage file failed its check during a model call. If a deletion erased the stage
        meanwhile (the ledger marks it erased before its files go), the call is retried with
        fresh routes; if the stage is still live, its files are damaged and no retry helps:
        the error goes to the client, telling the operator to run ``s3t retrain``."""
        with self.records_lock:
            live = err.key is None or self.records.ledger.is_live(err.key)
        if live:
            raise err

    # --- deletions ----------------------------------------------------------------------------
    def forget(self, sample_ids: Sequence[str], groups: Sequence[str],
               client_key: str | None,
               subject: SubjectOpening | None = None,
               x_request_id: str | None = None) -> DeletionOutcome:
        """Delete durably (validated, committed, files erased) without waiting for a model
        call; the next model call serves without the erased stages (module docstring). The
        certificate carries ``client_key`` and the request's X-Request-ID."""
        with self.records_lock:
            plan, certificate = self.records.forget(sample_ids=list(sample_ids) or None,
                                                    groups=list(groups) or None,
                                                    client_key=client_key, subject=subject,
                                                    x_request_id=x_request_id)
            return DeletionOutcome(certificate, committed=plan.replay is None,
                                   replayed=plan.replay == "client-key")

    def certificate(self, key: str) -> dict | None:
        """A certificate by its s3t request id, or by the client key of its request."""
        with self.records_lock:
            ledger = self.records.ledger
            found = ledger.certificate(key)
            if found is None:
                record = ledger.client_key(key)
                if record is not None:
                    found = ledger.certificate(record[1])
            return None if found is None else found.to_dict()

    def check_ledger(self) -> None:
        """Raise unless the run's ledger file is still the one this server holds."""
        with self.records_lock:
            self.records.check_ledger()

    def certificates(self, offset: int,
                     limit: int) -> tuple[int, list[dict], dict[str, list[str]]]:
        """A page of the deletion log, and the client keys its requests were asked with."""
        with self.records_lock:
            every = self.records.ledger.stored_certificates()
            page = every[offset:offset + limit]
            keys = self.records.ledger.client_keys_of([str(c.get("request_id")) for c in page])
        return len(every), page, keys

    # --- the run's state ----------------------------------------------------------------------
    def status(self) -> dict:
        """The run's status, ``stages_total`` (stages of the full plan) and ``training``:
        ``running`` while a process (this server's retrainer, or ``s3t retrain``) holds the
        run's retrain lock, else ``idle``."""
        with self.records_lock:
            status = self.records.status()
            running = self.records.writer_running()
            erasures = self.records.ledger.subject_counts()
        # the run directory by its name: status may be open (--open-status), and no response
        # shows a path of the server's disk
        return {**status, "run_dir": self.records.path.name, "stages_total": self.stages_total,
                "training": "running" if running else "idle", "erasures": erasures}

    @property
    def stages_total(self) -> int:
        return self.records.tree.count() * self.records.config.shards

    def sweep(self) -> list[str]:
        """Remove what a killed trainer left (half-written stage directories), as opening
        the run does; nothing while a trainer still holds the run's retrain lock."""
        run = self.records
        with self.records_lock:
            return sweep(run.ledger, run.store, run.features,
                         writer_active=run.writer_running())

    def audit(self) -> dict:
        with self.records_lock:
            self.records.check_ledger()  # an audit of a file that is not the run's: refused
            report = self.records.audit().to_dict()
            ledger = self.records.ledger
            chain = chain_problems(ledger.stored_certificates(), ledger.chain_head())
        return {**report, "chain_intact": not chain}

    def live_routes(self) -> Routes:
        """The routes served now (a snapshot, as a model call takes it)."""
        with self._call():
            return self._routes()

    def ledger_metrics(self, wait_s: float = 1.0) -> dict | None:
        """The run's counters and gauges for ``/metrics`` (``metrics.LEDGER_METRICS``), read
        from the ledger, so every server on the run reports the same; None if the records
        are busy for ``wait_s``."""
        if not self.records_lock.acquire(timeout=wait_s):
            return None
        try:
            ledger = self.records.ledger
            status = self.records.status()
            stages = ledger.stages(None)
            requests = ledger.deletion_count()
            erasures = ledger.subject_counts()
        finally:
            self.records_lock.release()
        return {"s3t_deletions": requests, "s3t_deleted_samples": status["deleted"],
                "s3t_erasure_requests": {s: erasures[s] for s in STATES},
                "s3t_erasure_callbacks_pending": erasures["callbacks_pending"],
                "s3t_erasure_callbacks_failed": erasures["callbacks_failed"],
                "s3t_stages_trained": len(stages),
                "s3t_stages_retrained": sum(any(v > 0 for v in r.versions) for r in stages),
                "s3t_stages_erased": sum(r.status == "erased" for r in stages),
                "s3t_live_shards": status["live_shards"], "s3t_capacity": status["capacity"],
                "s3t_live_stages": status["live_stages"]}

    def timeline(self) -> list[dict]:
        """The run's history from its ledger (``run/timeline.py``), re-derived only when
        the ledger changed."""
        with self.records_lock:
            run = self.records
            stamp = run.ledger.change_stamp()
            if self._timeline is not None and self._timeline[0] == stamp:
                return self._timeline[1]
            points = timeline(run.ledger.stages(None), run.ledger.stage_times(),
                              run.ledger.certificates(), run.config.shards, run.config.slices,
                              run.method.servable)
            self._timeline = (stamp, points)
            return points

    def status_if_free(self, wait_s: float) -> dict | None:
        if not self.records_lock.acquire(timeout=wait_s):
            return None
        try:
            return self.records.status()
        finally:
            self.records_lock.release()

    def close(self, wait_s: float = 60.0) -> None:
        """Refuse new model calls, wait (up to ``wait_s``) for those running, then close."""
        with self._idle:
            self._closing = True
            self._idle.wait_for(lambda: self._calls == 0, timeout=wait_s)
        with self.records_lock:
            self.model.close()
            self.records.close()
