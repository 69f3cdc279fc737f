"""Dynamic batching: concurrent requests gathered into ONE model call.

Requests wait in a queue. A worker task takes the first waiting request, then gathers
more until the batch holds ``max_batch`` inputs or ``max_wait_ms`` have passed since it
took the first, and makes one call for all their inputs in a worker thread (the event loop
keeps accepting requests meanwhile). The result is split back to each request by its range
of inputs. While a batch runs, new requests queue up, so batches grow with the load and the
model is never idle while work waits. ``workers`` such tasks run, so up to that many calls
run at once (each on its own thread: on a machine with that many cores, one torch thread
per call keeps every core busy without the threads of one call waiting for each other).

A request is never split across calls: one larger than ``max_batch`` runs alone, and one
that would overflow the batch being gathered starts the next. If a call for several
requests fails with one of ``retry_alone`` (errors a bad input causes), each request is
retried alone, so a bad request fails only itself; any other error fails the batch. A
request whose client went away before its batch started is dropped. At most
``max_queue`` requests wait; beyond that ``submit`` raises ``BusyError`` (503).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from s3t.service.errors import BusyError

log = logging.getLogger("s3t.service")

Out = TypeVar("Out")    # what one call returns for the whole batch
Part = TypeVar("Part")  # what one request gets back


@dataclass
class _Job:
    items: Sequence[Any]
    future: asyncio.Future = field(repr=False)


class Batcher(Generic[Out, Part]):
    """``call(items) -> Out`` runs once per batch (in a thread); ``split(out, start, stop)``
    gives the part of ``out`` for the items ``start:stop``."""

    def __init__(self, call: Callable[[list[Any]], Out], split: Callable[[Out, int, int], Part],
                 max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 1024,
                 on_batch: Callable[[int], None] | None = None,
                 retry_alone: tuple[type[Exception], ...] = (ValueError, TypeError),
                 workers: int = 1, executor: Executor | None = None):
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1 or workers < 1:
            raise ValueError("max_batch, max_queue and workers must be >= 1 and "
                             "max_wait_ms >= 0")
        self.call, self.split = call, split
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_queue, self.on_batch, self.retry_alone = max_queue, on_batch, retry_alone
        self.workers, self.executor = workers, executor  # executor None: asyncio's default
        self._jobs: collections.deque[_Job] = collections.deque()
        self._running: dict[int, list[_Job]] = {}  # worker -> the batch it executes
        self._arrived: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._gathering: asyncio.Lock | None = None
        self._executing = 0  # workers running a call
        self._closed = False

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._gathering = asyncio.Lock()
        self._tasks = [asyncio.create_task(self._run(k), name=f"s3t-batcher-{k}")
                       for k in range(self.workers)]

    async def stop(self) -> None:
        """Stop taking requests; those still waiting fail with ``BusyError``."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in [*(j for batch in self._running.values() for j in batch), *self._jobs]:
            if not job.future.done():
                job.future.set_exception(BusyError("the server is shutting down"))
        self._jobs.clear()

    async def submit(self, items: Sequence[Any]) -> Part:
        """Queue ``items`` as one request; return its part of the batched call's result."""
        if self._closed or self._arrived is None:
            raise BusyError("the server is not accepting requests (starting or shutting down)")
        if len(self._jobs) >= self.max_queue:
            raise BusyError(f"{self.max_queue} requests are already waiting: retry shortly")
        job = _Job(items, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._arrived.set()
        return await job.future  # cancelled with the request if the client goes away

    async def _next(self, timeout: float | None) -> _Job | None:
        """The next live waiting request; None once ``timeout`` seconds passed without one."""
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            while self._jobs:
                job = self._jobs.popleft()
                if not job.future.done():
                    return job
            self._arrived.clear()
            if deadline is None:
                await self._arrived.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return None

    async def _run(self, worker: int = 0) -> None:
        assert self._gathering is not None and self._arrived is not None
        while True:
            batch = self._running[worker] = []
            async with self._gathering:  # one worker gathers at a time; the others execute
                await self._gather(batch)
            self._share(batch)
            if batch:
                self._executing += 1
                try:
                    await self._execute(batch)
                except Exception:  # never let one batch stop the worker
                    log.exception("batch failed")
                finally:
                    self._executing -= 1
            self._running.pop(worker, None)  # (left if cancelled: stop() fails those requests)

    def _share(self, batch: list[_Job]) -> None:
        """With workers idle, keep an even share of the batch (by inputs) and put the rest
        back at the head of the queue for them: the requests waiting are spread over every
        core instead of one call running while the other workers wait. (Clients that wait
        for their answers come back together, so one worker would otherwise gather them
        all, every time.)"""
        idle = self.workers - self._executing - 1
        if idle <= 0 or len(batch) < 2:
            return
        total = sum(len(job.items) for job in batch)
        share = -(-total // min(idle + 1, len(batch)))
        kept, size = 0, 0
        while kept < len(batch) and (kept == 0 or size + len(batch[kept].items) <= share):
            size += len(batch[kept].items)
            kept += 1
        rest = batch[kept:]
        del batch[kept:]
        self._jobs.extendleft(reversed(rest))
        if rest and self._arrived is not None:
            self._arrived.set()

    async def _gather(self, batch: list[_Job]) -> None:
        """Fill ``batch``: the first waiting request, then more until ``max_batch`` inputs or
        ``max_wait`` after the first. A request that would overflow the batch goes back to
        the head of the queue, for the next batch."""
        loop = asyncio.get_running_loop()
        first = await self._next(None)
        if first is None:
            return
        batch.append(first)
        size = len(first.items)
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            job = await self._next(max(0.0, deadline - loop.time()))
            if job is None:
                break
            if size + len(job.items) > self.max_batch:
                self._jobs.appendleft(job)
                break
            batch.append(job)
            size += len(job.items)

    async def _execute(self, batch: list[_Job]) -> None:
        items = [item for job in batch for item in job.items]
        if self.on_batch is not None:
            self.on_batch(len(items))
        try:
            out = await asyncio.get_running_loop().run_in_executor(self.executor, self.call,
                                                                   items)
        except Exception as err:
            if len(batch) == 1 or not isinstance(err, self.retry_alone):
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                return
            for job in batch:  # find the request that fails: each one alone
                if not job.future.done():
                    await self._execute([job])
            return
        start = 0
        for job in batch:
            stop = start + len(job.items)
            if not job.future.done():
                try:
                    job.future.set_result(self.split(out, start, stop))
                except Exception as err:
                    job.future.set_exception(err)
            start = stop
