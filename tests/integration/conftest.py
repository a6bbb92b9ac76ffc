from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from darkroom_ingest.app import create_app
from darkroom_ingest.cli import create_token
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import Consumer, Handler, QueueSpec, Topology, Typed
from darkroom_kit.metrics import ConsumerMetrics
from darkroom_webhooks.app import create_app as create_dispatch
from darkroom_webhooks.app import queue_specs
from darkroom_webhooks.settings import WebhookSettings

from tests.conftest import QueueJanitor

TokenMaker = Callable[..., Awaitable[str]]
Client = TestClient[Any, Any]


@pytest.fixture
def ingest_settings(settings_kwargs: dict[str, Any]) -> IngestSettings:
    return IngestSettings(
        **settings_kwargs, outbox_grace_ms=1000, outbox_relay_interval_seconds=0.2
    )


@pytest.fixture
def make_token(ingest_settings: IngestSettings) -> TokenMaker:
    async def make(
        scopes: str = "photos.read,photos.write,events.write,webhooks.manage",
        event: str | None = None,
    ) -> str:
        return await create_token(ingest_settings, "test", scopes.split(","), event)

    return make


@pytest.fixture
async def watch_events(ingest_settings: IngestSettings, janitor: QueueJanitor) -> QueueSpec:
    """A queue bound to every public event of this test's namespace, so publishes are routable
    and the test can read what was announced."""
    import aio_pika
    from darkroom_kit.messaging import declare_consumer_queue

    topology = Topology(ingest_settings.amqp_namespace)
    spec = QueueSpec(topology.queue("test", "watch"), topology.events, ("#",), ())
    janitor.add(spec)
    connection = await aio_pika.connect(ingest_settings.amqp_url)
    try:
        await declare_consumer_queue(await connection.channel(), topology, spec, 5)
    finally:
        await connection.close()
    return spec


@pytest.fixture
async def api(
    aiohttp_client: Any, ingest_settings: IngestSettings, watch_events: QueueSpec
) -> AsyncIterator[TestClient[Any, Any]]:
    client = await aiohttp_client(create_app(ingest_settings))
    yield client


async def drain(amqp_url: str, queue_name: str, expect: int, timeout: float = 10) -> list[Any]:
    """Read ``expect`` messages from a queue (or what arrived before the timeout)."""
    import asyncio
    import json

    import aio_pika

    got: list[Any] = []
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got) < expect and asyncio.get_running_loop().time() < deadline:
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            await message.ack()
            got.append(json.loads(message.body))
    finally:
        await connection.close()
    return got


@asynccontextmanager
async def consuming(
    amqp_url: str,
    topology: Topology,
    spec: QueueSpec,
    handler: Handler | Typed,
    metrics: ConsumerMetrics,
    **options: Any,
) -> AsyncIterator[tuple[Consumer, aio_pika.abc.AbstractChannel]]:
    """A started consumer of ``spec`` and a publishing channel (confirms, unroutable an error)
    on its connection, which is closed on the way out."""
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        consumer = Consumer(connection, topology, spec, handler, metrics, **options)
        await consumer.start()
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        yield consumer, channel
    finally:
        await connection.close()


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 15, interval: float = 0.1
) -> Any:
    """Poll until check() returns something truthy; fail with the last value."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = None
    while loop.time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")


CHUNK = 5 * 1024 * 1024  # S3's smallest part


@pytest.fixture
def chunk_settings(ingest_settings: IngestSettings) -> IngestSettings:
    return ingest_settings.model_copy(
        update={"upload_chunk_bytes": CHUNK, "upload_sweep_interval_seconds": 0.2}
    )


@pytest.fixture
async def capi(
    aiohttp_client: Any, chunk_settings: IngestSettings, watch_events: QueueSpec
) -> TestClient[Any, Any]:
    """The API with the smallest chunk size, so tests move few bytes."""
    client: TestClient[Any, Any] = await aiohttp_client(create_app(chunk_settings))
    return client


# ---- webhook-dispatch and its receivers (helpers: webhook_support.py) -------------------------


class Scripted:
    """A receiver whose answers are scripted per request; the last one repeats. An answer is
    ``(status, headers, body)`` or a handler of its own."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[tuple[float, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((time.monotonic(), dict(request.headers), await request.read()))
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if callable(answer):
            result: web.StreamResponse = await answer(request)
            return result
        status, headers, body = answer
        return web.Response(status=status, headers=headers, body=body)


Serve = Callable[[list[Any]], Awaitable[tuple[Scripted, str]]]
StartDispatch = Callable[..., Awaitable[Client]]


@pytest.fixture
def serve(aiohttp_server: Any) -> Serve:
    """Starts a scripted receiver on loopback; gives it and its URL."""

    async def start(answers: list[Any]) -> tuple[Scripted, str]:
        scripted = Scripted(answers)
        app = web.Application()
        app.router.add_post("/hook", scripted.handle)
        server: TestServer = await aiohttp_server(app)
        return scripted, f"http://127.0.0.1:{server.port}/hook"

    return start


@pytest.fixture
def start_dispatch(
    aiohttp_client: Any, settings_kwargs: dict[str, Any], janitor: QueueJanitor
) -> StartDispatch:
    """Starts webhook-dispatch in-process: short retries and timeout, loopback allowed, unless
    ``extra`` settings say otherwise. ``replica=True``: another one on the queues of one already
    started (the janitor knows them)."""

    async def start(*, replica: bool = False, **extra: Any) -> Client:
        settings = WebhookSettings(
            **{
                "retry_delays_ms": (300, 3000),
                "allow_private_networks": ["127.0.0.0/8"],
                "timeout_seconds": 3,
                **settings_kwargs,
                **extra,
            }
        )
        if not replica:
            janitor.add(*queue_specs(Topology(settings.amqp_namespace), settings))
        client: Client = await aiohttp_client(create_dispatch(settings))
        janitor.stop_first(client)
        return client

    return start
