"""Group work that many tasks submit at once into one call (one bulk write instead of hundreds).

There is no timer: the first item goes at once, and whatever arrives while a batch is being
handled goes together in the next one. Idle, an item waits for nothing; under load the batches
grow by themselves, which is what a server that is slow per operation (MongoDB, most of all its
stand-in) needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """``await submit(item)`` answers ``handle(batch)[i]`` for the item at position i of the batch
    it went in; if ``handle`` raises, every item of that batch gets the exception."""

    def __init__(
        self, handle: Callable[[list[T]], Awaitable[Sequence[R]]], max_items: int = 500
    ) -> None:
        self._handle = handle
        self._max_items = max_items
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        # One turn of the loop first: the tasks woken together (one prefetch of messages) all
        # get to submit before the first batch goes.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = (
                self._pending[: self._max_items],
                self._pending[self._max_items :],
            )
            live = [(item, f) for item, f in batch if not f.done()]
            if not live:
                continue
            try:
                results = await self._handle([item for item, _ in live])
            except asyncio.CancelledError:
                for _, f in live:
                    f.cancel()
                raise
            except Exception as exc:
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), result in zip(live, results, strict=True):
                if not f.done():
                    f.set_result(result)
