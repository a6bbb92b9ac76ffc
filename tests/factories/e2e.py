"""What the end-to-end tests share: a webhook receiver that verifies what it got, and a wait."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from darkroom_kit.messaging import QueueSpec, Topology
from darkroom_repair.app import queue_specs as repair_specs
from darkroom_thumbnailing.app import queue_spec as thumbnail_spec
from darkroom_thumbnailing.settings import ThumbnailSettings
from darkroom_webhooks.app import queue_specs
from darkroom_webhooks.settings import WebhookSettings
from standardwebhooks import Webhook

# Debian's chromium, which Playwright drives (make test installs it when missing).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Receiver:
    secret: str = ""
    fail_first: int = 0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        if len(self.requests) <= self.fail_first:
            return web.Response(status=503)
        return web.Response(status=204)

    def verified(self) -> list[dict[str, Any]]:
        return [
            Webhook(self.secret).verify(body, headers) for headers, body in self.requests if body
        ]


async def wait_for(check: Any, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("timed out")


def stack_queues(namespace: str, retry_delays_ms: tuple[int, ...] | None = None) -> list[QueueSpec]:
    """The queues the four services declare in ``namespace`` (with their own retry delays, or
    ``retry_delays_ms``), for the janitor: quorum queues outlive the processes, and a broker
    that collects hundreds of them slows to a halt."""
    topology = Topology(namespace)
    delays = {} if retry_delays_ms is None else {"retry_delays_ms": retry_delays_ms}
    return [
        thumbnail_spec(topology, ThumbnailSettings(**delays)),
        *repair_specs(topology),
        *queue_specs(topology, WebhookSettings(**delays)),
    ]
