"""thumbnailing in-process with upload-ingest, over the real servers and a real process pool."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import aio_pika
import pytest
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import QueueSpec, Topology
from darkroom_thumbnailing.app import create_app as create_thumbnailing
from darkroom_thumbnailing.app import queue_spec
from darkroom_thumbnailing.settings import ThumbnailSettings
from PIL import Image

from tests.factories.api import Client, TokenMaker, auth, form, make_event, upload_small_video
from tests.factories.media import gps_jpeg, jpeg_bytes, make_clip, png_bytes
from tests.factories.messaging import drain, eventually
from tests.factories.servers import QueueJanitor


def png_bomb(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims a huge canvas."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def corrupt_jpeg() -> bytes:
    """Complete on the outside (starts and ends right), broken inside: an impossible Huffman
    table, which libvips refuses at fail_on=error."""
    data = bytearray(jpeg_bytes(1200, 900))
    dht = data.find(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16
    return bytes(data)


async def settled(
    api: Client, token: str, ids: dict[str, str], timeout: float
) -> dict[str, dict[str, Any]]:
    """The photos (by name) once thumbnailing has finished with every one of them."""

    async def done() -> dict[str, dict[str, Any]] | None:
        out = {}
        for name, photo_id in ids.items():
            got = await (await api.get(f"/v1/photos/{photo_id}", headers=auth(token))).json()
            if got["status"] == "uploaded":
                return None
            out[name] = got
        return out

    result: dict[str, dict[str, Any]] = await eventually(done, timeout=timeout)
    return result


# Originals read into memory, and (0) every original written to a temporary file that libvips
# reads: big originals are never held whole, and either way renders and refuses the same.
@pytest.mark.parametrize("in_memory_bytes", [8 * 1024 * 1024, 0], ids=["in_memory", "from_file"])
async def test_variants_dimensions_and_refusals(
    in_memory_bytes: int,
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    ingest_settings: IngestSettings,
    make_token: TokenMaker,
    janitor: QueueJanitor,
    watch_events: QueueSpec,
) -> None:
    settings = ThumbnailSettings(
        **settings_kwargs,
        render_processes=1,
        retry_delays_ms=(200, 400),
        in_memory_original_bytes=in_memory_bytes,
    )
    spec = queue_spec(Topology(settings.amqp_namespace), settings)
    janitor.add(spec)
    worker = await aiohttp_client(create_thumbnailing(settings))
    token = await make_token()
    event = await make_event(api, token)
    files = [
        # 3000x2000 stored, EXIF orientation 6: a portrait photo 2000x3000.
        ("portrait.jpg", jpeg_bytes(3000, 2000, orientation=6, captured="2024:05:06 07:08:09")),
        ("small.png", png_bytes(320, 200)),  # smaller than the hero: never enlarged
        ("broken.jpg", corrupt_jpeg()),
        ("bomb.png", png_bomb(50_000, 50_000)),
        ("gps.jpg", gps_jpeg()),
    ]
    resp = await api.post(
        f"/v1/events/{event['id']}/photos", data=form(*files), headers=auth(token)
    )
    uploaded = {p["filename"]: p for p in (await resp.json())["uploaded"]}
    assert sorted(uploaded) == ["bomb.png", "broken.jpg", "gps.jpg", "portrait.jpg", "small.png"]

    photos = await settled(api, token, {n: p["id"] for n, p in uploaded.items()}, timeout=30)
    portrait = photos["portrait.jpg"]
    assert (portrait["status"], portrait["width"], portrait["height"]) == ("processed", 2000, 3000)
    assert portrait["captured_at"] == "2024-05-06T07:08:09.000Z"
    assert portrait["variants"]["thumbnail"] == {
        "width": 267,
        "height": 400,
        "size": portrait["variants"]["thumbnail"]["size"],
        "content_type": "image/jpeg",
    }
    thumb = await api.get(f"/thumbnails/{event['slug']}/portrait.jpg", headers=auth(token))
    assert thumb.status == 200
    assert thumb.content_type == "image/jpeg"
    image = Image.open(io.BytesIO(await thumb.read()))
    assert image.size == (267, 400)
    assert not image.getexif()  # metadata stripped from variants
    hero = await api.get(f"/heroes/{event['slug']}/portrait.jpg", headers=auth(token))
    assert Image.open(io.BytesIO(await hero.read())).size == (1067, 1600)
    # GPS is gone from the variants; the original is served byte for byte, GPS and all.
    assert photos["gps.jpg"]["status"] == "processed"
    for route in ("thumbnails", "heroes"):
        variant = await api.get(f"/{route}/{event['slug']}/gps.jpg", headers=auth(token))
        assert not Image.open(io.BytesIO(await variant.read())).getexif()
    original = await api.get(f"/photos/{event['slug']}/gps.jpg", headers=auth(token))
    original_bytes = await original.read()
    assert original_bytes == dict(files)["gps.jpg"]
    assert Image.open(io.BytesIO(original_bytes)).getexif().get_ifd(0x8825)[1] == "N"
    small = photos["small.png"]
    assert (small["width"], small["height"]) == (320, 200)
    assert (small["variants"]["hero"]["width"], small["variants"]["hero"]["height"]) == (320, 200)
    assert photos["broken.jpg"]["status"] == "failed"
    assert photos["broken.jpg"]["status_reason"] == "corrupt_image"
    assert photos["bomb.png"]["status"] == "failed"
    assert photos["bomb.png"]["status_reason"] == "too_many_pixels"
    failed = await api.get(f"/thumbnails/{event['slug']}/bomb.png", headers=auth(token))
    assert (await failed.json())["code"] == "variant_unavailable"
    # A refused file is a counted outcome, acknowledged once, not retried and not a dead letter
    # (the dead-letter alert means something is broken, not that a guest sent a bad file).
    from prometheus_client.parser import text_string_to_metric_families

    async def metrics() -> dict[tuple[str, ...], float]:
        text = await (await worker.get("/metrics")).text()
        return {
            (s.name, *(s.labels.get(k, "") for k in ("queue", "outcome", "reason"))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name in ("messages_consumed_total", "thumbnails_total")
            and s.labels["service"] == "thumbnailing"
            and s.labels.get("queue", spec.name) == spec.name
        }

    async def all_consumed() -> dict[tuple[str, ...], float] | None:
        got = await metrics()
        return (
            got
            if sum(v for k, v in got.items() if k[0] == "messages_consumed_total") >= 5
            else None
        )

    counted = await eventually(all_consumed, timeout=15)
    assert counted == {
        ("messages_consumed_total", spec.name, "acked", ""): 5,
        ("thumbnails_total", "", "rendered", "none"): 3,
        ("thumbnails_total", "", "refused", "corrupt_image"): 1,
        ("thumbnails_total", "", "refused", "too_many_pixels"): 1,
    }
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        dead = await (await connection.channel()).declare_queue(spec.dead_queue, passive=True)
        assert dead.declaration_result.message_count == 0
    finally:
        await connection.close()
    messages = await drain(ingest_settings.amqp_url, watch_events.name, 8)
    processed = [m for m in messages if m["type"] == "photo.processed"]
    assert sorted(m["data"]["photo"]["filename"] for m in processed) == [
        "gps.jpg",
        "portrait.jpg",
        "small.png",
    ]


async def test_video_posters(
    capi: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
    tmp_path: Any,
) -> None:

    settings = ThumbnailSettings(**settings_kwargs, render_processes=1, retry_delays_ms=(200, 400))
    janitor.add(queue_spec(Topology(settings.amqp_namespace), settings))
    await aiohttp_client(create_thumbnailing(settings))
    token = await make_token()
    event = await make_event(capi, token)
    clips = {
        "clip.mp4": make_clip(tmp_path / "clip.mp4", 2, "800x600"),
        "short.mp4": make_clip(tmp_path / "short.mp4", 0.5, "640x480"),  # under the 1 s mark
        # Filmed upright on a phone: 640x360 pixels, shown as 360x640.
        "phone.mp4": make_clip(tmp_path / "phone.mp4", 1.5, "640x360", rotation=90),
        "broken.mp4": b"\0\0\0\x18ftypmp42" + b"\0garbage" * 500,
    }
    ids = {
        name: await upload_small_video(capi, token, event["id"], data, name)
        for name, data in clips.items()
    }
    videos = await settled(capi, token, ids, timeout=60)
    clip = videos["clip.mp4"]
    assert (clip["status"], clip["kind"], clip["width"], clip["height"]) == (
        "processed",
        "video",
        800,
        600,
    )
    assert clip["duration_ms"] == 2000
    thumb = await capi.get(f"/thumbnails/{event['slug']}/clip.mp4", headers=auth(token))
    assert thumb.content_type == "image/jpeg"
    assert Image.open(io.BytesIO(await thumb.read())).size == (400, 300)
    short = videos["short.mp4"]
    assert (short["status"], short["width"], short["duration_ms"]) == ("processed", 640, 500)
    phone = videos["phone.mp4"]
    assert (phone["status"], phone["width"], phone["height"]) == ("processed", 360, 640)
    thumb = await capi.get(f"/thumbnails/{event['slug']}/phone.mp4", headers=auth(token))
    assert Image.open(io.BytesIO(await thumb.read())).size == (225, 400)
    assert videos["broken.mp4"]["status"] == "failed"
    assert videos["broken.mp4"]["status_reason"] == "corrupt_video"
