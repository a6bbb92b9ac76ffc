"""The orphan sweep against the real servers: objects and multipart uploads whose record never
landed go, everything a record owns stays.

S3 sets LastModified itself, so an object cannot be backdated: the sweeps here look from a later
"now" (an injected clock) or use a grace of 0. Each test has its own bucket and database, so the
sweep sees only what the test made (a sweep of the run's shared bucket would see other tests'
objects).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from darkroom_ingest.app import create_app
from darkroom_ingest.cli import create_token
from darkroom_ingest.orphans import OrphanSweeper, swept_counter
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.mongo import MONGO_DB, Database
from darkroom_kit.storage import OBJECT_STORE, ObjectNotFound, S3ObjectStore, StoredPart
from prometheus_client import CollectorRegistry

from tests.factories.api import (
    Client,
    auth,
    make_event,
    put_chunk,
    start_upload,
    upload_photos,
)
from tests.factories.media import jpeg_like, named_jpegs
from tests.factories.messaging import eventually
from tests.factories.servers import cli_env

HOUR_MS = 3600 * 1000


def later(ms: int) -> Any:
    """A clock ``ms`` ahead of the real one."""
    return lambda: now_ms() + ms


@pytest.fixture
def own_settings(ingest_settings: IngestSettings) -> IngestSettings:
    suffix = secrets.token_hex(3)
    return ingest_settings.model_copy(
        update={
            "s3_bucket": f"{ingest_settings.s3_bucket}-orph-{suffix}",
            "mongo_db": f"{ingest_settings.mongo_db}_orph_{suffix}",
        }
    )


async def open_api(aiohttp_client: Any, settings: IngestSettings) -> tuple[Client, str]:
    api: Client = await aiohttp_client(create_app(settings))
    token = await create_token(
        settings, "test", ["photos.read", "photos.write", "events.write"], None
    )
    return api, token


@pytest.fixture
async def api_token(
    aiohttp_client: Any, own_settings: IngestSettings, watch_events: QueueSpec
) -> AsyncIterator[tuple[Client, str]]:
    yield await open_api(aiohttp_client, own_settings)


def parts_of(api: Client) -> tuple[Database, S3ObjectStore]:
    return api.server.app[MONGO_DB], api.server.app[OBJECT_STORE]


async def start_chunked(api: Client, token: str, event_id: str, data: bytes) -> dict[str, Any]:
    """A chunked upload of one chunk, open: all its bytes sent, not completed."""
    upload = await start_upload(api, token, event_id, data, name=f"{secrets.token_hex(3)}.jpg")
    put = await put_chunk(api, token, upload, data, 0)
    assert put.status == 200, await put.text()
    return upload


async def assemble(db: Database, store: S3ObjectStore, upload_id: str, state: str) -> str:
    """Complete an upload's S3 object as a complete does, then leave its record in ``state``
    (a completer that died before the photo was made, or an upload that expired after)."""
    doc = await db["uploads"].find_one({"_id": upload_id})
    assert doc is not None
    part = doc["parts"]["0"]
    await store.complete_multipart(
        doc["key"], doc["s3_upload_id"], [StoredPart(1, part["etag"], part["size"])]
    )
    await db["uploads"].update_one(
        {"_id": upload_id}, {"$set": {"state": state, "completing_ms": now_ms()}}
    )
    return str(doc["key"])


async def exists(store: S3ObjectStore, key: str) -> bool:
    try:
        await store.head(key)
    except ObjectNotFound:
        return False
    return True


async def test_sweep_removes_orphans_and_keeps_what_records_own(
    api_token: tuple[Client, str],
) -> None:
    api, token = api_token
    db, store = parts_of(api)
    event_id = (await make_event(api, token))["id"]

    # What records own.
    live = (await upload_photos(api, token, event_id, *named_jpegs("live.jpg")))["live.jpg"]
    live_thumb = records.variant_key(event_id, live["id"], "thumb")
    await store.put_bytes(live_thumb, b"thumb", "image/jpeg")
    # A deletion that died between the tombstone and the objects: deletion owns them.
    dying = (await upload_photos(api, token, event_id, *named_jpegs("dying.jpg")))["dying.jpg"]
    await db[records.PHOTOS].update_one({"_id": dying["id"]}, {"$set": {"status": "deleting"}})
    dying_thumb = records.variant_key(event_id, dying["id"], "thumb")
    await store.put_bytes(dying_thumb, b"thumb", "image/jpeg")
    open_upload = await start_chunked(api, token, event_id, jpeg_like(100))
    # A complete between the S3 completion and the photo: the object is there, no photo yet.
    completing = await start_chunked(api, token, event_id, jpeg_like(100))
    completing_key = await assemble(db, store, completing["upload_id"], "completing")
    kept_keys = [
        records.original_key(event_id, live["id"]),
        live_thumb,
        records.original_key(event_id, dying["id"]),
        dying_thumb,
        completing_key,
        f"events/{event_id}/notes.txt",  # not a photo's key: never touched
        "elsewhere/x.jpg",  # outside events/
    ]
    await store.put_bytes(kept_keys[-2], b"n", "text/plain")
    await store.put_bytes(kept_keys[-1], b"x", "image/jpeg")
    open_s3_id = (await db["uploads"].find_one({"_id": open_upload["upload_id"]}) or {})[
        "s3_upload_id"
    ]
    elsewhere_upload = await store.create_multipart("elsewhere/big.mp4", "video/mp4")

    # Orphans: a batch killed before its records, a thumbnail stored after its photo was
    # deleted, an expired upload whose object had been assembled, a multipart upload whose
    # record never landed (with a part, so it is young until the clock moves).
    orphan_original = records.original_key(event_id, new_id("ph"))
    orphan_variant = records.variant_key(event_id, new_id("ph"), "hero")
    await store.put_bytes(orphan_original, b"o", "image/jpeg")
    await store.put_bytes(orphan_variant, b"v", "image/jpeg")
    expired = await start_chunked(api, token, event_id, jpeg_like(100))
    expired_key = await assemble(db, store, expired["upload_id"], "expired")
    orphan_mp_key = records.original_key(event_id, new_id("ph"))
    orphan_mp = await store.create_multipart(orphan_mp_key, "image/jpeg")
    await store.upload_part(orphan_mp_key, orphan_mp, 1, b"part")

    # Everything is younger than the grace period: nothing goes.
    young = await OrphanSweeper(db, store, grace_seconds=3600, max_deletions=100).sweep()
    assert young.orphans == 0, young.as_dict()
    assert young.kept_young >= 8

    # A multipart upload that never received a part holds no bytes and may be a batch file
    # whose first part is still arriving (moto_server dates every upload 2010): never aborted.
    partless_key = records.original_key(event_id, new_id("ph"))
    partless = await store.create_multipart(partless_key, "image/jpeg")

    registry = CollectorRegistry()
    sweeper = OrphanSweeper(
        db,
        store,
        grace_seconds=3600,
        max_deletions=100,
        swept=swept_counter(registry),
        clock=later(2 * HOUR_MS),
    )
    report = await sweeper.sweep()
    assert {o["key"] for o in report.orphan_objects} == {
        orphan_original,
        orphan_variant,
        expired_key,
    }
    assert {(u["key"], u["upload_id"]) for u in report.orphan_uploads} == {
        (orphan_mp_key, orphan_mp),
    }
    assert report.as_dict()["deleted_objects"] == 3
    assert report.as_dict()["aborted_uploads"] == 1
    assert not report.truncated
    for key in (orphan_original, orphan_variant, expired_key):
        assert not await exists(store, key), key
    for key in kept_keys:
        assert await exists(store, key), key
    still_open = await store.open_multipart_uploads("")
    assert open_s3_id in still_open
    assert elsewhere_upload in still_open
    assert orphan_mp not in still_open
    assert partless in still_open

    def swept(kind: str) -> float | None:
        return registry.get_sample_value("orphan_objects_swept_total", {"kind": kind})

    assert (swept("original"), swept("variant"), swept("multipart_upload")) == (2, 1, 1)

    # A second pass (another replica's, say) finds nothing left.
    again = await sweeper.sweep()
    assert again.orphans == 0, again.as_dict()
    # The live photo is still served.
    served = await api.get(f"/v1/photos/{live['id']}", headers=auth(token))
    assert served.status == 200


async def test_a_pass_is_bounded_and_pages_through_the_listing(
    api_token: tuple[Client, str],
) -> None:
    api, _ = api_token
    db, store = parts_of(api)
    orphans, live = [], []
    for i in range(7):
        photo_id = new_id("ph")
        key = records.original_key("ev_pages", photo_id)
        await store.put_bytes(key, b"x", "image/jpeg")
        if i % 3 == 1:
            # The sweep asks only whether the id has a record, whatever its fields.
            await db[records.PHOTOS].insert_one({"_id": photo_id, "status": "uploaded"})
            live.append(key)
        else:
            orphans.append(key)
    sweeper = OrphanSweeper(
        db, store, grace_seconds=0, max_deletions=3, clock=later(HOUR_MS), page_size=2
    )
    first = await sweeper.sweep()
    assert len(first.orphan_objects) == 3
    assert first.truncated
    second = await sweeper.sweep()
    assert len(second.orphan_objects) == 2
    assert not second.truncated
    assert {o["key"] for o in first.orphan_objects + second.orphan_objects} == set(orphans)
    assert await store.list_keys("events/ev_pages/") == sorted(live)


def darkroom(settings: IngestSettings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "darkroom"), *args],
        env={**os.environ, **cli_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_dry_run_reports_without_deleting_and_the_cli(
    api_token: tuple[Client, str], own_settings: IngestSettings
) -> None:
    api, token = api_token
    db, store = parts_of(api)
    event_id = (await make_event(api, token))["id"]
    live = (await upload_photos(api, token, event_id, *named_jpegs("live.jpg")))["live.jpg"]
    live_key = records.original_key(event_id, live["id"])
    orphan = records.original_key(event_id, new_id("ph"))
    await store.put_bytes(orphan, b"o", "image/jpeg")
    orphan_mp_key = records.original_key(event_id, new_id("ph"))
    orphan_mp = await store.create_multipart(orphan_mp_key, "image/jpeg")
    await store.upload_part(orphan_mp_key, orphan_mp, 1, b"part")

    dry = await OrphanSweeper(
        db, store, grace_seconds=3600, max_deletions=100, clock=later(2 * HOUR_MS)
    ).sweep(dry_run=True)
    assert [o["key"] for o in dry.orphan_objects] == [orphan]
    assert [u["upload_id"] for u in dry.orphan_uploads] == [orphan_mp]
    assert dry.as_dict()["deleted_objects"] == 0
    assert dry.as_dict()["aborted_uploads"] == 0
    assert await exists(store, orphan)
    assert orphan_mp in await store.open_multipart_uploads("events/")

    # The server CLI, as an operator runs it.
    shown = darkroom(own_settings, "orphans", "sweep", "--dry-run", "--grace-seconds", "0")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["dry_run"] is True
    assert [o["key"] for o in report["orphan_objects"]] == [orphan]
    assert [u["upload_id"] for u in report["orphan_uploads"]] == [orphan_mp]
    assert report["deleted_objects"] == 0
    assert await exists(store, orphan)
    assert orphan_mp in await store.open_multipart_uploads("events/")

    done = darkroom(own_settings, "orphans", "sweep", "--grace-seconds", "0")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dry_run"] is False
    assert (report["deleted_objects"], report["aborted_uploads"]) == (1, 1)
    assert not await exists(store, orphan)
    assert orphan_mp not in await store.open_multipart_uploads("events/")
    assert await exists(store, live_key)

    refused = darkroom(own_settings, "orphans", "sweep", "--grace-seconds", "-1")
    assert refused.returncode == 2
    assert "--grace-seconds" in refused.stderr


async def test_upload_ingest_sweeps_periodically_and_counts(
    aiohttp_client: Any, own_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    api, token = await open_api(
        aiohttp_client,
        own_settings.model_copy(
            # A few seconds: LastModified has whole seconds, and the live photo's object is
            # written before its record, as in every batch.
            update={"orphan_sweep_interval_seconds": 0.2, "orphan_grace_seconds": 3}
        ),
    )
    _, store = parts_of(api)
    event_id = (await make_event(api, token))["id"]
    live = (await upload_photos(api, token, event_id, *named_jpegs("live.jpg")))["live.jpg"]
    orphan = records.original_key(event_id, new_id("ph"))
    await store.put_bytes(orphan, b"o", "image/jpeg")

    async def swept() -> bool:
        return not await exists(store, orphan)

    await eventually(swept, timeout=15)
    assert await exists(store, records.original_key(event_id, live["id"]))
    metrics = await (await api.get("/metrics")).text()
    assert 'orphan_objects_swept_total{kind="original"} 1.0' in metrics
