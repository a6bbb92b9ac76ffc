"""Chunked, resumable uploads against the real servers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from typing import Any

import google_crc32c
from darkroom_ingest.app import create_app
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import MIB, OBJECT_STORE

from tests.factories.api import (
    CHUNK,
    Client,
    TokenMaker,
    assert_problem,
    auth,
    form,
    make_event,
    put_chunk,
    start_upload,
    stored_keys,
)
from tests.factories.media import jpeg_like
from tests.factories.messaging import drain, eventually


def crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


async def test_out_of_order_parallel_duplicate_and_checksums(
    capi: Client,
    make_token: TokenMaker,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(2 * CHUNK + MIB)
    upload = await start_upload(
        capi, token, event["id"], data, sha256=hashlib.sha256(data).hexdigest()
    )
    assert (upload["chunk_size"], upload["chunk_count"], upload["missing"]) == (CHUNK, 3, [0, 1, 2])
    # The last chunk first, then the others in parallel; chunk 1 twice.
    assert (await put_chunk(capi, token, upload, data, 2)).status == 200
    results = await asyncio.gather(*(put_chunk(capi, token, upload, data, i) for i in (1, 0, 1)))
    assert [r.status for r in results] == [200, 200, 200]
    # A wrong checksum is refused and nothing is kept; the right one is taken.
    bad = await assert_problem(
        await put_chunk(capi, token, upload, data, 0, **{"X-Checksum-CRC32C": crc32c(b"other")}),
        400,
        "checksum_mismatch",
    )
    assert bad["errors"][0]["field"] == "Content-Digest"
    chunk0 = data[:CHUNK]
    sha = base64.b64encode(hashlib.sha256(chunk0).digest()).decode()
    good = await put_chunk(
        capi,
        token,
        upload,
        data,
        0,
        **{"Content-Digest": f"sha-256=:{sha}:, crc32c=:{crc32c(chunk0)}:"},
    )
    assert (await good.json())["sha256"] == sha
    status = await (
        await capi.get(f"/v1/uploads/{upload['upload_id']}", headers=auth(token))
    ).json()
    assert status["missing"] == []
    assert status["received_bytes"] == len(data)
    assert [c["crc32c"] for c in status["chunks"]] == [
        crc32c(data[i * CHUNK : (i + 1) * CHUNK]) for i in range(3)
    ]
    # Two completes at once: one photo, both get it.
    done = await asyncio.gather(
        *(
            capi.post(f"/v1/uploads/{upload['upload_id']}/complete", headers=auth(token))
            for _ in range(2)
        )
    )
    photos = [await r.json() for r in done]
    assert [r.status for r in done] == [200, 200]
    assert photos[0]["id"] == photos[1]["id"]
    assert (photos[0]["size"], photos[0]["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    again = await capi.post(f"/v1/uploads/{upload['upload_id']}/complete", headers=auth(token))
    assert (await again.json())["id"] == photos[0]["id"]
    served = await capi.get(f"/photos/{event['slug']}/big.jpg", headers=auth(token))
    assert await served.read() == data
    count = await capi.server.app[MONGO_DB][records.PHOTOS].count_documents(
        {"event_id": event["id"]}
    )
    assert count == 1
    messages = await drain(chunk_settings.amqp_url, watch_events.name, 2, timeout=3)
    assert [m["type"] for m in messages] == ["photo.uploaded"]
    # A completed upload takes no more chunks.
    await assert_problem(await put_chunk(capi, token, upload, data, 0), 409, "upload_not_open")


async def test_wrong_sizes_missing_chunks_and_a_bad_whole_file_hash(
    capi: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(CHUNK + 1000)
    upload = await start_upload(capi, token, event["id"], data, sha256="0" * 64)
    url = f"/v1/uploads/{upload['upload_id']}"
    await assert_problem(
        await capi.put(f"{url}/chunks/0", data=data[:1000], headers=auth(token)),
        400,
        "wrong_chunk_size",
    )
    await assert_problem(
        await capi.put(f"{url}/chunks/7", data=data[:1000], headers=auth(token)),
        404,
        "chunk_out_of_range",
    )
    await assert_problem(
        await capi.put(f"{url}/chunks/x", data=b"1", headers=auth(token)),
        400,
        "invalid_chunk_index",
    )
    assert (await put_chunk(capi, token, upload, data, 0)).status == 200
    missing = await assert_problem(
        await capi.post(f"{url}/complete", headers=auth(token)), 409, "missing_chunks"
    )
    assert missing["missing"] == [1]
    assert (await put_chunk(capi, token, upload, data, 1)).status == 200
    await assert_problem(
        await capi.post(f"{url}/complete", headers=auth(token)), 422, "checksum_mismatch"
    )
    state = await (await capi.get(url, headers=auth(token))).json()
    assert state["state"] == "failed"
    assert state["error"]["code"] == "checksum_mismatch"
    assert await stored_keys(capi, event["id"]) == []
    # Bad requests at creation name their field.
    bad = await assert_problem(
        await capi.post(
            f"/v1/events/{event['id']}/uploads",
            headers=auth(token),
            json={"filename": "../x.mp4", "size": 10, "mime_type": "video/mp4"},
        ),
        422,
        "invalid_filename",
    )
    assert bad["errors"][0]["field"] == "/filename"
    await assert_problem(
        await capi.post(
            f"/v1/events/{event['id']}/uploads",
            headers=auth(token),
            json={"filename": "x.exe", "size": 10, "mime_type": "application/x-msdownload"},
        ),
        422,
        "unsupported_type",
    )
    await assert_problem(
        await capi.post(
            f"/v1/events/{event['id']}/uploads",
            headers=auth(token),
            json={"filename": "x.mp4", "size": 11 * 10**9, "mime_type": "video/mp4"},
        ),
        413,
        "file_too_large",
    )


async def test_video_cancel_and_resume_after_a_restart(
    capi: Client,
    aiohttp_client: Any,
    chunk_settings: IngestSettings,
    make_token: TokenMaker,
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    video = b"\0\0\0\x18ftypmp42" + os.urandom(CHUNK + 5000)
    upload = await start_upload(capi, token, event["id"], video, name="clip.mp4", mime="video/mp4")
    assert (await put_chunk(capi, token, upload, video, 0)).status == 200
    # Another API process (as after a restart) knows the upload and finishes it.
    other: Client = await aiohttp_client(create_app(chunk_settings))
    status = await (
        await other.get(f"/v1/uploads/{upload['upload_id']}", headers=auth(token))
    ).json()
    assert status["missing"] == [1]
    assert (await put_chunk(other, token, upload, video, 1)).status == 200
    photo = await (
        await other.post(f"/v1/uploads/{upload['upload_id']}/complete", headers=auth(token))
    ).json()
    assert (photo["kind"], photo["content_type"], photo["sha256"]) == ("video", "video/mp4", None)
    # Cancelling drops the chunks; the upload takes nothing more.
    data = jpeg_like(CHUNK + 10)
    cancelled = await start_upload(capi, token, event["id"], data, name="gone.jpg")
    assert (await put_chunk(capi, token, cancelled, data, 0)).status == 200
    url = f"/v1/uploads/{cancelled['upload_id']}"
    assert (await capi.delete(url, headers=auth(token))).status == 204
    assert (await capi.delete(url, headers=auth(token))).status == 204
    await assert_problem(await put_chunk(capi, token, cancelled, data, 1), 409, "upload_not_open")
    await assert_problem(
        await capi.post(f"{url}/complete", headers=auth(token)), 409, "upload_not_open"
    )


async def test_abandoned_uploads_expire(
    aiohttp_client: Any,
    chunk_settings: IngestSettings,
    make_token: TokenMaker,
    watch_events: QueueSpec,
) -> None:
    api: Client = await aiohttp_client(
        create_app(chunk_settings.model_copy(update={"upload_expiry_seconds": 1.0}))
    )
    token = await make_token()
    event = await make_event(api, token)
    data = jpeg_like(CHUNK + 10)
    upload = await start_upload(api, token, event["id"], data)
    assert (await put_chunk(api, token, upload, data, 0)).status == 200
    url = f"/v1/uploads/{upload['upload_id']}"
    doc = await api.server.app[MONGO_DB]["uploads"].find_one({"_id": upload["upload_id"]})
    assert doc is not None
    store = api.server.app[OBJECT_STORE]
    assert doc["s3_upload_id"] in await store.open_multipart_uploads(f"events/{event['id']}/")

    async def expired() -> bool:
        return (await (await api.get(url, headers=auth(token))).json())["state"] == "expired"

    await eventually(expired, timeout=10)
    await assert_problem(await put_chunk(api, token, upload, data, 1), 409, "upload_not_open")
    # The multipart upload is gone from S3 as well.
    assert doc["s3_upload_id"] not in await store.open_multipart_uploads(f"events/{event['id']}/")


async def test_idempotent_chunk_and_video_in_a_batch(capi: Client, make_token: TokenMaker) -> None:

    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(CHUNK + 10)
    upload = await start_upload(capi, token, event["id"], data)
    for _ in range(2):  # the same key twice: the body reaches the handler, the answer replays
        resp = await put_chunk(capi, token, upload, data, 0, **{"Idempotency-Key": "chunk-0"})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["size"] == CHUNK
    video = b"\0\0\0\x18ftypmp42" + os.urandom(2000)
    problem = await assert_problem(
        await capi.post(
            f"/v1/events/{event['id']}/photos", data=form(("clip.mp4", video)), headers=auth(token)
        ),
        400,
        "no_valid_files",
    )
    assert problem["errors"][0]["code"] == "use_chunked_upload"


async def test_photo_cap_is_checked_at_creation_and_at_completion(
    capi: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(capi, token, photo_cap=1)
    data, other = jpeg_like(CHUNK + 10), jpeg_like(CHUNK + 10)
    first = await start_upload(capi, token, event["id"], data, name="one.jpg")
    second = await start_upload(capi, token, event["id"], other, name="two.jpg")
    for upload, sent in ((first, data), (second, other)):
        for i in range(2):
            assert (await put_chunk(capi, token, upload, sent, i)).status == 200
    done = await capi.post(f"/v1/uploads/{first['upload_id']}/complete", headers=auth(token))
    assert done.status == 200
    # The cap was free when the second upload began; at completion it is not.
    problem = await assert_problem(
        await capi.post(f"/v1/uploads/{second['upload_id']}/complete", headers=auth(token)),
        400,
        "photo_cap_exceeded",
    )
    assert problem["photo_cap"] == 1
    state = await (await capi.get(f"/v1/uploads/{second['upload_id']}", headers=auth(token))).json()
    assert state["state"] == "failed"
    assert len(await stored_keys(capi, event["id"])) == 1
    # Now the event is full, so a new upload is refused at once.
    await assert_problem(
        await capi.post(
            f"/v1/events/{event['id']}/uploads",
            headers=auth(token),
            json={"filename": "three.jpg", "size": 10, "mime_type": "image/jpeg"},
        ),
        400,
        "photo_cap_exceeded",
    )


async def test_a_completer_that_died_after_creating_the_photo(
    capi: Client, make_token: TokenMaker
) -> None:
    """The process died between creating the photo and recording the upload as completed: a
    later complete takes over the stale claim and answers that photo; no second one appears."""
    from darkroom_ingest.chunked import STALE_COMPLETING_MS
    from darkroom_kit.clock import now_ms

    token = await make_token()
    event = await make_event(capi, token, photo_cap=5)
    data = jpeg_like(CHUNK + 10)
    upload = await start_upload(capi, token, event["id"], data)
    for i in range(2):
        assert (await put_chunk(capi, token, upload, data, i)).status == 200
    url = f"/v1/uploads/{upload['upload_id']}/complete"
    photo = await (await capi.post(url, headers=auth(token))).json()
    uploads = capi.server.app[MONGO_DB]["uploads"]
    await uploads.update_one(
        {"_id": upload["upload_id"]},
        {"$set": {"state": "completing", "completing_ms": now_ms() - STALE_COMPLETING_MS - 1000}},
    )
    again = await capi.post(url, headers=auth(token))
    assert again.status == 200
    assert (await again.json())["id"] == photo["id"]
    count = await capi.server.app[MONGO_DB][records.PHOTOS].count_documents(
        {"event_id": event["id"]}
    )
    assert count == 1
    got = await (await capi.get(f"/v1/events/{event['id']}", headers=auth(token))).json()
    assert got["photo_count"] == 1


async def test_a_file_cut_short_is_refused_at_completion_and_not_kept(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    """The same end check as batch uploads: a JPEG without its end marker is truncated. (tus
    uploads complete through the same code.)"""
    token = await make_token()
    event = await make_event(capi, token)
    # A JPEG's start and no end marker (no 0xFF byte after the start at all, so that none can
    # pass for one).
    data = b"\xff\xd8\xff\xe0" + bytes(range(255)) * ((CHUNK + 5000) // 255)
    upload = await start_upload(capi, token, event["id"], data)
    for i in range(upload["chunk_count"]):
        assert (await put_chunk(capi, token, upload, data, i)).status == 200
    url = f"/v1/uploads/{upload['upload_id']}/complete"
    await assert_problem(await capi.post(url, headers=auth(token)), 422, "truncated_file")
    # Every later complete answers the same; nothing was stored.
    await assert_problem(await capi.post(url, headers=auth(token)), 422, "truncated_file")
    assert await stored_keys(capi, event["id"]) == []
