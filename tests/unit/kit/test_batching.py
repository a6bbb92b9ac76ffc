"""The batcher and the defer delays of a queue, without servers."""

from __future__ import annotations

import asyncio

from darkroom_kit.batching import Batcher
from darkroom_kit.messaging import QueueSpec


async def test_batcher_groups_concurrent_submits_and_keeps_order() -> None:
    seen: list[list[int]] = []

    async def handle(items: list[int]) -> list[int]:
        seen.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(handle)
    first = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert first == [0, 10, 20, 30, 40]
    assert seen == [[0, 1, 2, 3, 4]]  # submitted together: one call
    # Submitted while a batch is being handled: they go together in the next one.
    early = asyncio.ensure_future(batcher.submit(5))
    await asyncio.sleep(0.001)
    later = await asyncio.gather(*(batcher.submit(i) for i in range(6, 9)))
    assert (await early, later) == (50, [60, 70, 80])
    assert seen[1:] == [[5], [6, 7, 8]]


async def test_batcher_failure_reaches_every_item_of_its_batch_only() -> None:
    async def handle(items: list[int]) -> list[int]:
        if 3 in items:
            raise ValueError("bad batch")
        return items

    batcher: Batcher[int, int] = Batcher(handle, max_items=2)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert results[:2] == [0, 1]
    assert all(isinstance(r, ValueError) for r in results[2:])


def test_defer_delays_escalate_and_respect_the_asked_wait() -> None:
    spec = QueueSpec("q", "x", ("k",), (), defer_delays_ms=(250, 500, 1000, 30_000))
    assert spec.defer_delay(100, 0, escalate=False) == 250
    assert spec.defer_delay(600, 0, escalate=False) == 1000
    assert [spec.defer_delay(0, n, escalate=True) for n in range(4)] == [250, 500, 1000, 30_000]
    assert spec.defer_delay(10**9, 0, escalate=False) == 30_000  # never past the longest
    assert "q.defer.250ms" in spec.all_queue_names()
