"""The base app under dependency outages: /readyz names each dependency and checks it for real,
and a database outage is a 503 the client may retry, not a 500."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp import web
from darkroom_ingest.app import create_app
from darkroom_ingest.cli import create_token
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.httpapp import READY_TIMEOUT, create_base_app
from darkroom_kit.messaging import Topology
from darkroom_kit.readiness import readiness_ctx
from darkroom_kit.storage import object_store_ctx
from darkroom_webhooks.app import create_app as create_webhooks_app
from darkroom_webhooks.app import queue_specs
from darkroom_webhooks.settings import WebhookSettings
from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure

from tests.factories.api import auth
from tests.factories.messaging import eventually
from tests.factories.servers import QueueJanitor


class Proxy:
    """A TCP proxy in front of a real server, which a test can cut (connections dropped, new
    ones refused: a stopped server) or freeze (connections stay open, no byte passes: a frozen
    server), then restore. The machine's servers are shared by every test: never stop them."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, url: str) -> str:
        """``url`` (of the target server) with this proxy in its place."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(
                self._pump(client_r, server_w),
                self._pump(server_r, client_w),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            pass  # the test is over: asyncio's server callback must not see a cancelled task
        finally:
            self._tasks.discard(task)
            for w in (client_w, server_w):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.transport.abort()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        for w in list(self._writers):
            w.transport.abort()

    async def close(self) -> None:
        self.thaw()
        if self._server is not None:
            await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


async def _ready(client: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/readyz")
    return resp.status, await resp.json()


@pytest.mark.parametrize("service", ["upload-ingest", "webhook-dispatch"])
async def test_readyz_names_the_broker_down_while_it_is_frozen_or_gone(
    service: str,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    watch_events: Any,
    janitor: QueueJanitor,
) -> None:
    """A worker is not ready without the broker (it has nothing to consume). upload-ingest stays
    ready and says it is degraded: every message it publishes is in its outbox first, so uploads
    are taken and announced once the broker is back."""
    proxy = Proxy(*_host_port(settings_kwargs["amqp_url"]))
    await proxy.start()
    down_status = 200 if service == "upload-ingest" else 503
    try:
        kwargs = {**settings_kwargs, "amqp_url": proxy.url(settings_kwargs["amqp_url"])}
        app = (
            create_app(IngestSettings(**kwargs))
            if service == "upload-ingest"
            else create_webhooks_app(WebhookSettings(**kwargs))
        )
        app[READY_TIMEOUT] = 1.0
        client = await aiohttp_client(app)
        if service == "webhook-dispatch":
            settings = WebhookSettings(**kwargs)
            janitor.add(*queue_specs(Topology(settings.amqp_namespace), settings))
            janitor.stop_first(client)
        status, body = await _ready(client)
        assert (status, body["ready"]) == (200, True)
        assert set(body["checks"].values()) == {"ok"}
        assert "amqp" in body["checks"]
        assert "degraded" not in body

        # A broker that accepts nothing and answers nothing: the connection looks open.
        proxy.freeze()
        status, body = await _ready(client)
        assert status == down_status
        assert body["ready"] is (down_status == 200)
        assert body["checks"]["amqp"] == "down: no answer within 1s"
        assert body["checks"]["mongo"] == "ok"
        if service == "upload-ingest":
            assert body["degraded"] == ["amqp"]
            assert body["checks"]["s3"] == "ok"
        proxy.thaw()
        await eventually(lambda: _amqp_ok(client), timeout=15)

        # A broker that is gone: the robust connection reconnects, and says it is not closed.
        await proxy.cut()

        async def amqp_down() -> bool:
            status, body = await _ready(client)
            return status == down_status and body["checks"]["amqp"].startswith("down: ")

        await eventually(amqp_down, timeout=15)
        await proxy.start()  # the same port: the connection comes back on its own
        await eventually(lambda: _amqp_ok(client), timeout=30)
        assert await _status_is(client, 200)
    finally:
        await proxy.close()


async def test_readyz_answers_not_ready_while_s3_is_frozen(
    aiohttp_client: Any, settings_kwargs: dict[str, Any]
) -> None:
    """An S3 server that accepts connections and answers nothing (frozen, or a black hole on the
    network) must not hang /readyz: the check has its own timeout and says so."""
    proxy = Proxy(*_host_port(settings_kwargs["s3_endpoint_url"]))
    await proxy.start()
    try:
        settings = IngestSettings(
            **{**settings_kwargs, "s3_endpoint_url": proxy.url(settings_kwargs["s3_endpoint_url"])}
        )
        app = create_base_app("readyz-s3")
        app.cleanup_ctx.extend([object_store_ctx(settings, create_bucket=True), readiness_ctx])
        app[READY_TIMEOUT] = 1.0
        client = await aiohttp_client(app)
        assert await asyncio.wait_for(_ready(client), 15) == (
            200,
            {"ready": True, "checks": {"s3": "ok"}},
        )
        proxy.freeze()
        for _ in range(2):  # a second time: a check still stuck from the first is no excuse
            status, body = await asyncio.wait_for(_ready(client), 15)
            assert (status, body) == (
                503,
                {"ready": False, "checks": {"s3": "down: no answer within 1s"}},
            )
        proxy.thaw()
        await eventually(lambda: _status_is(client, 200), timeout=30)
    finally:
        await proxy.close()


async def _amqp_ok(client: Any) -> bool:
    status, body = await _ready(client)
    return status == 200 and body["checks"]["amqp"] == "ok"


async def _status_is(client: Any, status: int) -> bool:
    return (await _ready(client))[0] == status


async def test_a_database_outage_is_a_503_with_retry_after(
    aiohttp_client: Any, settings_kwargs: dict[str, Any], watch_events: Any
) -> None:
    proxy = Proxy(*_host_port(settings_kwargs["mongo_url"]))
    await proxy.start()
    try:
        settings = IngestSettings(
            **{**settings_kwargs, "mongo_url": proxy.url(settings_kwargs["mongo_url"])}
        )
        token = await create_token(settings, "outage", ["events.write", "photos.read"], None)
        headers = auth(token)
        app = create_app(settings)
        app[READY_TIMEOUT] = 1.0
        client = await aiohttp_client(app)
        created = await client.post(
            "/v1/events",
            json={"name": "Outage", "slug": f"o-{secrets.token_hex(4)}"},
            headers=headers,
        )
        assert created.status == 201
        event = await created.json()

        # Frozen (SIGSTOP): the connections stay open and nothing answers.
        proxy.freeze()
        resp = await client.get(f"/v1/events/{event['id']}", headers=headers)
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["code"] == "database_unavailable"
        proxy.thaw()
        await eventually(lambda: _ok(client, f"/v1/events/{event['id']}", headers), timeout=30)

        # Gone: connections dropped, new ones refused.
        await proxy.cut()
        resp = await client.get(f"/v1/events/{event['id']}", headers=headers)
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] == "5"
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "database_unavailable"
        # A write with an Idempotency-Key: its key cannot be stored either; same answer.
        resp = await client.post(
            "/v1/events",
            json={"name": "Outage 2", "slug": f"o-{secrets.token_hex(4)}"},
            headers={**headers, "Idempotency-Key": secrets.token_hex(8)},
        )
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["code"] == "database_unavailable"
        status, body = await _ready(client)
        assert status == 503
        assert body["checks"]["mongo"].startswith("down: ")

        await proxy.start()
        resp = await eventually(
            lambda: _ok(client, f"/v1/events/{event['id']}", headers), timeout=30
        )
        assert resp["id"] == event["id"]
    finally:
        await proxy.close()


async def _ok(client: Any, path: str, headers: dict[str, str]) -> Any:
    resp = await client.get(path, headers=headers)
    return await resp.json() if resp.status == 200 else None


async def test_only_outages_of_the_database_are_503(aiohttp_client: Any) -> None:
    errors: dict[str, Exception] = {
        "outage": AutoReconnect("connection reset"),
        "duplicate": DuplicateKeyError("E11000 duplicate key"),
        "bad-query": OperationFailure("unknown operator: $nope", code=2),
    }

    async def fail(request: web.Request) -> web.Response:
        raise errors[request.match_info["kind"]]

    app = create_base_app("test")
    app.router.add_get("/{kind}", fail)
    client = await aiohttp_client(app)
    outage = await client.get("/outage")
    assert (outage.status, (await outage.json())["code"]) == (503, "database_unavailable")
    assert outage.headers["Retry-After"] == "5"
    for kind in ("duplicate", "bad-query"):
        resp = await client.get(f"/{kind}")
        assert (resp.status, (await resp.json())["code"]) == (500, "internal_error")
