"""Each service relays its own outbox: entries record who wrote them, a relay publishes only its
own service's (and upload-ingest's relay, with ``adopt_unowned``, those written before entries
had owners). Against the real broker and the database of the run (the nx-27017 stand-in or
MongoDB)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import outbox, records
from darkroom_kit.messaging import PUBLISHER, Envelope, QueueSpec, Topology
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.outbox import Outbox, OutboxRelay

from tests.factories.api import Client
from tests.factories.messaging import drain


def announce(photo_id: str) -> Envelope:
    return Envelope.new(records.PHOTO_UPLOADED, {"photo": {"id": photo_id}})


async def test_each_relay_publishes_only_its_own_services_messages(
    api: Client, ingest_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    app = api.app
    # A collection of its own: the app's relay must not take the documents first.
    col = app[MONGO_DB][f"owners_test_{secrets.token_hex(3)}"]
    events = Topology(ingest_settings.amqp_namespace).events
    ingest = Outbox(app[PUBLISHER], owner="upload-ingest")
    thumbnailing = Outbox(app[PUBLISHER], owner="thumbnailing")
    first, second, third = announce("ph_1"), announce("ph_1"), announce("ph_1")
    # upload-ingest writes the record with its message; thumbnailing adds its own to the same
    # document (one write each), and neither publishes (as if both died right after).
    await col.insert_one({"_id": "ph_1", **ingest.fields(events, [first], -1)})
    await col.update_one({"_id": "ph_1"}, thumbnailing.push(events, [second], -1))
    stored = await col.find_one({"_id": "ph_1"})
    assert stored is not None
    assert list(ingest.pending_of(stored)) == [first.id]
    assert list(thumbnailing.pending_of(stored)) == [second.id]
    assert ingest.pending_of(stored)[first.id]["owner"] == "upload-ingest"

    ingest_relay = OutboxRelay(ingest, [col])
    thumbnailing_relay = OutboxRelay(thumbnailing, [col])
    await thumbnailing_relay.ensure_indexes()
    assert await ingest_relay.run_once() == 1
    assert [m["id"] for m in await drain(ingest_settings.amqp_url, watch_events.name, 2, 1)] == [
        first.id
    ]
    stored = await col.find_one({"_id": "ph_1"})
    assert stored is not None
    assert ingest.pending_of(stored) == {}
    assert ingest.lane.due.split(".")[1] not in stored[outbox.OUTBOX_DUE_BY]  # nothing left
    assert list(thumbnailing.pending_of(stored)) == [second.id]  # not upload-ingest's to send
    assert await ingest_relay.run_once() == 0

    # A new message of upload-ingest while thumbnailing's still waits: each relay its own.
    await col.update_one({"_id": "ph_1"}, ingest.push(events, [third], -1))
    assert await thumbnailing_relay.run_once() == 1
    assert await ingest_relay.run_once() == 1
    got = await drain(ingest_settings.amqp_url, watch_events.name, 3, 1)
    assert sorted(m["id"] for m in got) == sorted([second.id, third.id])
    stored = await col.find_one({"_id": "ph_1"})
    assert stored is not None
    assert stored[outbox.OUTBOX_DUE_BY] == {}
    assert (ingest.pending_of(stored), thumbnailing.pending_of(stored)) == ({}, {})
    assert await thumbnailing_relay.run_once() == await ingest_relay.run_once() == 0


async def test_unowned_messages_from_before_are_relayed_by_the_adopting_relay(
    api: Client, ingest_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    """Entries written before entries had owners (``outbox``/``outbox_due_ms``) are published
    by upload-ingest's relay, made with ``adopt_unowned=True`` (the collections they sit in are
    upload-ingest's), and by no other."""
    app = api.app
    col = app[MONGO_DB][f"legacy_test_{secrets.token_hex(3)}"]
    events = Topology(ingest_settings.amqp_namespace).events
    old = announce("ph_old")
    legacy: dict[str, Any] = {
        "_id": "ph_old",
        outbox.OUTBOX: {old.id: {**old.model_dump(), "exchange": events}},
        outbox.OUTBOX_DUE: 0,
    }
    await col.insert_one(legacy)
    assert list(outbox.pending_of(legacy)) == [old.id]
    thumbnailing = OutboxRelay(Outbox(app[PUBLISHER], owner="thumbnailing"), [col])
    assert await thumbnailing.run_once() == 0
    ingest = OutboxRelay(Outbox(app[PUBLISHER], owner="upload-ingest"), [col], adopt_unowned=True)
    await ingest.ensure_indexes()
    assert await ingest.run_once() == 1
    got = await drain(ingest_settings.amqp_url, watch_events.name, 1)
    assert [m["id"] for m in got] == [old.id]
    stored = await col.find_one({"_id": "ph_old"})
    assert stored is not None
    assert stored[outbox.OUTBOX] == {}
    assert outbox.OUTBOX_DUE not in stored
    assert await ingest.run_once() == 0


async def test_a_relay_leaves_entries_of_another_namespace_and_its_channel_stays_open(
    api: Client,
    ingest_settings: IngestSettings,
    watch_events: QueueSpec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two deployments (or two test runs) on one database: an entry naming the other's exchange
    is not this relay's. Publishing it would fail on an exchange missing here and close the
    channel under every publish in flight on it."""
    app = api.app
    col = app[MONGO_DB][f"namespaces_test_{secrets.token_hex(3)}"]
    topology = Topology(ingest_settings.amqp_namespace)
    ingest = Outbox(app[PUBLISHER], owner="upload-ingest")
    foreign, own = announce("ph_f"), announce("ph_o")
    await col.insert_one(
        {"_id": "ph_f", **ingest.fields(f"gone-{secrets.token_hex(3)}.events", [foreign], -1)}
    )
    await col.insert_one({"_id": "ph_o", **ingest.fields(topology.events, [own], -1)})
    relay = OutboxRelay(ingest, [col], exchanges=topology.published)
    tried: list[str] = []
    publish = app[PUBLISHER].publish

    async def recorded(exchange: str, envelope: Envelope, *args: Any, **kw: Any) -> None:
        tried.append(exchange)
        await publish(exchange, envelope, *args, **kw)

    monkeypatch.setattr(app[PUBLISHER], "publish", recorded)
    assert await relay.run_once() == 1
    assert tried == [topology.events]  # the foreign entry was never tried
    assert [m["id"] for m in await drain(ingest_settings.amqp_url, watch_events.name, 1)] == [
        own.id
    ]
    left = await col.find_one({"_id": "ph_f"})
    assert left is not None
    assert list(ingest.pending_of(left)) == [foreign.id]  # kept for its own deployment
    # The channel is still usable: a publish right after goes through.
    later = announce("ph_l")
    await col.insert_one({"_id": "ph_l", **ingest.fields(topology.events, [later], -1)})
    assert await relay.run_once() == 1
    assert [m["id"] for m in await drain(ingest_settings.amqp_url, watch_events.name, 1)] == [
        later.id
    ]
