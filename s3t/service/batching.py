"""Dynamic batching: concurrent requests gathered into ONE model call.

Requests wait in a queue. One worker task takes the first waiting request, then gathers
more until the batch holds ``max_batch`` inputs or ``max_wait_ms`` have passed since it
took the first, and makes one call for all their inputs in a worker thread (the call
blocks on the model lock and on torch; the event loop keeps accepting requests meanwhile).
The result is split back to each request by its range of inputs. While a batch runs, new
requests queue up, so batches grow with the load and the model is never idle while work
waits.

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
                 retry_alone: tuple[type[Exception], ...] = (ValueError, TypeError)):
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.call, self.split = call, split
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_queue, self.on_batch, self.retry_alone = max_queue, on_batch, retry_alone
        self._jobs: collections.deque[_Job] = collections.deque()
        self._running: list[_Job] = []  # the batch being executed
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="s3t-batcher")

    async def stop(self) -> None:
        """Stop taking requests; those still waiting fail with ``BusyError``."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in [*self._running, *self._jobs]:
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

    async def _run(self) -> None:
        carry: _Job | None = None
        loop = asyncio.get_running_loop()
        while True:
            first = carry if carry is not None and not carry.future.done() else await self._next(None)
            carry = None
            if first is None:
                continue
            batch, size = [first], len(first.items)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                job = await self._next(max(0.0, deadline - loop.time()))
                if job is None:
                    break
                if size + len(job.items) > self.max_batch:
                    carry = job
                    break
                batch.append(job)
                size += len(job.items)
            self._running = batch
            try:
                await self._execute(batch)
            except Exception:  # never let one batch stop the worker
                log.exception("batch failed")
            self._running = []  # (left set if cancelled: stop() fails those requests)

    async def _execute(self, batch: list[_Job]) -> None:
        items = [item for job in batch for item in job.items]
        if self.on_batch is not None:
            self.on_batch(len(items))
        try:
            out = await asyncio.to_thread(self.call, items)
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
