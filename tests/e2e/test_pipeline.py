"""The whole system as processes: upload -> thumbnail -> signed webhooks, exactly once."""

from __future__ import annotations

import asyncio
import io
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from darkroom_client import DarkroomClient
from darkroom_ingest.cli import create_token
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import Topology
from darkroom_repair.app import queue_spec as repair_spec
from darkroom_thumbnailing.app import queue_spec as thumbnail_spec
from darkroom_thumbnailing.settings import ThumbnailSettings
from darkroom_webhooks.app import queue_specs
from darkroom_webhooks.settings import WebhookSettings
from PIL import Image
from standardwebhooks import Webhook

from darkroom_dev.servers import Server, free_port
from darkroom_dev.stack import SERVICES, start_services
from tests.factories.media import jpeg_bytes, png_bytes
from tests.factories.servers import QueueJanitor, to_env

pytestmark = pytest.mark.e2e


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


@pytest.fixture
async def system(
    settings_kwargs: dict[str, Any], janitor: QueueJanitor
) -> AsyncIterator[tuple[str, dict[str, str], list[Server], Path]]:
    import os

    base = free_port(len(SERVICES))
    api_url = f"http://127.0.0.1:{base}"
    env = {
        **os.environ,
        **to_env(
            {
                k: v
                for k, v in settings_kwargs.items()
                if k not in ("s3_access_key", "s3_secret_key")
            }
        ),
        "S3_ACCESS_KEY": str(settings_kwargs["s3_access_key"]),
        "S3_SECRET_KEY": str(settings_kwargs["s3_secret_key"]),
        "PUBLIC_BASE_URL": api_url,
        "ALLOW_PRIVATE_NETWORKS": '["127.0.0.0/8"]',
        "RETRY_DELAYS_MS": "[2000, 3000]",
        "RENDER_PROCESSES": "1",
        "LOG_JSON": "true",
    }
    topology = Topology(settings_kwargs["amqp_namespace"])
    janitor.add(
        thumbnail_spec(topology, ThumbnailSettings(retry_delays_ms=(2000, 3000))),
        repair_spec(topology),
        *queue_specs(topology, WebhookSettings(retry_delays_ms=(2000, 3000))),
    )
    logs = Path(tempfile.mkdtemp(prefix="darkroom-e2e-"))
    services = await asyncio.to_thread(start_services, env, logs, base)
    try:
        yield api_url, env, services, logs
    finally:
        for s in services:
            if s.process is not None and s.process.poll() is None:
                s.process.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(_wait, s) for s in services]
        # A graceful stop: every service exits on its own after SIGTERM, with status 0.
        assert codes == [0, 0, 0, 0], (codes, logs)


def _wait(server: Server) -> int | None:
    assert server.process is not None
    try:
        return server.process.wait(30)
    except Exception:
        server.process.kill()
        return None


async def test_upload_thumbnail_and_webhooks_exactly_once(
    system: tuple[str, dict[str, str], list[Server], Path],
    aiohttp_server: Any,
    settings_kwargs: dict[str, Any],
) -> None:
    api_url, env, services, logs = system
    plain, flaky = Receiver(), Receiver(fail_first=1)
    app = web.Application()
    app.router.add_post("/plain", plain.handle)
    app.router.add_post("/flaky", flaky.handle)
    hooks = await aiohttp_server(app)
    token = await create_token(
        IngestSettings(**settings_kwargs),
        "e2e",
        ["photos.write", "events.write", "webhooks.manage"],
        None,
    )
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(api_url, headers=headers) as http:
        for receiver, path in ((plain, "/plain"), (flaky, "/flaky")):
            resp = await http.post(
                "/v1/webhooks",
                json={
                    "url": f"http://127.0.0.1:{hooks.port}{path}",
                    "event_types": ["photo.uploaded", "photo.deleted"],
                },
            )
            receiver.secret = (await resp.json())["secret"]
        created = await http.post("/v1/events", json={"name": "E2E", "slug": "e2e"})
        assert created.status == 201
        # Uploaded the way a photographer's tool does: with the client library.
        shoot = logs / "shoot"
        shoot.mkdir()
        (shoot / "wide.jpg").write_bytes(jpeg_bytes(2400, 1600, captured="2025:06:07 10:11:12"))
        (shoot / "shot.png").write_bytes(png_bytes(640, 480))
        async with DarkroomClient(api_url, token, state_file=logs / "upload-state.json") as client:
            result = await client.upload("e2e", [shoot])
        assert result.ok, result.failed
        uploaded = {p["filename"]: p for p in result.uploaded.values()}
        assert sorted(uploaded) == ["shot.png", "wide.jpg"]

        # The flaky receiver answered 503 once: restart webhook-dispatch while its retry waits in
        # the retry-tier queue. The retry must still happen.
        async def flaky_failed_once() -> bool:
            return len(flaky.requests) >= 1

        await wait_for(flaky_failed_once)
        dispatch = next(s for s in services if s.name == "webhook-dispatch")
        assert dispatch.process is not None
        dispatch.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(dispatch.process.wait, 30) == 0
        restarted = await asyncio.to_thread(
            start_services, env, logs, int(api_url[-5:]), ["webhook-dispatch"]
        )
        services[services.index(dispatch)] = restarted[0]

        async def processed() -> bool:
            for p in uploaded.values():
                got = await (await http.get(f"/v1/photos/{p['id']}")).json()
                if got["status"] != "processed":
                    return False
            return True

        await wait_for(processed)
        for name, size in (("wide.jpg", (400, 267)), ("shot.png", (400, 300))):
            thumb = await http.get(f"/thumbnails/e2e/{name}")
            assert thumb.status == 200
            assert Image.open(io.BytesIO(await thumb.read())).size == size
        wide = await (await http.get(f"/v1/photos/{uploaded['wide.jpg']['id']}")).json()
        assert (wide["width"], wide["height"]) == (2400, 1600)
        assert wide["captured_at"] == "2025-06-07T10:11:12.000Z"

        assert (await http.delete(f"/v1/photos/{uploaded['shot.png']['id']}")).status == 204

        async def all_delivered() -> bool:
            return len(plain.requests) >= 3 and len(flaky.requests) >= 4

        await wait_for(all_delivered, timeout=40)
        await asyncio.sleep(3)  # a duplicate would arrive in this window

    expected = sorted(
        [
            ("photo.uploaded", uploaded["wide.jpg"]["id"]),
            ("photo.uploaded", uploaded["shot.png"]["id"]),
            ("photo.deleted", uploaded["shot.png"]["id"]),
        ]
    )
    for receiver in (plain, flaky):
        payloads = receiver.verified()  # every request is correctly signed, or this raises
        by_webhook_id: dict[str, list[tuple[str, str]]] = {}
        for (headers, _), payload in zip(receiver.requests, payloads, strict=True):
            by_webhook_id.setdefault(headers["webhook-id"], []).append(
                (payload["type"], payload["data"]["photo"]["id"])
            )
        # One webhook-id per message, and each message the same on every attempt.
        assert sorted(v[0] for v in by_webhook_id.values()) == expected
        assert all(len(set(v)) == 1 for v in by_webhook_id.values())
    # Exactly once each; the flaky receiver saw one more: the 503 retried after the restart.
    assert len(plain.requests) == 3
    assert len(flaky.requests) == 4
