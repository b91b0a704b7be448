"""``MicroBatcher`` load shedding: past ``max_queue`` waiting requests, ``submit`` refuses at once."""

from __future__ import annotations

import asyncio

import pytest

from seekrec.serving.batching import MicroBatcher, QueueFullError


def test_full_queue_refuses_at_once_and_recovers() -> None:
    """Before the bound, every request queued, however long the line, until clients timed out."""
    release = asyncio.Event()

    async def scenario() -> tuple[list[object], list[int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: [i * 2 for i in items], max_batch=1,
                                                       max_wait_ms=0, run_in_thread=True, max_queue=3)
        original = batcher._execute

        async def slow(batch):  # the first batch blocks, so the rest wait in the queue
            await release.wait()
            await original(batch)

        batcher._execute = slow  # type: ignore[method-assign]
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(0))]
        await asyncio.sleep(0.05)  # the first one runs (blocked) ...
        tasks += [asyncio.create_task(batcher.submit(i)) for i in range(1, 4)]
        await asyncio.sleep(0.05)  # ... and three wait
        with pytest.raises(QueueFullError, match="max_queue = 3"):
            await asyncio.wait_for(batcher.submit(99), 0.5)  # refused without waiting
        release.set()
        results = await asyncio.gather(*tasks)
        after = await batcher.submit(5)  # room again once the queue drained
        await batcher.stop()
        return results, [after]

    results, after = asyncio.run(scenario())
    assert results == [0, 2, 4, 6] and after == [10]


def test_max_queue_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        MicroBatcher(lambda items: items, max_queue=0)
