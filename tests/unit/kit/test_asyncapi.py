"""The AsyncAPI document: every message type with its payload schema, references that resolve,
the shape AsyncAPI 3.0 requires of channels and operations, a sender/receiver table that agrees
with what the services declare and publish, and docs/asyncapi.json as generated now.

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
from darkroom_kit.payloads import PAYLOADS
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[3]
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
    by_type = {m["name"]: m for m in doc["components"]["messages"].values()}
    assert set(by_type) == set(PAYLOADS)
    for type_, model in PAYLOADS.items():
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


def test_the_consumer_table_is_what_the_services_declare() -> None:
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
    assert {(s.name, s.exchange, s.routing_keys) for _, s in declared} == {
        (
            topology.queue(c.service, c.name),
            topology.events if asyncapi.exchange_of(c.types[0]) == "events" else topology.commands,
            c.types,
        )
        for c in asyncapi.CONSUMERS
    }
    assert {service for service, _ in declared} == {c.service for c in asyncapi.CONSUMERS}


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
