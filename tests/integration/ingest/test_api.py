"""upload-ingest's API in-process, over real MongoDB, S3 and RabbitMQ servers."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import pytest
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import outbox, records
from darkroom_kit.messaging import Envelope, QueueSpec, Topology
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import OBJECT_STORE

from tests.factories.api import (
    Client,
    TokenMaker,
    assert_problem,
    auth,
    form,
    make_event,
    raw_multipart,
    stored_keys,
)
from tests.factories.media import jpeg_bytes, png_bytes
from tests.factories.messaging import drain, eventually


async def photo_count(api: Client, event_id: str) -> int:
    return await api.server.app[MONGO_DB][records.PHOTOS].count_documents({"event_id": event_id})


# ---- auth -----------------------------------------------------------------------------------


async def test_tokens_and_scopes(api: Client, make_token: TokenMaker) -> None:
    await assert_problem(await api.get("/v1/me"), 401, "unauthenticated")
    await assert_problem(await api.get("/v1/me", headers=auth("drk_wrong")), 401, "invalid_token")
    token = await make_token("photos.read")
    resp = await api.get("/v1/me", headers={"X-Auth-Token": token})
    me = await resp.json()
    assert resp.status == 200
    assert me["scopes"] == ["photos.read"]
    assert me["id"].startswith("tok_")
    problem = await assert_problem(
        await api.post("/v1/events", json={"name": "x", "slug": "x"}, headers=auth(token)),
        403,
        "insufficient_scope",
    )
    assert problem["required_scope"] == "events.write"
    await assert_problem(
        await api.get("/v1/webhooks", headers=auth(token)), 403, "insufficient_scope"
    )


# ---- events ---------------------------------------------------------------------------------


async def test_events_create_read_and_bad_input(api: Client, make_token: TokenMaker) -> None:
    token = await make_token()
    event = await make_event(
        api,
        token,
        name="Cup final",
        slug="cup-final",
        photo_cap=10,
        categories=[{"name": "Ceremony"}],
    )
    assert event["photo_cap"] == 10
    assert event["categories"][0]["id"].startswith("cat_")
    resp = await api.get(f"/v1/events/{event['id']}", headers=auth(token))
    assert (await resp.json())["slug"] == "cup-final"
    await assert_problem(
        await api.post("/v1/events", json={"name": "b", "slug": "cup-final"}, headers=auth(token)),
        409,
        "slug_taken",
    )
    bad = await assert_problem(
        await api.post(
            "/v1/events",
            json={"name": 5, "slug": "Bad Slug", "photo_cap": "ten"},
            headers=auth(token),
        ),
        422,
        "validation_failed",
    )
    assert {e["field"] for e in bad["errors"]} == {"/name", "/slug", "/photo_cap"}
    await assert_problem(
        await api.post(
            "/v1/events",
            data=b'{"name": ',
            headers={**auth(token), "Content-Type": "application/json"},
        ),
        400,
        "malformed_json",
    )
    await assert_problem(
        await api.post(
            "/v1/events", data=b"[1]", headers={**auth(token), "Content-Type": "application/json"}
        ),
        400,
        "malformed_json",
    )
    huge = json.dumps({"name": "x" * (2 * 1024 * 1024), "slug": "big"})
    await assert_problem(
        await api.post(
            "/v1/events", data=huge, headers={**auth(token), "Content-Type": "application/json"}
        ),
        413,
        "body_too_large",
    )
    await assert_problem(
        await api.get("/v1/events/ev_nope", headers=auth(token)), 404, "event_not_found"
    )
    await assert_problem(await api.get("/v1/nothing-here"), 404, "not_found")


# ---- webhooks -------------------------------------------------------------------------------


async def test_webhook_endpoints(api: Client, make_token: TokenMaker) -> None:
    token = await make_token()
    resp = await api.post(
        "/v1/webhooks",
        json={
            "url": "https://example.com/hook",
            "event_types": ["photo.uploaded", "photo.*"],
            "description": "crm",
        },
        headers=auth(token),
    )
    created = await resp.json()
    assert resp.status == 201
    assert created["secret"].startswith("whsec_")
    got = await (await api.get(f"/v1/webhooks/{created['id']}", headers=auth(token))).json()
    assert "secret" not in got
    assert got["event_types"] == ["photo.uploaded", "photo.*"]
    listed = await (await api.get("/v1/webhooks?limit=200", headers=auth(token))).json()
    assert created["id"] in [w["id"] for w in listed["items"]]
    bad = await assert_problem(
        await api.post(
            "/v1/webhooks",
            json={"url": "ftp://x", "event_types": ["photo.exploded"]},
            headers=auth(token),
        ),
        422,
        "validation_failed",
    )
    assert {e["field"] for e in bad["errors"]} == {"/url", "/event_types"}
    await assert_problem(
        await api.get("/v1/webhooks?limit=0", headers=auth(token)), 422, "validation_failed"
    )
    deliveries = await api.get(f"/v1/webhooks/{created['id']}/deliveries", headers=auth(token))
    assert (await deliveries.json())["total"] == 0
    assert (await api.delete(f"/v1/webhooks/{created['id']}", headers=auth(token))).status == 204
    await assert_problem(
        await api.get(f"/v1/webhooks/{created['id']}", headers=auth(token)),
        404,
        "webhook_not_found",
    )


# ---- uploads --------------------------------------------------------------------------------


async def test_batch_upload_stores_hashes_and_announces(
    api: Client, make_token: TokenMaker, ingest_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    token = await make_token()
    event = await make_event(api, token)
    jpeg, png = jpeg_bytes(1600, 1200), png_bytes(300, 200)
    resp = await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("a.jpg", jpeg), ("b.png", png)),
        headers=auth(token),
    )
    body = await resp.json()
    assert resp.status == 201, body
    assert body["skipped"] == []
    by_name = {p["filename"]: p for p in body["uploaded"]}
    assert by_name["a.jpg"]["sha256"] == hashlib.sha256(jpeg).hexdigest()
    assert by_name["a.jpg"]["size"] == len(jpeg)
    assert by_name["b.png"]["content_type"] == "image/png"
    assert by_name["a.jpg"]["thumbnail_url"].endswith(f"/thumbnails/{event['slug']}/a.jpg")
    original = await api.get(f"/photos/{event['slug']}/a.jpg", headers=auth(token))
    assert await original.read() == jpeg
    assert original.headers["ETag"]
    again = await api.get(
        f"/photos/{event['slug']}/a.jpg",
        headers={**auth(token), "If-None-Match": original.headers["ETag"]},
    )
    assert again.status == 304
    messages = await drain(ingest_settings.amqp_url, watch_events.name, 2)
    assert sorted(m["data"]["photo"]["filename"] for m in messages) == ["a.jpg", "b.png"]
    assert all(m["type"] == "photo.uploaded" for m in messages)
    assert len(await drain(ingest_settings.amqp_url, watch_events.name, 1, timeout=1.5)) == 0
    listed = await (
        await api.get(f"/v1/events/{event['id']}/photos?limit=1", headers=auth(token))
    ).json()
    assert listed["total"] == 2
    assert len(listed["items"]) == 1
    photo = await (
        await api.get(f"/v1/photos/{by_name['b.png']['id']}", headers=auth(token))
    ).json()
    assert photo["status"] == "uploaded"
    assert photo["width"] is None
    await assert_problem(
        await api.get(f"/thumbnails/{event['slug']}/b.png", headers=auth(token)),
        404,
        "thumbnail_processing",
    )
    # The same name again (another file) is numbered, never overwritten.
    resp = await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("a.jpg", jpeg_bytes(1600, 1200))),
        headers=auth(token),
    )
    assert (await resp.json())["uploaded"][0]["filename"] == "a-2.jpg"


async def test_bad_files_are_skipped_and_nothing_else_changes(
    api: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(api, token)
    jpeg = jpeg_bytes(800, 600)
    cases = [
        (("photo.jpg", b"just some text, not a photo at all"), "unsupported_type"),
        (("cut.jpg", jpeg[: len(jpeg) // 2]), "truncated_file"),
        (("../../etc/evil.jpg", jpeg), "invalid_filename"),
        (("bad\u009bname.jpg", jpeg), "invalid_filename"),
        (("empty.jpg", b""), "empty_file"),
    ]
    for file, code in cases:
        body, headers = raw_multipart(file)
        problem = await assert_problem(
            await api.post(
                f"/v1/events/{event['id']}/photos", data=body, headers={**auth(token), **headers}
            ),
            400,
            "no_valid_files",
        )
        assert problem["errors"][0]["code"] == code, problem
        assert problem["errors"][0]["field"] == "photos[0]"
    # A C0 control character in a part header (which aiohttp's parser refuses) skips that file
    # alone: alone in its request, nothing is kept.
    body, headers = raw_multipart(("bad\x01name.jpg", jpeg))
    problem = await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/photos", data=body, headers={**auth(token), **headers}
        ),
        400,
        "no_valid_files",
    )
    assert problem["errors"][0]["code"] == "invalid_filename", problem
    assert await photo_count(api, event["id"]) == 0
    assert await stored_keys(api, event["id"]) == []
    # In a mixed batch the good file is kept and the bad ones are reported.
    resp = await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("ok.jpg", jpeg), cases[0][0], cases[1][0]),
        headers=auth(token),
    )
    body = await resp.json()
    assert resp.status == 201
    assert [p["filename"] for p in body["uploaded"]] == ["ok.jpg"]
    assert [s["code"] for s in body["skipped"]] == ["unsupported_type", "truncated_file"]
    assert len(await stored_keys(api, event["id"])) == 1


async def test_size_limits(
    aiohttp_client: Any,
    ingest_settings: IngestSettings,
    make_token: TokenMaker,
    watch_events: QueueSpec,
) -> None:
    from darkroom_ingest.app import create_app

    settings = ingest_settings.model_copy(
        update={"max_file_bytes": 50_000, "max_batch_bytes": 200_000}
    )
    api = await aiohttp_client(create_app(settings))
    token = await make_token()
    event = await make_event(api, token)
    big = jpeg_bytes(1500, 1000, quality=95)
    assert 50_000 < len(big) < 200_000
    resp = await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("big.jpg", big), ("small.jpg", jpeg_bytes(100, 100))),
        headers=auth(token),
    )
    body = await resp.json()
    assert [s["code"] for s in body["skipped"]] == ["file_too_large"]
    assert [p["filename"] for p in body["uploaded"]] == ["small.jpg"]
    # A body over the batch limit is refused whole, and what was streamed is removed.
    await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/photos",
            data=form(*[(f"{i}.jpg", big[:40_000] + big[-2:]) for i in range(6)]),
            headers=auth(token),
        ),
        413,
        "body_too_large",
    )

    async def chunked() -> Any:  # no Content-Length: the limit is enforced while streaming
        boundary = "XyZ"
        yield (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            'name="photos"; filename="s.jpg"\r\n\r\n'
        ).encode()
        for _ in range(10):
            yield big[:30_000]
        yield f"\r\n--{boundary}--\r\n".encode()

    await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/photos",
            data=chunked(),
            headers={**auth(token), "Content-Type": "multipart/form-data; boundary=XyZ"},
        ),
        413,
        "body_too_large",
    )
    assert await photo_count(api, event["id"]) == 1
    assert len(await stored_keys(api, event["id"])) == 1
    await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/photos",
            data=b"x",
            headers={**auth(token), "Content-Type": "text/plain"},
        ),
        415,
        "unsupported_media_type",
    )


async def test_photo_cap_is_all_or_nothing(api: Client, make_token: TokenMaker) -> None:
    token = await make_token()
    event = await make_event(api, token, photo_cap=2)
    three = form(*[(f"{i}.jpg", jpeg_bytes(64, 64)) for i in range(3)])
    problem = await assert_problem(
        await api.post(f"/v1/events/{event['id']}/photos", data=three, headers=auth(token)),
        400,
        "photo_cap_exceeded",
    )
    assert problem["photo_cap"] == 2
    assert await photo_count(api, event["id"]) == 0
    assert await stored_keys(api, event["id"]) == []
    two = form(*[(f"{i}.jpg", jpeg_bytes(64, 64)) for i in range(2)])
    assert (
        await api.post(f"/v1/events/{event['id']}/photos", data=two, headers=auth(token))
    ).status == 201
    await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/photos",
            data=form(("x.jpg", jpeg_bytes(64, 64))),
            headers=auth(token),
        ),
        400,
        "photo_cap_exceeded",
    )
    got = await (await api.get(f"/v1/events/{event['id']}", headers=auth(token))).json()
    assert got["photo_count"] == 2


async def test_upload_needs_scope_and_a_known_event(api: Client, make_token: TokenMaker) -> None:
    reader = await make_token("photos.read")
    writer = await make_token()
    event = await make_event(api, writer)
    await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/photos",
            data=form(("a.jpg", jpeg_bytes(64, 64))),
            headers=auth(reader),
        ),
        403,
        "insufficient_scope",
    )
    await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/photos", data=form(("a.jpg", jpeg_bytes(64, 64)))
        ),
        401,
        "unauthenticated",
    )
    await assert_problem(
        await api.post(
            "/v1/events/ev_unknown/photos",
            data=form(("a.jpg", jpeg_bytes(64, 64))),
            headers=auth(writer),
        ),
        404,
        "event_not_found",
    )
    assert await photo_count(api, event["id"]) == 0


async def test_delete_removes_objects_and_announces(
    api: Client, make_token: TokenMaker, ingest_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    token = await make_token()
    event = await make_event(api, token)
    resp = await api.post(
        f"/v1/events/{event['id']}/photos", data=form(("d.jpg", jpeg_bytes())), headers=auth(token)
    )
    photo = (await resp.json())["uploaded"][0]
    await drain(ingest_settings.amqp_url, watch_events.name, 1)
    assert (await api.delete(f"/v1/photos/{photo['id']}", headers=auth(token))).status == 204
    await assert_problem(
        await api.get(f"/v1/photos/{photo['id']}", headers=auth(token)), 404, "photo_not_found"
    )
    await assert_problem(
        await api.delete(f"/v1/photos/{photo['id']}", headers=auth(token)), 404, "photo_not_found"
    )
    assert await stored_keys(api, event["id"]) == []
    assert await photo_count(api, event["id"]) == 0
    messages = await drain(ingest_settings.amqp_url, watch_events.name, 1)
    assert [m["type"] for m in messages] == ["photo.deleted"]
    assert messages[0]["data"]["photo"]["id"] == photo["id"]
    got = await (await api.get(f"/v1/events/{event['id']}", headers=auth(token))).json()
    assert got["photo_count"] == 0


async def test_delete_completes_after_storage_comes_back(
    api: Client, make_token: TokenMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from darkroom_kit.storage import StorageUnavailable

    token = await make_token()
    event = await make_event(api, token)
    resp = await api.post(
        f"/v1/events/{event['id']}/photos", data=form(("s.jpg", jpeg_bytes())), headers=auth(token)
    )
    photo = (await resp.json())["uploaded"][0]
    store = api.server.app[OBJECT_STORE]
    real_delete = store.delete_many
    failures = []

    async def unavailable_once(keys: list[str]) -> None:
        if not failures:
            failures.append(keys)
            raise StorageUnavailable("S3 is down")
        await real_delete(keys)

    monkeypatch.setattr(store, "delete_many", unavailable_once)
    assert (await api.delete(f"/v1/photos/{photo['id']}", headers=auth(token))).status == 204
    assert failures  # the first removal did fail
    await assert_problem(
        await api.get(f"/v1/photos/{photo['id']}", headers=auth(token)), 404, "photo_not_found"
    )

    async def gone() -> bool:
        return await photo_count(api, event["id"]) == 0 and not await stored_keys(api, event["id"])

    await eventually(gone)


async def test_idempotency_keys(api: Client, make_token: TokenMaker) -> None:
    token = await make_token()
    headers = {**auth(token), "Idempotency-Key": "key-1"}
    first = await api.post("/v1/events", json={"name": "A", "slug": "idem-a"}, headers=headers)
    second = await api.post("/v1/events", json={"name": "A", "slug": "idem-a"}, headers=headers)
    assert first.status == second.status == 201
    assert await first.json() == await second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    await assert_problem(
        await api.post("/v1/events", json={"name": "B", "slug": "idem-b"}, headers=headers),
        422,
        "idempotency_key_reused",
    )
    # A refusal is remembered too: the replay answers the same 409, not a new attempt.
    dup = {**auth(token), "Idempotency-Key": "key-2"}
    await assert_problem(
        await api.post("/v1/events", json={"name": "A", "slug": "idem-a"}, headers=dup),
        409,
        "slug_taken",
    )
    replay = await api.post("/v1/events", json={"name": "A", "slug": "idem-a"}, headers=dup)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    await assert_problem(replay, 409, "slug_taken")
    # Keys belong to the token that sent them.
    other = {**auth(await make_token()), "Idempotency-Key": "key-1"}
    await assert_problem(
        await api.post("/v1/events", json={"name": "A", "slug": "idem-a"}, headers=other),
        409,
        "slug_taken",
    )


async def test_idempotency_key_in_use_and_stale_claims(api: Client, make_token: TokenMaker) -> None:
    from darkroom_ingest.idempotency import STALE_MS
    from darkroom_kit.clock import now_ms

    token = await make_token()
    me = await (await api.get("/v1/me", headers=auth(token))).json()
    keys = api.server.app[MONGO_DB][records.IDEMPOTENCY]
    body = {"name": "Busy", "slug": f"busy-{secrets.token_hex(3)}"}
    first = await api.post(
        "/v1/events", json=body, headers={**auth(token), "Idempotency-Key": "probe"}
    )
    assert first.status == 201
    # A first request still running (its claim is fresh) makes a repeat wait: 409.
    await keys.update_one(
        {"_id": f"{me['id']}:probe"}, {"$set": {"state": "running", "started_ms": now_ms()}}
    )
    busy = await assert_problem(
        await api.post(
            "/v1/events", json=body, headers={**auth(token), "Idempotency-Key": "probe"}
        ),
        409,
        "idempotency_key_in_use",
    )
    assert busy["status"] == 409
    # A claim whose holder died long ago is taken over: the request runs again (and here meets
    # the event the first run created).
    await keys.update_one(
        {"_id": f"{me['id']}:probe"}, {"$set": {"started_ms": now_ms() - STALE_MS - 1000}}
    )
    await assert_problem(
        await api.post(
            "/v1/events", json=body, headers={**auth(token), "Idempotency-Key": "probe"}
        ),
        409,
        "slug_taken",
    )


async def test_outbox_relay_publishes_what_a_dead_writer_left(
    api: Client, ingest_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    """A writer that stored a record with its message and died before publishing."""
    photos = api.server.app[MONGO_DB][records.PHOTOS]
    message = Envelope.new(records.PHOTO_UPLOADED, {"photo": {"id": "ph_orphan"}})
    doc = {
        "_id": "ph_orphan",
        "event_id": "ev_x",
        "status": "uploaded",
        "filename": "o.jpg",
        **outbox.fields(
            Topology(ingest_settings.amqp_namespace).events,
            [message],
            -1,
        ),
    }
    await photos.insert_one(doc)
    got = await drain(ingest_settings.amqp_url, watch_events.name, 1)
    assert [m["id"] for m in got] == [message.id]
    stored = await photos.find_one({"_id": "ph_orphan"})
    assert stored is not None
    assert outbox.pending_of(stored) == {}
    assert outbox.OUTBOX_DUE not in stored


async def test_openapi_and_metrics(api: Client, make_token: TokenMaker) -> None:
    doc = await (await api.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    for path, method in [
        ("/v1/events", "post"),
        ("/v1/events/{event_id}/photos", "post"),
        ("/v1/photos/{photo_id}", "delete"),
        ("/v1/webhooks", "post"),
        ("/v1/webhooks/{webhook_id}/deliveries", "get"),
        ("/v1/me", "get"),
        ("/thumbnails/{slug}/{filename}", "get"),
    ]:
        assert method in doc["paths"][path]
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert ref in doc["components"]["schemas"], ref
    assert "EventCreate" in doc["components"]["schemas"]
    assert (await api.get("/healthz")).status == 200
    assert (await (await api.get("/readyz")).json())["ready"] is True
    metrics = await (await api.get("/metrics")).text()
    assert "http_requests_total" in metrics
    assert "upload_bytes_total" in metrics


@pytest.mark.real_mongo
async def test_concurrent_batches_never_exceed_the_cap(api: Client, make_token: TokenMaker) -> None:
    import asyncio

    token = await make_token()
    event = await make_event(api, token, photo_cap=5)
    results = await asyncio.gather(
        *(
            api.post(
                f"/v1/events/{event['id']}/photos",
                data=form((f"{i}.jpg", jpeg_bytes(64, 64))),
                headers=auth(token),
            )
            for i in range(12)
        )
    )
    assert sum(r.status == 201 for r in results) == 5
    assert await photo_count(api, event["id"]) == 5


async def test_inserting_an_existing_photo_id_is_a_conflict(api: Client) -> None:
    """Renumbering the file name helps a name clash only; a taken id must not loop."""
    import pytest
    from darkroom_ingest.stores import Conflict, PhotoStore

    store = PhotoStore(api.server.app[MONGO_DB])
    doc = {"_id": "ph_dup_test", "event_id": "ev_dup", "filename": "a.jpg"}
    await store.insert_unique([dict(doc)], lambda d: None)
    renamed = [{**doc, "_id": "ph_dup_test2"}]
    assert await store.insert_unique(renamed, lambda d: None) == {}
    assert renamed[0]["filename"] == "a-2.jpg"
    with pytest.raises(Conflict):
        await store.insert_unique([{**doc, "filename": "b.jpg"}], lambda d: None)


async def test_outbox_relay_gives_back_what_the_broker_refused(
    api: Client, ingest_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    """A relay pass whose publish fails leaves the document due again after a short wait, so the
    first pass after the broker is back publishes it: its claim used to hold it back for 30 s
    more (the fault suite's broker outage took 33 s to recover). And a message the broker
    refuses does not hold up the others behind it."""
    from darkroom_kit.clock import now_ms
    from darkroom_kit.messaging import PUBLISHER
    from darkroom_kit.outbox import REFUSED_RETRY_MS, Outbox, OutboxRelay

    refuse: set[str] = set()
    real = api.server.app[PUBLISHER]

    class Refusing:
        async def publish(self, exchange: str, envelope: Envelope, **kwargs: Any) -> None:
            if envelope.id in refuse:
                raise ConnectionError("broker away")
            await real.publish(exchange, envelope, **kwargs)

    # A collection of its own: the app's relay must not take the documents first.
    col = api.server.app[MONGO_DB][f"relay_test_{secrets.token_hex(3)}"]
    events = Topology(ingest_settings.amqp_namespace).events
    bad = Envelope.new(records.PHOTO_UPLOADED, {"photo": {"id": "ph_refused"}})
    good = Envelope.new(records.PHOTO_UPLOADED, {"photo": {"id": "ph_fine"}})
    await col.insert_one({"_id": "ph_refused", **outbox.fields(events, [bad], -2)})
    await col.insert_one({"_id": "ph_fine", **outbox.fields(events, [good], -1)})
    refuse.add(bad.id)
    relay = OutboxRelay(Outbox(Refusing()), [col])  # type: ignore[arg-type]
    # The refused one did not stop the pass, and counts: a relay that met a refusal does not
    # wait longer before its next pass.
    assert await relay.run_once() == 2
    got = await drain(ingest_settings.amqp_url, watch_events.name, 1)
    assert [m["id"] for m in got] == [good.id]
    stored = await col.find_one({"_id": "ph_refused"})
    assert stored is not None
    assert outbox.pending_of(stored)
    # Due again soon, not after the claim.
    assert stored[outbox.OUTBOX_DUE] <= now_ms() + REFUSED_RETRY_MS
    refuse.clear()  # the broker is back

    async def relayed() -> bool:
        return await relay.run_once() == 1

    await eventually(relayed, timeout=REFUSED_RETRY_MS / 1000 + 5)
    got = await drain(ingest_settings.amqp_url, watch_events.name, 1)
    assert [m["id"] for m in got] == [bad.id]
