"""The loaded run behind one lock: the service's concurrency model.

Serving in s3t mutates the shared backbone per route (each route's head is loaded into the
model before it runs; materialising a route switches LoRA layers with ``set_depth``), and
the engine's ledger is one SQLite connection, inside whose transaction a deletion runs.
So every use of the :class:`~s3t.engine.S3T` object takes ONE ``threading.Lock``:

- a model call: one batched ``predict`` for a whole dynamic batch, or one ``generate``;
- a deletion, with what follows its commit: ``S3T.forget`` (validated, committed durably,
  invalidated stage files erased) and then ``S3T.served()``, which recomputes the served
  routes from the ledger and materialises them, both under the lock, before the response;
- ledger reads: status, audit, certificates, readiness and the metrics gauges.

Each of these runs in a worker thread (``asyncio.to_thread``), so the event loop never
waits on the lock: health checks and new requests are taken while the model works.

Why a prediction never uses an erased stage once the deletion is acknowledged: the
deletion's response is sent after it released the lock, its routes already recomputed; a
model call that starts later takes the lock after that, and the routes it uses are read
by ``served()`` inside its own locked section. The routes a response reports are the ones
the call used: ``served()`` is read before and after the call, and the call is repeated
(a bounded number of times) if another process (``s3t forget``) committed in between.
Deletions from other processes reach this server through the ledger's change counters at
the next model call, as in any s3t process. Deletions through this server are serialised
by the lock as well (and, across processes, by the ledger's write lock).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s3t.service.errors import BusyError, IdempotencyConflict
from s3t.service.idempotency import IdempotencyStore, fingerprint

if TYPE_CHECKING:  # the engine imports torch: loaded when the app starts, not on import
    from s3t.engine import S3T, Generation, Prediction

log = logging.getLogger("s3t.service")

Routes = dict[str, str]  # shard -> the stage key serving it
ROUTE_TRIES = 3


@dataclass
class DeletionOutcome:
    certificate: dict
    committed: bool    # a new deletion was committed by this request
    replayed: bool     # answered from the client key's record


class GuardedModel:
    def __init__(self, model: S3T, keys: IdempotencyStore):
        self.model, self.keys = model, keys
        self.lock = threading.Lock()
        self.last_routes: Routes = {}

    # --- model calls --------------------------------------------------------------------------
    def _routes(self) -> Routes:
        routes = {str(shard): route.stage for shard, route in self.model.served().items()}
        self.last_routes = routes
        return routes

    def warm(self) -> Routes:
        """Load the backbone and materialise the live routes."""
        with self.lock:
            return self._routes()

    def predict(self, inputs: list[str]) -> tuple[Prediction, Routes]:
        with self.lock:
            for _ in range(ROUTE_TRIES):
                before = self._routes()
                prediction = self.model.predict(inputs)
                if self._routes() == before:
                    return prediction, before
        raise BusyError("the served routes kept changing during the call (deletions from "
                        "another process): retry")

    def generate(self, prompt: str, max_new_tokens: int, greedy: bool, temperature: float,
                 seed: int) -> tuple[Generation, Routes]:
        with self.lock:
            for _ in range(ROUTE_TRIES):
                before = self._routes()
                result = self.model.generate(prompt, max_new_tokens=max_new_tokens,
                                             greedy=greedy, temperature=temperature, seed=seed)
                if self._routes() == before:
                    return result, before
        raise BusyError("the served routes kept changing during the call (deletions from "
                        "another process): retry")

    # --- deletions ----------------------------------------------------------------------------
    def forget(self, sample_ids: Sequence[str], groups: Sequence[str],
               client_key: str | None) -> DeletionOutcome:
        """Delete durably, then take the erased stages out of service, under the lock."""
        body = fingerprint(sample_ids, groups)
        with self.lock:
            ledger = self.model.ledger
            if client_key is not None:
                known = self.keys.get(client_key)
                if known is not None and known.fingerprint != body:
                    raise IdempotencyConflict(
                        f"request_id {client_key!r} was already used for another deletion "
                        "request: use a new request_id for a new request")
                certificate = None if known is None else ledger.certificate(known.request_id)
                if certificate is not None:
                    return DeletionOutcome(certificate, committed=False, replayed=True)
            before = ledger.deletion_count()
            certificate = self.model.forget(sample_ids=list(sample_ids) or None,
                                            groups=list(groups) or None)
            committed = ledger.deletion_count() > before
            if client_key is not None:
                self.keys.put(client_key, body, certificate["request_id"])
            try:
                self._routes()
            except Exception:  # the next model call refreshes again before it serves
                log.exception("refreshing the served routes after deletion %s failed",
                              certificate["request_id"])
            return DeletionOutcome(certificate, committed=committed, replayed=False)

    def certificate(self, key: str) -> dict | None:
        """A certificate by its s3t request id, or by the client key of its request."""
        with self.lock:
            found = self.model.ledger.certificate(key)
            if found is None:
                record = self.keys.get(key)
                if record is not None:
                    found = self.model.ledger.certificate(record.request_id)
            return found

    def certificates(self, offset: int, limit: int) -> tuple[int, list[dict]]:
        with self.lock:
            every = self.model.ledger.certificates()
        return len(every), every[offset:offset + limit]

    # --- the run's state ----------------------------------------------------------------------
    def status(self) -> dict:
        """The run's status, and ``training``: ``idle`` (this server never trains) or
        ``running`` while another process holds the run's retrain lock."""
        with self.lock:
            status = self.model.status()
            running = self.model.run is not None and self.model.run.writer_running()
        return {**status, "training": "running" if running else "idle"}

    def audit(self) -> dict:
        with self.lock:
            return self.model.audit().to_dict()

    def live_routes(self, wait_s: float) -> Routes:
        """The routes served now; while a model call holds the lock past ``wait_s``, the
        routes of the last call (it is serving, so they are what it serves)."""
        if not self.lock.acquire(timeout=wait_s):
            return dict(self.last_routes)
        try:
            return self._routes()
        finally:
            self.lock.release()

    def status_if_free(self, wait_s: float) -> dict | None:
        if not self.lock.acquire(timeout=wait_s):
            return None
        try:
            return self.model.status()
        finally:
            self.lock.release()

    def close(self) -> None:
        with self.lock:
            self.model.close()
            self.keys.close()
