"""A webhook receiver for the delivery benchmark, as its own process: answers 200 at once on
``/hook/{n}``, hangs on ``/hang`` (past any timeout), and keeps, per request, the time from the
event (the payload's ``timestamp``) to its arrival here.

    python -m benchmarks.webhook_receiver PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web
from darkroom_kit.clock import iso_to_ms


def make_app() -> web.Application:
    seen: set[str] = set()
    latencies: dict[str, list[float]] = {}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrived_ms = time.time() * 1000
        seen.add(request.headers["webhook-id"])
        sent_ms = iso_to_ms(json.loads(body)["timestamp"]) or arrived_ms
        latencies.setdefault(request.match_info["n"], []).append(arrived_ms - sent_ms)
        return web.Response(status=200)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"unique": len(seen), "latencies_ms": latencies})

    async def reset(request: web.Request) -> web.Response:
        seen.clear()
        latencies.clear()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{n}", hook)
    app.router.add_post("/hang", hang)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
