"""Bucket notifications waking watching imports, against the real broker and the S3 and MongoDB
stand-ins: a notification published as MinIO's AMQP target publishes it brings a new object in
long before the next poll (300 s here); duplicated and out-of-order notifications import nothing
twice; a notification for a key nobody watches is acknowledged and imports nothing; a message
that can never be a notification is dead-lettered and the consumer goes on."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote_plus

import aio_pika
import pytest
from darkroom_ingest.app import SERVICE, create_app
from darkroom_ingest.deps import DEPS
from darkroom_ingest.import_notifications import queue_spec
from darkroom_ingest.imports import WAKE_SEQ
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.httpapp import REGISTRY
from darkroom_kit.messaging import QueueSpec, Topology
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import S3ObjectStore, open_bucket

from tests.factories.api import Client, TokenMaker, auth, make_event
from tests.factories.media import jpeg_bytes
from tests.factories.messaging import drain, eventually
from tests.factories.servers import QueueJanitor

BASE = "cameras/"
# Far longer than any test: only a notification can bring a new object in in time.
POLL_SECONDS = 300


@pytest.fixture
def buckets(run_id: str) -> dict[str, str]:
    tag = secrets.token_hex(3)
    return {"drop": f"ndrop-{run_id}-{tag}", "other": f"nother-{run_id}-{tag}"}


@pytest.fixture
def notify_settings(
    ingest_settings: IngestSettings, buckets: dict[str, str], namespace: str
) -> IngestSettings:
    return IngestSettings(
        **{
            **ingest_settings.model_dump(),
            "s3_access_key": ingest_settings.s3_access_key.get_secret_value(),
            "s3_secret_key": ingest_settings.s3_secret_key.get_secret_value(),
            "import_sources": {"drop": {"bucket": buckets["drop"], "prefix": BASE}},
            "import_claim_interval_seconds": 0.2,
            "import_notifications": True,
            "import_notify_exchange": f"{namespace}.bucket-events",
        }
    )


@pytest.fixture
def notify_queue(notify_settings: IngestSettings, janitor: QueueJanitor) -> QueueSpec:
    spec = queue_spec(Topology(notify_settings.amqp_namespace), notify_settings, SERVICE)
    janitor.add(spec)
    return spec


@pytest.fixture
async def napi(
    aiohttp_client: Any,
    notify_settings: IngestSettings,
    notify_queue: QueueSpec,
    watch_events: QueueSpec,
    janitor: QueueJanitor,
) -> AsyncIterator[Client]:
    client: Client = await aiohttp_client(create_app(notify_settings))
    janitor.stop_first(client)
    yield client
    connection = await aio_pika.connect(notify_settings.amqp_url)
    try:
        channel = await connection.channel()
        await channel.exchange_delete(notify_settings.import_notify_exchange)
    finally:
        await connection.close()


@pytest.fixture
async def store(
    notify_settings: IngestSettings, buckets: dict[str, str]
) -> AsyncIterator[dict[str, S3ObjectStore]]:
    """The source's bucket and a bucket nobody imports from."""
    opened: dict[str, S3ObjectStore] = {}
    args = (
        notify_settings.s3_access_key.get_secret_value(),
        notify_settings.s3_secret_key.get_secret_value(),
        notify_settings.s3_region,
    )
    async with (
        open_bucket(notify_settings.s3_endpoint_url, buckets["drop"], *args) as drop,
        open_bucket(notify_settings.s3_endpoint_url, buckets["other"], *args) as other,
    ):
        for name, bucket in (("drop", drop), ("other", other)):
            await bucket.ensure_bucket()
            opened[name] = bucket
        yield opened


def minio_event(bucket: str, key: str, size: int = 1, etag: str = "e") -> dict[str, Any]:
    """The body MinIO's AMQP target publishes for an object created (its event.Log): the key
    in the record URL-encoded as Go's url.QueryEscape does."""
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": "2026-12-04T16:00:00.000Z",
                "eventName": "s3:ObjectCreated:Put",
                "userIdentity": {"principalId": "darkroom"},
                "requestParameters": {
                    "principalId": "darkroom",
                    "region": "",
                    "sourceIPAddress": "",
                },
                "responseElements": {"x-amz-request-id": "1", "x-minio-origin-endpoint": ""},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "darkroom"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {
                        "key": quote_plus(key, safe=""),
                        "size": size,
                        "eTag": etag,
                        "contentType": "image/jpeg",
                        "userMetadata": {"content-type": "image/jpeg"},
                        "sequencer": "1",
                    },
                },
                "source": {"host": "", "port": "", "userAgent": "MinIO (linux; amd64)"},
            }
        ],
    }


async def publish_raw(settings: IngestSettings, *bodies: bytes, bucket: str = "") -> None:
    """As MinIO's AMQP target does: declare the exchange (durable), publish persistent JSON
    with its headers and no message id."""
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            settings.import_notify_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        for body in bodies:
            await exchange.publish(
                aio_pika.Message(
                    body=body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers={"minio-bucket": bucket, "minio-event": "s3:ObjectCreated:Put"},
                ),
                routing_key="bucketlogs",
            )
    finally:
        await connection.close()


async def notify(settings: IngestSettings, *events: dict[str, Any]) -> None:
    for event in events:
        bucket = event["Records"][0]["s3"]["bucket"]["name"]
        await publish_raw(settings, json.dumps(event).encode(), bucket=bucket)


async def put(store: S3ObjectStore, key: str) -> tuple[int, str]:
    data = jpeg_bytes()
    await store.put_bytes(key, data, "image/jpeg")
    (obj,) = [o async for page in store.iter_objects(key) for o in page if o.key == key]
    return obj.size, obj.etag


async def watch(api: Client, token: str, event_id: str, prefix: str) -> str:
    resp = await api.post(
        f"/v1/events/{event_id}/imports",
        json={"source": "drop", "prefix": prefix, "watch": True, "poll_seconds": POLL_SECONDS},
        headers=auth(token),
    )
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["id"])


async def stored_op(api: Client, op_id: str) -> dict[str, Any]:
    doc = await api.app[MONGO_DB][records.OPERATIONS].find_one({"_id": op_id})
    assert doc is not None
    return dict(doc)


async def first_pass_done(api: Client, op_id: str) -> dict[str, Any]:
    """The Operation once its first pass has ended (it sleeps for POLL_SECONDS after)."""

    async def done() -> dict[str, Any] | None:
        doc = await stored_op(api, op_id)
        cursor = json.loads(doc.get("cursor") or "{}")
        return doc if cursor.get("pass", 0) >= 1 else None

    result: dict[str, Any] = await eventually(done)
    return result


async def settled(api: Client, op_id: str) -> dict[str, Any]:
    """The Operation once a pass that began after its last wake has ended."""

    async def check() -> dict[str, Any] | None:
        doc = await stored_op(api, op_id)
        cursor = json.loads(doc.get("cursor") or "{}")
        return doc if cursor.get("covered", 0) >= doc.get(WAKE_SEQ, 0) else None

    result: dict[str, Any] = await eventually(check)
    return result


def notifications(api: Client, outcome: str) -> float:
    value = api.app[REGISTRY].get_sample_value("import_notifications_total", {"outcome": outcome})
    return value or 0.0


def counts(doc: dict[str, Any]) -> dict[str, int]:
    return {k: doc["progress"][k] for k in ("listed", "imported", "skipped", "failed")}


async def names(api: Client, token: str, event_id: str) -> list[str]:
    resp = await api.get(f"/v1/events/{event_id}/photos?limit=200", headers=auth(token))
    assert resp.status == 200, await resp.text()
    return sorted(p["original_filename"] for p in (await resp.json())["items"])


async def queue_depth(settings: IngestSettings, name: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        queue = await (await connection.channel()).declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def dead_letters(settings: IngestSettings, name: str, expect: int) -> list[bytes]:
    """The bodies that reached a dead-letter queue, as they were published."""
    got: list[bytes] = []
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        queue = await (await connection.channel()).get_queue(name)

        async def read() -> bool:
            message = await queue.get(fail=False)
            if message is not None:
                await message.ack()
                got.append(message.body)
            return len(got) >= expect

        await eventually(read, timeout=15, interval=0.05)
    finally:
        await connection.close()
    return got


async def test_a_notification_imports_a_new_object_long_before_the_next_poll(
    napi: Client,
    make_token: TokenMaker,
    store: dict[str, S3ObjectStore],
    notify_settings: IngestSettings,
    watch_events: QueueSpec,
) -> None:
    token = await make_token()
    event = await make_event(napi, token)
    await put(store["drop"], BASE + "big day/1.jpg")
    op_id = await watch(napi, token, event["id"], "big day/")
    first = await first_pass_done(napi, op_id)
    assert counts(first) == {"listed": 1, "imported": 1, "skipped": 0, "failed": 0}

    # A key with a space, a plus and a non-ASCII letter: URL-encoded in the record.
    key = BASE + "big day/2 + ü.jpg"
    size, etag = await put(store["drop"], key)
    await notify(notify_settings, minio_event(store["drop"].bucket, key, size, etag))

    async def imported_two() -> dict[str, Any] | None:
        doc = await stored_op(napi, op_id)
        return doc if doc["progress"]["imported"] >= 2 else None

    doc = await eventually(imported_two, timeout=20)
    assert doc["state"] == "running"
    assert counts(doc) == {"listed": 2, "imported": 2, "skipped": 0, "failed": 0}
    assert await names(napi, token, event["id"]) == ["1.jpg", "2 + ü.jpg"]
    assert notifications(napi, "woke") == 1
    uploaded = await drain(notify_settings.amqp_url, watch_events.name, 3, timeout=3)
    assert [m["type"] for m in uploaded] == [records.PHOTO_UPLOADED] * 2


async def test_duplicated_and_out_of_order_notifications_import_nothing_twice(
    napi: Client,
    make_token: TokenMaker,
    store: dict[str, S3ObjectStore],
    notify_settings: IngestSettings,
    watch_events: QueueSpec,
) -> None:
    token = await make_token()
    event = await make_event(napi, token)
    op_id = await watch(napi, token, event["id"], "dups/")
    await first_pass_done(napi, op_id)
    drop = store["drop"].bucket
    a = BASE + "dups/a.jpg"
    b = BASE + "dups/b.jpg"
    a_size, a_etag = await put(store["drop"], a)
    b_size, b_etag = await put(store["drop"], b)
    note_a = minio_event(drop, a, a_size, a_etag)
    note_b = minio_event(drop, b, b_size, b_etag)

    # b's notification first, then a's twice (MinIO replays its queue store after an outage).
    await notify(notify_settings, note_b, note_a, note_a)

    async def imported_two() -> dict[str, Any] | None:
        doc = await stored_op(napi, op_id)
        return doc if doc["progress"]["imported"] >= 2 else None

    await eventually(imported_two, timeout=20)
    await eventually(lambda: _is(notifications(napi, "woke"), 3))

    # Late copies of both, after they were imported.
    await notify(notify_settings, note_a, note_b)
    await eventually(lambda: _is(notifications(napi, "woke"), 5))
    doc = await settled(napi, op_id)

    assert doc[WAKE_SEQ] == 5
    assert counts(doc) == {"listed": 2, "imported": 2, "skipped": 0, "failed": 0}
    assert await names(napi, token, event["id"]) == ["a.jpg", "b.jpg"]
    photos = napi.app[MONGO_DB][records.PHOTOS]
    assert await photos.count_documents({"event_id": event["id"]}) == 2
    uploaded = await drain(notify_settings.amqp_url, watch_events.name, 3, timeout=3)
    assert [m["type"] for m in uploaded] == [records.PHOTO_UPLOADED] * 2


async def _is(value: float, expected: float) -> bool:
    return value == expected


async def test_a_notification_for_a_key_nobody_watches_is_acknowledged_and_imports_nothing(
    napi: Client,
    make_token: TokenMaker,
    store: dict[str, S3ObjectStore],
    notify_settings: IngestSettings,
    notify_queue: QueueSpec,
) -> None:
    token = await make_token()
    event = await make_event(napi, token)
    op_id = await watch(napi, token, event["id"], "watched/")
    await first_pass_done(napi, op_id)
    # Another bucket, the source's bucket outside the watched prefix, outside the source's own
    # prefix, and an event that is not an object created.
    elsewhere = [
        (store["other"], "cameras/watched/x.jpg"),
        (store["drop"], BASE + "unwatched/y.jpg"),
        (store["drop"], "watched/z.jpg"),
    ]
    events = []
    for bucket, key in elsewhere:
        size, etag = await put(bucket, key)
        events.append(minio_event(bucket.bucket, key, size, etag))
    removed = minio_event(store["drop"].bucket, BASE + "watched/gone.jpg")
    removed["EventName"] = removed["Records"][0]["eventName"] = "s3:ObjectRemoved:Delete"
    await notify(notify_settings, *events, removed)

    await eventually(lambda: _is(notifications(napi, "unwatched"), 3))
    await eventually(lambda: _is(notifications(napi, "ignored"), 1))

    assert await queue_depth(notify_settings, notify_queue.name) == 0
    assert await queue_depth(notify_settings, notify_queue.dead_queue) == 0
    doc = await stored_op(napi, op_id)
    assert doc.get(WAKE_SEQ, 0) == 0
    assert counts(doc) == {"listed": 0, "imported": 0, "skipped": 0, "failed": 0}
    assert await names(napi, token, event["id"]) == []


async def test_a_malformed_message_is_dead_lettered_and_the_consumer_goes_on(
    napi: Client,
    make_token: TokenMaker,
    store: dict[str, S3ObjectStore],
    notify_settings: IngestSettings,
    notify_queue: QueueSpec,
) -> None:
    token = await make_token()
    event = await make_event(napi, token)
    op_id = await watch(napi, token, event["id"], "bad/")
    await first_pass_done(napi, op_id)
    no_key = minio_event(store["drop"].bucket, BASE + "bad/k.jpg")
    del no_key["Records"][0]["s3"]["object"]["key"]
    bodies = [
        b"\xff not json",
        b'["s3:ObjectCreated:Put"]',
        json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": "b/k", "Records": []}).encode(),
        json.dumps(no_key).encode(),
    ]
    await publish_raw(notify_settings, *bodies)

    dead = await dead_letters(notify_settings, notify_queue.dead_queue, 4)
    assert sorted(dead) == sorted([b"\xff not json", b'["s3:ObjectCreated:Put"]', *bodies[2:]])
    key = BASE + "bad/ok.jpg"
    size, etag = await put(store["drop"], key)
    await notify(notify_settings, minio_event(store["drop"].bucket, key, size, etag))

    async def imported_one() -> dict[str, Any] | None:
        doc = await stored_op(napi, op_id)
        return doc if doc["progress"]["imported"] >= 1 else None

    await eventually(imported_one, timeout=20)
    assert await names(napi, token, event["id"]) == ["ok.jpg"]


async def test_the_replica_that_holds_the_import_is_woken_by_another_replicas_consumer(
    aiohttp_client: Any,
    napi: Client,
    make_token: TokenMaker,
    store: dict[str, S3ObjectStore],
    notify_settings: IngestSettings,
    janitor: QueueJanitor,
) -> None:
    # A replica that consumes no notifications carries out the import; napi (another replica
    # on the same database and broker) consumes them.
    holder: Client = await aiohttp_client(
        create_app(notify_settings.model_copy(update={"import_notifications": False}))
    )
    janitor.stop_first(holder)
    token = await make_token()
    event = await make_event(holder, token)
    op_id = await watch(holder, token, event["id"], "relay/")
    await first_pass_done(holder, op_id)
    assert op_id in holder.app[DEPS].imports._running
    assert op_id not in napi.app[DEPS].imports._running

    key = BASE + "relay/1.jpg"
    size, etag = await put(store["drop"], key)
    await notify(notify_settings, minio_event(store["drop"].bucket, key, size, etag))

    async def imported_one() -> dict[str, Any] | None:
        doc = await stored_op(holder, op_id)
        return doc if doc["progress"]["imported"] >= 1 else None

    await eventually(imported_one, timeout=20)
    assert notifications(napi, "woke") == 1
    assert await names(holder, token, event["id"]) == ["1.jpg"]
    assert op_id in holder.app[DEPS].imports._running
