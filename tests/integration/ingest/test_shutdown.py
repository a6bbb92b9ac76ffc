"""SIGTERM drains upload-ingest (a real process): not ready at once, no new connection, the
upload whose body is still arriving finishes and is stored, then the process exits 0."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from darkroom_ingest.cli import create_token
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.messaging import Envelope, Publisher, QueueSpec, Topology
from darkroom_kit.metrics import ConsumerMetrics
from darkroom_kit.mongo import open_mongo
from PIL import Image
from prometheus_client import CollectorRegistry

from darkroom_dev.servers import Server, free_port
from darkroom_dev.stack import SERVICES, start_services
from tests.factories.api import auth, raw_multipart
from tests.factories.messaging import consuming
from tests.factories.servers import QueueJanitor, Servers, to_env


def _env(settings_kwargs: dict[str, Any], api_url: str) -> dict[str, str]:
    return {
        **os.environ,
        **to_env(settings_kwargs),
        "PUBLIC_BASE_URL": api_url,
        "SHUTDOWN_GRACE_SECONDS": "25",
        "LOG_JSON": "true",
    }


@pytest.fixture
async def ingest(
    settings_kwargs: dict[str, Any], watch_events: Any
) -> AsyncIterator[tuple[Server, int, Path]]:
    port = free_port(len(SERVICES))
    logs = Path(tempfile.mkdtemp(prefix="darkroom-drain-"))
    env = _env(settings_kwargs, f"http://127.0.0.1:{port}")
    (server,) = await asyncio.to_thread(start_services, env, logs, port, ["upload-ingest"])
    try:
        yield server, port, logs
    finally:
        server.stop()


def noisy_jpeg(width: int, height: int) -> bytes:
    # Noise does not compress: a few megabytes that take a while to send slowly.
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (li.split(":", 1) for li in lines[1:] if li)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def test_sigterm_lets_an_upload_whose_body_is_arriving_finish(
    ingest: tuple[Server, int, Path], settings_kwargs: dict[str, Any]
) -> None:
    server, port, logs = ingest
    assert server.process is not None
    token = await create_token(
        IngestSettings(**settings_kwargs), "drain", ["photos.write", "events.write"], None
    )
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=auth(token)) as http:
        created = await http.post("/v1/events", json={"name": "Drain", "slug": f"drain-{port}"})
        assert created.status == 201, await created.text()
        event_id = (await created.json())["id"]

    photo = noisy_jpeg(1400, 1000)
    body, multipart = raw_multipart(("slow.jpg", photo))
    # A connection that stays open (keep-alive) across the SIGTERM, to ask /readyz on it.
    probe_r, probe_w = await asyncio.open_connection("127.0.0.1", port)
    probe_w.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _response(probe_r))[0] == 200

    up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
    up_w.write(
        (
            f"POST /v1/events/{event_id}/photos HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: {multipart['Content-Type']}\r\n"
            f"Content-Length: {multipart['Content-Length']}\r\n\r\n"
        ).encode()
    )
    piece, sent = 64 * 1024, 0
    while sent < len(body) // 4:
        up_w.write(body[sent : sent + piece])
        await up_w.drain()
        sent += piece
        await asyncio.sleep(0.05)

    server.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    # Draining: not ready at once (on a connection it already had) ...
    probe_w.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, answer = await _response(probe_r)
    assert status == 503
    assert json.loads(answer)["draining"] is True
    assert headers["connection"] == "close"
    # ... and no new connection: the listener is closed.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)

    # The rest of the body, still slowly, after the SIGTERM.
    while sent < len(body):
        up_w.write(body[sent : sent + piece])
        await up_w.drain()
        sent += piece
        await asyncio.sleep(0.05)
    status, headers, answer = await asyncio.wait_for(_response(up_r), 20)
    assert status == 201, answer
    (uploaded,) = json.loads(answer)["uploaded"]
    assert uploaded["size"] == len(photo)
    assert headers["connection"] == "close"
    up_w.close()
    probe_w.close()

    code = await asyncio.to_thread(server.process.wait, 20)
    assert code == 0
    client = open_mongo(IngestSettings(**settings_kwargs))
    try:
        stored = await client[settings_kwargs["mongo_db"]][records.PHOTOS].find_one(
            {"_id": uploaded["id"]}
        )
    finally:
        await client.close()
    assert stored is not None
    log = (logs / "upload-ingest.log").read_text()
    assert '"msg": "draining: 1 request(s) in flight' in log


async def test_a_consumer_stops_within_its_grace_and_hands_back_what_it_could_not_finish(
    servers: Servers, namespace: str, janitor: QueueJanitor
) -> None:
    topology = Topology(namespace)
    spec = QueueSpec(topology.queue("test", "drain"), topology.events, ("drain.*",), (1000,))
    janitor.add(spec)
    finished: list[str] = []
    started: list[str] = []

    async def handler(envelope: Envelope, attempt: int) -> None:
        started.append(envelope.type)
        await asyncio.sleep(0.5 if envelope.type == "drain.quick" else 3600)
        finished.append(envelope.type)

    metrics = ConsumerMetrics(CollectorRegistry(), "test")
    async with consuming(servers.amqp_url, topology, spec, handler, metrics) as (consumer, channel):
        publisher = Publisher(channel)
        for kind in ("drain.quick", "drain.stuck"):
            await publisher.publish(topology.events, Envelope.new(kind, {}))
        for _ in range(100):
            if len(started) == 2:
                break
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        stopping = loop.time()
        await consumer.stop(2)
        assert loop.time() - stopping < 3  # the grace period bounds the stop, cancelling included
        assert finished == ["drain.quick"]
        # The message it could not finish was not acknowledged: the broker gives it back.
        queue = await channel.get_queue(spec.name)
        again = await queue.get(timeout=5, fail=False)
        assert again is not None
        assert again.type == "drain.stuck"
        assert again.redelivered
        await again.ack()
        assert await queue.get(fail=False) is None


async def test_consumers_of_a_service_share_one_grace_period(
    settings_kwargs: dict[str, Any], janitor: QueueJanitor
) -> None:
    """A service with several consumers (webhook-dispatch has three) stops them all at once when
    draining starts, within the one grace period: each used to wait its own grace in turn while
    the cleanup contexts closed (three consumers, three grace periods)."""
    from aiohttp import web
    from darkroom_kit.httpapp import _drain, create_base_app
    from darkroom_kit.messaging import amqp_ctx, consumer_ctx
    from darkroom_kit.settings import CommonSettings
    from pydantic import BaseModel

    class Anything(BaseModel):
        pass

    settings = CommonSettings(**{**settings_kwargs, "shutdown_grace_seconds": 3})
    topology = Topology(settings.amqp_namespace)
    names = ("one", "two", "three")
    started: list[str] = []

    async def stuck(envelope: Envelope, attempt: int) -> None:
        started.append(envelope.type)
        await asyncio.sleep(3600)

    def spec_for(name: str) -> Any:
        return lambda t: QueueSpec(t.queue("test", name), t.events, (f"drain.{name}",), (1000,))

    metrics = ConsumerMetrics(CollectorRegistry(), "test")
    app = create_base_app("test")
    app.cleanup_ctx.append(amqp_ctx(settings, metrics))
    for name in names:
        janitor.add(spec_for(name)(topology))
        app.cleanup_ctx.append(
            consumer_ctx(
                settings,
                spec_for(name),
                lambda _app: stuck,
                metrics,
                payloads={f"drain.{name}": Anything},
            )
        )
    runner = web.AppRunner(app)
    await runner.setup()
    cleaned = False
    try:
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            for name in names:
                await Publisher(channel).publish(topology.events, Envelope.new(f"drain.{name}", {}))
        finally:
            await connection.close()
        for _ in range(200):
            if len(started) == len(names):
                break
            await asyncio.sleep(0.05)
        assert sorted(started) == sorted(f"drain.{n}" for n in names)
        loop = asyncio.get_running_loop()
        stopping = loop.time()
        await _drain(app, runner, settings.shutdown_grace_seconds)
        await runner.cleanup()
        cleaned = True
        # One grace period (3 s) and the closing, not three in turn (about 7 s).
        assert loop.time() - stopping < 4.5
    finally:
        if not cleaned:
            await runner.cleanup()
