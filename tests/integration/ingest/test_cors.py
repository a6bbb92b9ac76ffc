"""CORS: a page on an allowed origin can call the API (preflights answered, the headers it needs
exposed); any other origin, and every origin by default, gets no CORS grant. The same from a real
browser on a second origin: tests/e2e (guest page)."""

from __future__ import annotations

from typing import Any

from darkroom_ingest.app import create_app
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import QueueSpec

from tests.factories.api import Client, TokenMaker, auth, make_event
from tests.factories.tus import TUS, meta

PAGE = "https://guests.example"


def preflight(method: str, headers: str, origin: str = PAGE) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_an_allowed_origin_gets_preflights_and_exposed_headers(
    aiohttp_client: Any,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    make_token: TokenMaker,
) -> None:
    settings = chunk_settings.model_copy(update={"cors_allowed_origins": [PAGE]})
    api: Client = await aiohttp_client(create_app(settings))
    asked = "authorization,tus-resumable,upload-length,upload-metadata"
    answer = await api.options("/v1/tus/", headers=preflight("POST", asked))
    assert answer.status == 200, await answer.text()
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in answer.headers["Access-Control-Allow-Headers"].split(",")}
    assert set(asked.split(",")) <= allowed
    assert int(answer.headers["Access-Control-Max-Age"]) > 0
    # A PATCH of an upload and a JSON write elsewhere are preflighted the same way.
    patch = await api.options(
        "/v1/tus/up_x", headers=preflight("PATCH", "upload-offset,content-type")
    )
    assert (patch.status, patch.headers["Access-Control-Allow-Origin"]) == (200, PAGE)
    events = await api.options("/v1/events", headers=preflight("POST", "content-type"))
    assert (events.status, events.headers["Access-Control-Allow-Origin"]) == (200, PAGE)

    # The actual request: granted, with what a tus client must read exposed.
    token = await make_token()
    event = await make_event(api, token)
    upload_meta = meta(event=event["id"])
    created = await api.post(
        "/v1/tus/",
        headers={
            **TUS,
            **auth(token),
            "Origin": PAGE,
            "Upload-Length": "1000",
            "Upload-Metadata": upload_meta,
        },
    )
    assert created.status == 201
    assert created.headers["Access-Control-Allow-Origin"] == PAGE
    exposed = {h.strip() for h in created.headers["Access-Control-Expose-Headers"].split(",")}
    assert {
        "Location",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Expires",
        "Tus-Resumable",
        "Tus-Version",
        "ETag",
        "Idempotent-Replayed",
    } <= exposed
    # A problem answer is readable too (a browser shows the client why).
    refused = await api.get("/v1/events/ev_missing", headers={**auth(token), "Origin": PAGE})
    assert refused.status == 404
    assert refused.headers["Access-Control-Allow-Origin"] == PAGE
    assert "X-Request-Id" in refused.headers["Access-Control-Expose-Headers"]
    # And a tus client recovering from a wrong offset can read where the upload is.
    wrong = await api.patch(
        created.headers["Location"],
        data=b"x",
        headers={
            **TUS,
            **auth(token),
            "Origin": PAGE,
            "Upload-Offset": "5",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert wrong.status == 409
    assert wrong.headers["Access-Control-Allow-Origin"] == PAGE
    assert "Upload-Offset" in wrong.headers["Access-Control-Expose-Headers"]
    assert (await wrong.json())["offset"] == 0

    # Another origin: no grant.
    other = await api.options("/v1/tus/", headers=preflight("POST", asked, "https://evil.example"))
    assert other.status == 403
    assert "Access-Control-Allow-Origin" not in other.headers
    # tus discovery (an OPTIONS that is no preflight) is still tus's.
    discovery = await api.options("/v1/tus/")
    assert (discovery.status, discovery.headers["Tus-Version"]) == (204, "1.0.0")


async def test_no_origin_is_allowed_by_default(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    assert chunk_settings.cors_allowed_origins == []
    answer = await capi.options("/v1/tus/", headers=preflight("POST", "authorization"))
    assert answer.status == 403
    assert "Access-Control-Allow-Origin" not in answer.headers
    token = await make_token()
    me = await capi.get("/v1/me", headers={**auth(token), "Origin": PAGE})
    assert me.status == 200
    assert "Access-Control-Allow-Origin" not in me.headers
