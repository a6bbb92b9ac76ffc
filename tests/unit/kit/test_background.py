from __future__ import annotations

import asyncio
from unittest import mock

from aiohttp import web
from darkroom_kit.background import periodic_ctx


async def test_a_failed_pass_does_not_end_the_loop() -> None:
    calls: list[int] = []

    async def flaky(app: web.Application) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the first pass fails")
        return 1

    ctx = periodic_ctx("test", flaky, 0.01)(web.Application())
    await ctx.__anext__()  # started
    await asyncio.sleep(0.1)
    await ctx.aclose()  # cancelled cleanly
    count = len(calls)
    await asyncio.sleep(0.05)
    assert count >= 3
    assert len(calls) == count  # nothing runs after shutdown


async def test_interval_zero_is_off() -> None:
    calls: list[int] = []

    async def never(app: web.Application) -> None:
        calls.append(1)

    ctx = periodic_ctx("off", never, 0)(web.Application())
    await ctx.__anext__()
    await asyncio.sleep(0.05)
    await ctx.aclose()
    assert calls == []


async def test_idle_passes_wait_longer_up_to_the_factor_and_work_brings_the_interval_back() -> None:
    handled = iter([0, 0, 0, 0, 0, 3, 0, 0])
    waits: list[float] = []
    done = asyncio.Event()
    real_sleep = asyncio.sleep

    async def run_pass(app: web.Application) -> int:
        return next(handled, 0)

    async def recorded_sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 8:
            done.set()
        await real_sleep(0)

    ctx = periodic_ctx("idle", run_pass, 1.0, idle_factor=8)(web.Application())
    with mock.patch("darkroom_kit.background.asyncio.sleep", recorded_sleep):
        await ctx.__anext__()
        await asyncio.wait_for(done.wait(), 5)
        await ctx.aclose()
    assert waits[:8] == [2.0, 4.0, 8.0, 8.0, 8.0, 1.0, 2.0, 4.0]
