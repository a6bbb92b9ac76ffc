from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from darkroom_ingest.app import create_app
from darkroom_ingest.cli import create_token
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import QueueSpec, Topology
from darkroom_webhooks.app import create_app as create_dispatch
from darkroom_webhooks.app import queue_specs
from darkroom_webhooks.settings import WebhookSettings

from tests.factories.api import CHUNK, Client, TokenMaker
from tests.factories.servers import QueueJanitor
from tests.factories.webhooks import Scripted, Serve, StartDispatch


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
) -> AsyncIterator[Client]:
    client = await aiohttp_client(create_app(ingest_settings))
    yield client


@pytest.fixture
def chunk_settings(ingest_settings: IngestSettings) -> IngestSettings:
    return ingest_settings.model_copy(
        update={"upload_chunk_bytes": CHUNK, "upload_sweep_interval_seconds": 0.2}
    )


@pytest.fixture
async def capi(
    aiohttp_client: Any, chunk_settings: IngestSettings, watch_events: QueueSpec
) -> Client:
    """The API with the smallest chunk size, so tests move few bytes."""
    client: Client = await aiohttp_client(create_app(chunk_settings))
    return client


# ---- webhook-dispatch and its receivers (helpers: tests/factories/webhooks.py) ----------------


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
