"""Direct-to-S3 uploads against the real servers. The client here signs nothing: it makes plain
aiohttp PUTs to the URLs the API gave it, as a browser (or Uppy's @uppy/aws-s3) would."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import google_crc32c
from darkroom_ingest.app import create_app
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import OBJECT_STORE
from yarl import URL

from tests.factories.api import (
    CHUNK,
    Client,
    TokenMaker,
    assert_problem,
    auth,
    make_event,
    stored_keys,
)
from tests.factories.direct import complete, put_whole, s3_put, ticket
from tests.factories.media import jpeg_bytes, jpeg_like, mp4
from tests.factories.messaging import drain, eventually


def crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


async def send_parts(
    api: Client, token: str, upload_id: str, data: bytes, *, crc_on: int | None = None
) -> list[dict[str, Any]]:
    """``data`` in CHUNK-sized parts, each to the URL the API signed for it; the parts as
    Uppy keeps them ({PartNumber, ETag})."""
    sent = []
    for number, start in enumerate(range(0, len(data), CHUNK), start=1):
        piece = data[start : start + CHUNK]
        params = {"crc32c": crc32c(piece)} if number == crc_on else {}
        resp = await api.get(
            f"/v1/direct-uploads/{upload_id}/parts/{number}", params=params, headers=auth(token)
        )
        signed = await resp.json()
        assert resp.status == 200, signed
        assert (signed["part_number"], signed["method"]) == (number, "PUT")
        if number == crc_on:
            assert signed["headers"] == {"x-amz-checksum-crc32c": params["crc32c"]}
            assert "x-amz-checksum-crc32c" in URL(signed["url"]).query["X-Amz-SignedHeaders"]
        status, etag = await s3_put(signed["url"], piece, signed["headers"])
        assert status == 200
        sent.append({"PartNumber": number, "ETag": etag})
    return sent


async def photo_doc(api: Client, photo_id: str) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = await api.app[MONGO_DB][records.PHOTOS].find_one({"_id": photo_id})
    return doc


async def upload_doc(api: Client, upload_id: str) -> dict[str, Any]:
    doc = await api.app[MONGO_DB]["uploads"].find_one({"_id": upload_id})
    assert doc is not None
    return dict(doc)


async def uploaded_messages(settings: IngestSettings, queue: str) -> list[Any]:
    announced = await drain(settings.amqp_url, queue, 3, 3)
    return [m for m in announced if m["type"] == records.PHOTO_UPLOADED]


# ---- a single signed PUT ----------------------------------------------------------------------


async def test_one_signed_put_makes_one_photo_once(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_bytes(640, 480)
    upload = await ticket(capi, token, event["id"], data, filename="IMG_1.png")
    up = upload["upload_id"]
    assert (upload["method"], upload["multipart"]) == ("PUT", False)
    assert upload["s3_upload_id"] is None
    assert upload["headers"] == {"Content-Type": "image/jpeg"}
    assert upload["complete_url"].endswith(f"/v1/direct-uploads/{up}/complete")
    # The key is the server's choice, under the event; the URL is on the S3 endpoint, with the
    # declared size and type signed in.
    doc = await upload_doc(capi, up)
    assert doc["protocol"] == "direct"
    assert upload["key"] == records.original_key(event["id"], doc["photo_id"])
    url = URL(upload["url"])
    assert str(url.with_query(None)).endswith("/" + upload["key"])
    assert url.query["X-Amz-SignedHeaders"] == "content-length;content-type;host"
    assert url.query["X-Amz-Expires"] == str(chunk_settings.direct_ticket_seconds)
    # Nothing was sent yet: the upload stays open.
    await assert_problem(await complete(capi, token, up), 409, "nothing_uploaded")

    await put_whole(upload, data)
    done = await complete(capi, token, up)
    photo = await done.json()
    assert done.status == 200, photo
    assert photo["id"] == doc["photo_id"]
    assert (photo["filename"], photo["original_filename"]) == ("IMG_1.jpg", "IMG_1.png")
    assert (photo["content_type"], photo["size"]) == ("image/jpeg", len(data))
    stored = await capi.app[OBJECT_STORE].get_bytes(upload["key"])
    assert stored == data
    # Repeated: the same photo, nothing new.
    again = await complete(capi, token, up)
    assert again.status == 200
    assert (await again.json())["id"] == photo["id"]
    listed = await (await capi.get(f"/v1/events/{event['id']}/photos", headers=auth(token))).json()
    assert [p["id"] for p in listed["items"]] == [photo["id"]]
    uploaded = await uploaded_messages(chunk_settings, watch_events.name)
    assert [m["data"]["photo"]["id"] for m in uploaded] == [photo["id"]]
    status = await (await capi.get(f"/v1/uploads/{up}", headers=auth(token))).json()
    assert (status["protocol"], status["state"], status["photo_id"]) == (
        "direct",
        "completed",
        photo["id"],
    )
    assert await stored_keys(capi, event["id"]) == [upload["key"]]


# ---- multipart, in the shape of @uppy/aws-s3 -----------------------------------------------------


async def test_multipart_in_three_parts_one_with_a_crc32c(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(2 * CHUNK + 123_457)
    upload = await ticket(
        capi,
        token,
        event["id"],
        data,
        filename="big.jpg",
        multipart=True,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    up = upload["upload_id"]
    assert upload["multipart"] is True
    assert upload["s3_upload_id"]
    assert (upload["method"], upload["url"], upload["headers"]) == (None, None, {})
    store = capi.app[OBJECT_STORE]
    assert upload["s3_upload_id"] in await store.open_multipart_uploads(f"events/{event['id']}/")
    # Parts signed one by one (the second with its CRC32C), then resumed from S3's list.
    sent = await send_parts(capi, token, up, data, crc_on=2)
    resp = await capi.get(f"/v1/direct-uploads/{up}/parts", headers=auth(token))
    listed = await resp.json()
    assert resp.status == 200, listed
    assert [(p["PartNumber"], p["Size"]) for p in listed["parts"]] == [
        (1, CHUNK),
        (2, CHUNK),
        (3, len(data) - 2 * CHUNK),
    ]
    assert [p["ETag"] for p in listed["parts"]] == [p["ETag"] for p in sent]

    done = await complete(capi, token, up, sent)
    photo = await done.json()
    assert done.status == 200, photo
    assert photo["sha256"] == hashlib.sha256(data).hexdigest()
    assert photo["size"] == len(data)
    assert await store.get_bytes(upload["key"]) == data
    assert upload["s3_upload_id"] not in await store.open_multipart_uploads(
        f"events/{event['id']}/"
    )
    again = await complete(capi, token, up, sent)
    assert (again.status, (await again.json())["id"]) == (200, photo["id"])
    uploaded = await uploaded_messages(chunk_settings, watch_events.name)
    assert [m["data"]["photo"]["id"] for m in uploaded] == [photo["id"]]
    # A part of a completed upload is not signed any more.
    await assert_problem(
        await capi.get(f"/v1/direct-uploads/{up}/parts/1", headers=auth(token)),
        409,
        "upload_not_open",
    )


async def test_a_part_list_that_is_not_what_s3_holds_keeps_nothing(
    capi: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(CHUNK + 1000)
    upload = await ticket(capi, token, event["id"], data, multipart=True)
    up = upload["upload_id"]
    sent = await send_parts(capi, token, up, data)
    wrong = [sent[0], {"PartNumber": 2, "ETag": '"0123456789abcdef0123456789abcdef"'}]
    body = await assert_problem(await complete(capi, token, up, wrong), 409, "parts_mismatch")
    assert body["errors"][0]["field"] == "/parts"
    # A part the client says it sent and S3 never got is the same (on an upload of its own:
    # a failed one only answers its failure again).
    extra = await ticket(capi, token, event["id"], data, filename="b.jpg", multipart=True)
    extra_sent = await send_parts(capi, token, extra["upload_id"], data)
    await assert_problem(
        await complete(
            capi, token, extra["upload_id"], [*extra_sent, {"PartNumber": 3, "ETag": "x"}]
        ),
        409,
        "parts_mismatch",
    )
    # Nothing is kept of either: no photo, no object, no multipart upload.
    store = capi.app[OBJECT_STORE]
    assert await stored_keys(capi, event["id"]) == []
    still_open = await store.open_multipart_uploads(f"events/{event['id']}/")
    for refused in (upload, extra):
        assert refused["s3_upload_id"] not in still_open
        doc = await upload_doc(capi, refused["upload_id"])
        assert doc["state"] == "failed"
        assert await photo_doc(capi, doc["photo_id"]) is None


# ---- refusals: what S3 holds decides ------------------------------------------------------------


async def test_refused_files_are_deleted_and_answered_as_batch_and_chunked_do(
    capi: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    ev = event["id"]

    async def refused(data: bytes, status: int, code: str, **fields: Any) -> dict[str, Any]:
        upload = await ticket(capi, token, ev, data, **fields)
        await put_whole(upload, data)
        problem = await assert_problem(
            await complete(capi, token, upload["upload_id"]), status, code
        )
        assert await stored_keys(capi, ev) == [], code
        # Asked again: the same answer.
        await assert_problem(await complete(capi, token, upload["upload_id"]), status, code)
        return problem

    await refused(b"this is not an image at all, only text" * 10, 422, "unsupported_type")
    await refused(jpeg_bytes(640, 480)[:-200], 422, "truncated_file")
    good = jpeg_bytes(320, 240)
    await refused(good, 422, "checksum_mismatch", sha256=hashlib.sha256(b"other").hexdigest())
    # Fewer bytes than declared (S3 itself refuses such a PUT: Content-Length is signed; the
    # stand-in checks no signature, so the API's own check is what stops it here).
    upload = await ticket(capi, token, ev, good)
    await s3_put(upload["url"], good[:-10], upload["headers"])
    problem = await assert_problem(
        await complete(capi, token, upload["upload_id"]), 422, "size_mismatch"
    )
    assert (problem["declared_size"], problem["size"]) == (len(good), len(good) - 10)
    assert await stored_keys(capi, ev) == []
    # A chunk of the chunked API sent to a direct upload.
    other = await ticket(capi, token, ev, good)
    await assert_problem(
        await capi.put(
            f"/v1/uploads/{other['upload_id']}/chunks/0", data=good, headers=auth(token)
        ),
        409,
        "wrong_protocol",
    )
    # Multipart-only routes for a single PUT; part numbers out of range.
    await assert_problem(
        await capi.get(f"/v1/direct-uploads/{other['upload_id']}/parts/1", headers=auth(token)),
        409,
        "not_multipart",
    )
    multi = await ticket(capi, token, ev, good, multipart=True)
    for bad in ("0", "10001", "x"):
        await assert_problem(
            await capi.get(
                f"/v1/direct-uploads/{multi['upload_id']}/parts/{bad}", headers=auth(token)
            ),
            400,
            "invalid_part_number",
        )
    # A chunked upload is no direct upload.
    chunked = await capi.post(
        f"/v1/events/{ev}/uploads",
        json={"filename": "c.jpg", "size": 10, "mime_type": "image/jpeg"},
        headers=auth(token),
    )
    chunked_id = (await chunked.json())["upload_id"]
    await assert_problem(await complete(capi, token, chunked_id), 404, "upload_not_found")


async def test_the_real_types_limit_applies(
    aiohttp_client: Any, chunk_settings: IngestSettings, make_token: TokenMaker
) -> None:
    limits = {"max_chunked_image_bytes": 200_000, "direct_put_max_bytes": 1_000_000}
    api: Client = await aiohttp_client(create_app(chunk_settings.model_copy(update=limits)))
    token = await make_token()
    ev = (await make_event(api, token))["id"]
    # Declared: the declared type's limit at creation; one PUT: the single-PUT limit.
    over = {"filename": "a.jpg", "size": 200_001, "mime_type": "image/jpeg"}
    resp = await api.post(f"/v1/events/{ev}/direct-uploads", json=over, headers=auth(token))
    await assert_problem(resp, 413, "file_too_large")
    video = {"filename": "v.mp4", "size": 1_000_001, "mime_type": "video/mp4"}
    resp = await api.post(f"/v1/events/{ev}/direct-uploads", json=video, headers=auth(token))
    assert (await assert_problem(resp, 413, "use_multipart"))["errors"][0]["field"] == "/multipart"
    # Declared a video, but the bytes are a JPEG over the image limit: refused, deleted.
    big_jpeg = jpeg_like(300_000)
    upload = await ticket(api, token, ev, big_jpeg, filename="v.mp4", mime_type="video/mp4")
    await put_whole(upload, big_jpeg)
    await assert_problem(await complete(api, token, upload["upload_id"]), 413, "file_too_large")
    assert await stored_keys(api, ev) == []
    # Declared an image, but the bytes are a video (over the image limit would have been
    # refused at creation): the photo is what the bytes are.
    clip = mp4(150_000)
    upload = await ticket(api, token, ev, clip, filename="clip.jpg")
    await put_whole(upload, clip)
    done = await complete(api, token, upload["upload_id"])
    photo = await done.json()
    assert done.status == 200, photo
    assert (photo["content_type"], photo["filename"]) == ("video/mp4", "clip.mp4")


async def test_a_ticket_belongs_to_its_event(capi: Client, make_token: TokenMaker) -> None:
    token = await make_token()
    a = await make_event(capi, token)
    b = await make_event(capi, token)
    data = jpeg_bytes(320, 240)
    upload = await ticket(capi, token, a["id"], data)
    await put_whole(upload, data)
    up = upload["upload_id"]
    for_b = await make_token("photos.write", b["id"])
    await assert_problem(await complete(capi, for_b, up), 404, "upload_not_found")
    for path in (f"/v1/direct-uploads/{up}/parts", f"/v1/direct-uploads/{up}/parts/1"):
        await assert_problem(await capi.get(path, headers=auth(for_b)), 404, "upload_not_found")
    await assert_problem(
        await capi.delete(f"/v1/direct-uploads/{up}", headers=auth(for_b)),
        404,
        "upload_not_found",
    )
    resp = await capi.post(
        f"/v1/events/{a['id']}/direct-uploads",
        json={"filename": "x.jpg", "size": 10, "mime_type": "image/jpeg"},
        headers=auth(for_b),
    )
    await assert_problem(resp, 404, "event_not_found")
    # Its own event's token completes it; a reader may not start one.
    for_a = await make_token("photos.write", a["id"])
    done = await complete(capi, for_a, up)
    assert done.status == 200, await done.text()
    assert (await done.json())["event_id"] == a["id"]
    reader = await make_token("photos.read")
    resp = await capi.post(
        f"/v1/events/{a['id']}/direct-uploads",
        json={"filename": "x.jpg", "size": 10, "mime_type": "image/jpeg"},
        headers=auth(reader),
    )
    await assert_problem(resp, 403, "insufficient_scope")


# ---- expiry and cancel --------------------------------------------------------------------------


async def test_expired_tickets_are_swept_with_their_bytes(
    capi: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    ev = event["id"]
    store = capi.app[OBJECT_STORE]
    data = jpeg_like(CHUNK + 10)
    single = await ticket(capi, token, ev, data)
    await put_whole(single, data)
    multi = await ticket(capi, token, ev, data, multipart=True)
    await send_parts(capi, token, multi["upload_id"], data[:CHUNK])
    assert await stored_keys(capi, ev) == [single["key"]]
    assert multi["s3_upload_id"] in await store.open_multipart_uploads(f"events/{ev}/")

    uploads = capi.app[MONGO_DB]["uploads"]
    past = int(time.time() * 1000) - 1000
    # Past its time but not swept yet: a complete is refused all the same.
    await uploads.update_one({"_id": single["upload_id"]}, {"$set": {"expires_ms": past}})
    await assert_problem(await complete(capi, token, single["upload_id"]), 410, "upload_expired")
    await uploads.update_one({"_id": multi["upload_id"]}, {"$set": {"expires_ms": past}})

    async def swept() -> bool:
        states = [(await upload_doc(capi, u["upload_id"]))["state"] for u in (single, multi)]
        return states == ["expired", "expired"]

    # The app's own sweep (every 0.2 s in these tests).
    await eventually(swept, timeout=10)
    assert await stored_keys(capi, ev) == []
    assert multi["s3_upload_id"] not in await store.open_multipart_uploads(f"events/{ev}/")
    for u in (single, multi):
        await assert_problem(await complete(capi, token, u["upload_id"]), 410, "upload_expired")


async def test_cancel_aborts_the_multipart_upload(capi: Client, make_token: TokenMaker) -> None:
    token = await make_token()
    ev = (await make_event(capi, token))["id"]
    data = jpeg_like(CHUNK + 10)
    multi = await ticket(capi, token, ev, data, multipart=True)
    up = multi["upload_id"]
    await send_parts(capi, token, up, data)
    url = f"/v1/direct-uploads/{up}"
    assert (await capi.delete(url, headers=auth(token))).status == 204
    assert (await capi.delete(url, headers=auth(token))).status == 204
    store = capi.app[OBJECT_STORE]
    assert multi["s3_upload_id"] not in await store.open_multipart_uploads(f"events/{ev}/")
    assert await stored_keys(capi, ev) == []
    await assert_problem(await complete(capi, token, up), 409, "upload_not_open")


async def test_parts_signed_in_one_request(capi: Client, make_token: TokenMaker) -> None:
    """A client that knows its parts up front signs them all at once (one request, not one
    per part); the URLs work as the one-by-one ones do."""
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(CHUNK + 5000)
    upload = await ticket(capi, token, event["id"], data, filename="batch.jpg", multipart=True)
    up = upload["upload_id"]
    resp = await capi.post(
        f"/v1/direct-uploads/{up}/part-urls", json={"part_numbers": [1, 2]}, headers=auth(token)
    )
    signed = await resp.json()
    assert resp.status == 200, signed
    assert resp.headers["Cache-Control"] == "no-store"
    sent = []
    for part, start in zip(signed["parts"], (0, CHUNK), strict=True):
        status, etag = await s3_put(part["url"], data[start : start + CHUNK], part["headers"])
        assert status == 200
        sent.append({"PartNumber": part["part_number"], "ETag": etag})
    done = await complete(capi, token, up, sent)
    photo = await done.json()
    assert done.status == 200, photo
    assert await capi.app[OBJECT_STORE].get_bytes(upload["key"]) == data
    for bad in ({"part_numbers": []}, {"part_numbers": [0]}, {"part_numbers": [10_001]}):
        refused = await capi.post(
            f"/v1/direct-uploads/{up}/part-urls", json=bad, headers=auth(token)
        )
        assert refused.status == 422, bad
