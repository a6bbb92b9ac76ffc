"""The AsyncAPI document: every message type with its payload schema, references that resolve,
the shape AsyncAPI 3.0 requires of channels and operations, a sender/receiver table that agrees
with what the services declare and publish, the bucket notifications upload-ingest takes from the
storage server (MinIO's JSON, not an envelope), and docs/asyncapi.json as generated now.

Validation against the official AsyncAPI 3.0 JSON schema is not done here: no package in the
lock file ships that schema (it is in the npm package @asyncapi/specs), so these checks are
structural: the rules of the specification this generator could break."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from darkroom_kit import asyncapi, records
from darkroom_kit.messaging import Envelope, Topology
from darkroom_kit.payloads import PAYLOADS, BucketNotification
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[3]
# The event the import_notifications.py docstring shows, with the fields it elides as MinIO sends
# them (its event.Log for a PUT of "photos/a b.jpg" into the bucket "drop").
MINIO_EVENT: dict[str, Any] = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "drop/photos/a b.jpg",
    "Records": [
        {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": "2024-05-01T12:00:00.123Z",
            "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"principalId": "darkroom"},
            "requestParameters": {
                "principalId": "darkroom",
                "region": "",
                "sourceIPAddress": "172.18.0.1",
            },
            "responseElements": {
                "x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
                "x-amz-request-id": "17CB0A4A5C8D1E2F",
                "x-minio-deployment-id": "6a0f1d9e-3c2b-4f5a-8e7d-1b2c3d4e5f60",
                "x-minio-origin-endpoint": "http://172.18.0.3:9000",
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "Config",
                "bucket": {
                    "name": "drop",
                    "ownerIdentity": {"principalId": "darkroom"},
                    "arn": "arn:aws:s3:::drop",
                },
                "object": {
                    "key": "photos%2Fa+b.jpg",
                    "size": 123,
                    "eTag": "0cc175b9c0f1b6a831c399e269772661",
                    "contentType": "image/jpeg",
                    "userMetadata": {"content-type": "image/jpeg"},
                    "sequencer": "17CB0A4A5D0E9F10",
                },
            },
            "source": {"host": "172.18.0.1", "port": "", "userAgent": "MinIO (linux; amd64)"},
        }
    ],
}
SERVICE_PACKAGES = {
    "ingest": "darkroom_ingest",
    "thumbnailing": "darkroom_thumbnailing",
    "repair": "darkroom_repair",
    "webhooks": "darkroom_webhooks",
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi.document()


def pointer(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref} does not resolve at {part!r}"
        assert part in node, f"{ref} does not resolve at {part!r}"
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    found = list(refs(doc))
    assert len(found) > len(PAYLOADS) * 3
    for ref in found:
        pointer(doc, ref)


def test_every_message_type_is_there_with_its_payload_schema(doc: dict[str, Any]) -> None:
    # The document as a resource: its own "#/components/..." references resolve within it.
    registry: Registry[Any] = Registry().with_resource(
        "urn:asyncapi", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    # Envelopes are the messages with a type; a bucket notification's is only ever parked (a
    # retry) or dead-lettered by upload-ingest, and MinIO's own body is no envelope.
    enveloped: dict[str, type[BaseModel]] = {
        **PAYLOADS,
        records.BUCKET_NOTIFICATION: BucketNotification,
    }
    messages = doc["components"]["messages"]
    by_type = {m["name"]: m for m in messages.values() if "amqp" in m.get("bindings", {})}
    assert set(by_type) == set(enveloped)
    assert set(messages) == {*map(asyncapi._message_id, enveloped), asyncapi.NOTIFICATION_MESSAGE}
    for type_, model in enveloped.items():
        message = by_type[type_]
        envelope = pointer(doc, message["payload"]["$ref"])
        assert set(envelope["required"]) >= {"id", "type", "time", "data"}, type_
        assert envelope["properties"]["type"]["const"] == type_
        data = pointer(doc, envelope["properties"]["data"]["$ref"])
        # The payload model's own schema, the one consumers validate against.
        own = model.model_json_schema(ref_template=asyncapi.SCHEMAS)
        own.pop("$defs", None)
        assert data == own, type_
        # And it accepts an envelope of the type (the consumers' check) and nothing else.
        schema = {"$ref": "urn:asyncapi" + message["payload"]["$ref"]}
        check = jsonschema.Draft202012Validator(
            schema, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        sample = Envelope.new(type_, _sample_data(type_)).model_dump(mode="json")
        model.model_validate(sample["data"])
        assert [e.message for e in check.iter_errors(sample)] == [], type_
        assert list(check.iter_errors({**sample, "type": "other"})), type_
        assert list(check.iter_errors({k: v for k, v in sample.items() if k != "id"})), type_


def _sample_data(type_: str) -> dict[str, Any]:
    photo = {"id": "pho_1", "event_id": "evt_1", "size": 10, "status": "processed"}
    endpoint = {"endpoint": {"id": "whe_1", "url": "https://example.com/h", "enabled": True}}
    samples: dict[str, dict[str, Any]] = {
        records.PHOTO_UPLOADED: {"photo": photo},
        records.PHOTO_PROCESSED: {"photo": photo, "variants": {"hero": {"size": 1}}},
        records.PHOTO_DELETED: {"photo": photo},
        records.PHOTO_REPAIRED: {"photo": photo, "repaired_fields": ["width", "height"]},
        records.EVENT_ARCHIVED: {"event": {"id": "evt_1", "status": "archived"}},
        records.ENDPOINT_FAILING: endpoint,
        records.ENDPOINT_DISABLED: endpoint,
        records.ENDPOINT_RECOVERED: endpoint,
        records.REPAIR_REQUESTED: {"sweep": True},
        records.ARCHIVE_REQUESTED: {"operation_id": "op_1"},
        records.WEBHOOK_ATTEMPT: records.attempt_data("msg_1", "whe_1"),
        records.WEBHOOK_RECOVER: {"operation_id": "op_1"},
        records.WEBHOOK_RESEND: {"delivery_id": "msg_1", "endpoint_id": "whe_1"},
        records.WEBHOOK_SEND_TEST: {"delivery_id": "msg_2", "endpoint_id": "whe_1"},
        records.BUCKET_NOTIFICATION: MINIO_EVENT,
    }
    return samples[type_]


def test_channels_and_operations_have_the_shape_asyncapi_3_requires(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    for server in doc["servers"].values():
        assert server["protocol"] == "amqp"
        assert server["host"]
    for key, channel in doc["channels"].items():
        assert isinstance(channel["address"], str), key
        assert channel["address"], key
        amqp = channel["bindings"]["amqp"]
        assert amqp["is"] == "routingKey"
        assert amqp["exchange"]["type"] in {"topic", "direct"}
        for message in channel["messages"].values():
            assert message["$ref"].startswith("#/components/messages/"), key
    for key, operation in doc["operations"].items():
        assert operation["action"] in {"send", "receive"}, key
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), key
        # AsyncAPI 3.0: an operation's messages are messages of its own channel.
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), key
    for message in doc["components"]["messages"].values():
        assert message["contentType"] == "application/json"
    keys = [*doc["channels"], *doc["operations"], *doc["components"]["messages"]]
    keys += list(doc["components"]["schemas"])
    assert all(k.replace(".", "").replace("-", "").replace("_", "").isalnum() for k in keys)


def test_the_bucket_notification_is_minio_s_own_json_not_an_envelope(
    doc: dict[str, Any],
) -> None:
    registry: Registry[Any] = Registry().with_resource(
        "urn:asyncapi", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    message = doc["components"]["messages"][asyncapi.NOTIFICATION_MESSAGE]
    schema = pointer(doc, message["payload"]["$ref"])
    own = BucketNotification.model_json_schema(ref_template=asyncapi.SCHEMAS)
    own.pop("$defs", None)
    assert schema == own
    assert not {"id", "type", "time", "data"} & set(schema["properties"])
    check = jsonschema.Draft202012Validator(
        {"$ref": "urn:asyncapi" + message["payload"]["$ref"]}, registry=registry
    )
    # What MinIO publishes validates, as the consumer's model reads it; wrapped, it would not.
    BucketNotification.model_validate(MINIO_EVENT)
    assert [e.message for e in check.iter_errors(MINIO_EVENT)] == []
    wrapped = Envelope.new(records.BUCKET_NOTIFICATION, MINIO_EVENT).model_dump(mode="json")
    assert list(check.iter_errors(wrapped))
    with pytest.raises(ValueError, match="validation error"):
        Envelope.model_validate(MINIO_EVENT)
    assert list(check.iter_errors({**MINIO_EVENT, "Records": []}))
    # MinIO sets these headers and no message id, so nothing correlates it.
    assert set(message["headers"]["properties"]) == {"minio-bucket", "minio-event"}
    assert "correlationId" not in message
    assert "MinIO" in message["description"]

    notified = asyncapi.NOTIFICATIONS
    channel_ref = f"#/channels/{asyncapi.NOTIFICATION_CHANNEL}"
    channel = pointer(doc, channel_ref)
    assert channel["address"] == notified.binding_key
    exchange = channel["bindings"]["amqp"]["exchange"]
    assert (exchange["name"], exchange["type"]) == (notified.exchange, notified.kind)
    assert list(channel["messages"]) == [asyncapi.NOTIFICATION_MESSAGE]
    # MinIO sends, so darkroom only receives: one operation, upload-ingest's, on its queue.
    on_it = [o for o in doc["operations"].values() if o["channel"]["$ref"] == channel_ref]
    assert len(on_it) == 1
    (receive,) = on_it
    topology = Topology(asyncapi.NAMESPACE)
    queue = topology.queue(notified.service, notified.name)
    assert receive["action"] == "receive"
    assert receive["tags"] == [{"name": notified.service}]
    assert receive["x-queue"] == queue
    assert "1 s, 5 s and 30 s" in receive["description"]
    # Rejected at once it is dead-lettered as MinIO sent it; retried, as the envelope parked.
    dead = doc["channels"][f"dead-letter.{queue}"]
    assert dead["address"] == queue
    assert dead["bindings"]["amqp"]["exchange"]["name"] == topology.dead_letter
    assert set(dead["messages"]) == {
        asyncapi.NOTIFICATION_MESSAGE,
        asyncapi._message_id(records.BUCKET_NOTIFICATION),
    }
    assert doc["operations"][f"{notified.service}.dead-letter.{notified.name}"]["action"] == (
        "send"
    )


def test_every_type_is_sent_by_someone_and_received_by_someone(doc: dict[str, Any]) -> None:
    sent = {t for types in asyncapi.PRODUCERS.values() for t in types}
    received = {t for c in asyncapi.CONSUMERS for t in c.types}
    assert sent == set(PAYLOADS)
    assert received == set(PAYLOADS)
    topology = Topology(asyncapi.NAMESPACE)
    for type_ in PAYLOADS:
        channel = doc["channels"][f"{asyncapi.exchange_of(type_)}.{type_}"]
        expected = topology.events if type_ in records.PUBLIC_EVENT_TYPES else topology.commands
        assert channel["bindings"]["amqp"]["exchange"]["name"] == expected
        actions = {
            o["action"]
            for o in doc["operations"].values()
            if o["channel"]["$ref"] == f"#/channels/{asyncapi.exchange_of(type_)}.{type_}"
        }
        assert actions == {"send", "receive"}, type_
    for consumer in asyncapi.CONSUMERS:
        queue = topology.queue(consumer.service, consumer.name)
        dead = doc["channels"][f"dead-letter.{queue}"]
        assert dead["address"] == queue
        assert dead["bindings"]["amqp"]["exchange"]["name"] == topology.dead_letter


def test_the_consumer_tables_are_what_the_services_declare() -> None:
    from darkroom_ingest.app import SERVICE as INGEST
    from darkroom_ingest.import_notifications import queue_spec as notifications_spec
    from darkroom_ingest.settings import IngestSettings
    from darkroom_repair.app import SERVICE as REPAIR
    from darkroom_repair.app import archive_queue_spec
    from darkroom_repair.app import queue_spec as repair_spec
    from darkroom_thumbnailing.app import SERVICE as THUMBNAILING
    from darkroom_thumbnailing.app import queue_spec as thumbnailing_spec
    from darkroom_thumbnailing.settings import ThumbnailSettings
    from darkroom_webhooks.app import SERVICE as WEBHOOKS
    from darkroom_webhooks.app import queue_specs
    from darkroom_webhooks.settings import WebhookSettings

    topology = Topology("ns")
    declared = {
        (THUMBNAILING, thumbnailing_spec(topology, ThumbnailSettings())),
        (REPAIR, repair_spec(topology)),
        (REPAIR, archive_queue_spec(topology)),
        *((WEBHOOKS, s) for s in queue_specs(topology, WebhookSettings())),
    }
    # The declared defaults, as the document has them: model_construct reads no environment.
    ingest = IngestSettings.model_construct()
    notify = notifications_spec(topology, ingest, INGEST)
    declared.add((INGEST, notify))
    notified = asyncapi.NOTIFICATIONS
    assert {(s.name, s.exchange, s.routing_keys) for _, s in declared} == {
        *(
            (
                topology.queue(c.service, c.name),
                topology.events
                if asyncapi.exchange_of(c.types[0]) == "events"
                else topology.commands,
                c.types,
            )
            for c in asyncapi.CONSUMERS
        ),
        (
            topology.queue(notified.service, notified.name),
            notified.exchange,
            (notified.binding_key,),
        ),
    }
    assert {service for service, _ in declared} == {
        *(c.service for c in asyncapi.CONSUMERS),
        notified.service,
    }
    assert notify.retry_delays_ms == notified.retry_delays_ms
    assert ingest.import_notify_exchange_type == notified.kind


def _service_sources() -> Iterator[tuple[str, list[ast.Module]]]:
    for directory, package in SERVICE_PACKAGES.items():
        root = ROOT / "services" / directory / "src" / package
        modules = [ast.parse(p.read_text(), str(p)) for p in sorted(root.rglob("*.py"))]
        app = ast.parse((root / "app.py").read_text())
        names = [
            node.value.value
            for node in app.body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "SERVICE" for t in node.targets)
            and isinstance(node.value, ast.Constant)
        ]
        assert len(names) == 1, f"{package}.app declares no SERVICE"
        yield str(names[0]), modules


def _records_value(node: ast.expr) -> str | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "records"
    ):
        value = getattr(records, node.attr)
        return value if isinstance(value, str) else None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def test_the_producer_table_is_what_the_services_publish() -> None:
    services = dict(_service_sources())
    assert set(services) == set(asyncapi.PRODUCERS)
    for service, modules in services.items():
        built: set[str] = set()  # types of every Envelope.new(<type known here>, ...)
        named: set[str] = set()  # every message type the service's code names at all
        for module in modules:
            for node in ast.walk(module):
                if isinstance(node, ast.Attribute):
                    value = _records_value(node)
                    if value in PAYLOADS:
                        named.add(value)
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "new"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "Envelope"
                    and node.args
                ):
                    value = _records_value(node.args[0])
                    if value is not None:
                        built.add(value)
        # webhook.test is stored as a delivery by the API, never published.
        built.discard(records.WEBHOOK_TEST)
        table = set(asyncapi.PRODUCERS[service])
        assert built <= table, (service, built - table)
        # A type built from a variable (the endpoint notices) is at least named in the code.
        assert table <= named, (service, table - named)


def test_docs_asyncapi_json_is_what_the_generator_makes_now() -> None:
    path = ROOT / "docs" / "asyncapi.json"
    assert path.read_text(encoding="utf-8") == asyncapi.dumps(asyncapi.document()), (
        "docs/asyncapi.json is stale: run `make asyncapi`"
    )


def test_the_entry_point_prints_and_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncapi.main([])
    printed = capsys.readouterr().out
    out = tmp_path / "sub" / "asyncapi.json"
    asyncapi.main(["--out", str(out)])
    assert out.read_text(encoding="utf-8") == printed == asyncapi.dumps(asyncapi.document())
