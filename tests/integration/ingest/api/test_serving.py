"""Signed media links (``/media/...``) and download links, used without any token: what they
serve and with which headers, when the same URL repeats, key rotation, and every way a link is
refused (tampered, expired, another variant's, a hidden or deleted photo's)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from aiohttp import ClientResponse
from darkroom_ingest.app import create_app
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.links import MediaLinks, SigningKey, Variant
from pydantic import SecretStr
from yarl import URL

from tests.factories.api import (
    Client,
    TokenMaker,
    assert_problem,
    auth,
    make_event,
    put_chunk,
    start_upload,
    upload_small_video,
)
from tests.factories.media import jpeg_bytes, mp4

OLD = SigningKey(id="k-old", secret=SecretStr("o" * 32))
NEW = SigningKey(id="k-new", secret=SecretStr("n" * 32))


def local(url: str) -> str:
    """The path and query of a link (the test server is not at the public base URL)."""
    return URL(url, encoded=True).raw_path_qs


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(URL(url, encoded=True).query_string).items()}


def with_query(url: str, **changes: str | None) -> str:
    query = {**query_of(url), **changes}
    path = URL(url, encoded=True).raw_path
    return f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"


async def upload_one(
    api: Client, token: str, name: str = "IMG 1.jpg", data: bytes | None = None
) -> dict[str, Any]:
    """One photo in a new event (sent as a chunked upload: its name goes as JSON, unquoted)."""
    event = await make_event(api, token)
    data = data or jpeg_bytes(320, 240)
    upload = await start_upload(api, token, event["id"], data, name=name)
    assert (await put_chunk(api, token, upload, data, 0)).status == 200
    done = await api.post(f"/v1/uploads/{upload['upload_id']}/complete", headers=auth(token))
    assert done.status == 200, await done.text()
    photo: dict[str, Any] = await done.json()
    return photo


async def fetch(api: Client, url: str, **headers: str) -> ClientResponse:
    """A GET with no token at all."""
    return await api.get(local(url), headers=headers)


async def test_a_link_serves_without_a_token_and_repeats_within_its_window(
    api: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    data = jpeg_bytes(320, 240)
    photo = await upload_one(api, token, data=data)
    urls = photo["urls"]
    assert urls["poster"] is None  # an image has none
    assert "/original/IMG%201.jpg?" in urls["original"]
    resp = await fetch(api, urls["original"])
    assert resp.status == 200
    assert await resp.read() == data
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Disposition"].startswith('inline; filename="IMG 1.jpg"')
    cache = resp.headers["Cache-Control"]
    assert cache.startswith("public, max-age=")
    assert 0 < int(cache.rsplit("=", 1)[1]) <= 300  # MEDIA_CACHE_SECONDS
    etag = resp.headers["ETag"]
    again = await fetch(api, urls["original"], **{"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    # The same photo asked for again within the window: the same URLs, so caches hit.
    read = await (await api.get(f"/v1/photos/{photo['id']}", headers=auth(token))).json()
    assert read["urls"] == urls
    listed = await (
        await api.get(f"/v1/events/{photo['event_id']}/photos", headers=auth(token))
    ).json()
    assert listed["items"][0]["urls"] == urls
    # A full 200 of the original counted; the 304 did not.
    read = await (await api.get(f"/v1/photos/{photo['id']}", headers=auth(token))).json()
    assert read["download_count"] == 1
    # A variant not yet made: processing, not a refusal of the link.
    await assert_problem(await fetch(api, urls["thumbnail"]), 404, "thumbnail_processing")


async def test_altered_links_are_refused_without_a_hint_about_the_photo(
    api: Client, make_token: TokenMaker, ingest_settings: IngestSettings
) -> None:
    token = await make_token()
    photo = await upload_one(api, token)
    original = photo["urls"]["original"]
    sig = query_of(original)["sig"]
    other_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    path = URL(original, encoded=True).raw_path
    refused = [
        with_query(original, sig=other_sig),
        with_query(original, sig=None),
        with_query(original, exp=str(int(query_of(original)["exp"]) + 3600)),
        with_query(original, kid="unknown"),
        with_query(original, sig="é" * 43),  # not even ASCII: refused, not a 500
        with_query(original, exp="²"),
        with_query(original, f="dh"),  # a download link made of a view link
        # Another variant, or another photo, with this link's signature.
        original.replace("/original/", "/hero/"),
        original.replace(photo["id"], photo["id"][:-1] + "x"),
        original.replace(photo["id"], "ph_nobody"),
        path,
    ]
    for url in refused:
        await assert_problem(await fetch(api, url), 403, "link_invalid")
    # Expired: signed with the service's key an hour and a day ago, for an hour.
    past = MediaLinks(
        "http://x", ingest_settings.media_signing_keys, 3600, clock=lambda: time.time() - 90_000
    )
    expired, _ = past.sign(photo["id"], Variant.ORIGINAL, photo["filename"], 3600)
    await assert_problem(await fetch(api, expired), 403, "link_expired")
    # The same for a photo that does not exist: nothing tells the two apart.
    nobody, _ = past.sign("ph_nobody", Variant.ORIGINAL, "x.jpg", 3600)
    await assert_problem(await fetch(api, nobody), 403, "link_expired")


async def test_rotation_keeps_old_links_until_their_key_is_removed(
    aiohttp_client: Any, ingest_settings: IngestSettings, make_token: TokenMaker
) -> None:
    def app_with(*keys: SigningKey) -> Any:
        return create_app(ingest_settings.model_copy(update={"media_signing_keys": list(keys)}))

    token = await make_token()
    before = await aiohttp_client(app_with(OLD))
    photo = await upload_one(before, token)
    old_link = photo["urls"]["original"]
    assert query_of(old_link)["kid"] == OLD.id

    rotated = await aiohttp_client(app_with(NEW, OLD))
    assert (await fetch(rotated, old_link)).status == 200
    read = await (await rotated.get(f"/v1/photos/{photo['id']}", headers=auth(token))).json()
    new_link = read["urls"]["original"]
    assert query_of(new_link)["kid"] == NEW.id
    assert (await fetch(rotated, new_link)).status == 200

    retired = await aiohttp_client(app_with(NEW))
    await assert_problem(await fetch(retired, old_link), 403, "link_invalid")
    assert (await fetch(retired, new_link)).status == 200


async def test_hiding_and_deleting_revoke_links_at_once(
    api: Client, make_token: TokenMaker
) -> None:
    owner = await make_token()
    photo = await upload_one(api, owner)
    gallery = await make_token("photos.read", event=photo["event_id"])
    shown_to_guests = await (
        await api.get(f"/v1/photos/{photo['id']}", headers=auth(gallery))
    ).json()
    guest_link = shown_to_guests["urls"]["original"]
    owner_link = photo["urls"]["original"]
    assert (await fetch(api, guest_link)).status == 200

    hide = await api.patch(
        f"/v1/photos/{photo['id']}", json={"is_hidden": True}, headers=auth(owner)
    )
    assert hide.status == 200
    await assert_problem(await fetch(api, guest_link), 404, "photo_not_found")
    # The owner's links (and webhooks') are for those who may see hidden photos.
    assert (await fetch(api, owner_link)).status == 200
    show = await api.patch(
        f"/v1/photos/{photo['id']}", json={"is_hidden": False}, headers=auth(owner)
    )
    assert show.status == 200
    assert (await fetch(api, guest_link)).status == 200

    assert (await api.delete(f"/v1/photos/{photo['id']}", headers=auth(owner))).status == 204
    for link in (guest_link, owner_link):
        await assert_problem(await fetch(api, link), 404, "photo_not_found")


async def test_a_download_link_is_an_attachment_and_counts(
    api: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    data = jpeg_bytes(64, 48)
    photo = await upload_one(api, token, name="Zoë am Strand.jpg", data=data)
    made = await api.post(
        f"/v1/photos/{photo['id']}/download-link",
        json={"expires_in_seconds": 600},
        headers=auth(token),
    )
    assert made.status == 200
    link = await made.json()
    assert link["filename"] == "Zoë am Strand.jpg"
    expires = int(query_of(link["url"])["exp"])
    assert time.time() + 600 <= expires <= time.time() + 1200
    for _ in range(2):
        resp = await fetch(api, link["url"])
        assert resp.status == 200
        assert await resp.read() == data
    disposition = resp.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="Zo_ am Strand.jpg"')
    # Downloads are counted: no shared cache may answer them.
    assert resp.headers["Cache-Control"].startswith("private, max-age=")
    assert "filename*=UTF-8''Zo%C3%AB%20am%20Strand.jpg" in disposition
    read = await (await api.get(f"/v1/photos/{photo['id']}", headers=auth(token))).json()
    assert read["download_count"] == 2
    # No body: the default lifetime.
    assert (
        await api.post(f"/v1/photos/{photo['id']}/download-link", headers=auth(token))
    ).status == 200


@pytest.mark.parametrize("seconds", [10, 8 * 24 * 3600, "soon"])
async def test_a_download_link_lifetime_out_of_bounds_is_refused(
    api: Client, make_token: TokenMaker, seconds: Any
) -> None:
    token = await make_token()
    photo = await upload_one(api, token)
    resp = await api.post(
        f"/v1/photos/{photo['id']}/download-link",
        json={"expires_in_seconds": seconds},
        headers=auth(token),
    )
    problem = await assert_problem(resp, 422, "validation_failed")
    assert problem["errors"][0]["field"] == "/expires_in_seconds"


async def test_download_links_follow_the_callers_rights(
    api: Client, make_token: TokenMaker
) -> None:
    owner = await make_token()
    photo = await upload_one(api, owner)
    other_event = await make_event(api, owner)
    stranger = await make_token("photos.read", event=other_event["id"])
    await assert_problem(
        await api.post(f"/v1/photos/{photo['id']}/download-link", headers=auth(stranger)),
        404,
        "photo_not_found",
    )
    no_token = await api.post(f"/v1/photos/{photo['id']}/download-link")
    assert no_token.status == 401


async def test_a_videos_variants_are_named_as_jpegs_and_it_has_a_poster(
    api: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(api, token)
    photo_id = await upload_small_video(api, token, event["id"], mp4(64 * 1024), "clip.mp4")
    video = await (await api.get(f"/v1/photos/{photo_id}", headers=auth(token))).json()
    urls = video["urls"]
    assert "/original/clip.mp4?" in urls["original"]
    for name in ("thumbnail", "hero", "poster"):
        assert f"/{name}/clip.jpg?" in urls[name]
    assert video["thumbnail_url"].endswith("/clip.mp4.jpg")
    assert video["hero_url"].endswith("/clip.mp4.jpg")
    # The token path finds the video by that name (its thumbnail is being made).
    await assert_problem(
        await api.get(local(video["thumbnail_url"]), headers=auth(token)),
        404,
        "thumbnail_processing",
    )
    await assert_problem(await fetch(api, urls["poster"]), 404, "hero_processing")


async def test_a_range_is_answered_with_its_part_and_not_counted(
    api: Client, make_token: TokenMaker
) -> None:
    """Browsers seek in a video and resume a download with Range: one range is a 206 of those
    bytes; what a server may ignore is answered whole."""
    token = await make_token()
    data = jpeg_bytes(320, 240)
    size = len(data)
    photo = await upload_one(api, token, data=data)
    original = photo["urls"]["original"]
    full = await fetch(api, original)
    assert full.headers["Accept-Ranges"] == "bytes"
    etag = full.headers["ETag"]
    for asked, first, last in (
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, size - 1),
        ("bytes=-50", size - 50, size - 1),
        (f"bytes=10-{size + 1000}", 10, size - 1),
    ):
        part = await fetch(api, original, Range=asked)
        assert part.status == 206, asked
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert await part.read() == data[first : last + 1]
    unsatisfiable = await fetch(api, original, Range=f"bytes={size}-")
    assert unsatisfiable.status == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{size}"
    # Several ranges, another unit, a malformed one, or a stale If-Range: the whole file.
    for headers in (
        {"Range": "bytes=0-1,5-6"},
        {"Range": "items=0-1"},
        {"Range": "bytes=9-3"},
        {"Range": "bytes=0-9", "If-Range": '"another"'},
    ):
        whole = await fetch(api, original, **headers)
        assert whole.status == 200, headers
        assert await whole.read() == data
    assert (await fetch(api, original, Range="bytes=0-9", **{"If-Range": etag})).status == 206
    # The same on the token route. Only the full 200s counted: the first and the four above.
    by_name = await api.get(local(photo["url"]), headers={**auth(token), "Range": "bytes=0-9"})
    assert by_name.status == 206
    assert await by_name.read() == data[:10]
    read = await (await api.get(f"/v1/photos/{photo['id']}", headers=auth(token))).json()
    assert read["download_count"] == 5
