"""The AsyncAPI 3.0 document of darkroom's messaging: the exchanges (events, commands,
dead-letter, see :class:`darkroom_kit.messaging.Topology`), a channel per routing key, which
service sends and which receives each message, and the schema of every message: the envelope
(:class:`darkroom_kit.messaging.Envelope`) with the type's data model from
:data:`darkroom_kit.payloads.PAYLOADS`. It also has the one message darkroom receives but does
not make: the bucket notifications a storage server (MinIO) publishes to its own exchange,
which upload-ingest consumes (:data:`NOTIFICATIONS`).

``python -m darkroom_kit.asyncapi [--out FILE]`` prints it, or writes it (``make asyncapi``
writes ``docs/asyncapi.json``, which a test keeps equal to what this module generates).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import models_json_schema

from darkroom_kit import records
from darkroom_kit.catalogue import describe
from darkroom_kit.messaging import (
    ATTEMPT_HEADER,
    DEFERRED_HEADER,
    PUBLISHED_HEADER,
    Envelope,
    Topology,
)
from darkroom_kit.payloads import PAYLOADS, BucketNotification
from darkroom_kit.settings import CommonSettings

AMQP_BINDING_VERSION = "0.3.0"
# The declared default, not the environment's: the document must not depend on who makes it.
NAMESPACE: str = CommonSettings.model_fields["amqp_namespace"].default


@dataclass(frozen=True, slots=True)
class Consumes:
    """A consumer queue: ``Topology.queue(service, name)``, bound by ``types``."""

    service: str
    name: str
    types: tuple[str, ...]


# Which service sends and which receives each type. The services declare their queues
# (QueueSpec, in each service's app.py) and their publishes in code that kit cannot import (a
# library does not depend on its services), so this is an explicit table; tests/unit/kit/
# test_asyncapi.py checks it against the services' QueueSpecs and their Envelope.new calls.
CONSUMERS: tuple[Consumes, ...] = (
    Consumes("thumbnailing", "photos", (records.PHOTO_UPLOADED,)),
    Consumes("metadata-repair", "requests", (records.REPAIR_REQUESTED,)),
    Consumes("metadata-repair", "archives", (records.ARCHIVE_REQUESTED,)),
    Consumes("webhook-dispatch", "events", records.PUBLIC_EVENT_TYPES),
    Consumes(
        "webhook-dispatch",
        "attempts",
        (records.WEBHOOK_ATTEMPT, records.WEBHOOK_RESEND, records.WEBHOOK_SEND_TEST),
    ),
    Consumes("webhook-dispatch", "recover", (records.WEBHOOK_RECOVER,)),
)
PRODUCERS: dict[str, tuple[str, ...]] = {
    "upload-ingest": (
        records.PHOTO_UPLOADED,
        records.PHOTO_DELETED,
        records.EVENT_ARCHIVED,
        records.REPAIR_REQUESTED,
        records.ARCHIVE_REQUESTED,
        records.WEBHOOK_RECOVER,
        records.WEBHOOK_RESEND,
        records.WEBHOOK_SEND_TEST,
    ),
    "thumbnailing": (records.PHOTO_PROCESSED,),
    "metadata-repair": (records.PHOTO_REPAIRED, records.REPAIR_REQUESTED),
    "webhook-dispatch": (
        records.ENDPOINT_FAILING,
        records.ENDPOINT_DISABLED,
        records.ENDPOINT_RECOVERED,
        records.WEBHOOK_ATTEMPT,
    ),
}


@dataclass(frozen=True, slots=True)
class Notifications:
    """A consumer queue bound to an exchange a storage server declares and publishes to, whose
    bodies are the server's own JSON, not envelopes: ``Topology.queue(service, name)`` bound
    to ``exchange`` by ``binding_key``; its consumer wraps each body in an envelope of type
    ``type`` (and a retry parks that envelope)."""

    service: str
    name: str
    type: str
    exchange: str
    kind: str
    binding_key: str
    retry_delays_ms: tuple[int, ...]


# upload-ingest's bucket notifications (darkroom_ingest.import_notifications): the IMPORT_NOTIFY_*
# settings' declared defaults, not the environment's (the document must not depend on who makes
# it), and its queue_spec's retries. Kit cannot import the service, so, like CONSUMERS, this is
# written out and tests/unit/kit/test_asyncapi.py checks it against the settings and queue_spec.
NOTIFICATIONS = Notifications(
    service="upload-ingest",
    name="bucket-notifications",
    type=records.BUCKET_NOTIFICATION,
    exchange="darkroom.bucket-events",
    kind="topic",
    binding_key="#",
    retry_delays_ms=(1_000, 5_000, 30_000),
)
# The notification as MinIO sends it. Its envelope (what a retry parks) is a message of its
# type, _message_id(NOTIFICATIONS.type), like every envelope.
NOTIFICATION_MESSAGE = "BucketNotification"
NOTIFICATION_CHANNEL = "storage.bucket-notifications"

SCHEMAS = "#/components/schemas/{model}"


def exchange_of(message_type: str) -> Literal["events", "commands"]:
    """Public facts go to the events exchange, everything else is a command."""
    return "events" if message_type in records.PUBLIC_EVENT_TYPES else "commands"


def _envelope_model(message_type: str, payload: type[BaseModel]) -> type[BaseModel]:
    # The envelope itself with its type and data narrowed: id and time stay as Envelope has them.
    kind: Any = Literal[message_type]
    model: type[BaseModel] = create_model(
        payload.__name__ + "Envelope",
        __base__=Envelope,
        __doc__=f"A ``{message_type}`` message: the envelope, its data a {payload.__name__}.",
        __module__=__name__,
        type=(kind, Field(description="The message type (also the AMQP type).")),
        data=(payload, Field(description="The message's data.")),
    )
    return model


def _message_id(message_type: str) -> str:
    return "".join(p.capitalize() for p in message_type.replace("_", ".").split("."))


def _channel_id(exchange: str, address: str) -> str:
    return f"{exchange}.{address}"


def _amqp_exchange(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": "/"}


def _seconds(delays_ms: Sequence[int]) -> str:
    said = [f"{d / 1000:g} s" for d in delays_ms]
    return ", ".join(said[:-1]) + " and " + said[-1] if len(said) > 1 else "".join(said)


HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "AMQP headers: the trace a message belongs to, when it entered its queue, "
    "and what is set when a message is parked and comes back.",
    "properties": {
        "traceparent": {
            "type": "string",
            "description": "W3C Trace Context of the trace the message belongs to (the request "
            "or message that caused it); absent when tracing is off.",
        },
        "tracestate": {"type": "string", "description": "W3C Trace Context vendor state."},
        PUBLISHED_HEADER: {
            "type": "integer",
            "description": "When the message was published to the queue it is in (ms since "
            "the epoch); its consumer reports the age of the oldest message it holds from it.",
        },
        ATTEMPT_HEADER: {
            "type": "integer",
            "minimum": 1,
            "description": "The attempt this delivery is (absent: the first), set when a "
            "message comes back from a retry queue.",
        },
        DEFERRED_HEADER: {
            "type": "integer",
            "minimum": 0,
            "description": "How often a limit deferred it (escalating waits only).",
        },
    },
}

MINIO_HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The AMQP headers MinIO's notification target sets (no message_id, no type).",
    "properties": {
        "minio-bucket": {"type": "string", "description": "The bucket of the event."},
        "minio-event": {
            "type": "string",
            "description": "The event's name, e.g. s3:ObjectCreated:Put.",
        },
    },
}


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document."""
    topology = Topology(NAMESPACE)
    exchanges = {
        "events": (topology.events, "topic"),
        "commands": (topology.commands, "topic"),
    }
    notified = NOTIFICATIONS
    types = list(PAYLOADS)
    # A notification's envelope exists only inside upload-ingest's queues (a retry parks it,
    # so it can be dead-lettered), never on the events or commands exchange.
    enveloped: dict[str, type[BaseModel]] = {**PAYLOADS, notified.type: BucketNotification}
    envelopes = {t: _envelope_model(t, model) for t, model in enveloped.items()}
    refs, top = models_json_schema(
        [*((envelopes[t], "validation") for t in enveloped), (BucketNotification, "validation")],
        ref_template=SCHEMAS,
    )
    summaries = {t: describe(model) for t, model in PAYLOADS.items()}
    summaries[notified.type] = (
        f"A bucket notification as {notified.service}'s consumer wraps it (its id derived from "
        "the body), the way a retry of it is parked and may be dead-lettered."
    )
    messages: dict[str, Any] = {}
    for t in enveloped:
        messages[_message_id(t)] = {
            "name": t,
            "title": t,
            "summary": summaries[t],
            "contentType": "application/json",
            "headers": HEADERS_SCHEMA,
            "payload": refs[(envelopes[t], "validation")],
            "correlationId": {
                "description": "The envelope's id, also the AMQP message_id.",
                "location": "$message.payload#/id",
            },
            "bindings": {
                "amqp": {"messageType": t, "bindingVersion": AMQP_BINDING_VERSION},
            },
        }
    # No correlationId and no AMQP binding: MinIO sets neither a message id nor a type.
    messages[NOTIFICATION_MESSAGE] = {
        "name": NOTIFICATION_MESSAGE,
        "title": "bucket notification",
        "summary": "A storage server's bucket notification: MinIO's event log JSON "
        "{EventName, Key, Records}, one record per message.",
        "description": "Published by MinIO (its AMQP notification target, MINIO_NOTIFY_AMQP_*), "
        "not by darkroom: the body is MinIO's event log JSON as MinIO sends it, not an envelope, "
        "with the AMQP headers minio-bucket and minio-event and no message_id. "
        f"{notified.service}'s consumer wraps it in an envelope of type {notified.type} and "
        "validates it against this schema before handling it.",
        "contentType": "application/json",
        "headers": MINIO_HEADERS_SCHEMA,
        "payload": refs[(BucketNotification, "validation")],
    }

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    def message_refs(channel: str, of: Sequence[str]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{channel}/messages/{_message_id(t)}"} for t in of]

    def own_messages(ids: Sequence[str]) -> dict[str, Any]:
        return {i: {"$ref": f"#/components/messages/{i}"} for i in ids}

    for t in types:
        exchange = exchange_of(t)
        name, kind = exchanges[exchange]
        channel = _channel_id(exchange, t)
        channels[channel] = {
            "address": t,
            "title": f"{t} on {name}",
            "description": f"Routing key {t} on the {kind} exchange {name}.",
            "messages": {_message_id(t): {"$ref": f"#/components/messages/{_message_id(t)}"}},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": _amqp_exchange(name, kind),
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
        for service, sent in PRODUCERS.items():
            if t in sent:
                operations[f"{service}.send.{t}"] = {
                    "action": "send",
                    "channel": {"$ref": f"#/channels/{channel}"},
                    "messages": message_refs(channel, [t]),
                    "summary": f"{service} publishes {t} to {name}.",
                    "tags": [{"name": service}],
                    "bindings": {
                        "amqp": {
                            "deliveryMode": 2,
                            "mandatory": True,
                            "bindingVersion": AMQP_BINDING_VERSION,
                        }
                    },
                }
        for consumer in CONSUMERS:
            if t in consumer.types:
                queue = topology.queue(consumer.service, consumer.name)
                operations[f"{consumer.service}.receive.{t}"] = {
                    "action": "receive",
                    "channel": {"$ref": f"#/channels/{channel}"},
                    "messages": message_refs(channel, [t]),
                    "summary": f"{consumer.service} consumes {t} from its queue {queue}.",
                    "description": "Acknowledged once handled. Data that does not validate is "
                    f"dead-lettered at once; a failure is retried from {queue}.retry.<ms>ms "
                    f"queues, then dead-lettered to {queue}.dead.",
                    "tags": [{"name": consumer.service}],
                    "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
                    "x-queue": queue,
                }

    # The storage server's exchange: MinIO declares it and publishes to it (with its own
    # routing key, MINIO_NOTIFY_AMQP_ROUTING_KEY), darkroom only binds a queue. No operation
    # sends here: an AsyncAPI operation is something an application of this document does.
    notify_queue = topology.queue(notified.service, notified.name)
    channels[NOTIFICATION_CHANNEL] = {
        "address": notified.binding_key,
        "title": f"bucket notifications on {notified.exchange}",
        "description": f"The {notified.kind} exchange {notified.exchange} a storage server "
        "publishes bucket notifications to: MinIO's AMQP notification target declares it "
        "(durable, not auto-deleted) and publishes each event there with its routing key "
        "(MINIO_NOTIFY_AMQP_ROUTING_KEY; docker-compose.yml configures MinIO). Darkroom "
        f"publishes nothing here. Its name and type are {notified.service}'s "
        "IMPORT_NOTIFY_EXCHANGE and IMPORT_NOTIFY_EXCHANGE_TYPE (here their defaults; not "
        "namespaced), and the address is its queue's binding key IMPORT_NOTIFY_BINDING_KEY "
        f"({notified.binding_key!r}: every routing key). Only used while IMPORT_NOTIFICATIONS "
        "is on.",
        "messages": own_messages([NOTIFICATION_MESSAGE]),
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": _amqp_exchange(notified.exchange, notified.kind),
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }
    operations[f"{notified.service}.receive.{notified.type}"] = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{NOTIFICATION_CHANNEL}"},
        "messages": [
            {"$ref": f"#/channels/{NOTIFICATION_CHANNEL}/messages/{NOTIFICATION_MESSAGE}"}
        ],
        "summary": f"{notified.service} consumes bucket notifications from its queue "
        f"{notify_queue} and wakes the watching imports whose bucket and prefix hold a created "
        "object's key.",
        "description": "Acknowledged once handled (also when nobody watches the key or it is "
        "another kind of event). A body that is not JSON or has no record with a bucket and a "
        "key is dead-lettered at once; a failure is retried after "
        f"{_seconds(notified.retry_delays_ms)} from {notify_queue}.retry.<ms>ms queues "
        f"(parked as its envelope, type {notified.type}), then dead-lettered to "
        f"{notify_queue}.dead.",
        "tags": [{"name": notified.service}],
        "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        "x-queue": notify_queue,
    }

    def dead_letters(service: str, name: str, ids: Sequence[str], held: str = "") -> None:
        queue = topology.queue(service, name)
        channel = _channel_id("dead-letter", queue)
        channels[channel] = {
            "address": queue,
            "title": f"{queue} dead letters",
            "description": f"What {service} gave up on, routed by the direct exchange "
            f"{topology.dead_letter} into the queue {queue}.dead (kept for an operator; nothing "
            "consumes it)." + held,
            "messages": own_messages(ids),
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": _amqp_exchange(topology.dead_letter, "direct"),
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
        operations[f"{service}.dead-letter.{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{i}"} for i in ids],
            "summary": f"{service} rejects a message of {queue}; the broker dead-letters it.",
            "description": "Invalid data, a handler's Reject, retries exhausted, or the queue's "
            "delivery limit reached.",
            "tags": [{"name": service}],
        }

    for consumer in CONSUMERS:
        dead_letters(consumer.service, consumer.name, [_message_id(t) for t in consumer.types])
    # The broker dead-letters the delivery as it is: as MinIO sent it when rejected at once,
    # as the envelope a retry parked when the retries ran out.
    dead_letters(
        notified.service,
        notified.name,
        [NOTIFICATION_MESSAGE, _message_id(notified.type)],
        " A notification rejected at once is here as MinIO sent it; one whose retries ran "
        f"out, as the envelope ({notified.type}) its retry was parked as.",
    )

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "darkroom messaging",
            "version": "1.0.0",
            "description": "The RabbitMQ messages darkroom's services exchange. Every message "
            "a service publishes is an envelope {id, type, time, data}, persistent, published "
            "with confirms; the routing key is its type. Names carry the namespace prefix (here "
            f"the default, {NAMESPACE!r}; AMQP_NAMESPACE sets it). A consumer owns a quorum "
            "queue <namespace>.<service>.<name>, retry queues <queue>.retry.<ms>ms (the default "
            "exchange, x-darkroom-attempt counts attempts), and dead-letters into "
            f"<queue>.dead. {notified.service} also consumes the bucket notifications a "
            f"storage server (MinIO) publishes to its own exchange {notified.exchange}: "
            "MinIO's JSON, not envelopes.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "AMQP_URL says where (default amqp://127.0.0.1:5672/).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(top.get("$defs", {})), "messages": messages},
    }


def dumps(doc: dict[str, Any]) -> str:
    """The document as docs/asyncapi.json holds it."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m darkroom_kit.asyncapi", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, help="write the document here (default: print it)")
    args = parser.parse_args(argv)
    text = dumps(document())
    if args.out is None:
        sys.stdout.write(text)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
