"""What a careless or hostile client sends, found from outside: each gets a clear answer, never a
500, and nothing stored changes."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from darkroom_ingest.api import all_routes
from darkroom_ingest.schemas.common import PageQuery
from darkroom_ingest.settings import IngestSettings

from tests.factories.api import (
    Client,
    TokenMaker,
    assert_problem,
    auth,
    make_event,
    put_chunk,
    raw_multipart,
    start_upload,
    stored_keys,
)
from tests.factories.media import jpeg_bytes, jpeg_like

# Selectable on their own (`pytest -m abuse`); `make test` runs the whole tree, these included.
pytestmark = pytest.mark.abuse


async def test_an_offset_past_what_mongodb_takes_is_a_422_on_every_list(
    api: Client, make_token: TokenMaker
) -> None:
    token = await make_token(
        "photos.read,photos.write,events.read,events.write,webhooks.manage,admin"
    )
    lists = [
        r
        for r in all_routes()
        if r.method == "GET" and r.query is not None and issubclass(r.query, PageQuery)
    ]
    assert len(lists) >= 4
    for route in lists:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        resp = await api.get(path, params={"offset": str(2**63)}, headers=auth(token))
        problem = await assert_problem(resp, 422, "validation_failed")
        assert problem["errors"][0]["field"].endswith("offset"), (route.path, problem)


async def test_json_bodies_too_deep_or_with_huge_integers_are_a_400(
    api: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    headers = {**auth(token), "Content-Type": "application/json"}
    huge = '{"name": "x", "slug": "huge", "photo_cap": ' + "9" * 5000 + "}"
    deep = '{"name": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for body in (huge, deep):
        resp = await api.post("/v1/events", data=body, headers=headers)
        await assert_problem(resp, 400, "malformed_json")
    listed = await (await api.get("/v1/events?slug=huge", headers=auth(token))).json()
    assert listed["items"] == []


async def test_an_upload_begun_before_the_event_was_archived_does_not_complete_after(
    capi: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(600_000)
    upload = await start_upload(capi, token, event["id"], data)
    assert (await put_chunk(capi, token, upload, data, 0)).status == 200
    archived = await capi.post(f"/v1/events/{event['id']}/archive", headers=auth(token))
    assert archived.status == 200
    await assert_problem(
        await capi.post(f"/v1/uploads/{upload['upload_id']}/complete", headers=auth(token)),
        409,
        "event_archived",
    )
    state = await (await capi.get(f"/v1/uploads/{upload['upload_id']}", headers=auth(token))).json()
    assert (state["state"], state["error"]["code"]) == ("failed", "event_archived")
    photos = await (await capi.get(f"/v1/events/{event['id']}/photos", headers=auth(token))).json()
    assert photos["total"] == 0
    assert await stored_keys(capi, event["id"]) == []


async def test_a_password_in_a_webhook_url_is_never_answered_back(
    api: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    made = await api.post(
        "/v1/webhooks",
        json={"url": "https://crm:hunter2@hooks.example.com/in", "event_types": ["photo.*"]},
        headers=auth(token),
    )
    body = await made.json()
    assert made.status == 201, body
    assert body["url"] == "https://crm:***@hooks.example.com/in"
    listed = await (await api.get("/v1/webhooks", headers=auth(token))).text()
    assert "hunter2" not in listed
    one = await (await api.get(f"/v1/webhooks/{body['id']}", headers=auth(token))).text()
    assert "hunter2" not in one
    assert "crm:***@hooks.example.com" in one


async def test_a_batch_of_countless_tiny_parts_is_refused_whole(
    aiohttp_client: Any, ingest_settings: IngestSettings, make_token: TokenMaker
) -> None:
    """Parts past the files a batch may hold used to be listed one by one in the answer, and
    their bytes counted towards nothing: now every part counts, and past the bound the request
    is refused with nothing kept."""
    from darkroom_ingest.app import create_app

    api = await aiohttp_client(
        create_app(ingest_settings.model_copy(update={"max_batch_files": 3}))
    )
    token = await make_token()
    event = await make_event(api, token)
    parts = [("a.jpg", jpeg_bytes(64, 64)), *((f"x{i}.jpg", b"x") for i in range(19))]
    body, headers = raw_multipart(*parts)
    problem = await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/photos", data=body, headers={**auth(token), **headers}
        ),
        413,
        "too_many_parts",
    )
    assert "at most 19 parts" in problem["detail"]
    assert await stored_keys(api, event["id"]) == []
    # Within the bound, the files past the limit are skipped, as before.
    body, headers = raw_multipart(*parts[:5])
    resp = await api.post(
        f"/v1/events/{event['id']}/photos", data=body, headers={**auth(token), **headers}
    )
    answer = await resp.json()
    assert resp.status == 201, answer
    assert [s["code"] for s in answer["skipped"]] == ["unsupported_type"] * 2 + [
        "too_many_files"
    ] * 2


async def test_a_big_jpeg_declared_as_a_video_stops_at_its_first_chunk(
    aiohttp_client: Any, chunk_settings: IngestSettings, make_token: TokenMaker
) -> None:
    from darkroom_ingest.app import create_app

    settings = chunk_settings.model_copy(update={"max_chunked_image_bytes": 2_000_000})
    api = await aiohttp_client(create_app(settings))
    token = await make_token()
    event = await make_event(api, token)
    data = jpeg_like(3_000_000)  # over the image limit, under the video one
    upload = await start_upload(api, token, event["id"], data, mime="video/mp4")
    problem = await assert_problem(
        await put_chunk(api, token, upload, data, 0), 413, "file_too_large"
    )
    assert "image/jpeg" in problem["detail"]
    state = await (await api.get(f"/v1/uploads/{upload['upload_id']}", headers=auth(token))).json()
    assert state["missing"] == list(range(upload["chunk_count"]))


async def test_an_event_bound_token_reads_no_repair_of_other_or_all_events(
    api: Client, make_token: TokenMaker
) -> None:
    owner = await make_token("photos.read,photos.write,events.write,admin")
    event = await make_event(api, owner)
    other = await make_event(api, owner)
    started = {}
    for name, body in (
        ("other", {"event_id": other["id"]}),
        ("all", {}),
        ("own", {"event_id": event["id"]}),
    ):
        resp = await api.post("/v1/photos/repair-dimensions", json=body, headers=auth(owner))
        assert resp.status in (200, 202), await resp.text()
        started[name] = (await resp.json())["id"]
    gallery = await make_token("photos.read,photos.write", event=event["id"])
    for name in ("other", "all"):
        await assert_problem(
            await api.get(f"/v1/operations/{started[name]}", headers=auth(gallery)),
            404,
            "operation_not_found",
        )
    own = await api.get(f"/v1/operations/{started['own']}", headers=auth(gallery))
    assert own.status in (200, 202), await own.text()


async def test_an_event_bound_token_is_confined_to_its_event_on_webhook_routes(
    api: Client, make_token: TokenMaker
) -> None:
    owner = await make_token()
    event = await make_event(api, owner)
    other = await make_event(api, owner)
    theirs = []
    for body in ({}, {"event_ids": [other["id"]]}):
        made = await api.post(
            "/v1/webhooks",
            json={"url": "https://hooks.example.com/in", "event_types": ["photo.*"], **body},
            headers=auth(owner),
        )
        assert made.status == 201
        theirs.append((await made.json())["id"])
    bound = await make_token("webhooks.manage,events.write,photos.read", event=event["id"])
    listed = await (await api.get("/v1/webhooks", headers=auth(bound))).json()
    assert listed["items"] == []
    for wid in theirs:
        for method, path, body in (
            ("GET", f"/v1/webhooks/{wid}", None),
            ("PATCH", f"/v1/webhooks/{wid}", {"url": "https://evil.example.com/"}),
            ("POST", f"/v1/webhooks/{wid}/rotate-secret", {}),
            ("GET", f"/v1/webhooks/{wid}/deliveries", None),
            ("POST", f"/v1/webhooks/{wid}/test", {}),
            ("DELETE", f"/v1/webhooks/{wid}", None),
        ):
            resp = await api.request(method, path, json=body, headers=auth(bound))
            await assert_problem(resp, 404, "webhook_not_found")
    # It subscribes to its own event only.
    wide = await api.post(
        "/v1/webhooks",
        json={
            "url": "https://hooks.example.com/x",
            "event_types": ["*"],
            "event_ids": [other["id"]],
        },
        headers=auth(bound),
    )
    problem = await assert_problem(wide, 422, "validation_failed")
    assert problem["errors"][0]["field"] == "/event_ids"
    mine = await api.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.com/mine", "event_types": ["*"]},
        headers=auth(bound),
    )
    body = await mine.json()
    assert (mine.status, body["event_ids"]) == (201, [event["id"]])
    for event_ids in (None, [event["id"], other["id"]]):
        widen = await api.patch(
            f"/v1/webhooks/{body['id']}", json={"event_ids": event_ids}, headers=auth(bound)
        )
        await assert_problem(widen, 422, "validation_failed")
    listed = await (await api.get("/v1/webhooks", headers=auth(bound))).json()
    assert [w["id"] for w in listed["items"]] == [body["id"]]
    # It creates no event either.
    await assert_problem(
        await api.post("/v1/events", json={"name": "x", "slug": "escape"}, headers=auth(bound)),
        403,
        "event_bound_token",
    )
    # The operator still manages all of them.
    everything = await (await api.get("/v1/webhooks?limit=200", headers=auth(owner))).json()
    assert {*theirs, body["id"]} <= {w["id"] for w in everything["items"]}


async def test_a_chunk_sent_as_json_with_an_idempotency_key_is_stored_whole(
    capi: Client, make_token: TokenMaker
) -> None:
    """The key's check used to read the body by its Content-Type, cut it at the JSON limit and
    keep the handler's 400 for the key."""
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(600_000)
    upload = await start_upload(capi, token, event["id"], data)
    headers = {"Content-Type": "application/json", "Idempotency-Key": "chunk-0-as-json"}
    for _ in range(2):  # the repeat replays the first answer
        sent = await put_chunk(capi, token, upload, data, 0, **headers)
        assert sent.status == 200, await sent.text()
    done = await capi.post(f"/v1/uploads/{upload['upload_id']}/complete", headers=auth(token))
    assert done.status == 200, await done.text()
    assert (await done.json())["size"] == len(data)


async def test_a_client_gone_mid_chunk_is_not_a_server_error(
    capi: Client, make_token: TokenMaker, caplog: pytest.LogCaptureFixture
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(600_000)
    upload = await start_upload(capi, token, event["id"], data)
    host, port = capi.server.host, capi.server.port
    _, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"PUT /v1/uploads/{upload['upload_id']}/chunks/0 HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        + data[:100_000]
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.5)
    assert not [r for r in caplog.records if r.getMessage() == "unhandled error"]
    metrics = await (await capi.get("/metrics")).text()
    assert not [
        line
        for line in metrics.splitlines()
        if line.startswith("http_requests_total") and 'status="500"' in line
    ], metrics
    # The upload is as it was: the chunk can be sent again.
    assert (await put_chunk(capi, token, upload, data, 0)).status == 200


async def test_stalled_chunk_bodies_are_given_up_and_hold_no_memory_for_ever(
    aiohttp_client: Any, chunk_settings: IngestSettings, make_token: TokenMaker
) -> None:
    """A connection that sends part of a chunk and stalls used to hold its buffer for ever: now
    it is answered 408 after BODY_IDLE_TIMEOUT_SECONDS, and while it waits it holds one of at
    most MAX_BUFFERED_CHUNKS buffers (others get 503 with Retry-After, not memory)."""
    from darkroom_ingest.app import create_app

    settings = chunk_settings.model_copy(
        update={"body_idle_timeout_seconds": 1.0, "max_buffered_chunks": 1}
    )
    api = await aiohttp_client(create_app(settings))
    token = await make_token()
    event = await make_event(api, token)
    data = jpeg_like(600_000)
    upload = await start_upload(api, token, event["id"], data)
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    writer.write(
        (
            f"PUT /v1/uploads/{upload['upload_id']}/chunks/0 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        + data[:1000]
    )
    await writer.drain()

    async def trickle() -> None:  # a byte now and then: slow, never idle for long
        for i in range(6):
            await asyncio.sleep(0.4)
            writer.write(data[1000 + i : 1001 + i])
            await writer.drain()

    trickling = asyncio.ensure_future(trickle())
    await asyncio.sleep(0.2)
    # The one buffer is held: another chunk waits its turn, then is told to come back.
    busy = await put_chunk(api, token, upload, data, 0)
    problem = await assert_problem(busy, 503, "server_busy")
    assert busy.headers["Retry-After"] == "2", problem
    await trickling
    answer = await asyncio.wait_for(reader.read(4096), 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout" in answer
    writer.close()
    # The buffer is free again.
    assert (await put_chunk(api, token, upload, data, 0)).status == 200


def multipart_by_hand(*parts: tuple[bytes, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body from raw Content-Disposition values and contents, byte for byte (a
    client library would escape what these tests send raw)."""
    boundary = b"darkroomrawboundary"
    body = b""
    for disposition, content in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        body += b"Content-Type: image/jpeg\r\n\r\n" + content + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


async def test_a_control_character_in_a_file_name_skips_that_file_not_the_batch(
    api: Client, make_token: TokenMaker
) -> None:
    """aiohttp refuses a part header with a raw control character by failing the whole body
    ("400, message:."): the README promises a per-file ``invalid_filename`` instead."""
    token = await make_token()
    event = await make_event(api, token)
    jpeg = jpeg_bytes(320, 240)

    def photo(filename: bytes) -> tuple[bytes, bytes]:
        return b'form-data; name="photos"; filename="' + filename + b'"', jpeg

    body, headers = multipart_by_hand(
        photo(b"first.jpg"),
        photo(b"bad\x01name.jpg"),
        photo(b"del\x7fname.jpg"),
        photo(b"bare\rreturn.jpg"),
        (b'form-data; name="photos"; filename=unquoted\x01.jpg', jpeg),
        (b'form-data; name="photos"; filename="last.jpg"', jpeg_bytes(330, 240)),
    )
    resp = await api.post(
        f"/v1/events/{event['id']}/photos", data=body, headers={**auth(token), **headers}
    )
    answer = await resp.json()
    assert resp.status == 201, answer
    assert [p["filename"] for p in answer["uploaded"]] == ["first.jpg", "last.jpg"]
    assert [(s["filename"], s["field"], s["code"]) for s in answer["skipped"]] == [
        ("bad\x01name.jpg", "photos[1]", "invalid_filename"),
        ("del\x7fname.jpg", "photos[2]", "invalid_filename"),
        ("bare\rreturn.jpg", "photos[3]", "invalid_filename"),
        (None, "(unnamed)", "invalid_filename"),
    ]
    assert len(await stored_keys(api, event["id"])) == 2


async def test_a_part_header_that_is_no_header_is_a_clear_400_with_its_field(
    api: Client, make_token: TokenMaker
) -> None:
    """A raw line break inside a file name leaves a header line without a colon: the body's
    framing is not to be trusted past it, so the request is refused whole, saying where."""
    token = await make_token()
    event = await make_event(api, token)
    jpeg = jpeg_bytes(320, 240)
    body, headers = multipart_by_hand(
        (b'form-data; name="photos"; filename="fine.jpg"', jpeg),
        (b'form-data; name="photos"; filename="broken\nline.jpg"', jpeg),
    )
    problem = await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/photos", data=body, headers={**auth(token), **headers}
        ),
        400,
        "malformed_multipart",
    )
    assert "400, message" not in problem["detail"]
    assert problem["errors"] == [
        {
            "field": "photos[1]",
            "detail": problem["errors"][0]["detail"],
            "code": "invalid_part_header",
        }
    ]
    assert "Invalid HTTP header" in problem["errors"][0]["detail"]
    assert await stored_keys(api, event["id"]) == []
