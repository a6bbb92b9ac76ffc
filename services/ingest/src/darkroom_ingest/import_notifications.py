"""Bucket notifications that wake watching imports (``watch: true``) at once.

A storage server publishes an event to RabbitMQ for each object created in a bucket: MinIO's AMQP
notification target (``MINIO_NOTIFY_AMQP_*``, see docker-compose.yml) declares its exchange
(durable) and publishes to it, for each event, the JSON of its ``event.Log``::

    {"EventName": "s3:ObjectCreated:Put", "Key": "bucket/key",
     "Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "bucket"},
                  "object": {"key": "<URL-encoded key>", "size": 123, "eTag": "..."}}, ...}]}

with the AMQP headers ``minio-bucket`` and ``minio-event``, content type ``application/json`` and
no ``message_id``. It is not darkroom's envelope, so :func:`decode` wraps it in one (type
:data:`records.BUCKET_NOTIFICATION`), and the kit's consumer validates it against
:class:`BucketNotification` before the handler runs: a body that is not JSON, or has no record
with a bucket and a key, is dead-lettered at once; a failure to record the wake (MongoDB away) is
retried from the retry queues like any other consumer's.

The handler imports nothing itself: it wakes the watching imports whose source bucket and prefix
hold the key (:meth:`Importer.wake`), and their holder walks the prefix through the one import
path, whose ``import_ref`` makes each object one photo however often, late or out of order its
notification comes. A notification for a key nobody watches, or for another kind of event, is
acknowledged and counted (``import_notifications_total``). Notifications are only a shortcut:
what is published while no queue is bound, or lost, is found by the next poll.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from urllib.parse import unquote_plus

from aio_pika.abc import AbstractIncomingMessage
from darkroom_kit import records
from darkroom_kit.clock import ms_to_iso, now_ms
from darkroom_kit.messaging import Envelope, Message, QueueSpec, Topology
from darkroom_kit.payloads import BucketNotification
from pydantic import ValidationError

from darkroom_ingest.imports import Importer, ImportMetrics
from darkroom_ingest.settings import IngestSettings

log = logging.getLogger(__name__)

OBJECT_CREATED = "s3:ObjectCreated:"
PAYLOADS = {records.BUCKET_NOTIFICATION: BucketNotification}


def queue_spec(topology: Topology, settings: IngestSettings, service: str) -> QueueSpec:
    """upload-ingest's queue of bucket notifications, bound to the storage server's exchange.
    A wake is cheap and a late one is harmless: short retries."""
    return QueueSpec(
        topology.queue(service, settings.import_notify_queue),
        settings.import_notify_exchange,
        (settings.import_notify_binding_key,),
        (1_000, 5_000, 30_000),
    )


def decode(message: AbstractIncomingMessage) -> Envelope:
    """A delivery as an envelope: a notification as the storage server sent it, wrapped (the
    consumer then validates its data as a :class:`BucketNotification`), or an envelope this
    service made of one before (a retry coming back). ValueError: not a JSON object at all."""
    body = message.body
    with contextlib.suppress(ValidationError):  # not one of ours: a notification as sent
        return Envelope.model_validate_json(body)
    data = json.loads(body)  # ValueError (JSONDecodeError, UnicodeDecodeError): never valid
    if not isinstance(data, dict):
        raise ValueError(f"a bucket notification is a JSON object, not {type(data).__name__}")
    # MinIO sets no message id: one derived from the body names a redelivered copy the same.
    message_id = message.message_id or "s3n_" + hashlib.sha256(body).hexdigest()[:24]
    return Envelope(
        id=message_id,
        type=records.BUCKET_NOTIFICATION,
        time=ms_to_iso(now_ms()) or "",
        data=data,
    )


def created_objects(note: BucketNotification) -> list[tuple[str, str]]:
    """(bucket, key) of each object the notification says was created, the keys decoded."""
    found: list[tuple[str, str]] = []
    for record in note.Records:
        name = record.eventName or note.EventName or ""
        if name.startswith(OBJECT_CREATED):
            # Go's url.QueryEscape on MinIO's side: '+' is a space, %XX a byte of UTF-8.
            found.append((record.s3.bucket.name, unquote_plus(record.s3.object.key)))
    return found


class NotificationHandler:
    def __init__(self, importer: Importer, metrics: ImportMetrics) -> None:
        self._importer = importer
        self._metrics = metrics

    async def handle(self, message: Message[BucketNotification]) -> None:
        objects = created_objects(message.payload)
        if not objects:
            self._metrics.notifications.labels("ignored").inc()
            return
        woken = await self._importer.wake(objects)
        if not woken:
            self._metrics.notifications.labels("unwatched").inc()
            log.debug(
                "bucket notification for keys nobody watches",
                extra={"message_id": message.envelope.id, "bucket": objects[0][0]},
            )
            return
        self._metrics.notifications.labels("woke").inc()
        log.info(
            "bucket notification woke %d watching import(s)",
            len(woken),
            extra={"message_id": message.envelope.id, "operation_ids": woken},
        )
