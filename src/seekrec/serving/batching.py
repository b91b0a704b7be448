"""``MicroBatcher``: concurrent requests share one forward pass.

A transformer forward over 32 users costs little more than over one, so under load the server waits
up to ``max_wait_ms`` for company (never longer, so a lone request pays at most that) and runs the
batch. Batches run one at a time.

Where the batch runs: on a CPU the forward of a small batch takes a few milliseconds of Python and
torch work that holds the GIL most of the time, so a worker thread buys no concurrency and costs a
thread hand-off plus GIL contention with the event loop (measured: about 2 ms of server CPU per
request and a long latency tail). It then runs inline on the loop (``run_in_thread=False``); sockets
buffer what arrives meanwhile. On a GPU the forward mostly waits for the device with the GIL
released, so a worker thread lets the loop accept requests during it.

Load shedding: at most ``max_queue`` requests wait. Past it ``submit`` raises ``QueueFullError`` at
once (HTTP 503 with Retry-After): a request queued behind more work than the server can do before
the client gives up costs CPU for an answer nobody reads, and makes every later request late too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Q = TypeVar("Q")
R = TypeVar("R")


class QueueFullError(RuntimeError):
    """``max_queue`` requests are already waiting; the HTTP layer answers 503 with Retry-After."""


class MicroBatcher(Generic[Q, R]):
    """Collects ``submit``-ted items for up to ``max_wait_ms`` or ``max_batch`` items, then calls
    ``run(batch) -> results`` (one result per item, same order) in a thread.

    ``start()`` and ``stop()`` must be called on the event loop that submits; ``on_batch(size)`` is an
    optional hook for metrics. At most ``max_queue`` items wait (none: no bound); past it ``submit``
    raises ``QueueFullError`` without queueing.
    """

    def __init__(self, run: Callable[[list[Q]], Sequence[R]], max_batch: int = 64, max_wait_ms: float = 2.0,
                 on_batch: Callable[[int], None] | None = None, *, run_in_thread: bool = True,
                 max_queue: int | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be >= 1 or None (no bound), got {max_queue}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_ms / 1000
        self._on_batch, self.run_in_thread, self.max_queue = on_batch, run_in_thread, max_queue
        self._queue: asyncio.Queue[tuple[Q, asyncio.Future[R]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the collecting task on the running loop."""
        if self._worker is not None:
            raise RuntimeError("MicroBatcher already started")
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        """Cancel the collecting task; requests still queued fail with ``RuntimeError``."""
        if self._worker is None or self._queue is None:
            return
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass  # the cancellation we asked for
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("server is shutting down"))
        self._worker = None

    async def submit(self, item: Q) -> R:
        """The result of ``item``, computed together with whatever else arrives meanwhile."""
        if self._queue is None or self._worker is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self.max_queue is not None and self._queue.qsize() >= self.max_queue:
            raise QueueFullError(f"{self._queue.qsize()} requests already wait for a micro-batch "
                                 f"(max_queue = {self.max_queue})")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None  # set by start() before this task exists
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    while len(batch) < self.max_batch and not self._queue.empty():
                        batch.append(self._queue.get_nowait())  # already waiting: free to include
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            await self._execute(batch)

    async def _execute(self, batch: list[tuple[Q, asyncio.Future[R]]]) -> None:
        live = [(item, future) for item, future in batch if not future.cancelled()]  # client went away
        if not live:
            return
        if self._on_batch is not None:
            self._on_batch(len(live))
        try:
            items = [item for item, _ in live]
            results = await asyncio.to_thread(self._run, items) if self.run_in_thread else self._run(items)
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except asyncio.CancelledError:
            for _, future in live:  # stop() during a batch: nobody may wait forever
                if not future.done():
                    future.set_exception(RuntimeError("server is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which re-raises it
            log.exception("micro-batch of %d failed", len(live))
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(live, results):
            if not future.done():
                future.set_result(result)
