"""Periodic work that lives as long as the app: the outbox relay, expiry sweeps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Pass = Callable[[web.Application], Awaitable[int | None]]


def periodic_ctx(
    name: str,
    run_pass: Pass,
    interval_seconds: float,
    *,
    wait_first: bool = False,
    idle_factor: int = 1,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Run ``run_pass`` every ``interval_seconds`` as a cleanup context (cancelled on shutdown).

    A failed pass is logged and the next one runs: one bad pass must not end the loop. A pass
    returns how many things it handled (logged when not zero). An interval of 0 turns it off.
    With ``idle_factor`` above 1, each pass that handled nothing doubles the wait, up to that
    many intervals, and a pass that handled something brings it back to one interval.
    """

    async def loop(app: web.Application) -> None:
        wait = interval_seconds
        if wait_first:
            await asyncio.sleep(wait)
        while True:
            handled: int | None = None
            try:
                if handled := await run_pass(app):
                    log.info("%s: %d", name, handled)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: pass failed", name)
            idle = not handled
            wait = min(wait * 2, interval_seconds * idle_factor) if idle else interval_seconds
            await asyncio.sleep(wait)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if interval_seconds <= 0:
            yield
            return
        task = asyncio.create_task(loop(app))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx
