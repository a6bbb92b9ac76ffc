"""The guest upload page in a real browser (Debian's chromium, driven by Playwright), served from a
second origin so that every call to the API is a CORS request: three photos and a 30 MB file
across a page reload, then the photos, their thumbnails and the signed ``photo.uploaded``
webhooks, against the whole system as processes."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from darkroom_ingest.api.guests import PAGE_DIR
from darkroom_ingest.cli import create_token
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.mongo import open_mongo
from PIL import Image
from playwright.async_api import Page, async_playwright

from darkroom_dev.servers import Server, free_port
from tests.factories.e2e import CHROMIUM, Receiver, wait_for
from tests.factories.media import jpeg_bytes

pytestmark = pytest.mark.e2e

BIG = 30 * 1000 * 1000


@pytest.fixture
def page_port() -> int:
    return free_port()


@pytest.fixture
def extra_env(page_port: int) -> dict[str, str]:
    # Only the page's origin may call the API from a browser.
    return {"CORS_ALLOWED_ORIGINS": json.dumps([f"http://127.0.0.1:{page_port}"])}


def big_jpeg() -> bytes:
    """A real JPEG (it decodes, so it gets a thumbnail) padded to 30 MB after its end marker,
    which decoders ignore, and closed by another end marker as the truncation check wants."""
    head = jpeg_bytes(1200, 800)
    return head + os.urandom(BIG - len(head) - 2) + b"\xff\xd9"


def guest_page_elsewhere(api_url: str) -> web.Application:
    """The guest page, the very file upload-ingest serves, as a customer's site would embed it:
    its own origin, the API on another, the scripts loaded from the API."""
    page = (PAGE_DIR / "index.html").read_text()
    for script in ("guest/tus.min.js", "guest/guest.js"):
        assert f'src="{script}"' in page, script
        page = page.replace(f'src="{script}"', f'src="{api_url}/{script}"')
    page = page.replace(
        "<script", f"<script>window.DARKROOM_API = {json.dumps(api_url)};</script><script", 1
    )

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return app


async def states(page: Page) -> dict[str, str]:
    got: dict[str, str] = await page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('.file')].map("
        "e => [e.querySelector('.name').textContent, "
        "(e.dataset.state || '') + '|' + e.querySelector('.note').textContent]))"
    )
    return got


async def test_guests_upload_through_the_page_across_a_reload(
    system: tuple[str, dict[str, str], list[Server], Path],
    aiohttp_server: Any,
    settings_kwargs: dict[str, Any],
    page_port: int,
    tmp_path: Path,
) -> None:
    api_url, _, _, _ = system
    receiver = Receiver()
    hooks = web.Application()
    hooks.router.add_post("/hook", receiver.handle)
    hook_server = await aiohttp_server(hooks)
    site = await aiohttp_server(guest_page_elsewhere(api_url), port=page_port)
    owner = await create_token(
        IngestSettings(**settings_kwargs),
        "owner",
        ["photos.write", "events.write", "webhooks.manage"],
        None,
    )
    files = {f"guest{i}.jpg": jpeg_bytes(800 + 10 * i, 600) for i in range(3)}
    files["big.jpg"] = big_jpeg()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    async with aiohttp.ClientSession(api_url, headers={"Authorization": f"Bearer {owner}"}) as http:
        endpoint = await http.post(
            "/v1/webhooks",
            json={
                "url": f"http://127.0.0.1:{hook_server.port}/hook",
                "event_types": ["photo.uploaded"],
            },
        )
        receiver.secret = (await endpoint.json())["secret"]
        event = await (
            await http.post("/v1/events", json={"name": "Guests", "slug": "guests"})
        ).json()
        link = await (
            await http.post(f"/v1/events/{event['id']}/guest-links", json={"max_files": 10})
        ).json()
        token = link["token"]
        url = f"http://127.0.0.1:{site.port}/#{token}"

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                context = await browser.new_context()
                page = await context.new_page()
                failed: list[str] = []
                page.on("requestfailed", lambda r: failed.append(f"{r.method} {r.url} {r.failure}"))
                # Every tus request the page makes: its method and Upload-Offset.
                sent: list[tuple[str, str | None]] = []
                page.on(
                    "request",
                    lambda r: (
                        sent.append((r.method, r.headers.get("upload-offset")))
                        if "/v1/tus/" in r.url and r.method != "OPTIONS"
                        else None
                    ),
                )
                await page.goto(url)
                await page.wait_for_selector("#drop:not([hidden])", timeout=15_000)
                # Slow the upload down, so that the reload comes in the middle of the big file.
                cdp = await context.new_cdp_session(page)
                await cdp.send(
                    "Network.emulateNetworkConditions",
                    {
                        "offline": False,
                        "latency": 0,
                        "downloadThroughput": -1,
                        "uploadThroughput": 4 * 1024 * 1024,
                    },
                )
                await page.set_input_files("#picker", [str(tmp_path / n) for n in files])

                async def big_half_way() -> bool:
                    note = (await states(page)).get("big.jpg", "|")
                    sent = note.split("|")[1].split(" of ")[0]
                    return sent.replace(".", "", 1).isdigit() and float(sent) >= 12

                async def small_ones_done() -> bool:
                    got = await states(page)
                    return all(got.get(n, "").startswith("done") for n in files if n != "big.jpg")

                await wait_for(big_half_way, timeout=60)
                await wait_for(small_ones_done, timeout=60)
                await page.reload()
                failed.clear()  # the reload aborted the PATCH in flight: that one is expected
                sent.clear()
                await page.wait_for_selector("#drop:not([hidden])", timeout=15_000)
                await cdp.detach()
                # The guest picks the big file again: it goes on from where the server is.
                await page.set_input_files("#picker", [str(tmp_path / "big.jpg")])

                async def big_done() -> bool:
                    return (await states(page)).get("big.jpg", "").startswith("done")

                await wait_for(big_done, timeout=90)
                assert not [f for f in failed if "/v1/" in f], failed
                # After the reload: no new upload was created; the page asked the server where
                # it is (HEAD) and went on from there, not from 0.
                methods = [m for m, _ in sent]
                assert "POST" not in methods, sent
                assert methods[0] == "HEAD", sent
                first_patch = next(offset for m, offset in sent if m == "PATCH")
                assert first_patch is not None, sent
                assert int(first_patch) > 0, sent
            finally:
                await browser.close()

        photos = await (await http.get(f"/v1/events/{event['id']}/photos?limit=50")).json()
        by_name = {p["original_filename"]: p for p in photos["items"]}
        assert sorted(by_name) == sorted(files), sorted(by_name)
        # One tus upload for the big file: the reload resumed it, it did not start again.
        settings = IngestSettings(**settings_kwargs)
        mongo = open_mongo(settings)
        try:
            uploads = mongo[settings.mongo_db]["uploads"]
            big = [u async for u in uploads.find({"event_id": event["id"], "filename": "big.jpg"})]
        finally:
            await mongo.close()
        assert [(u["protocol"], u["state"], u["size"]) for u in big] == [("tus", "completed", BIG)]
        for name, data in files.items():
            original = await http.get(f"/photos/guests/{by_name[name]['filename']}")
            assert await original.read() == data, name

        async def processed() -> bool:
            for p in by_name.values():
                got = await (await http.get(f"/v1/photos/{p['id']}")).json()
                if got["status"] != "processed":
                    return False
            return True

        await wait_for(processed, timeout=60)
        for p in by_name.values():
            thumb = await http.get(f"/thumbnails/guests/{p['filename']}")
            assert thumb.status == 200, p["filename"]
            assert max(Image.open(io.BytesIO(await thumb.read())).size) == 400

        async def announced() -> bool:
            return len(receiver.requests) >= len(files)

        await wait_for(announced, timeout=40)
    verified = receiver.verified()
    assert sorted(m["data"]["photo"]["id"] for m in verified) == sorted(
        p["id"] for p in by_name.values()
    )
    assert all(m["type"] == "photo.uploaded" for m in verified)
