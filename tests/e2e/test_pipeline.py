"""The whole system as processes: upload -> thumbnail -> signed webhooks, exactly once."""

from __future__ import annotations

import asyncio
import io
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from darkroom_client import DarkroomClient
from darkroom_ingest.cli import create_token
from darkroom_ingest.settings import IngestSettings
from PIL import Image
from playwright.async_api import async_playwright

from darkroom_dev.servers import Server
from darkroom_dev.stack import start_services
from tests.factories.e2e import CHROMIUM, Receiver, wait_for
from tests.factories.media import jpeg_bytes, png_bytes

pytestmark = pytest.mark.e2e


async def test_upload_thumbnail_and_webhooks_exactly_once(
    system: tuple[str, dict[str, str], list[Server], Path],
    aiohttp_server: Any,
    settings_kwargs: dict[str, Any],
) -> None:
    api_url, env, services, logs = system
    plain, flaky, processed_hook = Receiver(), Receiver(fail_first=1), Receiver()
    app = web.Application()
    app.router.add_post("/plain", plain.handle)
    app.router.add_post("/flaky", flaky.handle)
    app.router.add_post("/processed", processed_hook.handle)
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
        resp = await http.post(
            "/v1/webhooks",
            json={
                "url": f"http://127.0.0.1:{hooks.port}/processed",
                "event_types": ["photo.processed"],
            },
        )
        processed_hook.secret = (await resp.json())["secret"]
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
            return (
                len(plain.requests) >= 3
                and len(flaky.requests) >= 4
                and len(processed_hook.requests) >= 2
            )

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

    # A receiver told of a processed photo fetches its thumbnail through the link in the payload
    # it verified: no token, and no internal storage key anywhere in what it was sent.
    processed_payloads = processed_hook.verified()
    assert sorted(p["data"]["photo"]["filename"] for p in processed_payloads) == [
        "shot.png",
        "wide.jpg",
    ]
    wide_message = next(
        p for p in processed_payloads if p["data"]["photo"]["filename"] == "wide.jpg"
    )
    assert wide_message["schema_version"] == 2
    assert "key" not in wide_message["data"]["variants"]["thumbnail"]
    assert "original_key" not in str(wide_message)
    urls = wide_message["data"]["photo"]["urls"]
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(urls["thumbnail"]) as thumb_response:
            assert thumb_response.status == 200, await thumb_response.text()
            assert thumb_response.headers["Content-Type"] == "image/jpeg"
            assert thumb_response.headers["X-Content-Type-Options"] == "nosniff"
            thumbnail = await thumb_response.read()
        assert Image.open(io.BytesIO(thumbnail)).size == (400, 267)
        async with anonymous.get(urls["original"]) as original_response:
            assert original_response.status == 200
            assert (await original_response.read())[:2] == b"\xff\xd8"
        # And in a browser: a gallery page puts the link in an <img> (another origin, no token).
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = await browser.new_page()
                await page.set_content(f'<img id="thumb" src="{urls["thumbnail"]}">')
                await page.wait_for_function(
                    "document.getElementById('thumb').complete", timeout=15_000
                )
                shown = await page.evaluate(
                    "[document.getElementById('thumb').naturalWidth,"
                    " document.getElementById('thumb').naturalHeight]"
                )
            finally:
                await browser.close()
        assert shown == [400, 267]
        # The deleted photo's links stopped working at once.
        shot = next(p for p in processed_payloads if p["data"]["photo"]["filename"] == "shot.png")
        async with anonymous.get(shot["data"]["photo"]["urls"]["thumbnail"]) as gone:
            assert gone.status == 404
