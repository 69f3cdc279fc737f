"""What one service instance holds: its settings, the loaded run behind its locks, the
dynamic batcher of predictions, the background retrainer, the history the operator's page
plots, and its metrics; started and stopped by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from s3t.service.batching import Batcher
from s3t.service.errors import BusyError
from s3t.service.guard import ROUTE_TRIES, GuardedModel, Routes, lower_priority
from s3t.service.history import History
from s3t.service.metrics import ServiceMetrics
from s3t.service.retrainer import Job, Retrainer
from s3t.service.settings import Settings
from s3t.service.subjects import Subjects

if TYPE_CHECKING:  # the engine imports torch: loaded when the app starts, not on import
    from s3t.engine import Prediction

log = logging.getLogger("s3t.service")
T = TypeVar("T")

def split_prediction(out: tuple[Prediction, Routes], start: int, stop: int) -> dict:
    prediction, routes = out
    return {"labels": prediction.labels[start:stop],
            "probabilities": prediction.probabilities[start:stop].tolist(),
            "routes": routes, "routes_all": routes_all(prediction.routes_all),
            "live_shards": prediction.live_shards}


class RoutesChanged(BusyError):
    """The chunks of one prediction request were served by different routes (a deletion or
    a retrained stage came in between): the request is served again."""


def join_predictions(parts: list[dict]) -> dict:
    """One request's answer from its chunks' (``batching.py``), all served by the same
    routes."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if any(p["routes"] != first["routes"] or p["routes_all"] != first["routes_all"]
           for p in parts[1:]):
        raise RoutesChanged("the routes changed while the request was served: retry")
    return {**first, "labels": [x for p in parts for x in p["labels"]],
            "probabilities": [x for p in parts for x in p["probabilities"]]}


def routes_all(used: dict[int, list[str]]) -> dict[str, list[str]]:
    """Shard -> every stage that served it (the route first), as the API reports it."""
    return {str(shard): list(keys) for shard, keys in used.items()}


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings.check()
        self.metrics = ServiceMetrics()
        self._model: GuardedModel | None = None
        self._batcher: Batcher[tuple[Prediction, Routes], dict] | None = None
        self._retrainer: Retrainer | None = None
        self._history: History | None = None
        self._subjects: Subjects | None = None
        self._torch_threads: int | None = None  # torch's own setting, restored at stop
        self._model_pool: ThreadPoolExecutor | None = None  # threads of the model calls
        self.last_audit: dict | None = None  # contract.AuditSummary of GET /v1/audit's last

    @property
    def model(self) -> GuardedModel:
        if self._model is None:
            raise BusyError("the run is not loaded (the server is starting or stopping)")
        return self._model

    @property
    def batcher(self) -> Batcher[tuple[Prediction, Routes], dict]:
        if self._batcher is None:
            raise BusyError("the server is not accepting predictions (starting or stopping)")
        return self._batcher

    @property
    def retrainer(self) -> Retrainer:
        if self._retrainer is None:
            raise BusyError("the server is starting or stopping")
        return self._retrainer

    @property
    def subjects(self) -> Subjects:
        if self._subjects is None:
            raise BusyError("the server is starting or stopping")
        return self._subjects

    @property
    def history(self) -> History:
        if self._history is None:
            raise BusyError("the server is starting or stopping")
        return self._history

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in a worker thread (it takes its locks there)."""
        return await asyncio.to_thread(call, *args)

    async def run_model(self, call: Callable[..., T], *args: Any) -> T:
        """A model call (``generate``) on the model calls' own, lower-priority threads."""
        pool = self._model_pool
        if pool is None:
            raise BusyError("the server is starting or stopping")
        return await asyncio.get_running_loop().run_in_executor(pool, call, *args)

    async def start(self) -> None:
        """Load the run once (an interrupted erasure is finished here), load the backbone and
        materialise the live routes, then start taking predictions."""
        from s3t.engine import S3T

        settings = self.settings
        if settings.torch_threads:  # before the first model call's thread starts
            import torch

            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(settings.torch_threads)
        engine = await asyncio.to_thread(S3T.load, settings.run_dir)
        try:
            model = GuardedModel(engine)
        except BaseException:
            engine.close()
            raise
        self._model = model
        routes = await self.run(model.warm)
        self.metrics.watch(model.ledger_metrics,
                           lambda: 0 if self._batcher is None else self._batcher.waiting)
        # Model calls run on threads of their own, niced: deletions (asyncio's default
        # threads) and the event loop get the CPU first when both want it.
        self._model_pool = ThreadPoolExecutor(settings.model_workers + 1, "s3t-model",
                                              initializer=self._model_thread)
        self._batcher = Batcher(self.metrics.timed("predict", model.predict), split_prediction,
                                max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                max_queue=settings.max_queue, join=join_predictions,
                                on_batch=self.metrics.batch_inputs.observe,
                                workers=settings.model_workers, executor=self._model_pool)
        await self._batcher.start()
        evaluate = self.metrics.timed("evaluate", model.val_accuracy)
        self._history = History(model.timeline, lambda: evaluate(settings.eval_size),
                                settings.eval_interval_s)
        self._history.start()
        self._retrainer = Retrainer(settings.run_dir, settings.policy,
                                    settings.retrain_delay_s, model.status, self._on_retrain,
                                    log_path=settings.run_dir / "service" / "retrain.log")
        self._retrainer.start()
        self._subjects = Subjects(model, settings.policy, settings.retrain_delay_s,
                                  self._retrainer.current, settings.callback_secret,
                                  settings.callback_attempts, settings.callback_backoff_s,
                                  allow=settings.callback_allow)
        self._subjects.start()
        log.info("serving %s: %d live routes %s; retrain policy %s; %d model call(s) at once, "
                 "%s torch thread(s)", settings.run_dir, len(routes), routes, settings.retrain,
                 settings.model_workers, settings.torch_threads or "default")

    def _model_thread(self) -> None:
        """Set up a model-call thread: niced, and its own torch thread count (OpenMP keeps
        one per thread: a new thread does not follow ``torch.set_num_threads`` of another)."""
        lower_priority()
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)

    def _on_retrain(self, event: str, job: Job) -> None:
        """Retrainer events (its worker thread): history point, metrics."""
        self.metrics.observe_job(event, job)
        if event == "retrain-end" and job.state != "succeeded" and self._model is not None:
            removed = self._model.sweep()  # a killed trainer's half-written stage files
            if removed:
                log.info("removed what retrain job %s left unfinished: %s", job.id, removed)
        if self._history is not None:
            self._history.changed()

    def deleted(self, request_id: str | None = None) -> None:
        """A deletion was committed through this server: the retrain policy's delay restarts
        (a job it starts keeps ``request_id``) and what is served is measured again. Its
        counters and history point come from the ledger (``/metrics``, ``/v1/history``)."""
        self.retrainer.note_deletion(request_id)
        self.history.changed()

    async def predict(self, inputs: list[str]) -> dict:
        """A prediction through the batcher, served again if its chunks saw different
        routes (``RoutesChanged``)."""
        for _ in range(ROUTE_TRIES):
            try:
                return await self.batcher.submit(inputs)
            except RoutesChanged:
                continue
        raise BusyError("the routes kept changing while the request was served: retry")

    async def stop(self) -> None:
        if self._subjects is not None:  # first: it reads the ledger and the retrainer
            subjects, self._subjects = self._subjects, None
            await asyncio.to_thread(subjects.stop)
        if self._retrainer is not None:  # first: it may call back into the model
            retrainer, self._retrainer = self._retrainer, None
            await asyncio.to_thread(retrainer.stop)
        if self._history is not None:
            history, self._history = self._history, None
            await asyncio.to_thread(history.stop)
        if self._batcher is not None:
            await self._batcher.stop()
            self._batcher = None
        if self._model is not None:
            model, self._model = self._model, None
            await self.run(model.close)
        if self._model_pool is not None:
            pool, self._model_pool = self._model_pool, None
            pool.shutdown(wait=False)
        if self._torch_threads is not None:
            import torch

            torch.set_num_threads(self._torch_threads)
            self._torch_threads = None

    async def render_metrics(self) -> bytes:
        """The metrics text; the ledger is read in a worker thread (``LedgerCollector``)."""
        if self._retrainer is not None:
            self.metrics.observe_retrainer(self._retrainer.current())
        return await self.run(self.metrics.render)
