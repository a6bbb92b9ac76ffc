from __future__ import annotations

from typing import Any

from darkroom_kit.clock import ms_to_iso
from darkroom_kit.ids import new_id
from darkroom_kit.imaging import parse_exif_date


def test_exif_dates() -> None:
    assert ms_to_iso(parse_exif_date("2024:05:06 07:08:09 (2024:05:06 07:08:09, ASCII)")) == (
        "2024-05-06T07:08:09.000Z"
    )
    assert parse_exif_date("0000:00:00 00:00:00") is None
    assert parse_exif_date("garbage") is None
    assert parse_exif_date(None) is None


def test_times_render_as_utc_iso() -> None:
    assert ms_to_iso(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert ms_to_iso(None) is None


def test_ids_are_prefixed_unique_and_ordered() -> None:
    import time

    ids = [new_id("ph") for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i.startswith("ph_") and len(i) == 29 for i in ids)
    earlier = new_id("ph")
    time.sleep(0.003)
    assert earlier < new_id("ph")  # a later millisecond sorts after


def test_a_part_body_reads_like_a_file_and_rewinds() -> None:
    from darkroom_kit.storage import PartBody

    body = PartBody()
    for chunk in (b"abc", b"", b"defg", b"h"):
        body.append(chunk)
    assert len(body) == 8
    assert [body.read(3), body.read(3), body.read(3), body.read(3)] == [b"abc", b"def", b"gh", b""]
    assert body.tell() == 8
    assert body.seek(0) == 0
    assert body.read() == b"abcdefgh"
    body.seek(0)
    assert (body.read(5), body.read()) == (b"abcde", b"fgh")


async def test_object_storage_failing_under_any_handler_is_a_503_problem(
    aiohttp_client: Any,
) -> None:
    from aiohttp import web
    from darkroom_kit.httpapp import create_base_app
    from darkroom_kit.storage import StorageUnavailable

    async def broken(request: web.Request) -> web.Response:
        raise StorageUnavailable("connection refused")

    app = create_base_app("test")
    app.router.add_get("/x", broken)
    client = await aiohttp_client(app)
    resp = await client.get("/x")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "storage_unavailable"


def test_photo_of_key_reads_back_the_keys_records_makes() -> None:
    from darkroom_kit import records

    assert records.photo_of_key(records.original_key("ev_1", "ph_2")) == ("ph_2", records.ORIGINAL)
    assert records.photo_of_key(records.variant_key("ev_1", "ph_2", "hero")) == (
        "ph_2",
        records.VARIANT,
    )
    for other in (
        "events/ev_1/notes.txt",
        "elsewhere/x.jpg",
        "events/ev_1/hero/noext",
        "events//originals/p",
    ):
        assert records.photo_of_key(other) is None, other
