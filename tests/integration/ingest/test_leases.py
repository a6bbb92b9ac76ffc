"""Locks are leases their process renews while it works (issue 13, item 5): a dead owner's
Idempotency-Key or chunked complete is taken over within seconds, a live owner's never."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from darkroom_ingest.app import create_app
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.lease import HOLDER, UNTIL, Lease
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import OBJECT_STORE

from tests.factories.api import (
    Client,
    TokenMaker,
    assert_problem,
    auth,
    make_event,
    put_chunk,
    raw_multipart,
    start_upload,
)
from tests.factories.media import jpeg_bytes, jpeg_like
from tests.factories.messaging import eventually
from tests.factories.servers import to_env

LEASE_SECONDS = 1.0
# Where a live holder's renewals must keep up: room for a slow MongoDB on a loaded machine.
LIVE_LEASE_SECONDS = 2.0


async def dribble(body: bytes, hold: asyncio.Event) -> AsyncIterator[bytes]:
    """The first half of the body, then the rest only once ``hold`` is set: a slow client that
    keeps the request (and its Idempotency-Key) in progress."""
    yield body[: len(body) // 2]
    await hold.wait()
    yield body[len(body) // 2 :]


async def claim_of(api: Client, token: str, key: str) -> dict[str, Any] | None:
    me = await (await api.get("/v1/me", headers=auth(token))).json()
    keys = api.server.app[MONGO_DB][records.IDEMPOTENCY]
    claim: dict[str, Any] | None = await keys.find_one({"_id": f"{me['id']}:{key}"})
    return claim


async def held_batch(
    api: Client, token: str, key: str
) -> tuple[asyncio.Task[Any], asyncio.Event, str, bytes, dict[str, str], dict[str, Any]]:
    """A batch upload with ``key`` whose body stops half-way until the returned event is set,
    started and holding its key: (the request, the event, url, body, headers, darkroom event)."""
    event = await make_event(api, token)
    body, headers = raw_multipart(("slow.jpg", jpeg_bytes(400, 300)))
    headers = {**headers, **auth(token), "Idempotency-Key": key}
    url = f"/v1/events/{event['id']}/photos"
    hold = asyncio.Event()
    first = asyncio.create_task(api.post(url, data=dribble(body, hold), headers=headers))
    await eventually(lambda: claim_of(api, token, key))
    return first, hold, url, body, headers, event


async def test_a_killed_requests_idempotency_key_is_free_within_seconds(
    api: Client, settings_kwargs: dict[str, Any], make_token: TokenMaker, tmp_path: Any
) -> None:
    """upload-ingest as a process, SIGKILLed while a batch with an Idempotency-Key is arriving:
    the same request with the same key succeeds seconds later (it was locked for 15 min)."""
    from darkroom_dev.servers import free_port
    from darkroom_dev.stack import SERVICES, start_services

    env = {**os.environ, **to_env(settings_kwargs), "LOCK_LEASE_SECONDS": str(LEASE_SECONDS)}
    token = await make_token()
    event = await make_event(api, token)
    body, headers = raw_multipart(("slow.jpg", jpeg_bytes(400, 300)))
    headers = {**headers, **auth(token), "Idempotency-Key": "killed-1"}
    url = f"/v1/events/{event['id']}/photos"

    def start_api() -> Any:
        [service] = start_services(env, tmp_path, free_port(len(SERVICES)), names=["upload-ingest"])
        return service

    service = await asyncio.to_thread(start_api)
    hold = asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def slow() -> Any:
            async with session.post(
                service.url + url, data=dribble(body, hold), headers=headers
            ) as resp:
                return resp.status

        first = asyncio.create_task(slow())
        try:
            claim = await eventually(lambda: claim_of(api, token, "killed-1"), timeout=20)
            assert claim["state"] == "running"
            service.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(service.process.wait, 10)
        finally:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGKILL)
                await asyncio.to_thread(service.process.wait, 10)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
    left = await claim_of(api, token, "killed-1")
    assert left is not None
    assert left["state"] == "running"

    async def retried() -> Any:
        resp = await api.post(url, data=body, headers=headers)
        if resp.status == 409:
            await assert_problem(resp, 409, "idempotency_key_in_use")
            return None
        return resp

    # Bounded well under the old 15 minutes, and generously over the 1 s lease.
    resp = await eventually(retried, timeout=20, interval=0.25)
    assert resp.status == 201, await resp.text()
    assert resp.headers.get("Idempotent-Replayed") is None
    photos = api.server.app[MONGO_DB][records.PHOTOS]
    assert await photos.count_documents({"event_id": event["id"]}) == 1
    again = await api.post(url, data=body, headers=headers)
    assert again.status == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await photos.count_documents({"event_id": event["id"]}) == 1


async def test_a_live_requests_idempotency_key_is_never_taken_over(
    aiohttp_client: Any,
    ingest_settings: IngestSettings,
    watch_events: QueueSpec,
    make_token: TokenMaker,
) -> None:
    """A request that runs for several lease lengths keeps its key: every duplicate meanwhile is
    a 409, and the request's own answer is the one replayed."""
    api: Client = await aiohttp_client(
        create_app(ingest_settings.model_copy(update={"lock_lease_seconds": LIVE_LEASE_SECONDS}))
    )
    token = await make_token()
    first, hold, url, body, headers, event = await held_batch(api, token, "live-1")
    loop = asyncio.get_running_loop()
    held_until = loop.time() + 3 * LIVE_LEASE_SECONDS
    duplicates = 0
    while loop.time() < held_until:
        await assert_problem(
            await api.post(url, data=body, headers=headers), 409, "idempotency_key_in_use"
        )
        duplicates += 1
        await asyncio.sleep(0.2)
    hold.set()
    resp = await first
    assert resp.status == 201, await resp.text()
    answer = await resp.json()
    assert duplicates >= 6
    replay = await api.post(url, data=body, headers=headers)
    assert replay.status == 201
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert await replay.json() == answer
    photos = api.server.app[MONGO_DB][records.PHOTOS]
    assert await photos.count_documents({"event_id": event["id"]}) == 1


async def lease_client(
    aiohttp_client: Any, chunk_settings: IngestSettings, **update: Any
) -> Client:
    settings = chunk_settings.model_copy(update={"lock_lease_seconds": LEASE_SECONDS} | update)
    client: Client = await aiohttp_client(create_app(settings))
    return client


async def all_chunks_in(api: Client, token: str, event_id: str) -> tuple[dict[str, Any], bytes]:
    """A chunked upload of two chunks, both sent, not completed: (the upload, its bytes)."""
    data = jpeg_like(2 * 5 * 1024 * 1024 - 100)
    upload = await start_upload(api, token, event_id, data)
    for i in range(2):
        assert (await put_chunk(api, token, upload, data, i)).status == 200
    return upload, data


async def test_an_interrupted_complete_is_taken_over_within_seconds(
    aiohttp_client: Any,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    make_token: TokenMaker,
) -> None:
    """A complete whose process died after claiming the upload (state completing, its lease no
    longer renewed): the next complete takes it over and makes exactly one photo (it waited
    about 63 s and answered 503 for 5 minutes)."""
    capi = await lease_client(aiohttp_client, chunk_settings)
    token = await make_token()
    event = await make_event(capi, token)
    upload, data = await all_chunks_in(capi, token, event["id"])
    uploads = capi.server.app[MONGO_DB]["uploads"]
    now = now_ms()
    await uploads.update_one(
        {"_id": upload["upload_id"]},
        {
            "$set": {
                "state": "completing",
                "completing_ms": now,
                UNTIL: now + int(LEASE_SECONDS * 1000),
                HOLDER: "lease_of_a_dead_process",
            }
        },
    )
    url = f"/v1/uploads/{upload['upload_id']}/complete"
    done, again = await asyncio.gather(
        capi.post(url, headers=auth(token)), capi.post(url, headers=auth(token))
    )
    assert done.status == again.status == 200, await done.text()
    photo = await done.json()
    assert (await again.json())["id"] == photo["id"]
    assert photo["size"] == len(data)
    record = await uploads.find_one({"_id": upload["upload_id"]})
    assert record is not None
    assert record["state"] == "completed"
    photos = capi.server.app[MONGO_DB][records.PHOTOS]
    assert await photos.count_documents({"event_id": event["id"]}) == 1
    got = await (await capi.get(f"/v1/events/{event['id']}", headers=auth(token))).json()
    assert got["photo_count"] == 1


async def test_a_live_complete_is_waited_for_within_bounds_and_never_taken_over(
    aiohttp_client: Any,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    make_token: TokenMaker,
) -> None:
    """While another process completes the upload (its lease renewed), a complete waits a
    bounded time and answers 503 with Retry-After, never taking over; once that process is gone,
    the next complete finishes it."""
    capi = await lease_client(
        aiohttp_client,
        chunk_settings,
        lock_lease_seconds=LIVE_LEASE_SECONDS,
        complete_wait_seconds=1.0,
    )
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(5 * 1024 * 1024 + 10)
    upload = await start_upload(capi, token, event["id"], data)
    for i in range(2):
        assert (await put_chunk(capi, token, upload, data, i)).status == 200
    uploads = capi.server.app[MONGO_DB]["uploads"]
    # The other process: it claimed the upload as a complete does, and renews its lease.
    owner = Lease(uploads, upload["upload_id"], int(LIVE_LEASE_SECONDS * 1000))
    await uploads.update_one(
        {"_id": upload["upload_id"], "state": "open"},
        {"$set": {"state": "completing", "completing_ms": now_ms(), **owner.fields()}},
    )
    url = f"/v1/uploads/{upload['upload_id']}/complete"
    async with owner:
        for _ in range(4):  # each waits 1 s: two lease lengths in all
            busy = await capi.post(url, headers=auth(token))
            await assert_problem(busy, 503, "complete_in_progress")
            assert busy.headers["Retry-After"]
        record = await uploads.find_one({"_id": upload["upload_id"]})
        assert record is not None
        assert record[HOLDER] == owner.holder
        assert not owner.lost

    async def completed() -> Any:
        # As a client would, after Retry-After: the dead owner's lease runs out within 2 s.
        resp = await capi.post(url, headers=auth(token))
        if resp.status == 503:
            await assert_problem(resp, 503, "complete_in_progress")
            return None
        return resp

    done = await eventually(completed, timeout=10)
    assert done.status == 200, await done.text()
    photos = capi.server.app[MONGO_DB][records.PHOTOS]
    assert await photos.count_documents({"event_id": event["id"]}) == 1


async def test_a_holder_learns_that_its_lease_was_taken(api: Client) -> None:
    col = api.server.app[MONGO_DB]["lease_test"]
    lease = Lease(col, "doc-1", 1000)
    await col.insert_one({"_id": "doc-1", **lease.fields()})
    async with lease:
        await asyncio.sleep(1.5)  # longer than the lease: renewed meanwhile
        assert not lease.lost
        mine = await col.find_one({"_id": "doc-1"})
        assert mine is not None
        assert mine[UNTIL] > now_ms()
        thief = Lease(col, "doc-1", 1000)
        await col.update_one({"_id": "doc-1"}, {"$set": thief.fields()})
        await eventually(lambda: asyncio.sleep(0, lease.lost), timeout=5, interval=0.05)
    assert (await col.find_one({"_id": "doc-1"}) or {})[HOLDER] == thief.holder


async def test_a_repeat_after_a_crash_answers_the_photos_the_first_run_stored(
    api: Client, make_token: TokenMaker
) -> None:
    """The process died after the batch's photos landed and before its answer was kept (the
    fault suite's kill -9 of upload-ingest hit exactly this): once the lease is free, the repeat
    with the same key answers those photos, and stores nothing twice."""
    token = await make_token()
    event = await make_event(api, token)
    url = f"/v1/events/{event['id']}/photos"
    first, second = jpeg_bytes(320, 200), jpeg_bytes(200, 320, color=(10, 200, 10))
    form = aiohttp.FormData()
    form.add_field("photos", first, filename="a.jpg", content_type="image/jpeg")
    form.add_field("photos", second, filename="b.jpg", content_type="image/jpeg")
    body = form()
    payload = b"".join([chunk async for chunk in _chunks(body)])
    headers = {
        "Content-Type": body.content_type,
        "Idempotency-Key": "crash-after-commit",
        **auth(token),
    }
    answer = await api.post(url, data=payload, headers=headers)
    assert answer.status == 201, await answer.text()
    stored = [p["id"] for p in (await answer.json())["uploaded"]]
    # What a process killed between the commit and keeping the answer leaves: the claim still
    # "running", its lease no longer renewed.
    me = await (await api.get("/v1/me", headers=auth(token))).json()
    keys = api.server.app[MONGO_DB][records.IDEMPOTENCY]
    await keys.update_one(
        {"_id": f"{me['id']}:crash-after-commit"},
        {"$set": {"state": "running", UNTIL: now_ms() - 1, HOLDER: "lease_dead"}},
    )
    repeat = await api.post(url, data=payload, headers=headers)
    assert repeat.status == 201, await repeat.text()
    assert repeat.headers.get("Idempotent-Replayed") is None  # run again, not replayed
    assert [p["id"] for p in (await repeat.json())["uploaded"]] == stored
    photos = api.server.app[MONGO_DB][records.PHOTOS]
    assert await photos.count_documents({"event_id": event["id"]}) == 2
    event_doc = await api.server.app[MONGO_DB][records.EVENTS].find_one({"_id": event["id"]})
    assert event_doc is not None
    assert event_doc["photo_count"] == 2
    # The repeat's own copies of the bytes are not left behind.
    listed = await api.server.app[OBJECT_STORE].list_keys(f"events/{event['id']}/originals/")
    assert sorted(listed) == sorted(f"events/{event['id']}/originals/{pid}" for pid in stored)


async def _chunks(body: Any) -> AsyncIterator[bytes]:
    class Sink:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        async def write(self, data: bytes) -> None:
            self.parts.append(bytes(data))

    sink = Sink()
    await body.write(sink)
    for part in sink.parts:
        yield part


async def test_a_request_that_lost_its_key_keeps_nothing(
    api: Client, make_token: TokenMaker
) -> None:
    """A request whose lease ran out while its body arrived (its renewals failed longer than the
    lease, in a database outage) and was taken over by a repeat: it stores nothing and says so,
    leaving the files to the one that took over."""
    token = await make_token()
    first, hold, _, _, _, event = await held_batch(api, token, "lost-1")
    me = await (await api.get("/v1/me", headers=auth(token))).json()
    keys = api.server.app[MONGO_DB][records.IDEMPOTENCY]
    # What a takeover leaves: the claim held by another holder.
    await keys.update_one(
        {"_id": f"{me['id']}:lost-1"}, {"$set": {HOLDER: "lease_thief", UNTIL: now_ms() + 60_000}}
    )
    hold.set()
    await assert_problem(await first, 409, "idempotency_key_in_use")
    photos = api.server.app[MONGO_DB][records.PHOTOS]
    assert await photos.count_documents({"event_id": event["id"]}) == 0
    listed = await api.server.app[OBJECT_STORE].list_keys(f"events/{event['id']}/")
    assert listed == []


async def test_two_completers_of_one_upload_answer_the_same_photo(
    aiohttp_client: Any,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    make_token: TokenMaker,
) -> None:
    """A completer that lost its lease (another took over) and reaches the photo second: it
    answers the photo the other made, not a 500 for the clash of their ids."""
    from darkroom_ingest.deps import DEPS

    capi = await lease_client(aiohttp_client, chunk_settings)
    token = await make_token()
    event = await make_event(capi, token)
    upload, _ = await all_chunks_in(capi, token, event["id"])
    service = capi.server.app[DEPS].chunked._photos
    commit = service.commit_batch

    async def the_other_completer_first(*args: Any, **kwargs: Any) -> Any:
        await commit(*args, **kwargs)  # the one that took over lands first
        return await commit(*args, **kwargs)

    service.commit_batch = the_other_completer_first  # type: ignore[method-assign]
    done = await capi.post(f"/v1/uploads/{upload['upload_id']}/complete", headers=auth(token))
    assert done.status == 200, await done.text()
    photos = capi.server.app[MONGO_DB][records.PHOTOS]
    assert await photos.count_documents({"event_id": event["id"]}) == 1
    assert (await done.json())["id"] == upload["photo_id"]


async def test_a_complete_nobody_asks_for_again_is_finished_by_the_sweep(
    aiohttp_client: Any,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    make_token: TokenMaker,
) -> None:
    """A completer killed mid-way whose client never calls complete again: the upload used to
    stay "completing" for ever, its object owned by nobody. The expiry sweep finishes it into
    exactly one photo once its lease ran out a while ago."""
    from darkroom_ingest.chunked import ABANDONED_COMPLETE_MS
    from darkroom_ingest.deps import DEPS

    capi = await lease_client(aiohttp_client, chunk_settings)
    token = await make_token()
    event = await make_event(capi, token)
    upload, data = await all_chunks_in(capi, token, event["id"])
    uploads = capi.server.app[MONGO_DB]["uploads"]
    gone = now_ms() - ABANDONED_COMPLETE_MS - 1000
    await uploads.update_one(
        {"_id": upload["upload_id"]},
        {
            "$set": {
                "state": "completing",
                "completing_ms": gone,
                UNTIL: gone,
                HOLDER: "lease_of_a_dead_process",
            }
        },
    )
    assert await capi.server.app[DEPS].chunked.expire_due() == 1
    record = await uploads.find_one({"_id": upload["upload_id"]})
    assert record is not None
    assert record["state"] == "completed"
    photos = capi.server.app[MONGO_DB][records.PHOTOS]
    assert await photos.count_documents({"event_id": event["id"], "_id": upload["photo_id"]}) == 1
    # A live complete (its lease still renewed) is left to its holder.
    other = await start_upload(capi, token, event["id"], data)
    await uploads.update_one(
        {"_id": other["upload_id"]},
        {"$set": {"state": "completing", "completing_ms": now_ms(), UNTIL: now_ms() + 60_000}},
    )
    assert await capi.server.app[DEPS].chunked.expire_due() == 0
    assert (await uploads.find_one({"_id": other["upload_id"]}) or {})["state"] == "completing"
