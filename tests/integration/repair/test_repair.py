"""metadata-repair in-process: dimensions cleared in MongoDB come back from the stored files."""

from __future__ import annotations

from typing import Any

import aio_pika
from darkroom_kit import outbox, records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope, Publisher, QueueSpec, Topology
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import OBJECT_STORE
from darkroom_repair.app import REPAIRER, SERVICE, queue_specs
from darkroom_repair.app import create_app as create_repair
from darkroom_repair.settings import RepairSettings
from PIL import Image

from tests.factories.api import (
    Client,
    TokenMaker,
    auth,
    make_event,
    upload_small_video,
    upload_with_lost_dimensions,
)
from tests.factories.media import jpeg_bytes, make_clip, png_bytes
from tests.factories.messaging import drain, eventually, publish
from tests.factories.metrics import labels, scrape
from tests.factories.servers import QueueJanitor, start_service, to_env


def jpeg_with_big_header(width: int, height: int) -> bytes:
    """A JPEG whose frame header (the dimensions) sits after ~40 KB of metadata."""
    import io

    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "x" * 40_000  # ImageDescription: a long one, stored before the frame header
    Image.new("RGB", (width, height), (1, 2, 3)).save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


async def test_repair_restores_cleared_dimensions(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
) -> None:
    # A small first read, so the big-header JPEG needs the second, whole-file read.
    settings = RepairSettings(**settings_kwargs, head_bytes=16 * 1024)
    janitor.add(*queue_specs(Topology(settings.amqp_namespace)))
    worker = await aiohttp_client(create_repair(settings))
    token = await make_token()
    event = await make_event(api, token)
    big_header = jpeg_with_big_header(900, 700)
    assert big_header.find(b"\xff\xc0") > 16 * 1024
    uploaded = await upload_with_lost_dimensions(
        api,
        token,
        event["id"],
        ("a.jpg", jpeg_bytes(1200, 800, orientation=8)),
        ("b.png", png_bytes(300, 100)),
        ("c.jpg", big_header),
        ("gone.jpg", jpeg_bytes(64, 64)),
    )
    photos = api.app[MONGO_DB][records.PHOTOS]
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await Publisher(channel).publish(
            Topology(settings.amqp_namespace).commands,
            Envelope.new(records.REPAIR_REQUESTED, {"event_id": event["id"]}),
        )
    finally:
        await connection.close()

    async def repaired() -> dict[str, tuple[Any, Any]] | None:
        docs = {
            d["filename"]: (d["width"], d["height"])
            async for d in photos.find({"event_id": event["id"]})
        }
        return docs if docs["c.jpg"][0] is not None else None

    dims = await eventually(repaired)
    assert dims["a.jpg"] == (800, 1200)  # orientation 8 swaps width and height
    assert dims["b.png"] == (300, 100)
    assert dims["c.jpg"] == (900, 700)
    assert dims["gone.jpg"] == (None, None)
    # Run directly too: the counts say what happened.
    result = await worker.app[REPAIRER].run(event["id"], include_capture_date=False, owner="test")
    assert (result.scanned, result.repaired) == (1, 0)
    assert result.failed == {uploaded["gone.jpg"]: "original_missing"}


async def test_repair_as_an_operation(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
) -> None:
    settings = RepairSettings(**settings_kwargs)
    janitor.add(*queue_specs(Topology(settings.amqp_namespace)))
    worker = await aiohttp_client(create_repair(settings))
    token = await make_token()
    event = await make_event(api, token)
    uploaded = await upload_with_lost_dimensions(
        api,
        token,
        event["id"],
        ("a.jpg", jpeg_bytes(640, 480)),
        ("b.png", png_bytes(30, 20)),
        ("gone.jpg", jpeg_bytes(64, 64)),
    )

    resp = await api.post(
        "/v1/photos/repair-dimensions?wait=30", json={"event_id": event["id"]}, headers=auth(token)
    )
    op = await resp.json()
    assert resp.status == 200, op
    assert op["state"] == "done"
    assert op["progress"] == {"scanned": 3, "repaired": 2, "failed": 1}
    assert op["result"]["failed_photos"] == [
        {"id": uploaded["gone.jpg"], "reason": "original_missing"}
    ]
    again = await (await api.get(f"/v1/operations/{op['id']}", headers=auth(token))).json()
    assert again == op
    got = await (await api.get(f"/v1/photos/{uploaded['a.jpg']}", headers=auth(token))).json()
    assert (got["width"], got["height"]) == (640, 480)
    # Without waiting: 202 and where to look; nothing is left to repair but the missing one.
    resp = await api.post(
        "/v1/photos/repair-dimensions", json={"event_id": event["id"]}, headers=auth(token)
    )
    assert resp.status == 202
    later = await (await api.get(f"{resp.headers['Location']}?wait=30", headers=auth(token))).json()
    assert later["state"] == "done"
    assert later["progress"] == {"scanned": 1, "repaired": 0, "failed": 1}
    # metadata-repair counted both as they ended (its own registry, beside its process's).
    done = (
        "operations_finished_total",
        labels(service=SERVICE, kind="repair_dimensions", state="done"),
    )

    async def both_counted() -> bool:
        return (await scrape(worker)).get(done) == 2

    await eventually(both_counted, timeout=5)
    assert ("process_resident_memory_bytes", frozenset()) in await scrape(worker)
    # Bad requests name what is wrong.
    resp = await api.post(
        "/v1/photos/repair-dimensions", json={"event_id": "ev_nope"}, headers=auth(token)
    )
    assert (await resp.json())["code"] == "event_not_found"
    resp = await api.post("/v1/photos/repair-dimensions?wait=100", json={}, headers=auth(token))
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "wait"
    resp = await api.get("/v1/operations/op_nope", headers=auth(token))
    assert (await resp.json())["code"] == "operation_not_found"


def jpeg_with_frame_at(offset: int, width: int, height: int) -> bytes:
    """A JPEG whose frame header (the dimensions) sits after ``offset`` bytes of application
    segments, as cameras and editors write with big maker notes, previews or XMP."""
    body = jpeg_bytes(width, height)
    segments = bytearray()
    while len(segments) < offset:
        payload = b"PAD\0" + b"x" * min(60_000, offset - len(segments))
        segments += b"\xff\xef" + (len(payload) + 2).to_bytes(2, "big") + payload
    return body[:2] + bytes(segments) + body[2:]


def webp_with_exif_at_the_end(width: int, height: int, orientation: int) -> bytes:
    import io

    import pyvips

    noise = pyvips.Image.gaussnoise(width, height).cast("uchar")
    image = noise.bandjoin([noise, noise]).copy(interpretation="srgb")
    exif = Image.Exif()
    exif[0x0112] = orientation
    pil = Image.open(io.BytesIO(image.pngsave_buffer()))
    out = io.BytesIO()
    pil.save(out, "WEBP", quality=90, exif=exif.tobytes())
    return out.getvalue()


async def publish_repair(amqp_url: str, namespace: str, data: dict[str, Any]) -> None:
    await publish(
        amqp_url, Topology(namespace).commands, Envelope.new(records.REPAIR_REQUESTED, data)
    )


async def test_repair_reads_only_what_each_format_needs(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
) -> None:
    """Default 256 KiB head: a frame header at 100 KiB is found in it, one at 300 KiB needs the
    second read; a WebP's orientation comes from the EXIF at its end."""
    settings = RepairSettings(**settings_kwargs)
    janitor.add(*queue_specs(Topology(settings.amqp_namespace)))
    worker = await aiohttp_client(create_repair(settings))
    token = await make_token()
    event = await make_event(api, token)
    near, far = jpeg_with_frame_at(100_000, 640, 480), jpeg_with_frame_at(300_000, 320, 240)
    assert 64 * 1024 < near.find(b"\xff\xc0") < 256 * 1024 < far.find(b"\xff\xc0")
    webp = webp_with_exif_at_the_end(1100, 600, orientation=6)
    assert len(webp) > settings.head_bytes
    assert webp[12:16] == b"VP8X"
    corrupt = jpeg_bytes(400, 300)[:150]  # cut before its frame header
    uploaded = await upload_with_lost_dimensions(
        api,
        token,
        event["id"],
        ("near.jpg", near),
        ("far.jpg", far),
        ("turned.webp", webp),
        ("bad.jpg", jpeg_bytes(50, 50)),
        ("gone.jpg", jpeg_bytes(64, 64)),
    )
    photos = api.app[MONGO_DB][records.PHOTOS]
    bad = await photos.find_one({"_id": uploaded["bad.jpg"]})
    assert bad is not None
    await api.app[OBJECT_STORE].put_bytes(bad["original_key"], corrupt, "image/jpeg")
    result = await worker.app[REPAIRER].run(event["id"], False, owner="formats")
    assert result.counts() == {"scanned": 5, "repaired": 3, "failed": 2}
    assert result.failed == {
        uploaded["bad.jpg"]: "corrupt_image",
        uploaded["gone.jpg"]: "original_missing",
    }
    dims = {
        d["filename"]: (d["width"], d["height"])
        async for d in photos.find({"event_id": event["id"]})
    }
    assert dims["near.jpg"] == (640, 480)
    assert dims["far.jpg"] == (320, 240)
    assert dims["turned.webp"] == (600, 1100)  # orientation 6, read from the end of the file


async def test_repair_of_a_video_reads_its_header_over_a_presigned_url(
    capi: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
    tmp_path: Any,
) -> None:

    settings = RepairSettings(**settings_kwargs)
    janitor.add(*queue_specs(Topology(settings.amqp_namespace)))
    worker = await aiohttp_client(create_repair(settings))
    token = await make_token()
    event = await make_event(capi, token)
    clip = make_clip(tmp_path / "phone.mp4", 1.5, "640x360", rotation=90)
    video_id = await upload_small_video(capi, token, event["id"], clip, "phone.mp4")
    photos = capi.app[MONGO_DB][records.PHOTOS]
    await photos.update_one(
        {"_id": video_id},
        {"$set": {"status": "processed", "width": None, "height": None, "duration_ms": None}},
    )
    result = await worker.app[REPAIRER].run(event["id"], True, owner="video")
    assert result.counts() == {"scanned": 1, "repaired": 1, "failed": 0}
    doc = await photos.find_one({"_id": video_id})
    assert doc is not None
    assert (doc["width"], doc["height"], doc["duration_ms"]) == (360, 640, 1500)


async def clone_photos(api: Client, token: str, event_id: str, count: int) -> list[str]:
    """``count`` photos with cleared dimensions, all pointing at one stored original (uploading
    each would test uploads, not repair)."""
    from darkroom_kit.ids import new_id

    await upload_with_lost_dimensions(api, token, event_id, ("seed.jpg", jpeg_bytes(300, 200)))
    photos = api.app[MONGO_DB][records.PHOTOS]
    seed = await photos.find_one({"event_id": event_id}, {"outbox": 0, "outbox_due_ms": 0})
    assert seed is not None
    # Copies kept on purpose (as keep_duplicates keeps them): only the seed holds its content.
    seed.pop("content_key", None)
    clones = [
        {**seed, "_id": new_id("ph"), "filename": f"copy-{i}.jpg", "original_filename": "c.jpg"}
        for i in range(count - 1)
    ]
    await photos.insert_many(clones)
    return [seed["_id"], *(c["_id"] for c in clones)]


async def test_two_repairs_at_once_split_the_work(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
    watch_events: Any,
) -> None:
    import asyncio

    settings = RepairSettings(**settings_kwargs, batch_size=10, concurrency=2)
    janitor.add(*queue_specs(Topology(settings.amqp_namespace)))
    worker = await aiohttp_client(create_repair(settings))
    token = await make_token()
    event = await make_event(api, token)
    ids = await clone_photos(api, token, event["id"], 125)
    await drain(settings.amqp_url, watch_events.name, 1)  # the seed's photo.uploaded
    # Five photos are held by a third repair that is still alive (its claim has not run out):
    # neither of the two below may touch them, however the two interleave.
    photos = api.app[MONGO_DB][records.PHOTOS]
    held = ids[-5:]
    await photos.update_many(
        {"_id": {"$in": held}},
        {"$set": {"repair_by": "op_elsewhere", "repair_until": now_ms() + 600_000}},
    )

    async def repair() -> dict[str, Any]:
        resp = await api.post(
            "/v1/photos/repair-dimensions?wait=60",
            json={"event_id": event["id"]},
            headers=auth(token),
        )
        assert resp.status == 200
        return dict(await resp.json())

    first, second = await asyncio.gather(repair(), repair())
    assert first["state"] == second["state"] == "done"
    # Each photo was repaired by exactly one of them, and the counts add up.
    assert first["progress"]["repaired"] + second["progress"]["repaired"] == 120
    for op in (first, second):
        assert op["progress"]["scanned"] == op["progress"]["repaired"]
        assert op["progress"]["failed"] == 0
    announced = await drain(settings.amqp_url, watch_events.name, 120)
    announced += await drain(settings.amqp_url, watch_events.name, 1, timeout=1)  # none more
    repaired = [m["data"]["photo"]["id"] for m in announced if m["type"] == "photo.repaired"]
    assert sorted(repaired) == sorted(ids[:-5])  # one photo.repaired each, none twice
    assert await photos.count_documents({"event_id": event["id"], "width": 300}) == 120
    assert await photos.count_documents({"_id": {"$in": held}, "width": {"$eq": None}}) == 5
    # Once that claim runs out (its repair died), the photos are free again.
    await photos.update_many({"_id": {"$in": held}}, {"$set": {"repair_until": 0}})
    late = await worker.app[REPAIRER].run(event["id"], False, owner="op_late")
    assert late.counts() == {"scanned": 5, "repaired": 5, "failed": 0}
    assert await photos.count_documents({"repair_by": {"$exists": True}}) == 0


async def test_a_repair_killed_mid_scan_carries_on_after_a_restart(
    api: Client,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
    tmp_path: Any,
) -> None:
    """metadata-repair as a real process, SIGKILLed half-way: the operation is not left
    "running" for ever, the restarted service finishes it and the counts are exact."""
    import asyncio
    import os
    import signal

    janitor.add(*queue_specs(Topology(settings_kwargs["amqp_namespace"])))
    env = {
        **os.environ,
        **to_env(settings_kwargs),
        "BATCH_SIZE": "10",
        "CONCURRENCY": "1",
        "PARSE_PROCESSES": "1",
        # What the killed process wrote but had not published yet is published by the next
        # one's relay: soon, so the test sees it.
        "OUTBOX_GRACE_MS": "500",
        "OUTBOX_RELAY_INTERVAL_SECONDS": "0.2",
    }
    token = await make_token()
    event = await make_event(api, token)
    await clone_photos(api, token, event["id"], 600)

    def start() -> Any:
        return start_service(env, tmp_path, "metadata-repair")

    service = await asyncio.to_thread(start)
    try:
        resp = await api.post(
            "/v1/photos/repair-dimensions", json={"event_id": event["id"]}, headers=auth(token)
        )
        location = resp.headers["Location"]

        async def half_way() -> Any:
            op = await (await api.get(location, headers=auth(token))).json()
            return op if op["progress"]["repaired"] >= 50 else None

        await eventually(half_way, timeout=60, interval=0.02)
        service.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(service.process.wait, 10)
        stopped = await (await api.get(location, headers=auth(token))).json()
        assert stopped["state"] == "running"
        assert 50 <= stopped["progress"]["repaired"] < 600
        service = await asyncio.to_thread(start)
        done = await (await api.get(f"{location}?wait=60", headers=auth(token))).json()
        assert done["state"] == "done", done
        assert done["progress"] == {"scanned": 600, "repaired": 600, "failed": 0}
        # Every photo.repaired is published, those the killed process left unpublished too
        # (by metadata-repair's own relay: upload-ingest's publishes only its own messages).
        lane = outbox.lane(SERVICE)
        photos = api.app[MONGO_DB][records.PHOTOS]

        async def all_published() -> bool:
            return bool(await photos.count_documents({lane.due: {"$exists": True}}) == 0)

        await eventually(all_published, timeout=30)
    finally:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(service.process.wait, 30)
    photos = api.app[MONGO_DB][records.PHOTOS]
    assert await photos.count_documents({"event_id": event["id"], "width": 300}) == 600
    assert await photos.count_documents({"repair_by": {"$exists": True}}) == 0


async def test_a_file_without_a_capture_date_is_not_repaired_again_and_again(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
    watch_events: QueueSpec,
) -> None:
    """A PNG has no date in it: it used to count as repaired on every run, with a photo.repaired
    each time naming the record's captured_at_ms."""
    settings = RepairSettings(**settings_kwargs)
    janitor.add(*queue_specs(Topology(settings.amqp_namespace)))
    worker = await aiohttp_client(create_repair(settings))
    token = await make_token()
    event = await make_event(api, token)
    uploaded = await upload_with_lost_dimensions(
        api,
        token,
        event["id"],
        ("flat.png", png_bytes(300, 100)),
        ("dated.jpg", jpeg_bytes(64, 48, captured="2026:06:20 14:03:11")),
    )
    photos = api.app[MONGO_DB][records.PHOTOS]
    await photos.update_many({"event_id": event["id"]}, {"$set": {"captured_at_ms": None}})
    repairer = worker.app[REPAIRER]
    first = await repairer.run(event["id"], include_capture_date=True, owner="first")
    assert (first.scanned, first.repaired, first.failed) == (2, 2, {})
    png = await photos.find_one({"_id": uploaded["flat.png"]})
    assert png is not None
    assert (png["width"], png["captured_at_ms"], png["capture_date_absent"]) == (300, None, True)
    # Only what was restored is named, with the photo's own names.
    messages = await drain(settings.amqp_url, watch_events.name, 5, timeout=3)
    repaired = {
        m["data"]["photo"]["filename"]: m["data"]["repaired_fields"]
        for m in messages
        if m["type"] == records.PHOTO_REPAIRED
    }
    assert repaired == {
        "flat.png": ["height", "width"],
        "dated.jpg": ["captured_at", "height", "width"],
    }
    again = await repairer.run(event["id"], include_capture_date=True, owner="second")
    assert (again.scanned, again.repaired) == (0, 0)
