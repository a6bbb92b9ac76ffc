"""metadata-repair in-process: dimensions cleared in MongoDB come back from the stored files."""

from __future__ import annotations

from typing import Any

import aio_pika
from aiohttp.test_utils import TestClient
from darkroom_kit import records
from darkroom_kit.messaging import Envelope, Publisher, Topology
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import OBJECT_STORE
from darkroom_repair.app import REPAIRER, queue_spec
from darkroom_repair.app import create_app as create_repair
from darkroom_repair.settings import RepairSettings
from PIL import Image

from tests.conftest import QueueJanitor, jpeg_bytes, png_bytes
from tests.integration.conftest import TokenMaker, eventually
from tests.integration.test_api import auth, form, make_event

Client = TestClient[Any, Any]


def jpeg_with_big_header(width: int, height: int) -> bytes:
    """A JPEG whose frame header (the dimensions) sits after ~40 KB of metadata."""
    import io

    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "x" * 40_000  # ImageDescription: a long one, stored before the frame header
    Image.new("RGB", (width, height), (1, 2, 3)).save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


async def upload_with_lost_dimensions(
    api: Client, token: str, event_id: str, *files: tuple[str, bytes]
) -> dict[str, str]:
    """Upload, then make it look as if thumbnailing had run and the dimensions were lost; the
    original of ``gone.jpg`` (if sent) is deleted from storage."""
    resp = await api.post(f"/v1/events/{event_id}/photos", headers=auth(token), data=form(*files))
    uploaded = {p["filename"]: p["id"] for p in (await resp.json())["uploaded"]}
    photos = api.server.app[MONGO_DB][records.PHOTOS]
    await photos.update_many(
        {"event_id": event_id}, {"$set": {"status": "processed", "width": None, "height": None}}
    )
    if "gone.jpg" in uploaded:
        gone = await photos.find_one({"_id": uploaded["gone.jpg"]})
        assert gone is not None
        await api.server.app[OBJECT_STORE].delete_many([gone["original_key"]])
    return uploaded


async def test_repair_restores_cleared_dimensions(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
) -> None:
    # A small first read, so the big-header JPEG needs the second, whole-file read.
    settings = RepairSettings(**settings_kwargs, head_bytes=16 * 1024)
    janitor.add(queue_spec(Topology(settings.amqp_namespace)))
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
    photos = api.server.app[MONGO_DB][records.PHOTOS]
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
    result = await worker.server.app[REPAIRER].run(event["id"], include_capture_date=False)
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
    janitor.add(queue_spec(Topology(settings.amqp_namespace)))
    await aiohttp_client(create_repair(settings))
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
