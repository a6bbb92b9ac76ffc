"""S3 prefix imports against the real broker and the S3 and MongoDB stand-ins: what each object
becomes (counts and reasons exact), a rerun that imports nothing twice, bad input, a watching
import, and who may import where."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from darkroom_ingest.app import create_app
from darkroom_ingest.cli import create_token
from darkroom_ingest.deps import DEPS
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import ListedObject, S3ObjectStore, open_bucket

from tests.factories.api import Client, TokenMaker, assert_problem, auth, make_event, stored_keys
from tests.factories.media import jpeg_bytes, jpeg_like, png_bytes
from tests.factories.messaging import drain, eventually
from tests.factories.metrics import labels, moved, scrape

# Images above this are refused (the chunked limit applies to imports): a small one for tests.
MAX_IMAGE = 200_000
SECRET = "source-secret-never-shown"
UNSUPPORTED = "unsupported_type"
CHANGED = "changed_while_imported"


@pytest.fixture
def buckets(run_id: str) -> dict[str, str]:
    tag = secrets.token_hex(3)
    return {"drop": f"drop-{run_id}-{tag}", "far": f"far-{run_id}-{tag}"}


@pytest.fixture
def import_settings(ingest_settings: IngestSettings, buckets: dict[str, str]) -> IngestSettings:
    s3_url = ingest_settings.s3_endpoint_url or ""
    # The same server by another name: another endpoint to darkroom, so its objects are streamed.
    far_url = s3_url.replace("127.0.0.1", "localhost")
    assert far_url != s3_url
    sources = {
        "drop": {"bucket": buckets["drop"], "prefix": "cameras/", "secret_key": SECRET},
        "far": {"bucket": buckets["far"], "endpoint_url": far_url},
    }
    return IngestSettings(
        **{
            **ingest_settings.model_dump(),
            "s3_access_key": ingest_settings.s3_access_key.get_secret_value(),
            "s3_secret_key": ingest_settings.s3_secret_key.get_secret_value(),
            "import_sources": sources,
            "max_chunked_image_bytes": MAX_IMAGE,
            "import_claim_interval_seconds": 0.2,
            "import_batch_files": 4,
        }
    )


@pytest.fixture
async def iapi(
    aiohttp_client: Any, import_settings: IngestSettings, watch_events: QueueSpec
) -> Client:
    client: Client = await aiohttp_client(create_app(import_settings))
    return client


@pytest.fixture
async def drop(import_settings: IngestSettings, buckets: dict[str, str]) -> AsyncIterator[Bucket]:
    async with open_bucket(
        import_settings.s3_endpoint_url,
        buckets["drop"],
        import_settings.s3_access_key.get_secret_value(),
        import_settings.s3_secret_key.get_secret_value(),
        import_settings.s3_region,
    ) as store:
        await store.ensure_bucket()
        yield Bucket(store, "cameras/")


class Bucket:
    """An import source's bucket as the photographer's camera fills it."""

    def __init__(self, store: S3ObjectStore, base: str) -> None:
        self.store = store
        self.base = base

    async def put(self, key: str, data: bytes) -> None:
        await self.store.put_bytes(self.base + key, data, "application/octet-stream")


async def start_import(
    api: Client, token: str, event_id: str, wait: float = 30, **body: Any
) -> dict[str, Any]:
    resp = await api.post(
        f"/v1/events/{event_id}/imports?wait={wait}", json=body, headers=auth(token)
    )
    assert resp.status in (200, 202), await resp.text()
    return dict(await resp.json())


def reasons(op: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Each skipped or failed key (without the source's prefix): outcome, code, reason."""
    return {
        item["key"].removeprefix("cameras/"): (item["outcome"], item["code"], item["reason"])
        for item in op["result"]["items"]
    }


def counts(op: dict[str, Any]) -> dict[str, int]:
    return {k: op["progress"][k] for k in ("listed", "imported", "skipped", "failed")}


async def event_photos(api: Client, token: str, event_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/v1/events/{event_id}/photos?limit=200", headers=auth(token))
    assert resp.status == 200, await resp.text()
    return list((await resp.json())["items"])


async def uploaded_ids(settings: IngestSettings, queue: str, expect: int) -> list[str]:
    """The photo ids of the photo.uploaded messages published (waiting a little past
    ``expect`` for any extra one)."""
    messages = await drain(settings.amqp_url, queue, expect + 1, timeout=3)
    return [m["data"]["photo"]["id"] for m in messages if m.get("type") == records.PHOTO_UPLOADED]


async def test_prefix_import_counts_reasons_and_rerun(
    iapi: Client,
    make_token: TokenMaker,
    drop: Bucket,
    import_settings: IngestSettings,
    watch_events: QueueSpec,
) -> None:
    token = await make_token()
    event = await make_event(iapi, token)
    twin = jpeg_bytes()
    whole = jpeg_bytes()
    await drop.put("shoot/a-good.jpg", jpeg_bytes())
    await drop.put("shoot/b-good.png", png_bytes())
    await drop.put("shoot/c-twin.jpg", twin)
    await drop.put("shoot/d-twin.jpg", twin)
    await drop.put("shoot/e-notes.txt", b"call the bride's mother at 5pm\n")
    await drop.put("shoot/f-huge.jpg", jpeg_like(MAX_IMAGE + 1))
    await drop.put("shoot/g-cut.jpg", whole[: len(whole) // 2])
    await drop.put("shoot/h-empty.jpg", b"")
    await drop.put("elsewhere/i-other.jpg", jpeg_bytes())

    op = await start_import(iapi, token, event["id"], source="drop", prefix="shoot/")

    assert (op["kind"], op["state"]) == ("s3_import", "done"), op
    assert counts(op) == {"listed": 8, "imported": 3, "skipped": 5, "failed": 0}
    photos = {p["original_filename"]: p for p in await event_photos(iapi, token, event["id"])}
    assert sorted(photos) == ["a-good.jpg", "b-good.png", "c-twin.jpg"]
    assert reasons(op) == {
        "shoot/d-twin.jpg": ("skipped", "duplicate", f"duplicate_of {photos['c-twin.jpg']['id']}"),
        "shoot/e-notes.txt": (
            "skipped",
            "unsupported_type",
            "the content is an unrecognised format",
        ),
        "shoot/f-huge.jpg": (
            "skipped",
            "file_too_large",
            f"image/jpeg files are limited to {MAX_IMAGE} bytes",
        ),
        "shoot/g-cut.jpg": ("skipped", "truncated_file", "the JPEG data ends early"),
        "shoot/h-empty.jpg": ("skipped", "empty_file", "the object is empty"),
    }
    # Each photo knows the object it was made of (event, then a digest of source, key, ETag
    # and size): the key a rerun is matched by.
    refs = [
        doc.get("import_ref")
        async for doc in iapi.app[MONGO_DB][records.PHOTOS].find({"event_id": event["id"]})
    ]
    assert len(set(refs)) == 3
    assert all(str(ref).startswith(f"{event['id']}:") for ref in refs)
    published = await uploaded_ids(import_settings, watch_events.name, 3)
    assert sorted(published) == sorted(p["id"] for p in photos.values())
    # Only the photos' originals were kept: nothing of the refused objects.
    keys = await stored_keys(iapi, event["id"])
    assert sorted(keys) == sorted(
        records.original_key(event["id"], p["id"]) for p in photos.values()
    )

    again = await start_import(iapi, token, event["id"], source="drop", prefix="shoot/")

    assert again["id"] != op["id"]
    assert counts(again) == {"listed": 8, "imported": 0, "skipped": 8, "failed": 0}
    assert {k: v[1] for k, v in reasons(again).items()} == {
        "shoot/a-good.jpg": "already_imported",
        "shoot/b-good.png": "already_imported",
        "shoot/c-twin.jpg": "already_imported",
        "shoot/d-twin.jpg": "duplicate",
        "shoot/e-notes.txt": "unsupported_type",
        "shoot/f-huge.jpg": "file_too_large",
        "shoot/g-cut.jpg": "truncated_file",
        "shoot/h-empty.jpg": "empty_file",
    }
    assert len(await event_photos(iapi, token, event["id"])) == 3
    assert await uploaded_ids(import_settings, watch_events.name, 0) == []
    assert sorted(await stored_keys(iapi, event["id"])) == sorted(keys)


async def test_import_from_another_endpoint_is_streamed(
    iapi: Client, make_token: TokenMaker, import_settings: IngestSettings, buckets: dict[str, str]
) -> None:
    token = await make_token()
    event = await make_event(iapi, token)
    data = jpeg_bytes()
    async with open_bucket(
        import_settings.s3_endpoint_url,
        buckets["far"],
        import_settings.s3_access_key.get_secret_value(),
        import_settings.s3_secret_key.get_secret_value(),
        import_settings.s3_region,
    ) as far:
        await far.ensure_bucket()
        await far.put_bytes("day1/x.jpg", data, "image/jpeg")

    op = await start_import(iapi, token, event["id"], source="far", prefix="day1/")

    assert counts(op) == {"listed": 1, "imported": 1, "skipped": 0, "failed": 0}, op
    (photo,) = await event_photos(iapi, token, event["id"])
    original = await iapi.app[DEPS].store.get_bytes(records.original_key(event["id"], photo["id"]))
    assert original == data


async def test_unknown_source_and_empty_prefix(
    iapi: Client, make_token: TokenMaker, drop: Bucket
) -> None:
    token = await make_token()
    event = await make_event(iapi, token)

    unknown = await iapi.post(
        f"/v1/events/{event['id']}/imports",
        json={"source": "http://169.254.169.254/", "prefix": ""},
        headers=auth(token),
    )
    body = await assert_problem(unknown, 422, "import_source_not_found")
    assert [e["field"] for e in body["errors"]] == ["/source"]

    op = await start_import(iapi, token, event["id"], source="drop", prefix="nothing-here/")
    assert op["state"] == "done"
    assert counts(op) == {"listed": 0, "imported": 0, "skipped": 0, "failed": 0}
    assert op["result"]["note"] == "no objects under the prefix"


async def test_object_changed_while_imported_is_not_stored(
    iapi: Client, make_token: TokenMaker, drop: Bucket
) -> None:
    token = await make_token()
    event = await make_event(iapi, token)
    await drop.put("live/a.jpg", jpeg_bytes())
    await drop.put("live/b.jpg", jpeg_bytes())

    async def overwrite_b(obj: ListedObject) -> None:
        if obj.key.endswith("/b.jpg"):
            await drop.put("live/b.jpg", jpeg_bytes())

    iapi.app[DEPS].imports.before_read = overwrite_b
    op = await start_import(iapi, token, event["id"], source="drop", prefix="live/")

    assert counts(op) == {"listed": 2, "imported": 1, "skipped": 0, "failed": 1}, op
    assert reasons(op) == {
        "live/b.jpg": (
            "failed",
            "changed_while_imported",
            "the object changed while it was imported",
        )
    }
    (photo,) = await event_photos(iapi, token, event["id"])
    assert photo["original_filename"] == "a.jpg"
    assert await stored_keys(iapi, event["id"]) == [records.original_key(event["id"], photo["id"])]

    # Imported again, the new version is another object, and is imported.
    iapi.app[DEPS].imports.before_read = None
    again = await start_import(iapi, token, event["id"], source="drop", prefix="live/")
    assert counts(again) == {"listed": 2, "imported": 1, "skipped": 1, "failed": 0}, again


async def test_cap_and_archived_event(iapi: Client, make_token: TokenMaker, drop: Bucket) -> None:
    token = await make_token()
    event = await make_event(iapi, token, photo_cap=2)
    for name in ("a", "b", "c"):
        await drop.put(f"capped/{name}.jpg", jpeg_bytes())

    op = await start_import(iapi, token, event["id"], source="drop", prefix="capped/")

    assert op["state"] == "failed", op
    assert op["result"]["code"] == "photo_cap_exceeded"
    assert counts(op) == {"listed": 3, "imported": 2, "skipped": 0, "failed": 1}
    assert {v[1] for v in reasons(op).values()} == {"photo_cap_exceeded"}
    assert len(await event_photos(iapi, token, event["id"])) == 2

    full = await iapi.post(
        f"/v1/events/{event['id']}/imports", json={"source": "drop"}, headers=auth(token)
    )
    await assert_problem(full, 400, "photo_cap_exceeded")
    other = await make_event(iapi, token)
    assert (await iapi.post(f"/v1/events/{other['id']}/archive", headers=auth(token))).status == 200
    archived = await iapi.post(
        f"/v1/events/{other['id']}/imports", json={"source": "drop"}, headers=auth(token)
    )
    await assert_problem(archived, 409, "event_archived")


async def test_watch_imports_new_objects_until_stopped(
    iapi: Client, make_token: TokenMaker, drop: Bucket
) -> None:
    token = await make_token()
    event = await make_event(iapi, token)
    await drop.put("watched/1.jpg", jpeg_bytes())
    op = await start_import(
        iapi,
        token,
        event["id"],
        wait=0,
        source="drop",
        prefix="watched/",
        watch=True,
        poll_seconds=1,
    )

    async def imported(n: int) -> dict[str, Any] | None:
        resp = await iapi.get(f"/v1/operations/{op['id']}", headers=auth(token))
        body = dict(await resp.json())
        return body if body["progress"]["imported"] >= n else None

    await eventually(lambda: imported(1))
    await drop.put("watched/2.jpg", jpeg_bytes())
    running = await eventually(lambda: imported(2))
    assert running["state"] == "running"

    stop = await iapi.post(f"/v1/operations/{op['id']}/cancel?wait=10", headers=auth(token))
    assert stop.status == 200, await stop.text()
    stopped = await stop.json()
    assert stopped["state"] == "done"
    assert stopped["result"]["stopped"] is True
    assert counts(stopped) == {"listed": 2, "imported": 2, "skipped": 0, "failed": 0}
    names = sorted(p["original_filename"] for p in await event_photos(iapi, token, event["id"]))
    assert names == ["1.jpg", "2.jpg"]


async def test_sources_listed_without_credentials(iapi: Client, make_token: TokenMaker) -> None:
    resp = await iapi.get("/v1/import-sources", headers=auth(await make_token()))
    assert resp.status == 200
    text = await resp.text()
    body = await resp.json()
    assert [s["name"] for s in body["items"]] == ["drop", "far"]
    assert body["items"][0]["prefix"] == "cameras/"
    for secret in (SECRET, "darkroom-secret", "localhost", "127.0.0.1", "secret_key"):
        assert secret not in text
    guest = await make_token("photos.read")
    refused = await iapi.get("/v1/import-sources", headers=auth(guest))
    await assert_problem(refused, 403, "insufficient_scope")


async def test_event_bound_token_stays_in_its_event(
    iapi: Client, make_token: TokenMaker, drop: Bucket
) -> None:
    admin = await make_token()
    mine = await make_event(iapi, admin)
    theirs = await make_event(iapi, admin)
    bound = await make_token("photos.write", event=mine["id"])

    refused = await iapi.post(
        f"/v1/events/{theirs['id']}/imports", json={"source": "drop"}, headers=auth(bound)
    )
    await assert_problem(refused, 404, "event_not_found")
    # A source not configured for its event does not exist for it, not even in its own event.
    listed = await (await iapi.get("/v1/import-sources", headers=auth(bound))).json()
    assert listed["items"] == []
    own = await iapi.post(
        f"/v1/events/{mine['id']}/imports", json={"source": "drop"}, headers=auth(bound)
    )
    problem = await assert_problem(own, 422, "import_source_not_found")
    assert problem["errors"][0]["field"] == "/source"
    assert "far" not in problem["detail"]

    op = await start_import(iapi, admin, theirs["id"], source="drop", prefix="none/")
    hidden = await iapi.get(f"/v1/operations/{op['id']}", headers=auth(bound))
    await assert_problem(hidden, 404, "operation_not_found")
    cancel = await iapi.post(f"/v1/operations/{op['id']}/cancel", headers=auth(bound))
    await assert_problem(cancel, 404, "operation_not_found")
    db = iapi.app[MONGO_DB]
    assert await db[records.PHOTOS].count_documents({"event_id": theirs["id"]}) == 0


async def test_keys_with_dot_dot_segments_are_never_sent_on(
    iapi: Client, make_token: TokenMaker, drop: Bucket
) -> None:
    token = await make_token()
    event = await make_event(iapi, token)
    await drop.put("odd/../x.jpg", jpeg_bytes(64, 64))
    await drop.put("odd/ok.jpg", jpeg_bytes(64, 64))
    op = await start_import(iapi, token, event["id"], source="drop", prefix="odd/")
    assert op["state"] == "done", op
    assert counts(op) == {"listed": 2, "imported": 1, "skipped": 1, "failed": 0}
    assert reasons(op)["odd/../x.jpg"][:2] == ("skipped", "unsafe_key")


async def test_an_object_s3_never_serves_ends_a_one_time_import_with_the_reason(
    aiohttp_client: Any,
    import_settings: IngestSettings,
    make_token: TokenMaker,
    drop: Bucket,
    watch_events: QueueSpec,
) -> None:
    """It used to be tried again for ever, holding a run slot: now, after a few outages at the
    same point of the walk, the Operation fails with a reason (a rerun goes on from there)."""
    from darkroom_kit.storage import StorageUnavailable

    api = await aiohttp_client(
        create_app(import_settings.model_copy(update={"import_outage_tries": 2}))
    )
    token = await make_token()
    event = await make_event(api, token)
    await drop.put("sick/bad.jpg", jpeg_bytes(64, 64))

    async def unavailable(obj: ListedObject) -> None:
        raise StorageUnavailable("InternalError: We encountered an internal error")

    api.app[DEPS].imports.before_read = unavailable
    op = await start_import(api, token, event["id"], source="drop", prefix="sick/")
    assert op["state"] == "failed", op
    assert op["result"]["code"] == "storage_unavailable"
    assert "internal error" not in json.dumps(op)  # the server's words are logged only
    assert await stored_keys(api, event["id"]) == []


async def test_watching_imports_never_keep_a_new_import_queued(
    aiohttp_client: Any,
    import_settings: IngestSettings,
    make_token: TokenMaker,
    drop: Bucket,
    watch_events: QueueSpec,
) -> None:
    """Watches held the run slots for ever: with one slot, two watches kept every later import
    queued."""
    api = await aiohttp_client(
        create_app(import_settings.model_copy(update={"import_max_running": 1}))
    )
    token = await make_token()
    event = await make_event(api, token)
    await drop.put("slots/a.jpg", jpeg_bytes(64, 64))
    watches = [
        await start_import(
            api, token, event["id"], 0, source="drop", prefix=f"w{n}/", watch=True, poll_seconds=300
        )
        for n in range(2)
    ]
    op = await start_import(api, token, event["id"], source="drop", prefix="slots/")
    assert (op["state"], counts(op)["imported"]) == ("done", 1), op
    for watch in watches:
        stopped = await api.post(f"/v1/operations/{watch['id']}/cancel", headers=auth(token))
        assert stopped.status in (200, 202)


async def test_imports_count_their_objects_and_their_end(
    aiohttp_client: Any, import_settings: IngestSettings, watch_events: QueueSpec, drop: Bucket
) -> None:
    """``uploads_total{protocol="import"}`` for each object (a photo of it, new or there already,
    is accepted) and ``operations_finished_total`` once for each import that ends."""
    # A database of its own: the imports other tests left open are taken over by any app on
    # theirs (as they should be), and would move this one's counts.
    settings = import_settings.model_copy(
        update={"mongo_db": f"{import_settings.mongo_db}_{secrets.token_hex(3)}"}
    )
    iapi: Client = await aiohttp_client(create_app(settings))
    token = await create_token(
        settings, "test", ["photos.read", "photos.write", "events.write"], None
    )
    event = await make_event(iapi, token)
    twin = jpeg_bytes()
    await drop.put("counted/a.jpg", twin)
    await drop.put("counted/b-twin.jpg", twin)
    await drop.put("counted/c-notes.txt", b"not a photo\n")
    capped = await make_event(iapi, token, photo_cap=1)
    for name in ("a", "b"):
        await drop.put(f"capped-count/{name}.jpg", jpeg_bytes())
    before = await scrape(iapi)

    done = await start_import(iapi, token, event["id"], source="drop", prefix="counted/")
    assert done["state"] == "done", done
    rerun = await start_import(iapi, token, event["id"], source="drop", prefix="counted/")
    assert rerun["state"] == "done", rerun
    failed = await start_import(iapi, token, capped["id"], source="drop", prefix="capped-count/")
    assert failed["state"] == "failed", failed

    after = await scrape(iapi)
    service = {"service": "upload-ingest"}
    assert moved(before, after, "uploads_total") == {
        # a.jpg and its twin, twice (imported or duplicate, then already imported), and the
        # one the cap let in.
        labels(**service, protocol="import", outcome="accepted", code=""): 5,
        labels(**service, protocol="import", outcome="refused", code="unsupported_type"): 2,
        labels(**service, protocol="import", outcome="refused", code="photo_cap_exceeded"): 1,
    }
    assert moved(before, after, "operations_finished_total") == {
        labels(**service, kind="s3_import", state="done"): 2,
        labels(**service, kind="s3_import", state="failed"): 1,
    }
