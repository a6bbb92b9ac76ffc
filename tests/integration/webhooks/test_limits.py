"""webhook-dispatch limits and operator tools: per-endpoint rate and concurrency limits held
across two dispatcher replicas, a hanging receiver that must not delay the others, recovery of a
time range as an Operation, pruning of the log, the gauges, and the SSRF guard on every kind of
non-public target."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.mongo import MONGO_DB
from darkroom_webhooks import housekeeping
from darkroom_webhooks.app import GATE
from standardwebhooks import Webhook

from tests.factories.api import Client, TokenMaker, auth
from tests.factories.messaging import eventually
from tests.factories.webhooks import (
    Serve,
    StartDispatch,
    all_succeeded,
    deferred_by,
    deliveries,
    publish_photo_events,
    register_limited,
    sample,
    unique_ids,
)


async def test_rate_limit_holds_across_two_replicas(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    first = await start_dispatch()
    second = await start_dispatch(replica=True)
    token = await make_token()
    limited, limited_url = await serve([(200, {}, b"")])
    free, free_url = await serve([(200, {}, b"")])
    event_id = f"ev_rate{now_ms()}"
    endpoint = await register_limited(api, token, limited_url, event_id, rate_limit=2)
    assert endpoint["rate_limit"] == 2
    await register_limited(api, token, free_url, event_id)
    await publish_photo_events(ingest_settings, event_id, 8)

    async def all_in() -> bool:
        return len(unique_ids(limited)) == 8 and len(unique_ids(free)) == 8

    await eventually(all_in, timeout=30)
    # 2 a second over both replicas: 8 attempts need four one-second windows, so the last comes
    # at least two seconds after the first. (Two replicas each counting on their own would
    # send 4 a second: all within about a second.) The unlimited endpoint got them at once.
    times = sorted(t for t, _, _ in limited.requests)
    assert times[-1] - times[0] >= 2.0
    per_second: dict[int, int] = {}
    for t in times:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    # The limit counts whole seconds of the dispatchers' clock; a receiver's second can also
    # see attempts of the window before that arrived late, so 2 x 2 is the bound here (the
    # span above is what tells two shared windows from two replicas counting on their own).
    assert max(per_second.values()) <= 4
    free_times = sorted(t for t, _, _ in free.requests)
    assert free_times[-1] - free_times[0] < times[-1] - times[0]
    # Held back, never failed: every delivery succeeded at its first attempt.
    log = await eventually(lambda: all_succeeded(api, token, endpoint["id"], 8))
    assert [d["attempt_count"] for d in log] == [1] * 8
    assert await deferred_by(first, second, limit="rate") > 0
    assert await deferred_by(first, second, limit="concurrency") == 0  # counted as what held it


async def test_max_concurrency_holds_across_two_replicas(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    first = await start_dispatch()
    second = await start_dispatch(replica=True)
    now_in = 0
    most = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal now_in, most
        now_in += 1
        most = max(most, now_in)
        try:
            await asyncio.sleep(0.3)
        finally:
            now_in -= 1
        return web.Response(status=200)

    token = await make_token()
    hook, url = await serve([slow])
    event_id = f"ev_conc{now_ms()}"
    endpoint = await register_limited(api, token, url, event_id, max_concurrency=2)
    await publish_photo_events(ingest_settings, event_id, 10)

    async def all_in() -> bool:
        return len(unique_ids(hook)) == 10

    await eventually(all_in, timeout=30)
    assert most == 2  # reached, never passed, with two replicas sending
    assert len(hook.requests) == 10  # each once
    log = await eventually(lambda: all_succeeded(api, token, endpoint["id"], 10))
    assert all(d["attempt_count"] == 1 for d in log)
    assert await deferred_by(first, second, limit="concurrency") > 0


async def test_hanging_endpoint_does_not_delay_the_others(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    # A small replica: 16 messages at once, 2 of them at most for any one endpoint.
    await start_dispatch(
        prefetch=16,
        endpoint_replica_concurrency=2,
        timeout_seconds=10,
        shutdown_grace_seconds=1,
    )

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(11)  # past the 10 s timeout
        return web.Response(status=200)

    token = await make_token()
    hanging, hanging_url = await serve([hang])
    fast, fast_url = await serve([(200, {}, b"")])
    event_id = f"ev_hang{now_ms()}"
    await register_limited(api, token, hanging_url, event_id)
    fast_endpoint = await register_limited(api, token, fast_url, event_id)
    started = time.monotonic()
    await publish_photo_events(ingest_settings, event_id, 40)

    async def fast_done() -> bool:
        return len(unique_ids(fast)) == 40

    await eventually(fast_done, timeout=30)
    # All 40 reached the fast endpoint before the hanging one's first attempts even timed out
    # (10 s): waiting on the hanging receiver would have held the replica's 16 messages for
    # 10 s per round, 20 s and more for 40.
    assert time.monotonic() - started < 9
    assert len(hanging.requests) <= 2  # the replica cap: the rest wait, deferred
    await eventually(lambda: all_succeeded(api, token, fast_endpoint["id"], 40))


async def test_recover_resends_failed_deliveries_of_a_range(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    await start_dispatch(retry_delays_ms=())
    token = await make_token()
    answers: list[Any] = [(500, {}, b"down")]
    hook, url = await serve(answers)
    event_id = f"ev_recover{now_ms()}"
    endpoint = await register_limited(api, token, url, event_id)
    base = f"/v1/webhooks/{endpoint['id']}"

    async def failed(n: int) -> list[dict[str, Any]] | None:
        log = await deliveries(api, token, endpoint["id"])
        done = [d for d in log if d["status"] == "failed"]
        return log if len(done) == n else None

    await publish_photo_events(ingest_settings, event_id, 1)  # before the range: stays failed
    await eventually(lambda: failed(1))
    await asyncio.sleep(0.05)
    since = datetime.now(UTC)
    await publish_photo_events(ingest_settings, event_id, 3)
    log = await eventually(lambda: failed(4))
    in_range = {d["id"] for d in log[:3]}
    answers[0] = (200, {}, b"back")  # the receiver is fixed

    resp = await api.post(
        f"{base}/recover?wait=15",
        json={"since": since.isoformat()},
        headers=auth(token),
    )
    assert resp.status == 200, await resp.text()
    op = await resp.json()
    assert (op["kind"], op["state"]) == ("webhook_recover", "done")
    assert op["result"] == {"total": 3, "resent": 3}
    assert resp.headers["Location"] == f"/v1/operations/{op['id']}"

    async def recovered() -> list[dict[str, Any]] | None:
        log = await deliveries(api, token, endpoint["id"])
        ok = {d["id"] for d in log if d["status"] == "succeeded"}
        return log if ok == in_range else None

    log = await eventually(recovered)
    assert [d["status"] for d in log].count("failed") == 1  # the one before the range
    for d in log:
        if d["id"] in in_range:
            assert [a["status_code"] for a in d["attempts"]] == [500, 200]
    # Every resend kept its delivery's webhook-id, verifiable as any delivery.
    verify = Webhook(endpoint["secret"]).verify
    resent = [(h, b) for _, h, b in hook.requests[4:]]
    assert {h["webhook-id"] for h, _ in resent} == in_range
    for headers, body in resent:
        verify(body, headers)

    # Reading it needs webhooks.manage; bad ranges name their field.
    reader = await make_token("photos.read")
    got = await api.get(f"/v1/operations/{op['id']}", headers=auth(reader))
    assert (got.status, (await got.json())["code"]) == (403, "insufficient_scope")
    got = await api.get(f"/v1/operations/{op['id']}", headers=auth(token))
    assert (await got.json())["progress"] == {"total": 3, "resent": 3}
    for bad, field in (
        ({}, "/since"),
        ({"since": "yesterday"}, "/since"),
        ({"since": since.isoformat(), "until": (since - timedelta(1)).isoformat()}, "/until"),
    ):
        resp = await api.post(f"{base}/recover", json=bad, headers=auth(token))
        assert resp.status == 422
        assert (await resp.json())["errors"][0]["field"] == field
    resp = await api.post(
        "/v1/webhooks/wh_nope/recover", json={"since": since.isoformat()}, headers=auth(token)
    )
    assert resp.status == 404


async def test_pruning_keeps_recent_and_pending_deliveries(
    start_dispatch: StartDispatch,
) -> None:
    # Its own pruning loop off: a pass at start-up could take the old delivery first.
    dispatch = await start_dispatch(prune_interval_seconds=0)
    db = dispatch.app[MONGO_DB]
    day = 86_400_000
    old, recent = now_ms() - 40 * day, now_ms() - day
    tag = f"prune{now_ms()}"
    # (created, last attempt, status)
    docs = {
        f"{tag}-old-final": (old, old, "failed"),
        f"{tag}-old-pending": (old, old, "pending"),
        f"{tag}-old-resent-lately": (old, recent, "succeeded"),
        f"{tag}-recent-final": (recent, recent, "succeeded"),
    }
    await db[records.WEBHOOK_DELIVERIES].insert_many(
        [
            {
                "_id": did,
                "endpoint_id": tag,
                "status": status,
                "created_ms": created,
                "last_attempt_ms": last,
                "attempts": {"1": {"attempt": 1, "at_ms": last}},
            }
            for did, (created, last, status) in docs.items()
        ]
    )
    pruned = await housekeeping.prune(db, dispatch.app[GATE], 30 * day)
    assert pruned >= 1  # the old final delivery (more from other tests)
    kept = {d["_id"] async for d in db[records.WEBHOOK_DELIVERIES].find({"endpoint_id": tag})}
    assert kept == {f"{tag}-old-pending", f"{tag}-old-resent-lately", f"{tag}-recent-final"}


async def test_gauges_show_waiting_retries_and_endpoint_states(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    dispatch = await start_dispatch(
        retry_delays_ms=(60_000,),
        gauge_interval_seconds=0.2,
    )
    token = await make_token()
    _, url = await serve([(500, {}, b"")])
    event_id = f"ev_gauge{now_ms()}"
    endpoint = await register_limited(api, token, url, event_id)
    await publish_photo_events(ingest_settings, event_id, 2)

    async def waiting() -> str | None:
        text = await (await dispatch.get("/metrics")).text()
        value = sample(text, "webhook_retry_messages", tier="60s")
        return text if value is not None and value >= 2 else None

    text = await eventually(waiting, timeout=20)
    failing = sample(text, "webhook_endpoints", state="failing")
    assert failing is not None
    assert failing >= 1
    await api.patch(f"/v1/webhooks/{endpoint['id']}", json={"enabled": False}, headers=auth(token))

    async def disabled() -> bool:
        text = await (await dispatch.get("/metrics")).text()
        value = sample(text, "webhook_endpoints", state="disabled")
        return value is not None and value >= 1

    await eventually(disabled, timeout=10)


async def test_every_kind_of_private_target_is_refused(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    # No allowlist: loopback is as private as any other range here.
    await start_dispatch(allow_private_networks=[], retry_delays_ms=())
    token = await make_token()
    listening, url = await serve([(200, {}, b"")])
    port = url.split(":")[2].split("/")[0]
    event_id = f"ev_ssrf{now_ms()}"
    targets = {
        "loopback": url,
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "private": "http://10.0.0.7/hook",
        "ipv6 loopback": f"http://[::1]:{port}/hook",
        "name resolving to loopback": f"http://localhost:{port}/hook",
    }
    endpoints = {
        kind: await register_limited(api, token, target, event_id)
        for kind, target in targets.items()
    }
    await publish_photo_events(ingest_settings, event_id, 1)
    for kind, endpoint in endpoints.items():

        async def final(endpoint_id: str = endpoint["id"]) -> list[dict[str, Any]] | None:
            log = await deliveries(api, token, endpoint_id)
            return log if log and log[0]["status"] == "failed" else None

        log = await eventually(final)
        [attempt] = log[0]["attempts"]
        assert attempt["error"].startswith("blocked_address"), (kind, attempt)
    assert listening.requests == []  # nothing ever reached the listening receiver
