"""Duplicates caught on the server: per event, a file whose bytes equal a photo's already there is
that photo (duplicate_of), whatever the protocol, and under concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.mongo import MONGO_DB

from tests.factories import tus
from tests.factories.api import (
    Client,
    TokenMaker,
    auth,
    form,
    make_event,
    photo_count,
    photos_of,
    post_photos,
    put_chunk,
    start_upload,
    stored_keys,
)
from tests.factories.direct import complete, put_whole, ticket
from tests.factories.media import jpeg_bytes, jpeg_like
from tests.factories.messaging import uploaded_ids


async def chunked(
    api: Client, token: str, event_id: str, data: bytes, name: str, **extra: Any
) -> dict[str, Any]:
    """A chunked upload of ``data`` sent whole (not completed); the API's answer."""
    upload = await start_upload(api, token, event_id, data, name=name, **extra)
    for i in range(upload["chunk_count"]):
        assert (await put_chunk(api, token, upload, data, i)).status == 200
    return upload


async def complete_chunked(api: Client, token: str, upload: dict[str, Any]) -> dict[str, Any]:
    done = await api.post(f"/v1/uploads/{upload['upload_id']}/complete", headers=auth(token))
    body: dict[str, Any] = await done.json()
    assert done.status == 200, body
    return body


async def test_a_batch_stores_each_content_once_and_names_the_photo_there(
    api: Client, make_token: TokenMaker, ingest_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    token = await make_token()
    event = await make_event(api, token)
    same, other = jpeg_bytes(64, 64), jpeg_bytes(64, 64)
    first = await post_photos(api, token, event["id"], ("a.jpg", same), ("b.jpg", other))
    assert first.status == 201
    a, b = (await first.json())["uploaded"]
    assert (a["duplicate_of"], b["duplicate_of"]) == (None, None)
    # The same bytes again, under another name, twice in one batch and beside a new file.
    new = jpeg_bytes(64, 64)
    again = await post_photos(
        api, token, event["id"], ("copy.jpg", same), ("c.jpg", new), ("copy2.jpg", same)
    )
    body = await again.json()
    assert again.status == 201, body
    copy, c, copy2 = body["uploaded"]
    assert (copy["id"], copy["duplicate_of"], copy["filename"]) == (a["id"], a["id"], "a.jpg")
    assert (copy2["id"], copy2["duplicate_of"]) == (a["id"], a["id"])
    assert c["duplicate_of"] is None
    # Nothing but copies: nothing new, said with a 200.
    only = await post_photos(api, token, event["id"], ("again.jpg", other))
    assert only.status == 200
    assert [p["duplicate_of"] for p in (await only.json())["uploaded"]] == [b["id"]]

    assert sorted(p["id"] for p in await photos_of(api, token, event["id"])) == sorted(
        [a["id"], b["id"], c["id"]]
    )
    assert await photo_count(api, token, event["id"]) == 3
    assert sorted(await uploaded_ids(ingest_settings.amqp_url, watch_events.name, 3)) == sorted(
        [a["id"], b["id"], c["id"]]
    )
    # The copies' bytes were dropped: one original per photo.
    assert len(await stored_keys(api, event["id"])) == 3


async def test_keeping_duplicates_per_request_and_per_event(
    api: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(api, token)
    data = jpeg_bytes(64, 64)
    assert (await post_photos(api, token, event["id"], ("a.jpg", data))).status == 201
    kept = await api.post(
        f"/v1/events/{event['id']}/photos?keep_duplicates=true",
        data=form(("a.jpg", data)),
        headers=auth(token),
    )
    body = await kept.json()
    assert kept.status == 201, body
    assert body["uploaded"][0]["duplicate_of"] is None
    assert body["uploaded"][0]["filename"] == "a-2.jpg"
    # The event's setting: every upload keeps them, until changed back.
    patched = await api.patch(
        f"/v1/events/{event['id']}", json={"keep_duplicates": True}, headers=auth(token)
    )
    assert (await patched.json())["keep_duplicates"] is True
    third = await post_photos(api, token, event["id"], ("a.jpg", data))
    assert third.status == 201
    assert (await third.json())["uploaded"][0]["duplicate_of"] is None
    await api.patch(
        f"/v1/events/{event['id']}", json={"keep_duplicates": False}, headers=auth(token)
    )
    fourth = await post_photos(api, token, event["id"], ("a.jpg", data))
    assert fourth.status == 200
    assert len(await photos_of(api, token, event["id"])) == 3
    # Another event is another collection: the same bytes are a new photo there.
    elsewhere = await make_event(api, token)
    assert (await post_photos(api, token, elsewhere["id"], ("a.jpg", data))).status == 201


async def test_a_deleted_photo_can_be_uploaded_again(api: Client, make_token: TokenMaker) -> None:
    token = await make_token()
    event = await make_event(api, token)
    data = jpeg_bytes(64, 64)
    first = (await (await post_photos(api, token, event["id"], ("a.jpg", data))).json())[
        "uploaded"
    ][0]
    assert (await api.delete(f"/v1/photos/{first['id']}", headers=auth(token))).status == 204
    again = await post_photos(api, token, event["id"], ("a.jpg", data))
    body = await again.json()
    assert again.status == 201, body
    assert body["uploaded"][0]["duplicate_of"] is None
    assert body["uploaded"][0]["id"] != first["id"]


async def test_chunked_tus_and_direct_copies_end_as_the_photo_there(
    capi: Client,
    make_token: TokenMaker,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(600_000)
    batch = await post_photos(capi, token, event["id"], ("a.jpg", data))
    original = (await batch.json())["uploaded"][0]

    # Chunked, without a declared hash: its size matches a photo's, so the server hashes it.
    upload = await chunked(capi, token, event["id"], data, "chunked.jpg")
    photo = await complete_chunked(capi, token, upload)
    assert (photo["id"], photo["duplicate_of"]) == (original["id"], original["id"])
    status = await (
        await capi.get(f"/v1/uploads/{upload['upload_id']}", headers=auth(token))
    ).json()
    assert (status["state"], status["photo_id"], status["duplicate_of"]) == (
        "completed",
        original["id"],
        original["id"],
    )
    # Asked again: the same answer.
    assert (await complete_chunked(capi, token, upload))["duplicate_of"] == original["id"]

    # tus, in one PATCH: the photo there, in a header.
    created = await tus.create(capi, token, event["id"], len(data), filename="tus.jpg")
    assert created.status == 201
    done = await tus.patch(capi, token, created.headers["Location"], 0, data)
    assert done.status == 204
    assert done.headers["X-Darkroom-Photo-Id"] == original["id"]
    assert done.headers["X-Darkroom-Duplicate-Of"] == original["id"]
    # Also for a client whose last answer was lost: a HEAD says it.
    state = await tus.head(capi, token, created.headers["Location"])
    assert state.headers["X-Darkroom-Duplicate-Of"] == original["id"]

    # Direct to S3 with one signed PUT.
    direct = await ticket(capi, token, event["id"], data, filename="direct.jpg")
    await put_whole(direct, data)
    answer = await complete(capi, token, direct["upload_id"])
    body = await answer.json()
    assert answer.status == 200, body
    assert body["duplicate_of"] == original["id"]

    assert [p["id"] for p in await photos_of(capi, token, event["id"])] == [original["id"]]
    assert await photo_count(capi, token, event["id"]) == 1
    assert await uploaded_ids(chunk_settings.amqp_url, watch_events.name, 1) == [original["id"]]
    # Every copy's bytes are gone: only the original is stored.
    assert await stored_keys(capi, event["id"]) == [
        records.original_key(event["id"], original["id"])
    ]


async def test_a_chunked_file_with_no_photo_of_its_size_is_not_read_back(
    capi: Client, make_token: TokenMaker
) -> None:
    """The hash of an upload that arrived in pieces costs a whole read: only paid where a copy
    is possible."""
    token = await make_token()
    event = await make_event(capi, token)
    upload = await chunked(capi, token, event["id"], jpeg_like(600_000), "a.jpg")
    photo = await complete_chunked(capi, token, upload)
    assert (photo["duplicate_of"], photo["sha256"]) == (None, None)
    # A second file of that size: both are hashed now, and they differ.
    second = await chunked(capi, token, event["id"], jpeg_like(600_000), "b.jpg")
    other = await complete_chunked(capi, token, second)
    assert other["duplicate_of"] is None
    stored = capi.app[MONGO_DB][records.PHOTOS]
    first_doc = await stored.find_one({"_id": photo["id"]})
    assert first_doc is not None
    assert first_doc["sha256"] is not None
    assert other["sha256"] is not None
    assert other["sha256"] != first_doc["sha256"]


async def test_identical_files_in_flight_at_once_make_one_photo(
    capi: Client,
    make_token: TokenMaker,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(600_000)
    # Four chunked uploads of the same bytes, all sent before any completes, completed at once.
    uploads = [await chunked(capi, token, event["id"], data, f"{n}.jpg") for n in range(4)]
    answers = await asyncio.gather(*(complete_chunked(capi, token, u) for u in uploads))
    kept = {a["id"] for a in answers}
    assert len(kept) == 1, answers
    assert sorted(a["duplicate_of"] is None for a in answers) == [False, False, False, True]
    # Batches of the same new bytes, at once.
    other = jpeg_bytes(64, 64)
    batches = await asyncio.gather(
        *(post_photos(capi, token, event["id"], (f"b{n}.jpg", other)) for n in range(4))
    )
    entries = [(await r.json())["uploaded"][0] for r in batches]
    assert len({e["id"] for e in entries}) == 1, entries
    assert sorted(r.status for r in batches) == [200, 200, 200, 201]

    listed = await photos_of(capi, token, event["id"])
    assert len(listed) == 2
    assert await photo_count(capi, token, event["id"]) == 2
    assert len(await uploaded_ids(chunk_settings.amqp_url, watch_events.name, 2)) == 2
    assert len(await stored_keys(capi, event["id"])) == 2


async def test_a_completer_that_dies_after_finding_a_copy_gives_the_same_answer_again(
    capi: Client, make_token: TokenMaker
) -> None:
    """Killed between the commit that found the copy and the write that records it: the upload's
    object is still there (dropped only after that write), so the next complete compares again
    and answers the same photo; nothing is stored twice."""
    from darkroom_ingest.deps import DEPS

    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(600_000)
    original = (await (await post_photos(capi, token, event["id"], ("a.jpg", data))).json())[
        "uploaded"
    ][0]
    upload = await chunked(capi, token, event["id"], data, "again.jpg")
    records_ = capi.server.app[DEPS].chunked.records
    mark_completed = records_.mark_completed

    async def dies(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the process died here")

    records_.mark_completed = dies  # type: ignore[method-assign]
    try:
        died = await capi.post(f"/v1/uploads/{upload['upload_id']}/complete", headers=auth(token))
        assert died.status >= 500
    finally:
        records_.mark_completed = mark_completed  # type: ignore[method-assign]
    # Its object is still there: nothing recorded the upload as done.
    assert len(await stored_keys(capi, event["id"])) == 2
    photo = await complete_chunked(capi, token, upload)
    assert (photo["id"], photo["duplicate_of"]) == (original["id"], original["id"])
    assert [p["id"] for p in await photos_of(capi, token, event["id"])] == [original["id"]]
    assert await photo_count(capi, token, event["id"]) == 1
    assert len(await stored_keys(capi, event["id"])) == 1


async def test_a_photo_stored_without_a_hash_is_found_by_a_copy_that_has_one(
    capi: Client, make_token: TokenMaker
) -> None:
    """A chunked upload alone of its size is not hashed; the batch that brings its bytes again
    (hashed on the way) has it hashed then, and is answered with it."""
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(600_000)
    first = await complete_chunked(
        capi, token, await chunked(capi, token, event["id"], data, "a.jpg")
    )
    assert first["sha256"] is None
    again = await post_photos(capi, token, event["id"], ("again.jpg", data))
    body = await again.json()
    assert again.status == 200, body
    assert body["uploaded"][0]["duplicate_of"] == first["id"]
    assert [p["id"] for p in await photos_of(capi, token, event["id"])] == [first["id"]]


async def test_a_guest_whose_file_is_there_learns_nothing_the_owner_wrote(
    capi: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(600_000)
    original = (await (await post_photos(capi, token, event["id"], ("a.jpg", data))).json())[
        "uploaded"
    ][0]
    private = {"title": "the ring", "description": "not yet", "keywords": ["secret"]}
    patched = await capi.patch(
        f"/v1/photos/{original['id']}", json={**private, "is_hidden": True}, headers=auth(token)
    )
    assert patched.status == 200
    link = await capi.post(
        f"/v1/events/{event['id']}/guest-links", json={"label": "party"}, headers=auth(token)
    )
    guest = (await link.json())["token"]
    upload = await chunked(capi, guest, event["id"], data, "guest.jpg")
    answer = await complete_chunked(capi, guest, upload)
    assert answer["duplicate_of"] == original["id"]
    assert (answer["title"], answer["description"], answer["keywords"]) == (None, None, [])
    assert answer["is_hidden"] is False
    # The owner, completing a copy, sees the photo as it is.
    mine = await complete_chunked(
        capi, token, await chunked(capi, token, event["id"], data, "mine.jpg")
    )
    assert (mine["title"], mine["is_hidden"]) == ("the ring", True)


async def test_a_copy_of_a_photo_deleted_meanwhile_becomes_a_photo(
    api: Client, make_token: TokenMaker
) -> None:
    """The photo a copy was found equal to is deleted before the copy is dropped: the copy is
    stored after all, never answered with a photo that is gone."""
    from darkroom_ingest.deps import DEPS

    token = await make_token()
    event = await make_event(api, token)
    data = jpeg_bytes(64, 64)
    original = (await (await post_photos(api, token, event["id"], ("a.jpg", data))).json())[
        "uploaded"
    ][0]
    duplicates = api.server.app[DEPS].photos.duplicates
    earlier = duplicates.earlier

    async def found_then_deleted(*args: Any) -> Any:
        found = await earlier(*args)
        duplicates.earlier = earlier  # type: ignore[method-assign]
        deleted = await api.delete(f"/v1/photos/{original['id']}", headers=auth(token))
        assert deleted.status == 204
        return found

    duplicates.earlier = found_then_deleted  # type: ignore[method-assign]
    again = await post_photos(api, token, event["id"], ("again.jpg", data))
    body = await again.json()
    assert again.status == 201, body
    photo = body["uploaded"][0]
    assert (photo["duplicate_of"], photo["filename"]) == (None, "again.jpg")
    assert [p["id"] for p in await photos_of(api, token, event["id"])] == [photo["id"]]
    assert await photo_count(api, token, event["id"]) == 1
