"""The rendering process pool, as a cleanup context."""

from __future__ import annotations

import multiprocessing
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor

from aiohttp import web

from darkroom_kit.imaging import init_worker_process

RENDER_POOL: web.AppKey[ProcessPoolExecutor] = web.AppKey("render_pool", ProcessPoolExecutor)


def pool_ctx(processes: int) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # spawn, not fork: the parent runs an event loop and client threads that a fork would copy
        # in an undefined state.
        pool = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker_process,
        )
        app[RENDER_POOL] = pool
        try:
            yield
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    return ctx
