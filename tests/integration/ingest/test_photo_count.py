"""An event's photo_count follows its photos after kills and races (issue 13, item 2)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from darkroom_ingest.app import create_app
from darkroom_ingest.counting import PhotoCounts
from darkroom_ingest.deps import DEPS
from darkroom_ingest.settings import IngestSettings
from darkroom_ingest.stores import EventStore, PhotoStore
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import TOPOLOGY, Envelope, QueueSpec
from darkroom_kit.mongo import MONGO_DB

from tests.factories.api import (
    Client,
    TokenMaker,
    assert_problem,
    auth,
    make_event,
    post_jpegs,
)
from tests.factories.messaging import eventually


@pytest.fixture
def count_settings(ingest_settings: IngestSettings) -> IngestSettings:
    return ingest_settings.model_copy(
        update={"photo_count_interval_seconds": 0.2, "photo_count_settle_seconds": 0.2}
    )


@pytest.fixture
async def capp(
    aiohttp_client: Any, count_settings: IngestSettings, watch_events: QueueSpec
) -> Client:
    client: Client = await aiohttp_client(create_app(count_settings))
    return client


async def counted(api: Client, event_id: str) -> int:
    event = await api.server.app[MONGO_DB][records.EVENTS].find_one({"_id": event_id})
    assert event is not None
    return int(event["photo_count"])


async def stored(api: Client, event_id: str) -> int:
    """Photos the event holds (a tombstoned one is on its way out)."""
    return int(
        await api.server.app[MONGO_DB][records.PHOTOS].count_documents(
            {"event_id": event_id, "status": {"$ne": "deleting"}}
        )
    )


async def test_a_reservation_never_committed_is_given_back(
    capp: Client, make_token: TokenMaker
) -> None:
    """A process killed between counting a batch in and inserting it (the issue's 300 counted
    against 0 stored): the reservation expires and the periodic pass gives the places back."""
    token = await make_token()
    event = await make_event(capp, token, photo_cap=3)
    assert (await post_jpegs(capp, token, event["id"], "a.jpg")).status == 201
    events = EventStore(capp.server.app[MONGO_DB])
    doc = await events.get(event["id"])
    assert doc is not None
    # What a killed commit leaves: the places taken, no photo, nobody to give them back.
    await events.reserve_photos(doc, 2, "rsv_killed", now_ms() + 1000)
    assert await counted(capp, event["id"]) == 3
    await assert_problem(
        await post_jpegs(capp, token, event["id"], "b.jpg"), 400, "photo_cap_exceeded"
    )
    await eventually(lambda: _equals(counted(capp, event["id"]), 1))
    assert (await post_jpegs(capp, token, event["id"], "b.jpg", "c.jpg")).status == 201
    await assert_problem(
        await post_jpegs(capp, token, event["id"], "d.jpg"), 400, "photo_cap_exceeded"
    )
    assert (await counted(capp, event["id"]), await stored(capp, event["id"])) == (3, 3)


async def test_a_failed_commit_counts_what_landed(capp: Client, make_token: TokenMaker) -> None:
    """An insert that fails half-way (one record in, then an error): the places are not given
    back blindly (that under-counted the record that landed); the recount, once the failed
    commit settled, counts what is there."""
    token = await make_token()
    event = await make_event(capp, token, photo_cap=2)
    service = capp.server.app[DEPS].photos
    insert = service.photos.insert_unique

    async def half_insert(docs: list[Any], prepare: Any, *rest: Any) -> Any:
        await insert(docs[:1], prepare, *rest)
        raise RuntimeError("connection lost")

    service.photos.insert_unique = half_insert  # type: ignore[method-assign]
    assert (await post_jpegs(capp, token, event["id"], "a.jpg", "b.jpg")).status >= 500
    service.photos.insert_unique = insert  # type: ignore[method-assign]
    await eventually(lambda: _equals(counted(capp, event["id"]), 1))
    assert await stored(capp, event["id"]) == 1
    # The photo that landed keeps its bytes (the failed commit used to delete every object of
    # its batch, leaving a record without an original).
    landed = await capp.server.app[MONGO_DB][records.PHOTOS].find_one({"event_id": event["id"]})
    assert landed is not None
    served = await capp.get(
        f"/photos/{landed['event_slug']}/{landed['filename']}", headers=auth(token)
    )
    assert served.status == 200, await served.text()
    assert (await post_jpegs(capp, token, event["id"], "c.jpg")).status == 201
    await assert_problem(
        await post_jpegs(capp, token, event["id"], "d.jpg"), 400, "photo_cap_exceeded"
    )


async def test_a_recount_never_overwrites_a_reservation_made_while_it_counted(
    capp: Client, make_token: TokenMaker
) -> None:
    """The interleaving the concurrency test hits only sometimes, forced: a batch reserves its
    place after a recount counted and before it writes. The recount must not write its stale
    count over it (that lost place would let the cap be exceeded)."""
    token = await make_token()
    event = await make_event(capp, token, photo_cap=5)
    assert (await post_jpegs(capp, token, event["id"], "a.jpg")).status == 201
    db = capp.server.app[MONGO_DB]
    events = EventStore(db)
    doc = await events.get(event["id"])
    assert doc is not None
    await events.reserve_photos(doc, 2, "rsv_killed", now_ms() - 1)  # expired: a recount writes
    counts = PhotoCounts(db, settle_ms=0)

    class RacedPhotos:
        raced = False

        def __getattr__(self, name: str) -> Any:
            return getattr(db[records.PHOTOS], name)

        async def count_documents(self, *args: Any) -> int:
            n = int(await db[records.PHOTOS].count_documents(*args))
            if not self.raced:
                self.raced = True
                fresh = await events.get(event["id"])
                assert fresh is not None
                await events.reserve_photos(fresh, 1, "rsv_racing", now_ms() + 60_000)
            return n

    counts.photos = RacedPhotos()  # type: ignore[assignment]
    await counts.reconcile(event["id"])
    assert await counted(capp, event["id"]) == 2  # one photo, one place reserved


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_deletions_killed_between_their_writes_give_the_place_back_once(
    capp: Client, make_token: TokenMaker
) -> None:
    """A delete killed after the tombstone (the count not lowered yet) and one killed after
    lowering the count (its photo.deleted not out yet): the relay that finishes both gives the
    first place back and not the second a second time."""
    token = await make_token()
    event = await make_event(capp, token, photo_cap=3)
    resp = await post_jpegs(capp, token, event["id"], "a.jpg", "b.jpg", "c.jpg")
    assert resp.status == 201
    victims = [p["id"] for p in (await resp.json())["uploaded"][:2]]
    app = capp.server.app
    photos = PhotoStore(app[MONGO_DB])
    marked = []
    for photo_id in victims:
        doc = await photos.get(photo_id)
        assert doc is not None
        message = Envelope.new(records.PHOTO_DELETED, {"photo": records.photo_public(doc, "")})
        # As upload-ingest writes it: into its own outbox.
        push = app[DEPS].photos.outbox.push
        tombstone = await photos.mark_deleting(photo_id, message, push, app[TOPOLOGY].events, 200)
        assert tombstone is not None
        marked.append(tombstone)
    # The first deleter dies here; the second gives the place back, then dies.
    await EventStore(app[MONGO_DB]).release_photo(
        event["id"], victims[1], marked[1].get("reservation_id"), now_ms() + 60_000
    )

    async def records_gone() -> bool:
        return await photos.col.count_documents({"_id": {"$in": victims}}) == 0

    await eventually(records_gone)
    assert (await counted(capp, event["id"]), await stored(capp, event["id"])) == (1, 1)
    assert (await post_jpegs(capp, token, event["id"], "d.jpg", "e.jpg")).status == 201
    await assert_problem(
        await post_jpegs(capp, token, event["id"], "f.jpg"), 400, "photo_cap_exceeded"
    )


async def test_concurrent_batches_and_recounts_never_exceed_the_cap(
    capp: Client, make_token: TokenMaker
) -> None:
    """Batches racing for the last places while recounts run in a loop: the cap holds, it is
    not reached early (single-file batches, so every place is taken), and the count ends exact.
    A deletion and a reservation left by a killed commit race along. A few rounds, since a lost
    place shows only when a batch comes to take it."""
    token = await make_token()
    service = capp.server.app[DEPS].photos
    insert = service.photos.insert_unique

    async def slow_insert(*args: Any) -> Any:
        # A slow database between the count and the photos: recounts land inside commits.
        await asyncio.sleep(0.1)
        return await insert(*args)

    service.photos.insert_unique = slow_insert  # type: ignore[method-assign]
    for _ in range(3):
        await race(capp, token, cap=7)


async def race(capp: Client, token: str, cap: int) -> None:
    event = await make_event(capp, token, photo_cap=cap)
    app = capp.server.app
    counts = app[DEPS].photos.counts
    events = EventStore(app[MONGO_DB])
    first = await post_jpegs(capp, token, event["id"], "first.jpg")
    assert first.status == 201
    doc = await events.get(event["id"])
    assert doc is not None
    # A reservation of a killed commit that expires mid-race.
    await events.reserve_photos(doc, 1, "rsv_killed", now_ms() + 300)
    done = asyncio.Event()
    passes = 0

    async def recount_loop() -> None:
        nonlocal passes
        while not done.is_set():
            await counts.reconcile(event["id"])
            passes += 1
            await asyncio.sleep(0)

    async def delete_first() -> None:
        photo_id = (await first.json())["uploaded"][0]["id"]
        resp = await capp.delete(f"/v1/photos/{photo_id}", headers=auth(token))
        assert resp.status == 204, await resp.text()

    async def staggered(i: int) -> Any:
        # In waves, so that batches both race each other and arrive while others commit.
        await asyncio.sleep(i // 4 * 0.05)
        return await post_jpegs(capp, token, event["id"], f"{i}.jpg")

    loops = [asyncio.create_task(recount_loop()) for _ in range(2)]
    try:
        results = await asyncio.gather(delete_first(), *(staggered(i) for i in range(24)))
        # The killed reservation held a place until it expired: once it is given back, try
        # for what is left.
        await eventually(lambda: _no_reservations(events, event["id"]))
        late = [await post_jpegs(capp, token, event["id"], f"late{i}.jpg") for i in range(cap + 1)]
    finally:
        done.set()
        await asyncio.gather(*loops)
    accepted = sum(r.status == 201 for r in results[1:]) + sum(r.status == 201 for r in late)
    refused = [r for r in [*results[1:], *late] if r.status != 201]
    for resp in refused:
        await assert_problem(resp, 400, "photo_cap_exceeded")
    assert passes > 0
    assert await stored(capp, event["id"]) == accepted == cap
    await counts.reconcile(event["id"])
    assert await counted(capp, event["id"]) == cap


async def _no_reservations(events: EventStore, event_id: str) -> bool:
    doc = await events.get(event_id)
    return doc is not None and not doc.get("reservations")


async def test_start_up_recounts_every_event(
    aiohttp_client: Any,
    ingest_settings: IngestSettings,
    watch_events: QueueSpec,
    make_token: TokenMaker,
) -> None:
    """A count that drifted before reservations existed (or by any other way) is healed when
    the service starts, and the correction is counted in /metrics."""
    settings = ingest_settings.model_copy(update={"photo_count_interval_seconds": 3600})
    first: Client = await aiohttp_client(create_app(settings))
    await eventually(lambda: _swept(first))
    token = await make_token()
    event = await make_event(first, token, photo_cap=3)
    assert (await post_jpegs(first, token, event["id"], "a.jpg")).status == 201
    await first.server.app[MONGO_DB][records.EVENTS].update_one(
        {"_id": event["id"]}, {"$set": {"photo_count": 300}}
    )
    second: Client = await aiohttp_client(create_app(settings))
    await eventually(lambda: _equals(counted(second, event["id"]), 1))
    metrics = await (await second.get("/metrics")).text()
    corrections = [
        line for line in metrics.splitlines() if line.startswith("photo_count_corrections_total ")
    ]
    assert corrections
    assert float(corrections[0].split()[1]) >= 1
    assert (await post_jpegs(second, token, event["id"], "b.jpg", "c.jpg")).status == 201


async def _swept(api: Client) -> bool:
    return bool(api.server.app[DEPS].photos.counts.swept_all)
