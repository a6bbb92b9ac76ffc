"""The rest of the Photos API: filters and sorts, PATCH, bulk delete, events, gallery tokens."""

from __future__ import annotations

from typing import Any

from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.mongo import MONGO_DB

from tests.factories.api import (
    Client,
    TokenMaker,
    assert_problem,
    auth,
    form,
    make_event,
    upload_photos,
)
from tests.factories.media import jpeg_bytes
from tests.factories.messaging import drain


async def names(api: Client, token: str, event_id: str, query: str) -> list[str]:
    resp = await api.get(f"/v1/events/{event_id}/photos?{query}", headers=auth(token))
    assert resp.status == 200, await resp.text()
    return [p["filename"] for p in (await resp.json())["items"]]


async def patch(api: Client, token: str, photo_id: str, body: dict[str, Any]) -> Any:
    return await api.patch(f"/v1/photos/{photo_id}", json=body, headers=auth(token))


async def test_filters_sorts_and_patch(api: Client, make_token: TokenMaker) -> None:
    token = await make_token()
    event = await make_event(api, token, categories=[{"name": "Ceremony"}, {"name": "Party"}])
    ceremony = event["categories"][0]["id"]
    photos = await upload_photos(
        api,
        token,
        event["id"],
        ("b.jpg", jpeg_bytes(300, 200)),
        ("a.jpg", jpeg_bytes(900, 600)),
        ("c.jpg", jpeg_bytes(100, 80)),
    )
    ids = {n: p["id"] for n, p in photos.items()}
    # Upload order within one batch is the order of the parts; make it distinct in time too.
    db = api.server.app[MONGO_DB][records.PHOTOS]
    for n, (created, captured) in {"b.jpg": (1, 30), "a.jpg": (2, 10), "c.jpg": (3, 20)}.items():
        await db.update_one(
            {"_id": ids[n]},
            {"$set": {"created_ms": 1_700_000_000_000 + created, "captured_at_ms": captured}},
        )
    resp = await patch(
        api,
        token,
        ids["a.jpg"],
        {"rating": 5, "keywords": "bride, rings,bride", "title": "Rings", "category_id": ceremony},
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["keywords"] == ["bride", "rings"]
    assert (body["rating"], body["title"], body["category_id"]) == (5, "Rings", ceremony)
    assert body["feedback"] == {"likes": 0, "average_rating": None, "comment_count": 0}
    await patch(api, token, ids["c.jpg"], {"rating": 2, "is_hidden": True})
    await patch(api, token, ids["b.jpg"], {"rating": 3})
    base = f"/v1/events/{event['id']}/photos"
    assert await names(api, token, event["id"], "") == ["c.jpg", "a.jpg", "b.jpg"]
    expected = {
        "upload_date_asc": ["b.jpg", "a.jpg", "c.jpg"],
        "capture_date_asc": ["a.jpg", "c.jpg", "b.jpg"],
        "filename_asc": ["a.jpg", "b.jpg", "c.jpg"],
        "size_asc": ["c.jpg", "b.jpg", "a.jpg"],
        "rating_asc": ["c.jpg", "b.jpg", "a.jpg"],
    }
    for sort, order in expected.items():
        assert await names(api, token, event["id"], f"sort={sort}") == order, sort
        desc = sort.replace("_asc", "_desc")
        assert await names(api, token, event["id"], f"sort={desc}") == order[::-1], desc
    assert await names(api, token, event["id"], f"category_id={ceremony}") == ["a.jpg"]
    assert await names(api, token, event["id"], "is_hidden=true") == ["c.jpg"]
    assert await names(api, token, event["id"], "is_hidden=false&sort=filename_asc") == [
        "a.jpg",
        "b.jpg",
    ]
    page = await (
        await api.get(f"{base}?limit=1&offset=1&sort=filename_asc", headers=auth(token))
    ).json()
    assert [p["filename"] for p in page["items"]] == ["b.jpg"]
    assert (page["total"], page["limit"], page["offset"]) == (3, 1, 1)
    bad = await assert_problem(
        await api.get(f"{base}?sort=random", headers=auth(token)), 422, "validation_failed"
    )
    assert bad["errors"][0]["field"] == "sort"
    # PATCH: an explicit null clears; bad values name their field; nothing else changes.
    cleared = await (await patch(api, token, ids["a.jpg"], {"rating": None})).json()
    assert cleared["rating"] is None
    assert cleared["title"] == "Rings"
    bad = await assert_problem(
        await patch(api, token, ids["a.jpg"], {"rating": 9}), 422, "validation_failed"
    )
    assert bad["errors"][0]["field"] == "/rating"
    await assert_problem(
        await patch(api, token, ids["a.jpg"], {"category_id": "cat_nope"}), 422, "unknown_category"
    )
    await assert_problem(
        await patch(api, token, ids["a.jpg"], {"owner": "me"}), 422, "validation_failed"
    )
    await assert_problem(await patch(api, token, "ph_nope", {"rating": 1}), 404, "photo_not_found")


async def test_gallery_token_never_sees_hidden_photos(api: Client, make_token: TokenMaker) -> None:
    token = await make_token()
    event = await make_event(api, token)
    other = await make_event(api, token)
    photos = await upload_photos(
        api,
        token,
        event["id"],
        ("shown.jpg", jpeg_bytes(64, 64)),
        ("secret.jpg", jpeg_bytes(64, 64)),
    )
    elsewhere = await upload_photos(api, token, other["id"], ("x.jpg", jpeg_bytes(64, 64)))
    await patch(api, token, photos["secret.jpg"]["id"], {"is_hidden": True})
    guest = await make_token("photos.read", event=event["id"])
    assert await names(api, guest, event["id"], "") == ["shown.jpg"]
    assert await names(api, guest, event["id"], "is_hidden=true") == []
    await assert_problem(
        await api.get(f"/v1/photos/{photos['secret.jpg']['id']}", headers=auth(guest)),
        404,
        "photo_not_found",
    )
    await assert_problem(
        await api.get(f"/photos/{event['slug']}/secret.jpg", headers=auth(guest)),
        404,
        "photo_not_found",
    )
    shown = await api.get(f"/photos/{event['slug']}/shown.jpg", headers=auth(guest))
    assert shown.status == 200
    # Its count is of what it may see; the owner's is of all.
    seen = await (await api.get(f"/v1/events/{event['id']}", headers=auth(guest))).json()
    assert seen["photo_count"] == 1
    listed = await (await api.get("/v1/events", headers=auth(guest))).json()
    assert [e["photo_count"] for e in listed["items"]] == [1]
    full = await (await api.get(f"/v1/events/{event['id']}", headers=auth(token))).json()
    assert full["photo_count"] == 2
    # Another event does not exist for it; writes are not allowed.
    await assert_problem(
        await api.get(f"/v1/events/{other['id']}/photos", headers=auth(guest)),
        404,
        "event_not_found",
    )
    await assert_problem(
        await api.get(f"/v1/photos/{elsewhere['x.jpg']['id']}", headers=auth(guest)),
        404,
        "photo_not_found",
    )
    await assert_problem(
        await patch(api, guest, photos["shown.jpg"]["id"], {"rating": 1}), 403, "insufficient_scope"
    )
    # The admin listing still has both, and storage still has the hidden one.
    assert sorted(await names(api, token, event["id"], "")) == ["secret.jpg", "shown.jpg"]
    hidden = await api.get(f"/photos/{event['slug']}/secret.jpg", headers=auth(token))
    assert hidden.status == 200


async def test_bulk_delete_and_download_counts(
    api: Client, make_token: TokenMaker, ingest_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    token = await make_token()
    event = await make_event(api, token)
    photos = await upload_photos(
        api, token, event["id"], *[(f"{i}.jpg", jpeg_bytes(64, 64)) for i in range(3)]
    )
    await drain(ingest_settings.amqp_url, watch_events.name, 3)
    for _ in range(2):
        assert (await api.get(f"/photos/{event['slug']}/0.jpg", headers=auth(token))).status == 200
    etag = (await api.get(f"/photos/{event['slug']}/0.jpg", headers=auth(token))).headers["ETag"]
    not_modified = await api.get(
        f"/photos/{event['slug']}/0.jpg", headers={**auth(token), "If-None-Match": etag}
    )
    assert not_modified.status == 304
    got = await (await api.get(f"/v1/photos/{photos['0.jpg']['id']}", headers=auth(token))).json()
    assert got["download_count"] == 3  # three full downloads; the 304 is not one

    ids = [photos["0.jpg"]["id"], "ph_unknown", photos["1.jpg"]["id"], photos["0.jpg"]["id"]]
    resp = await api.post("/v1/photos/bulk-delete", json={"photo_ids": ids}, headers=auth(token))
    result = await resp.json()
    assert resp.status == 200, result
    assert result["deleted"] == [photos["0.jpg"]["id"], photos["1.jpg"]["id"]]
    assert result["failed"] == [{"id": "ph_unknown", "code": "photo_not_found"}]
    messages = await drain(ingest_settings.amqp_url, watch_events.name, 2)
    assert sorted((m["type"], m["data"]["photo"]["id"]) for m in messages) == sorted(
        [("photo.deleted", photos["0.jpg"]["id"]), ("photo.deleted", photos["1.jpg"]["id"])]
    )
    assert await names(api, token, event["id"], "") == ["2.jpg"]
    await assert_problem(
        await api.post("/v1/photos/bulk-delete", json={"photo_ids": []}, headers=auth(token)),
        422,
        "validation_failed",
    )


async def test_event_patch_and_archive(
    api: Client, make_token: TokenMaker, ingest_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    token = await make_token()
    event = await make_event(api, token, photo_cap=10)
    await upload_photos(
        api, token, event["id"], ("a.jpg", jpeg_bytes(64, 64)), ("b.jpg", jpeg_bytes(64, 64))
    )
    await drain(ingest_settings.amqp_url, watch_events.name, 2)
    url = f"/v1/events/{event['id']}"
    renamed = await (await api.patch(url, json={"name": "Renamed"}, headers=auth(token))).json()
    assert (renamed["name"], renamed["photo_cap"]) == ("Renamed", 10)
    problem = await assert_problem(
        await api.patch(url, json={"photo_cap": 1}, headers=auth(token)),
        409,
        "photo_cap_below_count",
    )
    assert problem["errors"][0]["field"] == "/photo_cap"
    uncapped = await (await api.patch(url, json={"photo_cap": None}, headers=auth(token))).json()
    assert uncapped["photo_cap"] is None
    first = await api.post(f"{url}/archive", headers=auth(token))
    assert (await first.json())["status"] == "archived"
    again = await api.post(f"{url}/archive", headers=auth(token))
    assert again.status == 200
    messages = await drain(ingest_settings.amqp_url, watch_events.name, 2, timeout=3)
    assert [m["type"] for m in messages] == ["event.archived"]  # once, and no photo.deleted
    assert messages[0]["data"]["event"]["id"] == event["id"]
    await assert_problem(
        await api.post(
            f"{url}/photos", data=form(("c.jpg", jpeg_bytes(64, 64))), headers=auth(token)
        ),
        409,
        "event_archived",
    )
    assert sorted(await names(api, token, event["id"], "")) == ["a.jpg", "b.jpg"]
