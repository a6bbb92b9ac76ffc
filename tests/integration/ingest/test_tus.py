"""tus 1.0.0 against the real servers, with the real client tuspy (PyPI) and raw requests for
what a client must never do; tuspy sending a file that is in the event already, or that another
tus upload is sending at the same time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from darkroom_ingest.deps import DEPS
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.lease import UNTIL
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import MIB, OBJECT_STORE
from darkroom_kit.stored.photos import PhotoRecord
from tusclient import client as tus_client

from tests.factories.api import (
    CHUNK,
    Client,
    TokenMaker,
    assert_problem,
    auth,
    make_event,
)
from tests.factories.media import jpeg_like
from tests.factories.messaging import drain, eventually
from tests.factories.tus import (
    TUS,
    assert_finished_as,
    assert_one_photo,
    create,
    head,
    meta,
    patch,
    tuspy,
    tuspy_answer,
    url_of,
)


async def original_bytes(api: Client, photo_id: str) -> bytes:
    photo = await api.app[MONGO_DB][records.PHOTOS].find_one({"_id": photo_id})
    assert photo is not None
    key = records.original_key(photo["event_id"], photo_id)
    data: bytes = await api.app[OBJECT_STORE].get_bytes(key)
    return data


async def test_tuspy_uploads_in_small_pieces_with_checksums_and_makes_one_photo(
    capi: Client,
    make_token: TokenMaker,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    tmp_path: Path,
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(2 * CHUNK + 123_457)
    path = tmp_path / "ceremony.jpg"
    path.write_bytes(data)
    tus = tus_client.TusClient(url_of(capi), headers=auth(token))
    # 1 MiB pieces: under S3's part minimum, so every part is made of several PATCHes and
    # the rest waits in a temporary object between them.
    uploader = tus.uploader(
        str(path),
        chunk_size=MIB,
        metadata={"event": event["id"], "filename": "ceremony.jpg", "filetype": "image/jpeg"},
        upload_checksum=True,
    )
    await asyncio.to_thread(uploader.upload)
    assert uploader.offset == len(data)
    upload_id = uploader.url.rsplit("/", 1)[1]
    status = await (await capi.get(f"/v1/uploads/{upload_id}", headers=auth(token))).json()
    assert (status["state"], status["size"], status["protocol"]) == ("completed", len(data), "tus")
    assert await original_bytes(capi, status["photo_id"]) == data
    photos = await (await capi.get(f"/v1/events/{event['id']}/photos", headers=auth(token))).json()
    assert [p["id"] for p in photos["items"]] == [status["photo_id"]]
    announced = await drain(chunk_settings.amqp_url, watch_events.name, 2, 3)
    uploaded = [m for m in announced if m["type"] == records.PHOTO_UPLOADED]
    assert [m["data"]["photo"]["id"] for m in uploaded] == [status["photo_id"]]
    # Nothing temporary is left: only the original.
    keys = await capi.app[OBJECT_STORE].list_keys(f"events/{event['id']}/")
    assert keys == [records.original_key(event["id"], status["photo_id"])]
    # HEAD of the finished upload: its whole length, never cached.
    done = await head(capi, token, f"/v1/tus/{upload_id}")
    assert done.status == 200
    assert done.headers["Upload-Offset"] == done.headers["Upload-Length"] == str(len(data))
    assert done.headers["Cache-Control"] == "no-store"
    assert done.headers["Tus-Resumable"] == "1.0.0"


async def test_discovery_and_what_a_client_must_not_do(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    options = await capi.options("/v1/tus/")
    assert options.status == 204
    assert options.headers["Tus-Version"] == "1.0.0"
    extensions = set(options.headers["Tus-Extension"].split(","))
    assert {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "expiration",
        "checksum",
        "concatenation",
    } <= extensions
    assert {"sha1", "md5", "crc32c"} <= set(options.headers["Tus-Checksum-Algorithm"].split(","))
    assert int(options.headers["Tus-Max-Size"]) >= chunk_settings.max_video_bytes

    token = await make_token()
    event = await make_event(capi, token)
    # No version, no token, no event, an unknown event.
    no_version = await capi.post("/v1/tus/", headers={**auth(token), "Upload-Length": "10"})
    assert (no_version.status, no_version.headers["Tus-Version"]) == (412, "1.0.0")
    assert (await create(capi, "drk_nope", event["id"], 10)).status == 401
    await assert_problem(await create(capi, token, None, 10), 400, "event_required")
    await assert_problem(await create(capi, token, "ev_nope", 10), 404, "event_not_found")
    await assert_problem(await create(capi, token, event["id"], None), 400, "invalid_header")

    data = jpeg_like(CHUNK + 1000)
    created = await create(capi, token, event["id"], len(data))
    assert created.status == 201
    location = created.headers["Location"]
    assert created.headers["Upload-Offset"] == "0"
    assert "GMT" in created.headers["Upload-Expires"]
    # The body must be application/offset+octet-stream, at the upload's offset, within its
    # length, and match its checksum; nothing of a refused PATCH is kept.
    await assert_problem(
        await patch(capi, token, location, 0, data[:10], **{"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    await assert_problem(await patch(capi, token, location, 5, data[:10]), 409, "offset_mismatch")
    await assert_problem(
        await patch(capi, token, location, 0, data + b"more"), 413, "size_exceeded"
    )
    wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    refused = await patch(
        capi, token, location, 0, data[:4000], **{"Upload-Checksum": f"sha1 {wrong}"}
    )
    assert refused.status == 460
    assert (await refused.json())["code"] == "checksum_mismatch"
    await assert_problem(
        await patch(capi, token, location, 0, data[:10], **{"Upload-Checksum": "sha3 AAAA"}),
        400,
        "checksum_algorithm_unsupported",
    )
    probe = await head(capi, token, location)
    assert probe.headers.get("Upload-Offset") == "0", (probe.status, dict(probe.headers))
    right = base64.b64encode(hashlib.md5(data[:4000]).digest()).decode()
    ok = await patch(capi, token, location, 0, data[:4000], **{"Upload-Checksum": f"md5 {right}"})
    assert (ok.status, ok.headers["Upload-Offset"]) == (204, "4000")
    # A gallery-style token of another event cannot see it; termination drops it.
    other = await make_event(capi, token)
    scoped = await make_token("photos.write", event=other["id"])
    assert (await head(capi, scoped, location)).status == 404
    assert (await capi.delete(location, headers={**TUS, **auth(token)})).status == 204
    gone = await head(capi, token, location)
    assert gone.status == 410
    assert await capi.app[OBJECT_STORE].list_keys(f"events/{event['id']}/") == []


async def test_deferred_length_and_creation_with_upload(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(CHUNK + 4321)
    created = await create(
        capi,
        token,
        event["id"],
        None,
        **{"Upload-Defer-Length": "1", "Content-Type": "application/offset+octet-stream"},
    )
    # (No body: creation alone.) A deferred upload shows it on HEAD.
    location = created.headers["Location"]
    first = await head(capi, token, location)
    assert first.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in first.headers
    sent = await patch(capi, token, location, 0, data[:CHUNK])
    assert sent.status == 204
    last = await patch(
        capi, token, location, CHUNK, data[CHUNK:], **{"Upload-Length": str(len(data))}
    )
    assert last.status == 204, await last.text()
    photo_id = last.headers["X-Darkroom-Photo-Id"]
    assert await original_bytes(capi, photo_id) == data

    # creation-with-upload: the whole file in the POST.
    small = jpeg_like(300_000)
    with_body = await capi.post(
        "/v1/tus/",
        data=small,
        headers={
            **TUS,
            **auth(token),
            "Upload-Length": str(len(small)),
            "Upload-Metadata": meta(event=event["id"], filename="b.jpg"),
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert with_body.status == 201, await with_body.text()
    assert with_body.headers["Upload-Offset"] == str(len(small))
    assert await original_bytes(capi, with_body.headers["X-Darkroom-Photo-Id"]) == small


async def test_parallel_partial_uploads_are_joined_by_a_final_one(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(2 * CHUNK + 777)
    pieces = [data[: CHUNK + 5], data[CHUNK + 5 :]]

    async def send_partial(piece: bytes) -> str:
        created = await create(capi, token, event["id"], len(piece), **{"Upload-Concat": "partial"})
        assert created.status == 201, await created.text()
        location: str = created.headers["Location"]
        done = await patch(capi, token, location, 0, piece)
        assert done.status == 204, await done.text()
        assert "X-Darkroom-Photo-Id" not in done.headers  # a partial makes no photo
        return location

    locations = await asyncio.gather(*(send_partial(p) for p in pieces))
    final = await capi.post(
        "/v1/tus/",
        headers={
            **TUS,
            **auth(token),
            "Upload-Concat": "final;" + " ".join(url_of(capi, loc) for loc in locations),
            "Upload-Metadata": meta(filename="joined.jpg"),
        },
    )
    assert final.status == 201, await final.text()
    assert final.headers["Upload-Length"] == str(len(data))
    photo_id = final.headers["X-Darkroom-Photo-Id"]
    assert await original_bytes(capi, photo_id) == data
    # A final upload takes no bytes; its partials are spent.
    await assert_problem(
        await patch(capi, token, final.headers["Location"], len(data), b"x"), 403, "final_upload"
    )
    assert (await head(capi, token, locations[0])).status == 410
    keys = await capi.app[OBJECT_STORE].list_keys(f"events/{event['id']}/")
    assert keys == [records.original_key(event["id"], photo_id)]


async def test_two_patches_at_one_offset_are_never_interleaved(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(CHUNK + 99)
    location = (await create(capi, token, event["id"], len(data))).headers["Location"]
    first, second = await asyncio.gather(
        patch(capi, token, location, 0, data[:CHUNK]),
        patch(capi, token, location, 0, data[:CHUNK]),
    )
    statuses = sorted([first.status, second.status])
    assert statuses[0] == 204, statuses
    assert statuses[1] in (409, 423), statuses  # never both: the bytes would be written twice
    offset = int((await head(capi, token, location)).headers["Upload-Offset"])
    assert offset == CHUNK
    last = await patch(capi, token, location, offset, data[offset:])
    assert last.status == 204
    assert await original_bytes(capi, last.headers["X-Darkroom-Photo-Id"]) == data


CLIENT = textwrap.dedent(
    """
    import sys
    from tusclient import client
    from tusclient.storage.filestorage import FileStorage

    url, token, event_id, path, storage = sys.argv[1:6]
    tus = client.TusClient(url, headers={"Authorization": "Bearer " + token})
    uploader = tus.uploader(
        path,
        chunk_size=512 * 1024,
        metadata={"event": event_id, "filename": "long.jpg", "filetype": "image/jpeg"},
        store_url=True,
        url_storage=FileStorage(storage),
    )
    print("start", uploader.offset, flush=True)
    while uploader.offset < uploader.get_file_size():
        uploader.upload_chunk()
        print("offset", uploader.offset, flush=True)
    print("url", uploader.url, flush=True)
    """
)


async def test_tuspy_resumes_after_the_client_is_killed_mid_file(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(2 * CHUNK + 3333)
    path = tmp_path / "long.jpg"
    path.write_bytes(data)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    args = [
        sys.executable,
        str(script),
        url_of(capi),
        token,
        event["id"],
        str(path),
        str(tmp_path / "urls.json"),
    ]

    def run_until_killed() -> int:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        offset = 0
        for line in proc.stdout:
            if line.startswith("offset"):
                offset = int(line.split()[1])
                if offset >= CHUNK + MIB:  # past one whole part, with a tail waiting
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        proc.wait()
        return offset

    def run_to_end() -> list[str]:
        out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.splitlines()

    killed_at = await asyncio.to_thread(run_until_killed)
    assert CHUNK < killed_at < len(data)
    # The PATCH in flight when the client died may still hold the upload (and record more
    # bytes) until the server notices: a client started before that meets 423. Once it let go:
    uploads = capi.app[MONGO_DB]["uploads"]

    async def let_go() -> dict[str, Any] | None:
        doc = await uploads.find_one({"event_id": event["id"], "protocol": "tus"})
        if doc is None or doc.get(UNTIL, 0) >= now_ms():  # given back: unset, or run out
            return None
        return dict(doc)

    held = await eventually(let_go, timeout=30)
    assert held["offset"] >= killed_at
    lines = await asyncio.to_thread(run_to_end)
    # The second run starts where the server is, not from 0.
    assert lines[0] == f"start {held['offset']}", lines[:3]
    upload_id = lines[-1].rsplit("/", 1)[1]
    status = await (await capi.get(f"/v1/uploads/{upload_id}", headers=auth(token))).json()
    assert status["state"] == "completed"
    assert await original_bytes(capi, status["photo_id"]) == data
    count = await capi.app[MONGO_DB][records.PHOTOS].count_documents({"event_id": event["id"]})
    assert count == 1


async def test_a_file_whose_bytes_are_not_an_image_is_refused_and_nothing_kept(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = b"not an image at all " * 1000
    location = (await create(capi, token, event["id"], len(data))).headers["Location"]
    await assert_problem(await patch(capi, token, location, 0, data), 422, "unsupported_type")

    async def nothing_kept() -> bool:
        keys = await capi.app[OBJECT_STORE].list_keys(f"events/{event['id']}/")
        return keys == []

    assert await eventually(nothing_kept, timeout=5)
    count = await capi.app[MONGO_DB][records.PHOTOS].count_documents({"event_id": event["id"]})
    assert count == 0


async def test_an_expired_upload_takes_no_bytes_and_the_sweep_drops_it(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(CHUNK + 2000)
    location = (await create(capi, token, event["id"], len(data))).headers["Location"]
    # 1 MiB: kept as the upload's tail object, under S3's part minimum.
    assert (await patch(capi, token, location, 0, data[:MIB])).status == 204
    upload_id = location.rsplit("/", 1)[1]
    uploads = capi.app[MONGO_DB]["uploads"]
    await uploads.update_one({"_id": upload_id}, {"$set": {"expires_ms": 1}})
    refused = await patch(capi, token, location, MIB, data[MIB:])
    problem = await refused.json()
    # Past its expiry: 410 until the sweep (every 0.2 s here) marks it, then 409 in state
    # expired; either way nothing is taken.
    assert (refused.status, problem["code"]) in (
        (410, "upload_expired"),
        (409, "upload_not_open"),
    ), problem
    assert (await head(capi, token, location)).status == 410
    # The sweep (every UPLOAD_SWEEP_INTERVAL_SECONDS) drops its bytes: parts and tail.

    async def dropped() -> bool:
        record = await uploads.find_one({"_id": upload_id})
        keys = await capi.app[OBJECT_STORE].list_keys(f"events/{event['id']}/")
        return record is not None and record["state"] == "expired" and keys == []

    assert await eventually(dropped, timeout=10)


async def test_a_partial_upload_without_an_event_is_its_makers_alone(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    """tus-js-client names the event on the final upload only: its partials name none, and
    until then nobody else sees or joins them."""
    mine, other = await make_token(), await make_token()
    event = await make_event(capi, mine)
    data = jpeg_like(300_000)
    created = await capi.post(
        "/v1/tus/",
        headers={**TUS, **auth(mine), "Upload-Length": str(len(data)), "Upload-Concat": "partial"},
    )
    assert created.status == 201, await created.text()
    location = created.headers["Location"]
    assert (await patch(capi, mine, location, 0, data)).status == 204
    assert (await head(capi, other, location)).status == 404
    final = {
        **TUS,
        "Upload-Concat": f"final;{location}",
        "Upload-Metadata": meta(event=event["id"], filename="p.jpg"),
    }
    stolen = await capi.post("/v1/tus/", headers={**final, **auth(other)})
    await assert_problem(stolen, 404, "upload_not_found")
    joined = await capi.post("/v1/tus/", headers={**final, **auth(mine)})
    assert joined.status == 201, await joined.text()
    assert await original_bytes(capi, joined.headers["X-Darkroom-Photo-Id"]) == data
    # Without a partial header, naming no event is refused.
    await assert_problem(await create(capi, mine, None, 10), 400, "event_required")


async def piece_objects(api: Client, event_id: str) -> dict[str, int]:
    """The event's piece objects (a tus upload's tail), by key, with their sizes."""
    found: dict[str, int] = {}
    prefix = f"events/{event_id}/{records.PIECES}/"
    async for page in api.app[OBJECT_STORE].iter_objects(prefix):
        found.update((obj.key, obj.size) for obj in page)
    return found


async def test_many_small_patches_append_pieces_that_parts_take_up_and_leave_none(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    """300 KiB PATCHes: each leaves its own bytes in a new piece (no piece is ever rewritten),
    the PATCH that reaches a part makes it of the pieces and its bytes, and deletes them."""
    from darkroom_ingest.orphans import OrphanSweeper

    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(2 * CHUNK + 777_777)
    step = 300 * 1024
    location = (await create(capi, token, event["id"], len(data))).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    uploads = capi.app[MONGO_DB]["uploads"]
    sweeper = OrphanSweeper(
        capi.app[MONGO_DB], capi.app[OBJECT_STORE], grace_seconds=0, max_deletions=1000
    )
    offset, photo_id, before = 0, None, []
    most = 0
    while offset < len(data):
        sent = await patch(capi, token, location, offset, data[offset : offset + step])
        assert sent.status == 204, await sent.text()
        offset = min(offset + step, len(data))
        assert sent.headers["Upload-Offset"] == str(offset)
        photo_id = sent.headers.get("X-Darkroom-Photo-Id")
        if offset == len(data):
            break
        record = await uploads.find_one({"_id": upload_id})
        assert record is not None
        keys = record["piece_keys"]
        # Parts, then the tail: its pieces hold exactly the bytes past the parts.
        assert record["next_part"] * CHUNK + record["tail_size"] == offset
        stored = await piece_objects(capi, event["id"])
        assert set(stored) == set(keys)
        assert sum(stored.values()) == record["tail_size"]
        # Append-only: one new piece of at most one PATCH's bytes after the ones before, or,
        # when a part took them up, only what was left of this PATCH.
        assert keys[:-1] in (before, []), (before, keys)
        assert all(size <= step for size in stored.values())
        before, most = keys, max(most, len(keys))
        # The orphan sweep keeps every piece of a live upload (and nothing unnamed).
        stray = records.piece_key(event["id"], record["photo_id"], "stray")
        owned = await sweeper._keys_of_live_uploads([*keys, stray])
        assert owned >= set(keys)
        assert stray not in owned
    assert most >= CHUNK // step  # a part's worth of pieces waited at once
    assert photo_id is not None
    assert await original_bytes(capi, photo_id) == data
    record = await uploads.find_one({"_id": upload_id})
    assert record is not None
    assert (record["chunk_count"], record["piece_keys"], record["tail_size"]) == (3, [], 0)
    keys = await capi.app[OBJECT_STORE].list_keys(f"events/{event['id']}/")
    assert keys == [records.original_key(event["id"], photo_id)]


async def test_a_tail_of_pieces_survives_a_restart_and_a_new_instance_finishes_it(
    capi: Client,
    aiohttp_client: Any,
    make_token: TokenMaker,
    chunk_settings: IngestSettings,
) -> None:
    """The pieces are the record's and S3's, not the process's: a new instance (another
    replica, or after a restart) that has none of them in memory makes the part of them."""
    from darkroom_ingest.app import create_app

    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(CHUNK + 2 * MIB + 1234)
    step = 300 * 1024
    location = (await create(capi, token, event["id"], len(data))).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    offset = 0
    for _ in range(10):
        sent = await patch(capi, token, location, offset, data[offset : offset + step])
        assert sent.status == 204, await sent.text()
        offset += step
    uploads = capi.app[MONGO_DB]["uploads"]
    record = await uploads.find_one({"_id": upload_id})
    assert record is not None
    first_pieces = record["piece_keys"]
    assert (len(first_pieces), record["tail_size"], record["next_part"]) == (10, offset, 0)
    await capi.close()  # its memory goes with it

    second: Client = await aiohttp_client(create_app(chunk_settings))
    uploads = second.app[MONGO_DB]["uploads"]
    probe = await head(second, token, location)
    assert probe.headers["Upload-Offset"] == str(offset)
    # A PATCH that reaches a part but fails its checksum keeps nothing: the pieces stay.
    body = data[offset : offset + 3 * MIB]
    wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    refused = await patch(
        second, token, location, offset, body, **{"Upload-Checksum": f"sha1 {wrong}"}
    )
    assert refused.status == 460
    record = await uploads.find_one({"_id": upload_id})
    assert record is not None
    assert (record["piece_keys"], record["offset"], record["next_part"]) == (
        first_pieces,
        offset,
        0,
    )
    assert set(await piece_objects(second, event["id"])) == set(first_pieces)
    # A piece of the new instance's own, then the part: ten pieces read back from S3, one from
    # its memory, and the PATCH's bytes.
    sent = await patch(second, token, location, offset, data[offset : offset + MIB])
    assert sent.status == 204, await sent.text()
    offset += MIB
    right = base64.b64encode(hashlib.sha1(data[offset : offset + 2 * MIB]).digest()).decode()
    sent = await patch(
        second,
        token,
        location,
        offset,
        data[offset : offset + 2 * MIB],
        **{"Upload-Checksum": f"sha1 {right}"},
    )
    assert sent.status == 204, await sent.text()
    offset += 2 * MIB
    record = await uploads.find_one({"_id": upload_id})
    assert record is not None
    assert record["next_part"] == 1
    assert record["next_part"] * CHUNK + record["tail_size"] == offset
    assert set(await piece_objects(second, event["id"])) == set(record["piece_keys"])
    assert len(record["piece_keys"]) == 1
    last = await patch(second, token, location, offset, data[offset:])
    assert last.status == 204, await last.text()
    photo_id = last.headers["X-Darkroom-Photo-Id"]
    assert await original_bytes(second, photo_id) == data
    keys = await second.app[OBJECT_STORE].list_keys(f"events/{event['id']}/")
    assert keys == [records.original_key(event["id"], photo_id)]


async def test_a_tail_of_too_many_tiny_pieces_is_rewritten_as_one(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    """PATCHes of a few KiB: past MAX_PIECES pieces the tail becomes one piece, so the record
    naming them stays small."""
    from darkroom_ingest.tus.service import MAX_PIECES

    token = await make_token()
    event = await make_event(capi, token)
    step = 16 * 1024
    data = jpeg_like(CHUNK + (MAX_PIECES + 5) * step)
    location = (await create(capi, token, event["id"], len(data))).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    uploads = capi.app[MONGO_DB]["uploads"]
    offset = 0
    for _ in range(MAX_PIECES + 1):
        sent = await patch(capi, token, location, offset, data[offset : offset + step])
        assert sent.status == 204, await sent.text()
        offset += step
    record = await uploads.find_one({"_id": upload_id})
    assert record is not None
    assert (len(record["piece_keys"]), record["tail_size"]) == (1, offset)
    assert await piece_objects(capi, event["id"]) == {record["piece_keys"][0]: offset}
    last = await patch(capi, token, location, offset, data[offset:])
    assert last.status == 204, await last.text()
    photo_id = last.headers["X-Darkroom-Photo-Id"]
    assert await original_bytes(capi, photo_id) == data
    keys = await capi.app[OBJECT_STORE].list_keys(f"events/{event['id']}/")
    assert keys == [records.original_key(event["id"], photo_id)]


# A file sent more than once: a whole part and a tail of tuspy's 1 MiB pieces each time.
COPY_SIZE = CHUNK + MIB + 4321


@pytest.mark.parametrize(
    "copy_name", ["ceremony.jpg", "IMG_0042.jpeg"], ids=["same-file", "other-name"]
)
async def test_tuspy_sending_a_file_again_is_answered_with_the_photo_already_there(
    capi: Client,
    make_token: TokenMaker,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    tmp_path: Path,
    copy_name: str,
) -> None:
    """The same bytes again in the event, by the same file or under another name: a new upload,
    sent whole, whose last PATCH names the photo already there (``X-Darkroom-Duplicate-Of``);
    one photo, stored and announced once, under its first name."""
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(COPY_SIZE)
    path = tmp_path / "ceremony.jpg"
    path.write_bytes(data)
    first = tuspy(capi, token, event["id"], path)
    await asyncio.to_thread(first.upload)
    photo_id, copy_of = tuspy_answer(first)
    assert photo_id is not None
    assert copy_of is None

    copy = tmp_path / copy_name
    if copy != path:
        copy.write_bytes(data)
    second = tuspy(capi, token, event["id"], copy)
    await asyncio.to_thread(second.upload)
    assert first.url is not None
    assert second.url is not None
    assert second.url != first.url  # nothing resumed: the server found the copy
    assert second.offset == len(data)
    assert tuspy_answer(second) == (photo_id, photo_id)

    await assert_finished_as(capi, token, first.url, photo_id, copy=False)
    await assert_finished_as(capi, token, second.url, photo_id, copy=True)
    await assert_one_photo(
        capi,
        token,
        event["id"],
        data,
        photo_id,
        (chunk_settings.amqp_url, watch_events.name),
        "ceremony.jpg",
    )


async def test_tuspy_sending_a_file_while_another_tus_upload_of_it_is_open_makes_one_photo(
    capi: Client,
    make_token: TokenMaker,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    tmp_path: Path,
) -> None:
    """An upload of the file is created and holds its first MiB; tuspy sends the same file
    whole meanwhile and makes the photo; the first one, finished after, is answered with it."""
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(COPY_SIZE)
    path = tmp_path / "ceremony.jpg"
    path.write_bytes(data)
    open_one = tuspy(capi, token, event["id"], path)
    await asyncio.to_thread(open_one.upload, MIB)
    assert open_one.offset == MIB
    whole = tuspy(capi, token, event["id"], path)
    await asyncio.to_thread(whole.upload)
    photo_id, copy_of = tuspy_answer(whole)
    assert photo_id is not None
    assert copy_of is None
    await asyncio.to_thread(open_one.upload)
    assert tuspy_answer(open_one) == (photo_id, photo_id)

    assert whole.url is not None
    assert open_one.url is not None
    await assert_finished_as(capi, token, whole.url, photo_id, copy=False)
    await assert_finished_as(capi, token, open_one.url, photo_id, copy=True)
    await assert_one_photo(
        capi, token, event["id"], data, photo_id, (chunk_settings.amqp_url, watch_events.name)
    )


async def test_tuspy_uploads_of_one_file_whose_last_bytes_arrive_at_once_make_one_photo(
    capi: Client,
    make_token: TokenMaker,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    tmp_path: Path,
) -> None:
    """Three tuspy uploads of the same file, each sent but for its last bytes, then finished
    at once: exactly one makes the photo, the others are answered with it; nothing doubled,
    nothing lost.

    Left alone, the completions mostly run one after the other (each assembles its S3 object
    first), and a later one finds the photo already there. So each is held where it looks for
    a photo with its bytes until all three are there: none finds one, and only what guards
    identical files in flight (hashing a file when an upload of its size is open, the unique
    content key) keeps them one photo."""
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(COPY_SIZE)
    path = tmp_path / "ceremony.jpg"
    path.write_bytes(data)
    uploaders = [tuspy(capi, token, event["id"], path) for _ in range(3)]
    for uploader in uploaders:
        await asyncio.to_thread(uploader.upload, len(data) - 1000)

    duplicates = capi.app[DEPS].photos.duplicates
    earlier = duplicates.earlier
    arrived: list[list[str]] = []
    together = asyncio.Event()

    async def all_at_once(event_id: str, digests: list[str]) -> dict[str, PhotoRecord]:
        if not together.is_set():
            arrived.append(digests)
            if len(arrived) == len(uploaders):
                together.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(together.wait(), 10)
        found: dict[str, PhotoRecord] = await earlier(event_id, digests)
        return found

    duplicates.earlier = all_at_once
    try:
        await asyncio.gather(*(asyncio.to_thread(u.upload) for u in uploaders))
    finally:
        duplicates.earlier = earlier
    assert len(arrived) == len(uploaders), arrived  # all three completing at once

    answers = [tuspy_answer(u) for u in uploaders]
    named = {made for made, _ in answers}
    assert len(named) == 1, answers  # one photo, named by every upload
    [photo_id] = named
    assert photo_id is not None
    assert sorted(copy_of is None for _, copy_of in answers) == [False, False, True], answers
    for uploader, (_, copy_of) in zip(uploaders, answers, strict=True):
        assert copy_of in (None, photo_id)
        assert uploader.url is not None
        await assert_finished_as(capi, token, uploader.url, photo_id, copy=copy_of is not None)
    await assert_one_photo(
        capi, token, event["id"], data, photo_id, (chunk_settings.amqp_url, watch_events.name)
    )
