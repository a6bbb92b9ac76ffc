"""The route table is the contract: every route refuses a token without its declared scope, and
every answer the API gives validates against what its route declares (a success status with its
response model, or a problem whose status and code the route documents)."""

from __future__ import annotations

import json
import re
from typing import Any

import aio_pika
import pytest
from aiohttp import FormData
from darkroom_ingest.api import all_routes
from darkroom_ingest.api.declare import Route
from darkroom_ingest.api.openapi import errors_of
from darkroom_ingest.app import create_app
from darkroom_ingest.settings import IngestSettings
from darkroom_ingest.tokens import Scope, effective_scopes
from darkroom_kit.messaging import QueueSpec, Topology, declare_consumer_queue

from tests.factories.api import CHUNK, Client, TokenMaker, auth
from tests.factories.media import jpeg_bytes
from tests.factories.servers import QueueJanitor
from tests.factories.tus import TUS, meta

ROUTES = all_routes()
GRANTABLE = [s for s in Scope if s is not Scope.ADMIN]


def _concrete(path: str) -> str:
    return path.replace("{index}", "0").replace("{", "x_").replace("}", "")


def _without(route: Route) -> list[str]:
    """Every grantable scope that implies none of the route's scopes."""
    wanted = {s.value for s in route.scopes}
    return [s.value for s in GRANTABLE if not effective_scopes([s.value]) & wanted]


def test_every_route_is_declared_once_with_an_operation_id() -> None:
    keys = [(r.method, r.path) for r in ROUTES]
    assert len(keys) == len(set(keys))
    ids = [r.operation_id for r in ROUTES]
    assert len(ids) == len(set(ids))
    assert all(i[0].islower() and "_" not in i for i in ids), ids


def test_only_the_tokens_own_facts_and_the_event_catalogue_need_no_scope() -> None:
    # A route declared without a scope is open to every valid token: that must be a choice.
    scope_free = {r.operation_id for r in ROUTES if not r.scopes and not r.public}
    assert scope_free == {"getMe", "listWebhookEventTypes"}
    # And open to anybody: tus discovery (clients and browsers ask it without a token) and the
    # guest upload page (its token is in the URL's fragment, for its script).
    public = {r.operation_id for r in ROUTES if r.public}
    # And signed media links (the link is the credential).
    assert public == {"tusOptions", "guestPage", "guestPageAsset", "downloadMedia"}


def _protocol_headers(route: Route) -> dict[str, str]:
    """What a request must carry to reach the route's checks (tus: its version)."""
    return dict(TUS) if route.tag == "tus" else {}


@pytest.mark.parametrize("route", [r for r in ROUTES if not r.public], ids=lambda r: r.operation_id)
async def test_a_request_without_a_token_is_refused(capi: Client, route: Route) -> None:
    response = await capi.request(
        route.method, _concrete(route.path), headers=_protocol_headers(route)
    )
    assert response.status == 401, await response.text()
    if route.method != "HEAD":  # a HEAD answer has no body
        assert (await response.json())["code"] == "unauthenticated"


@pytest.mark.parametrize("route", [r for r in ROUTES if r.scopes], ids=lambda r: r.operation_id)
async def test_a_token_without_the_declared_scope_is_refused(
    capi: Client, make_token: TokenMaker, route: Route
) -> None:
    others = _without(route)
    assert others, route.operation_id  # every scope but admin implies it: nothing to try
    token = await make_token(",".join(others))
    response = await capi.request(
        route.method,
        _concrete(route.path),
        headers={**auth(token), **_protocol_headers(route)},
        json={},
    )
    assert response.status == 403, (route.operation_id, await response.text())
    if route.method == "HEAD":
        return
    body = await response.json()
    assert body["code"] == "insufficient_scope"
    assert body["required_scope"] in {s.value for s in route.scopes}


class Recorder:
    """Calls the API and checks each answer against its route's declaration."""

    def __init__(self, client: Client, token: str) -> None:
        self.client = client
        self.headers = auth(token)
        self.seen: set[str] = set()
        self.last: Any = None

    async def __call__(self, method: str, path: str, **kw: Any) -> Any:
        response = await self.client.request(
            method, path, headers={**self.headers, **kw.pop("headers", {})}, **kw
        )
        self.last = response
        route = _route_of(method, response.url.path)
        body = await response.read()
        self.seen.add(route.operation_id)
        if method == "HEAD":  # no body either way: its status is all there is to check
            declared = route.statuses | {k.status for k in errors_of(route)}
            assert response.status in declared, (route.operation_id, response.status)
            return response.status, b""
        if response.status in route.statuses:
            if route.response is not None and response.status != 304:
                model = route.response.model_validate_json(body)
                # Serializing the validated answer gives the same document: nothing dropped.
                assert json.loads(model.model_dump_json(by_alias=True)) == json.loads(body)
            elif route.binary:
                assert response.status == 304 or body, path
            else:
                assert not body, (route.operation_id, body)
        else:
            assert response.content_type == "application/problem+json", (route.operation_id, body)
            code = json.loads(body)["code"]
            declared = {(k.status, k.code) for k in errors_of(route)}
            assert (response.status, code) in declared, (route.operation_id, response.status, code)
        return response.status, (json.loads(body) if body and route.response else body)


def _route_of(method: str, path: str) -> Route:
    """The declared route a request went to (the one with fewest parameters, as aiohttp's
    router prefers a fixed segment)."""
    candidates = [
        r
        for r in ROUTES
        if r.method == method and re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", r.path), path)
    ]
    assert candidates, f"no declared route for {method} {path}"
    return min(candidates, key=lambda r: r.path.count("{"))


@pytest.fixture
async def rapi(
    aiohttp_client: Any,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    janitor: QueueJanitor,
) -> Client:
    """The API with a short test-send wait: no webhook-dispatch runs here, only a queue that
    takes its commands."""
    topology = Topology(chunk_settings.amqp_namespace)
    commands = QueueSpec(topology.queue("test", "commands"), topology.commands, ("#",), ())
    janitor.add(commands)
    connection = await aio_pika.connect(chunk_settings.amqp_url)
    try:
        await declare_consumer_queue(await connection.channel(), topology, commands, 5)
    finally:
        await connection.close()
    settings = chunk_settings.model_copy(update={"webhook_test_wait_seconds": 0.3})
    client: Client = await aiohttp_client(create_app(settings))
    return client


async def test_every_answer_validates_against_its_declaration(
    rapi: Client, make_token: TokenMaker
) -> None:
    call = Recorder(rapi, await make_token("admin"))
    status, me = await call("GET", "/v1/me")
    assert status == 200
    assert me["scopes"] == ["admin"]

    status, event = await call(
        "POST", "/v1/events", json={"name": "Route table", "slug": f"routes-{me['id'][-8:]}"}
    )
    assert status == 201
    ev = event["id"]
    assert (await call("POST", "/v1/events", json={"name": "Again", "slug": event["slug"]}))[
        0
    ] == 409
    assert (await call("GET", "/v1/events", params={"slug": event["slug"]}))[1]["total"] == 1
    assert (await call("GET", f"/v1/events/{ev}"))[0] == 200
    assert (await call("GET", "/v1/events/ev_missing"))[0] == 404
    assert (await call("PATCH", f"/v1/events/{ev}", json={"photo_cap": 100}))[0] == 200

    form = FormData()
    form.add_field("photos", jpeg_bytes(64, 48), filename="a.jpg", content_type="image/jpeg")
    status, batch = await call("POST", f"/v1/events/{ev}/photos", data=form)
    assert status == 201, batch
    photo = batch["uploaded"][0]
    assert (await call("GET", f"/v1/events/{ev}/photos", params={"sort": "size_asc"}))[0] == 200
    assert (await call("GET", f"/v1/photos/{photo['id']}"))[0] == 200
    assert (await call("PATCH", f"/v1/photos/{photo['id']}", json={"rating": 4}))[0] == 200
    assert (await call("GET", f"/photos/{event['slug']}/a.jpg"))[0] == 200
    assert (await call("GET", f"/thumbnails/{event['slug']}/a.jpg"))[0] == 404  # not made yet
    assert (await call("GET", f"/heroes/{event['slug']}/a.jpg"))[0] == 404

    status, upload = await call(
        "POST",
        f"/v1/events/{ev}/uploads",
        json={"filename": "b.jpg", "size": CHUNK + 10, "mime_type": "image/jpeg"},
    )
    assert status == 201
    big = (jpeg_bytes(64, 48) + bytes(CHUNK))[: CHUNK + 10]
    up = upload["upload_id"]
    assert (await call("PUT", f"/v1/uploads/{up}/chunks/0", data=big[:CHUNK]))[0] == 200
    assert (await call("PUT", f"/v1/uploads/{up}/chunks/x", data=b"1"))[0] == 400
    assert (await call("GET", f"/v1/uploads/{up}"))[0] == 200
    assert (await call("POST", f"/v1/uploads/{up}/complete"))[0] == 409  # a chunk is missing
    assert (await call("DELETE", f"/v1/uploads/{up}"))[0] == 204

    # Guest upload links and their page.
    status, link = await call("POST", f"/v1/events/{ev}/guest-links", json={"max_files": 3})
    assert status == 201
    assert link["url"].endswith("/guest#" + link["token"])
    assert (await call("GET", f"/v1/events/{ev}/guest-links"))[1]["items"][0]["token"] is None
    assert (await call("GET", "/guest"))[0] == 200
    assert (await call("GET", "/guest/guest.js"))[0] == 200
    assert (await call("GET", "/guest/other.js"))[0] == 404
    assert (await call("DELETE", f"/v1/events/{ev}/guest-links/{link['id']}"))[0] == 204
    assert (await call("DELETE", f"/v1/events/{ev}/guest-links/{link['id']}x"))[0] == 404

    # tus: discovery, creation, offset, bytes (the last one makes the photo), termination
    # directly and through POST with X-HTTP-Method-Override.
    assert (await call("OPTIONS", "/v1/tus/"))[0] == 204
    small = jpeg_bytes(64, 48)
    creation = {
        **TUS,
        "Upload-Length": str(len(small)),
        "Upload-Metadata": meta(event=ev, filename="t.jpg"),
    }
    assert (await call("POST", "/v1/tus/", headers=creation))[0] == 201
    location = call.last.headers["Location"]
    assert (await call("HEAD", location, headers=TUS))[0] == 200
    sending = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    assert (await call("PATCH", location, headers=sending, data=small))[0] == 204
    assert (await call("PATCH", location, headers=sending, data=small))[0] == 409
    for method in ("DELETE", "POST"):
        assert (await call("POST", "/v1/tus/", headers=creation))[0] == 201
        ending = {**TUS, "X-HTTP-Method-Override": "DELETE"} if method == "POST" else TUS
        assert (await call(method, call.last.headers["Location"], headers=ending))[0] == 204

    # Direct uploads: one signed PUT straight to S3 (no credentials), then complete; multipart:
    # a part signed, the parts S3 holds listed, the upload cancelled.
    import aiohttp
    from yarl import URL

    direct_file = {"filename": "d.jpg", "size": len(small), "mime_type": "image/jpeg"}
    status, direct = await call("POST", f"/v1/events/{ev}/direct-uploads", json=direct_file)
    assert status == 201
    async with (
        aiohttp.ClientSession() as s3,
        s3.put(URL(direct["url"], encoded=True), data=small, headers=direct["headers"]) as put,
    ):
        assert put.status == 200
    assert (await call("POST", f"/v1/direct-uploads/{direct['upload_id']}/complete"))[0] == 200
    status, multi = await call(
        "POST", f"/v1/events/{ev}/direct-uploads", json={**direct_file, "multipart": True}
    )
    assert status == 201
    mu = multi["upload_id"]
    assert (await call("GET", f"/v1/direct-uploads/{mu}/parts/1"))[0] == 200
    signed = await call("POST", f"/v1/direct-uploads/{mu}/part-urls", json={"part_numbers": [1, 2]})
    assert [p["part_number"] for p in signed[1]["parts"]] == [1, 2]
    assert (await call("GET", f"/v1/direct-uploads/{mu}/parts"))[0] == 200
    assert (await call("DELETE", f"/v1/direct-uploads/{mu}"))[0] == 204

    status, op = await call("POST", "/v1/photos/repair-dimensions", json={"event_id": ev})
    assert status == 202
    assert (await call("GET", f"/v1/operations/{op['id']}"))[0] == 200
    # A repair runs to its end; imports (tests/integration/ingest/test_imports.py) stop.
    assert (await call("POST", f"/v1/operations/{op['id']}/cancel"))[0] == 409
    assert (await call("GET", "/v1/import-sources"))[1] == {"items": []}
    imported = await call("POST", f"/v1/events/{ev}/imports", json={"source": "none"})
    assert imported[0] == 422
    assert (
        await call("POST", "/v1/photos/bulk-delete", json={"photo_ids": [photo["id"], "ph_x"]})
    )[0] == 200
    form = FormData()
    form.add_field("photos", jpeg_bytes(64, 48), filename="c.jpg", content_type="image/jpeg")
    status, batch = await call("POST", f"/v1/events/{ev}/photos", data=form)
    linked = batch["uploaded"][0]
    status, link = await call("POST", f"/v1/photos/{linked['id']}/download-link", json={})
    assert status == 200
    assert (await call("GET", URL(link["url"]).path_qs))[0] == 200
    assert (await call("GET", URL(linked["urls"]["thumbnail"]).path_qs))[0] == 404  # processing
    status, _ = await call("POST", f"/v1/events/{ev}/archives", json={})
    assert status == 202  # no worker runs here: it stays queued
    assert (await call("POST", f"/v1/events/{ev}/archives", json={"photo_ids": []}))[0] == 422
    assert (await call("DELETE", f"/v1/photos/{linked['id']}"))[0] == 204

    status, hook = await call(
        "POST",
        "/v1/webhooks",
        json={"url": "https://hooks.example.com/x", "event_types": ["photo.*"]},
    )
    assert status == 201
    assert hook["secret"].startswith("whsec_")
    wh = hook["id"]
    assert (await call("GET", "/v1/webhooks"))[0] == 200
    assert (await call("GET", f"/v1/webhooks/{wh}"))[0] == 200
    assert (await call("PATCH", f"/v1/webhooks/{wh}", json={"description": "d"}))[0] == 200
    assert (await call("POST", f"/v1/webhooks/{wh}/rotate-secret"))[0] == 200
    assert (await call("GET", "/v1/webhook-event-types"))[0] == 200
    assert (await call("GET", f"/v1/webhooks/{wh}/deliveries"))[0] == 200
    assert (await call("GET", f"/v1/webhooks/{wh}/deliveries/msg_x"))[0] == 404
    assert (await call("POST", f"/v1/webhooks/{wh}/deliveries/msg_x/resend"))[0] == 404
    status, op = await call(
        "POST", f"/v1/webhooks/{wh}/recover", json={"since": "2026-01-01T00:00:00Z"}
    )
    assert status == 202
    # No webhook-dispatch runs here: the test send is answered pending after the wait.
    assert (await call("POST", f"/v1/webhooks/{wh}/test"))[0] == 202
    assert (await call("DELETE", f"/v1/webhooks/{wh}"))[0] == 204
    assert (await call("POST", f"/v1/events/{ev}/archive"))[0] == 200

    assert call.seen == {r.operation_id for r in ROUTES}
