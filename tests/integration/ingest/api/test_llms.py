"""``/llms.txt`` and ``/llms-full.txt``: public plain text, cached, and rendered from the same
route declarations as ``/openapi.json``, so that a route changed in its declaration changes them
(or, for an operation the guide names and the API dropped, fails to render)."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
from darkroom_ingest import errors
from darkroom_ingest.api import all_routes
from darkroom_ingest.api import llms as llms_module
from darkroom_ingest.api.declare import Call, RouteTable
from darkroom_ingest.api.llms import render_full, render_guide
from darkroom_ingest.api.openapi import openapi_document
from darkroom_ingest.settings import IngestSettings
from darkroom_ingest.tokens import Scope
from darkroom_kit import catalogue
from darkroom_kit.errors import ErrorKind
from darkroom_webhooks.signing import signature_header
from pydantic import BaseModel, Field

from tests.factories.api import PROBLEM, Client, TokenMaker, auth

BASE = "https://photos.example.test"

# The flows the guide must show, by operation id: their request lines come from the document.
MAIN_FLOWS = (
    "getMe",
    "createEvent",
    "uploadPhotos",
    "createUpload",
    "putChunk",
    "getUpload",
    "completeUpload",
    "tusCreate",
    "listPhotos",
    "getPhoto",
    "createWebhook",
    "listWebhookEventTypes",
    "getOperation",
    "cancelOperation",
    "createDownloadLink",
    "createArchive",
    "downloadMedia",
)


@pytest.fixture
def ingest_settings(settings_kwargs: dict[str, Any]) -> IngestSettings:
    """The API at a public address of its own, so the texts show where it comes from."""
    # A public address needs a signing key of its own (the development key is refused there).
    key = {"id": "test", "secret": secrets.token_urlsafe(32)}
    return IngestSettings(**settings_kwargs, public_base_url=BASE, media_signing_keys=[key])


def request_lines(document: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Each operation of an OpenAPI document by its id: method, path and summary."""
    return {
        op["operationId"]: (method.upper(), path, op["summary"])
        for path, item in document["paths"].items()
        for method, op in item.items()
    }


async def fetch(api: Client, path: str) -> str:
    resp = await api.get(path)  # no token
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    return await resp.text()


# ---- served --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/llms.txt", "/llms-full.txt"])
async def test_served_without_a_token_as_cached_plain_text(
    api: Client, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resp = await api.get(path)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    etag = resp.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    text = await resp.text()
    # llms.txt's shape: an H1 first, then a blockquote.
    assert re.match(r"# [^\n]+\n\n> [^\n]+\n", text), text[:200]

    # Built once per app: a second answer does not build it again.
    def rebuilt(*_: Any) -> Any:
        raise AssertionError("the texts were built again")

    monkeypatch.setattr(llms_module, "llms_texts", rebuilt)
    again = await api.get(path)
    assert again.status == 200
    assert again.headers["ETag"] == etag
    assert await again.text() == text

    for match in (etag, f"W/{etag}", "*"):
        cached = await api.get(path, headers={"If-None-Match": match})
        assert cached.status == 304, match
        assert cached.headers["ETag"] == etag
        assert await cached.read() == b""
    changed = await api.get(path, headers={"If-None-Match": '"0123"'})
    assert changed.status == 200
    assert await changed.text() == text


async def test_not_operations_of_the_openapi_document(api: Client) -> None:
    document = await (await api.get("/openapi.json")).json()
    assert not {"/llms.txt", "/llms-full.txt"} & set(document["paths"])


async def test_the_guide_shows_the_main_flows_as_declared(
    api: Client, make_token: TokenMaker
) -> None:
    guide = await fetch(api, "/llms.txt")
    document = await (await api.get("/openapi.json")).json()
    lines = request_lines(document)
    for operation_id in MAIN_FLOWS:
        method, path, _ = lines[operation_id]
        assert f"`{method} {path}`" in guide, operation_id
    # Where the rest is, at the address the settings give.
    assert f"{BASE}/openapi.json" in guide
    assert f"{BASE}/llms-full.txt" in guide
    assert f"export BASE={BASE}" in guide
    # Both ways to send a token, and the scopes there are.
    assert "Authorization: Bearer" in guide
    assert "X-Auth-Token" in guide
    for scope in Scope:
        assert f"`{scope.value}`" in guide
    # The examples are requests the API answers as the guide says: the event's example body.
    token = await make_token()
    example = re.search(r"curl -s \"\$BASE/v1/events\" .*?-d '(\{.*?\})'", guide, re.S)
    assert example is not None, "no example of an event's creation"
    body = json.loads(example.group(1))
    body["slug"] = f"llms-{secrets.token_hex(4)}"  # the database is the whole run's
    created = await api.post("/v1/events", json=body, headers=auth(token))
    assert created.status == 201, await created.text()


async def test_the_full_text_holds_every_operation_error_and_message(api: Client) -> None:
    full = await fetch(api, "/llms-full.txt")
    document = await (await api.get("/openapi.json")).json()
    operations = request_lines(document)
    assert len(operations) > 40
    for operation_id, (method, path, summary) in operations.items():
        assert f"\n### `{method} {path}`: {summary}\n\nOperation `{operation_id}`." in full
    for kind in errors.CATALOGUE:
        # In the list of every operation that answers it, and in the list of problems.
        assert f"\n- `{kind.status}` `{kind.code}`: " in full, kind
        assert re.search(rf"\n- `{kind.code}` \({kind.status}\): [^\n]+\. Answered by ", full)
    # With the title the document gives it (one title of a code and status for each route).
    for item in document["paths"].values():
        for op in item.values():
            for status, answer in op["responses"].items():
                examples = answer.get("content", {}).get(PROBLEM, {}).get("examples", {})
                for code, example in examples.items():
                    assert f"\n- `{status}` `{code}`: {example['value']['title']}\n" in full
    for event in catalogue.event_types():
        assert f"\n### `{event.type}`\n\n{event.description}\n" in full
        assert f"`data` is `{event.payload.__name__}`:" in full
        for name in event.payload.model_fields:
            assert f"- `{name}` (" in full
    assert f"{BASE}/openapi.json" in full


# ---- rendered from the declarations --------------------------------------------------------------


class Thing(BaseModel):
    """A thing to make."""

    label: str = Field(min_length=1, max_length=40, description="What it is called.")
    weight: int | None = Field(default=None, ge=0, description="How heavy it is.")


class ThingOut(BaseModel):
    """A thing made."""

    id: str = Field(description="Its id.")


THING_TAKEN = ErrorKind("thing_taken", 409, "The label is taken")


def thing_table(path: str, scope: Scope) -> RouteTable:
    table = RouteTable("things")

    @table.post(
        path,
        operation_id="makeThing",
        summary="Make a thing",
        scope=scope,
        body=Thing,
        response=ThingOut,
        status=201,
        errors=(THING_TAKEN,),
    )
    async def make_thing(call: Call, body: Thing) -> ThingOut:
        """Make one thing.

        Its label is unique."""
        return ThingOut(id="t_1")

    @table.get("/v1/ping", operation_id="ping", summary="Ping", scope=None, public=True)
    async def ping(call: Call) -> None:
        """Answers nothing."""

    return table


def test_the_full_text_follows_a_changed_declaration() -> None:
    before = render_full(
        openapi_document(thing_table("/v1/things", Scope.EVENTS_WRITE).routes, BASE)
    )
    assert (
        "### `POST /v1/things`: Make a thing\n\nOperation `makeThing`. Auth: scope `events.write`."
        in before
    )
    assert "Make one thing.\n\nIts label is unique." in before
    assert "- `label` (string; required; minLength 1, maxLength 40): What it is called." in before
    assert (
        "- `weight` (integer or null; optional; default `null`; minimum 0): How heavy it is."
        in before
    )
    assert "- `201`: OK; `ThingOut` (`application/json`)" in before
    assert "- `409` `thing_taken`: The label is taken" in before
    assert "- `thing_taken` (409): The label is taken. Answered by `makeThing`." in before
    assert "### `GET /v1/ping`: Ping\n\nOperation `ping`. Auth: no token." in before
    assert "### `ThingOut`\n\nA thing made.\n\n- `id` (string; required): Its id." in before

    after = render_full(
        openapi_document(thing_table("/v1/widgets", Scope.PHOTOS_WRITE).routes, BASE)
    )
    assert "### `POST /v1/widgets`: Make a thing" in after
    assert "Auth: scope `photos.write`" in after
    assert "/v1/things" not in after
    assert "events.write`." not in after.split("## Operations")[1]


def _with(change: Callable[[Any], Any]) -> dict[str, Any]:
    return openapi_document([change(r) for r in all_routes()], BASE)


def test_the_guide_follows_a_moved_route_and_fails_without_one() -> None:
    moved = render_guide(
        _with(
            lambda r: (
                dataclasses.replace(r, path="/v2/happenings")
                if r.operation_id == "createEvent"
                else r
            )
        )
    )
    assert "`POST /v2/happenings` (scope `events.write`)" in moved
    assert 'curl -s "$BASE/v2/happenings"' in moved
    assert "`POST /v1/events`" not in moved
    assert "`POST /v1/events` (scope" in render_guide(_with(lambda r: r))

    rescoped = render_guide(
        _with(
            lambda r: (
                dataclasses.replace(r, scope=Scope.ADMIN) if r.operation_id == "listPhotos" else r
            )
        )
    )
    assert "`GET /v1/events/{event_id}/photos` (scope `admin`)" in rescoped

    routes = [r for r in all_routes() if r.operation_id != "listPhotos"]
    with pytest.raises(LookupError, match="listPhotos"):
        render_guide(openapi_document(routes, BASE))


def _verifier(guide: str) -> Callable[[str, dict[str, str], bytes], bool]:
    code = re.search(r"```python\n(import base64.*?def verify.*?)```", guide, re.S)
    assert code is not None, "no verifier in the guide"
    scope: dict[str, Any] = {}
    exec(code.group(1), scope)
    verify: Callable[[str, dict[str, str], bytes], bool] = scope["verify"]
    return verify


def test_the_guides_verifier_accepts_what_webhook_dispatch_signs() -> None:
    verify = _verifier(render_guide(openapi_document(all_routes(), BASE)))
    old, new = ("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode() for _ in range(2))
    body = b'{"type": "photo.uploaded", "timestamp": "2026-06-01T09:00:00Z", "data": {}}'
    now = int(time.time())

    def headers(signed_with: list[str], at: int = now, payload: bytes = body) -> dict[str, str]:
        return {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(at),
            "webhook-signature": signature_header(signed_with, "msg_1", at, payload),
        }

    assert verify(new, headers([new]), body)
    # During a rotation, signed with both: either secret verifies.
    assert verify(old, headers([old, new]), body)
    assert verify(new, headers([old, new]), body)
    assert not verify(new, headers([old]), body)
    assert not verify(new, headers([new]), body + b" ")
    assert not verify(new, headers([new], at=now - 3600), body)
