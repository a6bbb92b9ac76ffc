from __future__ import annotations

import asyncio

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
