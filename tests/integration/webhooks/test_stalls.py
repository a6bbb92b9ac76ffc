"""webhook-dispatch must never stall an endpoint: duplicate attempt commands give their place
back (and say so), and a delivery left leased by a dispatcher that died mid-attempt is attempted
when the lease ends, with its retry schedule where it was."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope, Topology
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.stored.endpoints import EndpointRecord
from darkroom_webhooks.app import DISPATCHER
from darkroom_webhooks.delivery import delivery_id
from darkroom_webhooks.limits import SLOTS, EndpointGate
from darkroom_webhooks.settings import WebhookSettings

from tests.factories.api import Client, TokenMaker
from tests.factories.messaging import eventually, publish
from tests.factories.webhooks import (
    NoDb,
    Serve,
    StartDispatch,
    all_succeeded,
    consumed,
    deferred_by,
    metric,
    publish_photo_events,
    register_limited,
    unique_ids,
)


async def test_duplicate_attempts_of_a_final_delivery_do_not_stall_the_endpoint(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
    settings_kwargs: dict[str, Any],
) -> None:
    dispatch = await start_dispatch()
    token = await make_token()
    hook, url = await serve([(200, {}, b"")])
    event_id = f"ev_dup{now_ms()}"
    endpoint = await register_limited(api, token, url, event_id)
    await publish_photo_events(ingest_settings, event_id, 1)
    [done] = await eventually(lambda: all_succeeded(api, token, endpoint["id"], 1))

    # More duplicates of its attempt command than the replica has places for the endpoint (a
    # redelivery, a resend racing the success): none may keep a place.
    cap = WebhookSettings(**settings_kwargs).endpoint_replica_concurrency
    n = cap + 4
    topology = Topology(ingest_settings.amqp_namespace)
    await publish(
        ingest_settings.amqp_url,
        topology.commands,
        *(
            Envelope.new(records.WEBHOOK_ATTEMPT, records.attempt_data(done["id"], endpoint["id"]))
            for _ in range(n)
        ),
    )
    attempts_queue = topology.queue("webhook-dispatch", "attempts")

    async def all_handled() -> bool:
        return consumed(await (await dispatch.get("/metrics")).text(), attempts_queue) >= n

    await eventually(all_handled, timeout=20)

    # A new event for the same endpoint is delivered (with the places leaked it never was: the
    # fan-out found no place, and its attempt command was deferred again and again).
    await publish_photo_events(ingest_settings, event_id, 1)
    log = await eventually(lambda: all_succeeded(api, token, endpoint["id"], 2), timeout=20)
    assert len(unique_ids(hook)) == 2
    assert len(hook.requests) == 2  # the duplicates sent nothing
    assert all(d["attempt_count"] == 1 for d in log)
    # Not silent: each duplicate is counted, and no place is in use any more.
    assert await metric(dispatch, "webhook_attempt_duplicates_total", status="succeeded") == n
    in_use = await metric(dispatch, "webhook_endpoint_places_in_use", endpoint_id=endpoint["id"])
    assert in_use == 0


async def test_a_dead_dispatchers_lease_delays_the_attempt_not_the_retry_schedule(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    # The second tier is far longer than the test waits: only a first retry that keeps its
    # (first-tier) schedule lets the delivery succeed in time.
    dispatch = await start_dispatch(retry_delays_ms=(500, 120_000), retry_jitter=0)
    token = await make_token()
    hook, url = await serve([(500, {}, b"down"), (200, {}, b"")])
    event_id = f"ev_lease{now_ms()}"
    endpoint = await register_limited(api, token, url, event_id)
    db = dispatch.app[MONGO_DB]

    # What a dispatcher killed mid-attempt leaves: the event's delivery, pending, never
    # attempted, leased for a while yet; and the event itself, redelivered by the broker.
    envelope = Envelope.new(
        records.PHOTO_UPLOADED, {"photo": {"id": "ph_lease", "event_id": event_id}}
    )
    did = delivery_id(envelope.id, endpoint["id"])
    lease_until = now_ms() + 3000
    await db[records.WEBHOOK_DELIVERIES].insert_one(
        {
            "_id": did,
            "endpoint_id": endpoint["id"],
            "message_id": envelope.id,
            "event_type": envelope.type,
            "payload": json.dumps(
                {"type": envelope.type, "timestamp": envelope.time, "data": envelope.data}
            ),
            "status": "pending",
            "attempt_count": 0,
            "event_ms": now_ms(),
            "created_ms": now_ms(),
            "lease_until_ms": lease_until,
            "last_attempt_ms": None,
        }
    )
    await publish(
        ingest_settings.amqp_url, Topology(ingest_settings.amqp_namespace).events, envelope
    )

    log = await eventually(lambda: all_succeeded(api, token, endpoint["id"], 1), timeout=40)
    [delivery] = log
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [
        (1, 500),
        (2, 200),
    ]
    stored = await db[records.WEBHOOK_DELIVERIES].find_one({"_id": did})
    assert stored is not None
    first, second = (stored["attempts"][k]["at_ms"] for k in ("1", "2"))
    assert first >= lease_until  # the dead holder's lease was respected
    # The retry came from the first tier (0.5 s), not the second (120 s): waiting out the lease
    # was not counted as an attempt.
    assert second - first < 60_000
    assert len(hook.requests) == 2
    assert await deferred_by(dispatch, limit="lease") > 0


async def test_a_failure_logged_before_a_crash_keeps_its_retry_delay(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dispatch = await start_dispatch(retry_delays_ms=(3000, 120_000), retry_jitter=0)
    token = await make_token()
    hook, url = await serve([(500, {}, b"down"), (200, {}, b"")])
    event_id = f"ev_logged{now_ms()}"
    endpoint = await register_limited(api, token, url, event_id)

    # The first attempt fails and is logged, then the retry cannot be queued (as if the
    # dispatcher died right there): the event comes back from its own retry tier (1 s) and
    # asks for the delivery again, well before its retry (3 s) is due.
    publisher = dispatch.app[DISPATCHER]._publisher
    publish_now = publisher.publish
    failed: list[str] = []

    async def retry_lost(exchange: str, envelope: Envelope, **kwargs: Any) -> None:
        if ".retry." in str(kwargs.get("routing_key")) and not failed:
            failed.append(envelope.id)
            raise ConnectionError("the dispatcher died here")
        await publish_now(exchange, envelope, **kwargs)

    monkeypatch.setattr(publisher, "publish", retry_lost)
    await publish_photo_events(ingest_settings, event_id, 1)
    log = await eventually(lambda: all_succeeded(api, token, endpoint["id"], 1), timeout=20)
    assert failed  # the retry was lost as planned
    [delivery] = log
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [
        (1, 500),
        (2, 200),
    ]
    stored = await dispatch.app[MONGO_DB][records.WEBHOOK_DELIVERIES].find_one(
        {"_id": delivery["id"]}
    )
    assert stored is not None
    first, second = (stored["attempts"][k]["at_ms"] for k in ("1", "2"))
    # Not the moment the event came back (about 1 s later): when the first retry was due.
    assert second - first >= 3000
    assert len(hook.requests) == 2


async def test_a_live_attempt_keeps_its_short_lease(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    # A 1 s lease and a request of 2.5 s: only a lease renewed while the request runs keeps a
    # duplicate attempt command from sending the delivery a second time meanwhile.
    dispatch = await start_dispatch(delivery_lease_seconds=1, timeout_seconds=6)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2.5)
        return web.Response(status=200)

    token = await make_token()
    hook, url = await serve([slow])
    event_id = f"ev_renew{now_ms()}"
    endpoint = await register_limited(api, token, url, event_id)
    envelope = Envelope.new(
        records.PHOTO_UPLOADED, {"photo": {"id": "ph_renew", "event_id": event_id}}
    )
    topology = Topology(ingest_settings.amqp_namespace)
    await publish(ingest_settings.amqp_url, topology.events, envelope)

    async def sending() -> bool:
        return len(hook.requests) == 1

    await eventually(sending)
    did = delivery_id(envelope.id, endpoint["id"])
    await publish(
        ingest_settings.amqp_url,
        topology.commands,
        Envelope.new(records.WEBHOOK_ATTEMPT, records.attempt_data(did, endpoint["id"])),
    )

    async def duplicate_seen() -> bool:
        seen = await metric(dispatch, "webhook_attempt_duplicates_total", status="succeeded")
        return seen == 1

    # The duplicate waited for the lease (renewed past the request's end), then found the
    # delivery final.
    await eventually(duplicate_seen, timeout=20)
    assert len(hook.requests) == 1
    assert await deferred_by(dispatch, limit="lease") > 0


async def test_slots_leased_gauge_counts_only_live_leases(start_dispatch: StartDispatch) -> None:
    dispatch = await start_dispatch(gauge_interval_seconds=0.2)
    endpoint_id = f"wh_slots{now_ms()}"
    now = now_ms()
    # Two slots leased (one by a replica that died a moment ago: its lease still runs), one
    # whose lease ended (a dead holder's, after a restart), one free.
    await dispatch.app[MONGO_DB][SLOTS].insert_many(
        [
            {"_id": f"{endpoint_id}:{k}", "endpoint_id": endpoint_id, "k": k, "until_ms": until}
            for k, until in enumerate([now + 60_000, now + 60_000, now - 1, 0])
        ]
    )

    async def leased() -> bool:
        value = await metric(dispatch, "webhook_endpoint_slots_leased", endpoint_id=endpoint_id)
        return value == 2

    await eventually(leased, timeout=10)


async def test_places_come_back_on_every_way_out() -> None:
    gate = EndpointGate(NoDb(), replica_cap=1, lease_ms=1000)  # type: ignore[arg-type]
    endpoint = EndpointRecord(id="wh_1", url="https://x.example/", event_types=["*"], created_ms=0)

    # An early release inside the block, then the block's exit: given back once, not twice.
    async with gate.entered(endpoint) as ticket:
        assert gate.in_flight("wh_1") == 1
        await gate.leave(ticket)
        assert gate.in_flight("wh_1") == 0
        other = gate.try_enter_local("wh_1")  # someone else takes the freed place
        assert other is not None
    assert gate.in_flight("wh_1") == 1  # still theirs after the block's exit
    await gate.leave(other)

    # A return from the middle of the block, and an exception out of it.
    async def early() -> None:
        async with gate.entered(endpoint):
            return

    await early()
    with pytest.raises(RuntimeError):
        async with gate.entered(endpoint):
            raise RuntimeError("boom")
    assert gate.in_flight("wh_1") == 0

    # Cancelled while waiting for a place that is handed over at that very moment: the place
    # comes back all the same.
    holder = gate.try_enter_local("wh_1")
    assert holder is not None

    async def wait_for_place() -> None:
        async with gate.local_places(["wh_1"], 5):
            await asyncio.sleep(10)

    task = asyncio.ensure_future(wait_for_place())
    await asyncio.sleep(0.01)
    await gate.leave(holder)  # handed to the waiting task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.in_flight("wh_1") == 0
    assert dict(gate.places_in_use()) == {"wh_1": 0}
