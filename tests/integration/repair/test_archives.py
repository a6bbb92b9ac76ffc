"""Event archives end to end: the request (upload-ingest), the ZIP written by streaming
(metadata-repair), its signed download link used without a token, expiry, refusals, and a
kill -9 of the archiving service mid-way."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import zipfile
from typing import Any

import pytest
from darkroom_ingest.deps import DEPS
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.messaging import Topology
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.operations import Operations
from darkroom_kit.outbox import OUTBOX, OUTBOX_DUE, OUTBOX_DUE_BY, OUTBOXES
from darkroom_kit.storage import OBJECT_STORE
from darkroom_repair.app import ARCHIVER, queue_specs
from darkroom_repair.app import create_app as create_repair
from darkroom_repair.settings import RepairSettings
from yarl import URL

from tests.factories.api import (
    Client,
    TokenMaker,
    assert_problem,
    auth,
    form,
    make_event,
)
from tests.factories.media import jpeg_bytes, jpeg_like
from tests.factories.messaging import eventually
from tests.factories.servers import QueueJanitor, start_service, to_env


async def seed_photos(api: Client, token: str, event_id: str, seed: bytes, count: int) -> list[str]:
    """``count`` photos of one stored original (uploading each would test uploads, not
    archives), all named alike, so the archive must make the names unique."""
    resp = await api.post(
        f"/v1/events/{event_id}/photos", data=form(("seed.jpg", seed)), headers=auth(token)
    )
    assert resp.status == 201, await resp.text()
    photos = api.app[MONGO_DB][records.PHOTOS]
    first = await photos.find_one({"event_id": event_id}, {"outbox": 0, "outbox_due_ms": 0})
    assert first is not None
    first.pop("content_key", None)
    clones = [
        {
            **first,
            "_id": new_id("ph"),
            "filename": f"copy-{i}.jpg",
            "original_filename": "IMG.jpg",
            "created_ms": first["created_ms"] + i + 1,
        }
        for i in range(count - 1)
    ]
    if clones:
        await photos.insert_many(clones)
    return [first["_id"], *(c["_id"] for c in clones)]


async def archive(api: Client, token: str, event_id: str, **body: Any) -> tuple[int, Any]:
    resp = await api.post(f"/v1/events/{event_id}/archives", json=body, headers=auth(token))
    return resp.status, await resp.json()


async def finished(api: Client, token: str, op_id: str, timeout: float = 120) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        resp = await api.get(f"/v1/operations/{op_id}?wait=5", headers=auth(token))
        op: dict[str, Any] = await resp.json()
        return op if op["state"] in ("done", "failed") else None

    result: dict[str, Any] = await eventually(ended, timeout=timeout)
    return result


async def download(api: Client, url: str) -> bytes:
    resp = await api.get(URL(url, encoded=True).raw_path_qs)  # no token
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/zip"
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    return await resp.read()


async def test_an_archive_of_300_photos_opens_and_holds_every_byte(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
) -> None:
    settings = RepairSettings(**settings_kwargs)
    janitor.add(*queue_specs(Topology(settings.amqp_namespace), settings))
    await aiohttp_client(create_repair(settings))
    token = await make_token()
    event = await make_event(api, token)
    seed = jpeg_bytes(320, 240)
    ids = await seed_photos(api, token, event["id"], seed, 300)

    status, op = await archive(api, token, event["id"])
    assert status == 202, op
    assert op["kind"] == "archive"
    done = await finished(api, token, op["id"])
    assert done["state"] == "done", done
    result = done["result"]
    assert result["files"] == 300
    assert done["progress"]["files"] == done["progress"]["files_total"] == 300
    assert done["progress"]["bytes"] == 300 * len(seed)
    assert "key" not in result  # never a storage key
    data = await download(api, result["download_url"])
    assert len(data) == result["size"]
    # A download cut short resumes where it stopped.
    rest = await api.get(
        URL(result["download_url"], encoded=True).raw_path_qs, headers={"Range": "bytes=100-"}
    )
    assert rest.status == 206
    assert await rest.read() == data[100:]
    assert hashlib.sha256(data).hexdigest() == result["sha256"]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        assert len(infos) == 300
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        names = [i.filename for i in infos]
        assert names[0] == "seed.jpg"
        assert names[1] == "IMG.jpg"
        assert names[2] == "IMG (2).jpg"  # the same name made unique
        assert len({n.lower() for n in names}) == 300
        assert all(zf.read(i) == seed for i in infos)

    # The same selection again while the archive is fresh: the same archive.
    status, again = await archive(api, token, event["id"])
    assert status == 200
    assert again["id"] == op["id"]
    # A chosen selection is another archive, in that order.
    status, chosen = await archive(
        api, token, event["id"], photo_ids=[ids[5], ids[0]], variant="original"
    )
    assert status == 202
    chosen_done = await finished(api, token, chosen["id"])
    with zipfile.ZipFile(
        io.BytesIO(await download(api, chosen_done["result"]["download_url"]))
    ) as zf:
        assert zf.namelist() == ["IMG.jpg", "seed.jpg"]


async def test_archives_expire_and_their_links_stop(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
) -> None:
    settings = RepairSettings(
        **settings_kwargs, archive_ttl_seconds=2, archive_expiry_interval_seconds=0
    )
    janitor.add(*queue_specs(Topology(settings.amqp_namespace), settings))
    worker = await aiohttp_client(create_repair(settings))
    token = await make_token()
    event = await make_event(api, token)
    await seed_photos(api, token, event["id"], jpeg_bytes(64, 48), 3)
    status, op = await archive(api, token, event["id"])
    done = await finished(api, token, op["id"])
    url = done["result"]["download_url"]
    assert (await api.get(URL(url, encoded=True).raw_path_qs)).status == 200
    await asyncio.sleep(2.5)
    await assert_problem(
        await api.get(URL(url, encoded=True).raw_path_qs), 404, "archive_not_found"
    )
    assert await worker.app[ARCHIVER].expire() == 1
    store = api.app[OBJECT_STORE]
    assert await store.list_keys(f"archives/{event['id']}/") == []
    after = await (await api.get(f"/v1/operations/{op['id']}", headers=auth(token))).json()
    assert "download_url" not in after["result"]
    # Expired: the same selection makes a new archive.
    status, fresh = await archive(api, token, event["id"])
    assert status == 202
    assert fresh["id"] != op["id"]


async def test_an_archive_stops_once_a_photo_it_holds_is_deleted_or_hidden(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
) -> None:
    """A deleted (or hidden) photo is not downloadable through an archive made before: its link
    answers 410 archive_outdated, and asking again makes an archive without it. A removal of a
    photo an archive does not hold leaves that archive alone."""
    settings = RepairSettings(**settings_kwargs)
    janitor.add(*queue_specs(Topology(settings.amqp_namespace), settings))
    await aiohttp_client(create_repair(settings))
    token = await make_token()
    event = await make_event(api, token)
    # Photos of their own (seed_photos' copies share one original, which a deletion removes).
    resp = await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(*((f"p{i}.jpg", jpeg_bytes(64 + i, 48)) for i in range(4))),
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    photos = api.app[MONGO_DB][records.PHOTOS]
    by_name = {d["filename"]: d["_id"] async for d in photos.find({"event_id": event["id"]})}
    ids = [by_name[f"p{i}.jpg"] for i in range(4)]

    async def made(**body: Any) -> dict[str, Any]:
        status, op = await archive(api, token, event["id"], **body)
        assert status in (200, 202), op
        done = await finished(api, token, op["id"])
        assert done["state"] == "done", done
        assert "photo_ids" not in done["result"]  # the services' own
        return done

    async def fetch(done: dict[str, Any]) -> int:
        url = URL(done["result"]["download_url"], encoded=True).raw_path_qs
        return (await api.get(url)).status

    everything = await made()
    first_two = await made(photo_ids=ids[:2])
    with_hidden = await made(include_hidden=True)
    hide = await api.patch(f"/v1/photos/{ids[3]}", json={"is_hidden": True}, headers=auth(token))
    assert hide.status == 200, await hide.text()
    resp = await api.get(URL(everything["result"]["download_url"], encoded=True).raw_path_qs)
    await assert_problem(resp, 410, "archive_outdated")
    # Read again, the Operation says so and offers no link.
    reread = await (await api.get(f"/v1/operations/{everything['id']}", headers=auth(token))).json()
    assert reread["result"]["outdated"] is True
    assert "download_url" not in reread["result"]
    assert await fetch(first_two) == 200  # it never held the hidden photo
    # Found whole once: not counted again until the next removal.
    kept = await api.app[MONGO_DB][records.OPERATIONS].find_one({"_id": first_two["id"]})
    assert kept is not None
    assert kept["result"]["whole_at_removals"]["removals"] == 1
    assert await fetch(with_hidden) == 200  # made with hidden photos
    show = await api.patch(f"/v1/photos/{ids[3]}", json={"is_hidden": False}, headers=auth(token))
    assert show.status == 200, await show.text()
    assert await fetch(everything) == 200  # whole again
    reread = await (await api.get(f"/v1/operations/{everything['id']}", headers=auth(token))).json()
    assert "outdated" not in reread["result"]
    assert "download_url" in reread["result"]

    gone = await api.delete(f"/v1/photos/{ids[1]}", headers=auth(token))
    assert gone.status == 204, await gone.text()
    assert await fetch(first_two) == 410
    assert await fetch(with_hidden) == 410

    again = await made()
    assert again["id"] != everything["id"]
    assert again["result"]["files"] == 3  # shown again: only the deleted one is left out
    assert await fetch(again) == 200


async def test_a_request_whose_rival_ended_meanwhile_starts_its_archive(
    api: Client, make_token: TokenMaker, janitor: QueueJanitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive holding the event's key ends between a request's insert (refused) and its
    second lookup: the event is free, so the request starts its archive rather than a 409."""
    token = await make_token()
    event = await make_event(api, token)
    ids = await seed_photos(api, token, event["id"], jpeg_bytes(64, 48), 2)
    status, rival = await archive(api, token, event["id"], photo_ids=[ids[0]])
    assert status == 202, rival
    jobs = api.app[DEPS].jobs
    lookup = jobs._archive_in_hand
    lookups = 0

    async def rival_unseen_then_ended(*args: Any) -> Any:
        nonlocal lookups
        lookups += 1
        if lookups == 1:
            return None  # looked before the rival was stored
        await Operations(api.app[MONGO_DB]).fail(rival["id"], "ended by the test")
        return await lookup(*args)

    monkeypatch.setattr(jobs, "_archive_in_hand", rival_unseen_then_ended)
    status, mine = await archive(api, token, event["id"], photo_ids=[ids[1]])
    assert (status, lookups) == (202, 2), mine
    assert mine["id"] != rival["id"]


async def test_an_archive_abandoned_mid_way_is_failed_and_frees_its_event(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
) -> None:
    """An archive left running with a free lease past the longest retry delay (its command was
    dead-lettered: the database was away for every try) is failed by the expiry pass, so the
    event takes archives again; one whose holder is alive, or that moved lately, is not. So is
    one queued for longer than an archive lives (never claimed), not one queued lately."""
    settings = RepairSettings(**settings_kwargs, archive_expiry_interval_seconds=0)
    janitor.add(*queue_specs(Topology(settings.amqp_namespace), settings))
    token = await make_token()
    events = [await make_event(api, token) for _ in range(6)]
    ops = api.app[MONGO_DB][records.OPERATIONS]
    started = []
    for event in events:
        await seed_photos(api, token, event["id"], jpeg_bytes(64, 48), 1)
        status, op = await archive(api, token, event["id"])
        assert status == 202, op
        started.append(op["id"])
    # No worker yet: each is as a worker that died or gave up would leave it.
    hour_ago = now_ms() - 3600_000
    abandoned, alive, lately, never_started, queued, released = started
    await ops.update_many(
        {"_id": {"$in": [abandoned, alive, lately, released]}},
        {
            "$set": {"state": "running", "updated_ms": hour_ago, "lease_until_ms": 0},
            # Their commands are never published: the worker below must not carry them out.
            "$unset": {OUTBOX: "", OUTBOX_DUE: "", OUTBOXES: "", OUTBOX_DUE_BY: ""},
        },
    )
    await ops.update_one({"_id": alive}, {"$set": {"lease_until_ms": now_ms() + 60_000}})
    await ops.update_one({"_id": lately}, {"$set": {"updated_ms": now_ms()}})
    # Held for an hour without a report, then given up for a retry a long delay away.
    lease = Operations(api.app[MONGO_DB]).lease(released, 60_000)
    await ops.update_one({"_id": released}, {"$set": lease.fields()})
    await Operations(api.app[MONGO_DB]).release(lease)
    # What the abandoned one left: a ZIP written but never recorded, an upload begun.
    store = api.app[OBJECT_STORE]
    left = records.archive_key(events[0]["id"], abandoned)
    await store.put_bytes(left, b"PK", "application/zip")
    await store.create_multipart(left, "application/zip")
    day_ago = now_ms() - int(settings.archive_ttl_seconds * 1000) - 60_000
    await ops.update_many(
        {"_id": {"$in": [never_started, queued]}},
        {"$unset": {OUTBOX: "", OUTBOX_DUE: "", OUTBOXES: "", OUTBOX_DUE_BY: ""}},
    )
    await ops.update_one({"_id": never_started}, {"$set": {"created_ms": day_ago}})

    worker = await aiohttp_client(create_repair(settings))
    await worker.app[ARCHIVER].expire()
    states = {d["_id"]: d["state"] async for d in ops.find({"_id": {"$in": started}}, {"state": 1})}
    assert states == {
        abandoned: "failed",
        alive: "running",
        lately: "running",
        never_started: "failed",
        queued: "queued",
        released: "running",
    }
    assert await store.list_keys(f"archives/{events[0]['id']}/") == []
    assert await store.open_multipart_uploads(left) == []
    failed = await (await api.get(f"/v1/operations/{abandoned}", headers=auth(token))).json()
    assert failed["result"]["error"].startswith("abandoned")
    status, again = await archive(api, token, events[0]["id"])
    assert status == 202, again
    assert again["id"] != abandoned
    status, busy = await archive(api, token, events[1]["id"], include_hidden=True)
    assert (status, busy["code"]) == (409, "archive_in_progress")


async def test_an_archive_whose_file_stays_gone_fails_with_its_name_and_leaves_nothing(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
) -> None:
    """A file that is gone from storage (not its photo) on every try: the last try ends the
    Operation failed with the file's name (never its storage key), and nothing of the archive
    is left in storage, neither a ZIP nor an open upload."""
    settings = RepairSettings(
        **settings_kwargs,
        archive_retry_delays_ms=(100, 200),
        archive_part_bytes=5 * 1024 * 1024,
    )
    janitor.add(*queue_specs(Topology(settings.amqp_namespace), settings))
    await aiohttp_client(create_repair(settings))
    token = await make_token()
    event = await make_event(api, token)
    resp = await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("big.jpg", jpeg_like(6 * 1024 * 1024)), ("gone.jpg", jpeg_bytes(64, 48))),
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    gone = await api.app[MONGO_DB][records.PHOTOS].find_one(
        {"event_id": event["id"], "filename": "gone.jpg"}
    )
    assert gone is not None
    store = api.app[OBJECT_STORE]
    await store.delete_many([gone["original_key"]])

    status, op = await archive(api, token, event["id"])
    assert status == 202, op
    done = await finished(api, token, op["id"])
    assert done["state"] == "failed", done
    assert "gone.jpg" in done["result"]["error"]
    assert gone["original_key"] not in done["result"]["error"]
    key = records.archive_key(event["id"], op["id"])
    assert await store.list_keys(f"archives/{event['id']}/") == []
    assert await store.open_multipart_uploads(key) == []


async def test_bad_archive_requests_are_refused_clearly(
    api: Client, make_token: TokenMaker, janitor: QueueJanitor
) -> None:
    """No worker runs here: an archive asked for stays queued."""
    token = await make_token()
    event = await make_event(api, token)
    other = await make_event(api, token)
    empty = await make_event(api, token)
    mine = await seed_photos(api, token, event["id"], jpeg_bytes(64, 48), 2)
    theirs = await seed_photos(api, token, other["id"], jpeg_bytes(64, 48), 1)

    problem = await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/archives",
            json={"photo_ids": [mine[0], theirs[0]]},
            headers=auth(token),
        ),
        422,
        "photo_not_in_event",
    )
    assert problem["errors"][0]["field"] == "/photo_ids/1"
    for body in ({"photo_ids": []}, {}):
        target = event["id"] if body else empty["id"]
        await assert_problem(
            await api.post(f"/v1/events/{target}/archives", json=body, headers=auth(token)),
            422,
            "empty_selection",
        )
    await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/archives",
            json={"photo_ids": [mine[0], mine[0]]},
            headers=auth(token),
        ),
        422,
        "validation_failed",
    )
    await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/archives", json={"variant": "raw"}, headers=auth(token)
        ),
        422,
        "validation_failed",
    )
    gallery = await make_token("photos.read", event=event["id"])
    await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/archives",
            json={"include_hidden": True},
            headers=auth(gallery),
        ),
        422,
        "validation_failed",
    )
    await assert_problem(
        await api.post(f"/v1/events/{other['id']}/archives", json={}, headers=auth(gallery)),
        404,
        "event_not_found",
    )
    # One archive at a time per event; the same selection is that one.
    status, first = await archive(api, token, event["id"], include_hidden=True)
    assert status == 202
    assert first["state"] == "queued"
    status, same = await archive(api, token, event["id"], include_hidden=True)
    assert (status, same["id"]) == (202, first["id"])
    # An archive with hidden photos is not a gallery token's: not named, not readable.
    problem = await assert_problem(
        await api.post(f"/v1/events/{event['id']}/archives", json={}, headers=auth(gallery)),
        409,
        "archive_in_progress",
    )
    assert "operation_id" not in problem
    await assert_problem(
        await api.get(f"/v1/operations/{first['id']}", headers=auth(gallery)),
        404,
        "operation_not_found",
    )
    problem = await assert_problem(
        await api.post(
            f"/v1/events/{event['id']}/archives",
            json={"photo_ids": [mine[1]]},
            headers=auth(token),
        ),
        409,
        "archive_in_progress",
    )
    assert problem["operation_id"] == first["id"]


async def test_requests_at_once_start_one_archive_per_event(
    api: Client, make_token: TokenMaker, janitor: QueueJanitor
) -> None:
    """No worker runs here. Requests that arrive together (a double click, a retrying client)
    still find one archive: the same selection answers it, another is 409, and the event is
    free again once it ends."""
    token = await make_token()
    event = await make_event(api, token)
    ids = await seed_photos(api, token, event["id"], jpeg_bytes(64, 48), 8)
    ops = api.app[MONGO_DB][records.OPERATIONS]

    same = await asyncio.gather(*(archive(api, token, event["id"]) for _ in range(8)))
    assert {status for status, _ in same} == {202}
    assert len({op["id"] for _, op in same}) == 1
    assert await ops.count_documents({"kind": "archive", "params.event_id": event["id"]}) == 1
    await ops.delete_many({"kind": "archive"})

    others = await asyncio.gather(
        *(archive(api, token, event["id"], photo_ids=[photo_id]) for photo_id in ids)
    )
    started = [op for status, op in others if status == 202]
    refused = [op for status, op in others if status != 202]
    assert len(started) == 1, others
    assert {(p["status"], p["code"]) for p in refused} == {(409, "archive_in_progress")}
    assert await ops.count_documents({"kind": "archive", "params.event_id": event["id"]}) == 1

    await Operations(api.app[MONGO_DB]).fail(started[0]["id"], "stopped by the test")
    status, after = await archive(api, token, event["id"], photo_ids=[ids[0]])
    assert status == 202, after
    assert after["id"] != started[0]["id"]


async def test_an_archive_killed_mid_way_finishes_after_a_restart(
    api: Client,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
    tmp_path: Any,
) -> None:
    """metadata-repair as a real process, SIGKILLed while it writes the ZIP: the Operation is
    not left running, the restarted service writes the archive whole, and no multipart upload
    of the killed one is left open."""
    janitor.add(*queue_specs(Topology(settings_kwargs["amqp_namespace"])))
    env = {
        **os.environ,
        **to_env(settings_kwargs),
        "ARCHIVE_PART_BYTES": str(5 * 1024 * 1024),
        "ARCHIVE_RETRY_DELAYS_MS": "[200, 500]",
        # The killed worker's lease lapses soon, so the restarted one takes the archive over.
        "ARCHIVE_LEASE_SECONDS": "2",
    }
    token = await make_token()
    event = await make_event(api, token)
    seed = jpeg_like(6 * 1024 * 1024)
    await seed_photos(api, token, event["id"], seed, 40)

    def start() -> Any:
        return start_service(env, tmp_path, "metadata-repair")

    service = await asyncio.to_thread(start)
    try:
        status, op = await archive(api, token, event["id"])
        assert status == 202

        async def under_way() -> Any:
            got = await (await api.get(f"/v1/operations/{op['id']}", headers=auth(token))).json()
            return got if got["progress"]["files"] >= 2 else None

        await eventually(under_way, timeout=60, interval=0.02)
        service.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(service.process.wait, 10)
        stopped = await (await api.get(f"/v1/operations/{op['id']}", headers=auth(token))).json()
        assert stopped["state"] == "running"
        assert stopped["progress"]["files"] < 40
        # The killed process left its upload open (the restart must not leave it behind).
        store = api.app[OBJECT_STORE]
        key = records.archive_key(event["id"], op["id"])
        assert await store.open_multipart_uploads(key) != []
        service = await asyncio.to_thread(start)
        done = await finished(api, token, op["id"])
        assert done["state"] == "done", done
    finally:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(service.process.wait, 30)
    assert await store.open_multipart_uploads(key) == []
    data = await download(api, done["result"]["download_url"])
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert len(zf.infolist()) == 40
        assert zf.testzip() is None  # every entry's CRC holds
        assert zf.read(zf.infolist()[-1]) == seed
