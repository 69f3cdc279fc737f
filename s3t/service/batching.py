"""Dynamic batching: concurrent requests gathered into ONE model call, served fairly.

Requests wait in a queue. A worker task takes the first waiting work, then gathers more
until the batch holds ``max_batch`` inputs or ``max_wait_ms`` have passed since it took the
first, and makes one call for all those inputs in a worker thread (the event loop keeps
accepting requests meanwhile). The result is split back to each request by its range of
inputs. While a batch runs, new requests queue up, so batches grow with the load and the
model is never idle while work waits. ``workers`` such tasks run, so up to that many calls
run at once (each on its own thread: on a machine with that many cores, one torch thread
per call keeps every core busy without the threads of one call waiting for each other).

Fair serving: a request is served in pieces (chunks) wherever a batch's room ends, so a
request larger than ``max_batch`` takes several calls and a large request never holds the
model for more than one call at a time. A batch is filled first from requests not served
at all yet (in arrival order), then from requests already partly served (taking turns); so
a small request that arrives while a large one is being served goes into the next batch:
it waits for at most the call running now. A batch that follows one in which no partly
served request got any room starts with those, so a stream of small requests cannot starve
a large one (it proceeds at least every other call). The parts of a request are joined
(``join``) once its last chunk is answered.

If a call for several chunks fails with one of ``retry_alone`` (errors a bad input causes),
each chunk is retried alone, so a bad request fails only itself; any other error fails the
batch's requests. A request whose client went away is dropped, with its chunks not yet
started. At most ``max_queue`` requests wait; beyond that ``submit`` raises ``BusyError``
(503).
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


@dataclass(eq=False)
class _Job:
    items: Sequence[Any]
    future: asyncio.Future = field(repr=False)
    next: int = 0                                   # first item not yet given to a batch
    parts: dict[int, Any] = field(default_factory=dict)  # start -> the part of its chunk
    answered: int = 0                               # items whose part came back

    @property
    def remaining(self) -> int:
        return len(self.items) - self.next


@dataclass(frozen=True, eq=False)
class _Chunk:
    job: _Job
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def concat(parts: list[Any]) -> Any:
    """The default ``join``: one part as it is; list parts concatenated."""
    if len(parts) == 1:
        return parts[0]
    return [x for part in parts for x in part]


class Batcher(Generic[Out, Part]):
    """``call(items) -> Out`` runs once per batch (in a thread); ``split(out, start, stop)``
    gives the part of ``out`` for the items ``start:stop``; ``join(parts)`` makes one
    request's answer from the parts of its chunks (in order)."""

    def __init__(self, call: Callable[[list[Any]], Out], split: Callable[[Out, int, int], Part],
                 max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 1024,
                 on_batch: Callable[[int], None] | None = None,
                 retry_alone: tuple[type[Exception], ...] = (ValueError, TypeError),
                 workers: int = 1, executor: Executor | None = None,
                 join: Callable[[list[Part]], Part] = concat):
        # the bounds are the serve settings' (settings.py), checked there once
        self.call, self.split, self.join = call, split, join
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_queue, self.on_batch, self.retry_alone = max_queue, on_batch, retry_alone
        self.workers, self.executor = workers, executor  # executor None: asyncio's default
        self._fresh: collections.deque[_Job] = collections.deque()       # not served yet
        self._continuing: collections.deque[_Job] = collections.deque()  # partly served
        self._running: dict[int, list[_Chunk]] = {}  # worker -> the batch it executes
        self._arrived: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._gathering: asyncio.Lock | None = None
        self._executing = 0  # workers running a call
        self._starved = False  # the last batch gave no room to a partly served request
        self._closed = False

    @property
    def waiting(self) -> int:
        """Requests waiting for (more of) their inputs to be served."""
        return len(self._fresh) + len(self._continuing)

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
        running = [chunk.job for batch in self._running.values() for chunk in batch]
        for job in [*running, *self._fresh, *self._continuing]:
            if not job.future.done():
                job.future.set_exception(BusyError("the server is shutting down"))
        self._fresh.clear()
        self._continuing.clear()

    async def submit(self, items: Sequence[Any]) -> Part:
        """Queue ``items`` as one request; return its answer, joined from its chunks."""
        if self._closed or self._arrived is None:
            raise BusyError("the server is not accepting requests (starting or shutting down)")
        if self.waiting >= self.max_queue:
            raise BusyError(f"{self.max_queue} requests are already waiting: retry shortly")
        job = _Job(items, asyncio.get_running_loop().create_future())
        if not items:
            return self.join([])
        self._fresh.append(job)
        self._arrived.set()
        return await job.future  # cancelled with the request if the client goes away

    # --- gathering ----------------------------------------------------------------------------
    def _take(self, room: int, prefer_continuing: bool) -> _Chunk | None:
        """The next chunk (at most ``room`` inputs) by the fairness rule (module docstring)."""
        queues = ((self._continuing, self._fresh) if prefer_continuing
                  else (self._fresh, self._continuing))
        for queue in queues:
            while queue:
                job = queue.popleft()
                if job.future.done() or job.remaining == 0:
                    continue  # its client went away (or it failed): drop what is left
                chunk = _Chunk(job, job.next, job.next + min(room, job.remaining))
                job.next = chunk.stop
                if job.remaining:
                    self._continuing.append(job)  # its turn comes again after the others
                return chunk
        return None

    async def _wait(self, timeout: float | None) -> bool:
        """Wait for work (``timeout`` seconds at most; None: forever); whether there is some."""
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self.waiting:
            self._arrived.clear()
            if deadline is None:
                await self._arrived.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return True

    async def _gather(self, batch: list[_Chunk]) -> None:
        """Fill ``batch``: the first waiting chunk, then more until ``max_batch`` inputs or
        ``max_wait`` after the first."""
        loop = asyncio.get_running_loop()
        prefer_continuing = self._starved
        size, deadline = 0, None
        continuing_served = not self._continuing  # nothing partly served: nobody starves
        while size < self.max_batch:
            if deadline is None:
                await self._wait(None)
            elif not self.waiting and not await self._wait(max(0.0, deadline - loop.time())):
                break
            had_continuing = bool(self._continuing)
            from_continuing = had_continuing and (prefer_continuing or not self._fresh)
            chunk = self._take(self.max_batch - size, prefer_continuing)
            if chunk is None:
                continue
            if from_continuing:
                continuing_served = True
            prefer_continuing = False
            batch.append(chunk)
            size += len(chunk)
            if deadline is None:
                deadline = loop.time() + self.max_wait
        self._starved = not continuing_served and bool(self._continuing)

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

    def _share(self, batch: list[_Chunk]) -> None:
        """With workers idle, keep an even share of the batch (by inputs) and put the rest
        back at the head of the queue for them: the requests waiting are spread over every
        core instead of one call running while the other workers wait. (Clients that wait
        for their answers come back together, so one worker would otherwise gather them
        all, every time.)"""
        idle = self.workers - self._executing - 1
        if idle <= 0 or len(batch) < 2:
            return
        total = sum(len(chunk) for chunk in batch)
        share = -(-total // min(idle + 1, len(batch)))
        kept, size = 0, 0
        while kept < len(batch) and (kept == 0 or size + len(batch[kept]) <= share):
            size += len(batch[kept])
            kept += 1
        rest = batch[kept:]
        del batch[kept:]
        for chunk in reversed(rest):  # back to where they were: their inputs come first
            job = chunk.job
            if job.next == chunk.stop:
                job.next = chunk.start
            if job in self._continuing:
                self._continuing.remove(job)
            if job.next == 0:
                self._fresh.appendleft(job)
            else:
                self._continuing.appendleft(job)
        if rest and self._arrived is not None:
            self._arrived.set()

    # --- executing ----------------------------------------------------------------------------
    async def _execute(self, batch: list[_Chunk]) -> None:
        items = [item for chunk in batch for item in chunk.job.items[chunk.start:chunk.stop]]
        if self.on_batch is not None:
            self.on_batch(len(items))
        try:
            out = await asyncio.get_running_loop().run_in_executor(self.executor, self.call,
                                                                   items)
        except Exception as err:
            if len(batch) == 1 or not isinstance(err, self.retry_alone):
                for chunk in batch:
                    if not chunk.job.future.done():
                        chunk.job.future.set_exception(err)
                return
            for chunk in batch:  # find the request that fails: each chunk alone
                if not chunk.job.future.done():
                    await self._execute([chunk])
            return
        offset = 0
        for chunk in batch:
            stop = offset + len(chunk)
            job = chunk.job
            if not job.future.done():
                try:
                    job.parts[chunk.start] = self.split(out, offset, stop)
                    job.answered += len(chunk)
                    if job.answered == len(job.items):
                        job.future.set_result(self.join([job.parts[k] for k in sorted(job.parts)]))
                except Exception as err:
                    job.future.set_exception(err)
            offset = stop
