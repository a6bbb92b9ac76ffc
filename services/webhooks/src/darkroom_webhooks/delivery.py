"""Fan-out of public events to subscribed endpoints, and one delivery attempt per message."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from darkroom_kit import records
from darkroom_kit.batching import Batcher
from darkroom_kit.clock import iso_to_ms, ms_to_iso, now_ms
from darkroom_kit.messaging import (
    Defer,
    Envelope,
    Publisher,
    QueueSpec,
    Retry,
    Topology,
)
from darkroom_kit.metrics import LATENCY_BUCKETS
from darkroom_kit.mongo import Database, Document, insert_new
from prometheus_client import CollectorRegistry, Counter, Histogram
from pymongo import UpdateOne

from darkroom_webhooks.limits import BUSY_WAIT_MS, EndpointGate, Limited, Ticket
from darkroom_webhooks.signing import signature_header
from darkroom_webhooks.ssrf import Network, blocked_cause, check_literal

log = logging.getLogger(__name__)

ATTEMPTS = "attempts"  # the field of a delivery that holds its attempts, by number

# Response headers kept per attempt: enough to debug, bounded against a hostile receiver.
MAX_HEADERS = 50
MAX_HEADER_CHARS = 1000


def parse_retry_after(value: str | None, now_s: float) -> int | None:
    """``Retry-After`` in milliseconds from now: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value) * 1000
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0, int((when.timestamp() - now_s) * 1000))


def subscribed(patterns: list[str], event_type: str) -> bool:
    return any(p == "*" or fnmatchcase(event_type, p) for p in patterns)


def delivery_id(message_id: str, endpoint_id: str) -> str:
    # Deterministic: a redelivered event maps to the same delivery, so fan-out is idempotent and
    # the webhook-id a receiver dedupes on is stable across every attempt.
    digest = hashlib.sha256(f"{message_id}:{endpoint_id}".encode()).hexdigest()[:26]
    return f"msg_{digest}"


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "webhook_attempts_total",
            "Webhook delivery attempts by outcome",
            ["outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "webhook_attempt_duration_seconds",
            "Time of one delivery attempt",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.deliveries = Counter(
            "webhook_deliveries_total",
            "Deliveries reaching a final state",
            ["outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "webhook_event_to_delivery_seconds",
            "From the event's time to its successful delivery",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.deferred = Counter(
            "webhook_attempts_deferred_total",
            "Attempts held back, not counted as attempts: by a limit (replica cap, endpoint rate "
            "or concurrency) or by the lease of another dispatcher on the delivery",
            ["limit"],
            registry=registry,
        )
        self.duplicates = Counter(
            "webhook_attempt_duplicates_total",
            "Attempt commands that found their delivery final or unknown (nothing sent)",
            ["status"],
            registry=registry,
        )
        self.notices = Counter(
            "webhook_endpoint_notices_total",
            "Endpoint status changes (failing, disabled, recovered)",
            ["type"],
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_ms: int
    body: str | None
    headers: dict[str, str] = field(default_factory=dict)
    truncated: bool = False

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """Sends one signed POST. Redirects are not followed; the body read is capped."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        allowed: list[Network],
        body_limit: int,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self._session = session
        self._allowed = allowed
        self._body_limit = body_limit
        self._timeout = timeout

    async def send(
        self, url: str, webhook_id: str, secrets: list[str], body: bytes
    ) -> AttemptResult:
        started = time.perf_counter()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "darkroom-webhooks/1",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(secrets, webhook_id, timestamp, body),
        }
        try:
            check_literal(urlsplit(url).hostname or "", self._allowed)
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False, timeout=self._timeout
            ) as resp:
                raw = await _read_up_to(resp.content, self._body_limit + 1)
                return AttemptResult(
                    resp.status,
                    None,
                    _ms_since(started),
                    raw[: self._body_limit].decode("utf-8", "replace"),
                    {
                        k.lower(): v[:MAX_HEADER_CHARS]
                        for k, v in list(resp.headers.items())[:MAX_HEADERS]
                    },
                    len(raw) > self._body_limit,
                )
        except TimeoutError:
            return AttemptResult(None, "timeout", _ms_since(started), None)
        except (aiohttp.ClientError, OSError) as exc:
            blocked = blocked_cause(exc)
            error = f"blocked_address: {blocked}" if blocked else f"{type(exc).__name__}: {exc}"
            return AttemptResult(None, error[:500], _ms_since(started), None)


async def _read_up_to(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """At most ``limit`` bytes of a response body; the rest is never read (a receiver answering
    with gigabytes costs us one cap, not the gigabytes)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def event_id_of(envelope: Envelope) -> str | None:
    """The darkroom event a message is about, for endpoints that filter on event ids."""
    data = envelope.data
    photo, event = data.get("photo"), data.get("event")
    if isinstance(photo, dict):
        return photo.get("event_id")
    if isinstance(event, dict):
        return event.get("id")
    return None


def wants(endpoint: Document, envelope: Envelope) -> bool:
    if envelope.type in records.ENDPOINT_NOTICES:
        # A notice about an endpoint never goes to that endpoint (it is the one failing), and
        # passes every event filter.
        if envelope.data.get("endpoint", {}).get("id") == endpoint["_id"]:
            return False
    else:
        only = endpoint.get("event_ids")
        if only and event_id_of(envelope) not in only:  # cheaper than the patterns: first
            return False
    return _subscribed(tuple(endpoint["event_types"]), envelope.type)


@functools.lru_cache(maxsize=4096)
def _subscribed(patterns: tuple[str, ...], event_type: str) -> bool:
    return subscribed(list(patterns), event_type)


@dataclass(slots=True)
class Job:
    """One attempt about to be made: the delivery, where it goes, and which attempt it is."""

    delivery: Document
    endpoint: Document
    attempt: int  # the message's attempt number: where it stands in the retry schedule
    single: bool = False


# An attempt record, the delivery's status after it, and until when the delivery stays leased
# (for a pending one, until its retry is due).
LogEntry = tuple[Document, str, int]

# How long a fan-out waits for a place under the replica cap before it hands the attempt to the
# command path: long enough for a fast receiver to free one, short for a message held meanwhile.
LOCAL_WAIT_S = 0.2


class LeaseKeeper:
    """Runs ``renew`` (a loop) from ``after_s`` on, until :meth:`stop`. Most requests end long
    before that: they cost a timer, not a task. A task, or an async context manager, per attempt
    cost about a tenth of the dispatcher's CPU per delivery in bench-webhooks."""

    def __init__(self, after_s: float, renew: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._renew = renew
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(after_s, self._start)

    def _start(self) -> None:
        self._task = asyncio.create_task(self._renew())

    async def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # neither raises its cancellation nor swallows ours


class Dispatcher:
    """Fan-out and attempts. An event's first attempts are made right in its fan-out (no second
    trip through the broker) when nothing limits the endpoint; everything else, retries,
    resends, tests and limited endpoints, goes through ``webhook.attempt`` commands. Every
    delivery is leased before its attempt (a short lease, renewed while the request runs), so a
    message consumed twice is sent once; a failed attempt leaves it leased until its retry is
    due, so a message that comes back early (after a crash) adds no attempt ahead of the
    schedule. A message that finds its delivery leased waits for the lease (deferred, not
    counted as an attempt); one that finds it final is a counted, logged duplicate."""

    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        topology: Topology,
        sender: Sender,
        attempts: QueueSpec,
        lease_ms: int,
        metrics: WebhookMetrics,
        gate: EndpointGate,
        *,
        auto_disable_ms: int,
    ) -> None:
        self._endpoints = db[records.WEBHOOK_ENDPOINTS]
        self._deliveries = db[records.WEBHOOK_DELIVERIES]
        self._publisher = publisher
        self._topology = topology
        self._sender = sender
        self._spec = attempts
        self._lease_ms = lease_ms
        self._metrics = metrics
        self._gate = gate
        self._auto_disable_ms = auto_disable_ms
        # Many messages at once share one read of the endpoints and one bulk write each.
        self._endpoint_reads: Batcher[None, list[Document]] = Batcher(self._load_endpoints)
        self._inserts: Batcher[list[Document], set[str]] = Batcher(self._insert_deliveries)
        self._log: Batcher[LogEntry, None] = Batcher(self._write_log)

    # ---- fan-out -------------------------------------------------------------------------------

    async def fan_out(self, envelope: Envelope, attempt: int) -> None:
        """One delivery per subscribed endpoint; the first attempt of each is made now where
        nothing limits the endpoint, otherwise an attempt command is sent."""
        endpoints = await self._endpoint_reads.submit(None)
        targets = [e for e in endpoints if wants(e, envelope)]
        if not targets:
            return
        payload = json.dumps(
            {"type": envelope.type, "timestamp": envelope.time, "data": envelope.data},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        now = now_ms()
        event_ms = iso_to_ms(envelope.time) or now
        # Places under the replica cap are taken before the write, so the deliveries this
        # replica will attempt at once are leased from the start. A busy endpoint here waits a
        # moment for a place, then hands its attempt on. Every place taken is given back on the
        # way out, whatever happens (each attempt gives its own back as soon as it is answered).
        unlimited = [e["_id"] for e in targets if self._gate.unlimited(e)]
        async with self._gate.local_places(unlimited, LOCAL_WAIT_S) as tickets:
            docs = [
                {
                    "_id": delivery_id(envelope.id, e["_id"]),
                    "endpoint_id": e["_id"],
                    "message_id": envelope.id,
                    "event_type": envelope.type,
                    "payload": payload,
                    "status": "pending",
                    "attempt_count": 0,
                    "event_ms": event_ms,
                    "created_ms": now,
                    # Leased from the start when attempted right here.
                    "lease_until_ms": now + self._lease_ms if e["_id"] in tickets else 0,
                    "last_attempt_ms": None,
                }
                for e in targets
            ]
            inserted = await self._inserts.submit(docs)
            now_jobs: list[tuple[Job, Ticket]] = []
            later: list[tuple[str, str]] = []
            for doc, endpoint in zip(docs, targets, strict=True):
                ticket = tickets.get(endpoint["_id"])
                if doc["_id"] in inserted and ticket is not None:
                    now_jobs.append((Job(doc, endpoint, 1), ticket))
                    continue
                if ticket is not None:
                    await self._gate.leave(ticket)
                # Limited, or the delivery existed already (this event came again, perhaps
                # after a crash before its attempts): the command path leases and attempts it.
                later.append((doc["_id"], endpoint["_id"]))
            if len(now_jobs) == 1 and not later:  # the common case, without a task of its own
                await self._run(*now_jobs[0])
                return
            results = await asyncio.gather(
                *(self._run(job, ticket) for job, ticket in now_jobs),
                self._send_commands(later),
                return_exceptions=True,
            )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _send_commands(self, targets: list[tuple[str, str]]) -> None:
        commands = [
            Envelope.new(records.WEBHOOK_ATTEMPT, records.attempt_data(did, eid))
            for did, eid in targets
        ]
        await self._publisher.publish_many(self._topology.commands, commands)

    async def _load_endpoints(self, requests: list[None]) -> list[list[Document]]:
        endpoints = [e async for e in self._endpoints.find({"enabled": True})]
        return [endpoints] * len(requests)

    async def _insert_deliveries(self, batches: list[list[Document]]) -> list[set[str]]:
        # Inserted, or there already (this event came again): the ones this write inserted are
        # the ones this replica may attempt at once (it holds their lease).
        flat = [doc for docs in batches for doc in docs]
        refused = await insert_new(self._deliveries, flat)
        inserted = {d["_id"] for i, d in enumerate(flat) if i not in refused}
        return [inserted] * len(batches)

    # ---- attempts through commands -------------------------------------------------------------

    async def attempt(self, envelope: Envelope, attempt: int) -> None:
        did = envelope.data["delivery_id"]
        endpoint_id = envelope.data.get("endpoint_id")
        if endpoint_id is None:  # a command from before commands named their endpoint
            found = await self._deliveries.find_one({"_id": did}, {"endpoint_id": 1})
            if found is None:
                self._duplicate(envelope, did, None, None)
                return
            endpoint_id = found["endpoint_id"]
        try:
            self._gate.check_room(endpoint_id)  # before MongoDB: a busy endpoint costs no read
        except Limited as exc:
            self._metrics.deferred.labels(exc.limit).inc()
            raise Defer(str(exc), exc.wait_ms, escalate=exc.escalate) from None
        endpoint = await self._endpoints.find_one({"_id": endpoint_id})
        if endpoint is None or not endpoint.get("enabled", True):
            cancelled = await self._deliveries.update_one(
                {"_id": did, "status": "pending"}, {"$set": {"status": "cancelled"}}
            )
            if cancelled.modified_count:
                self._metrics.deliveries.labels("cancelled").inc()
            return
        if not self._gate.unlimited(endpoint):
            # A place at a limited endpoint costs a rate window's budget or a shared slot: look
            # first whether the delivery still needs one. (At an unlimited endpoint the place is
            # a counter in memory, and the lease below says the same.)
            current = await self._deliveries.find_one(
                {"_id": did}, {"status": 1, "lease_until_ms": 1}
            )
            if not self._still_to_attempt(envelope, did, endpoint_id, current, now_ms()):
                return
        try:
            async with self._gate.entered(endpoint) as ticket:
                now = now_ms()
                delivery = await self._deliveries.find_one_and_update(
                    {"_id": did, "status": "pending", "lease_until_ms": {"$lt": now}},
                    {"$set": {"lease_until_ms": now + self._lease_ms}},
                )
                if delivery is None:
                    current = await self._deliveries.find_one(
                        {"_id": did}, {"status": 1, "lease_until_ms": 1}
                    )
                    if self._still_to_attempt(envelope, did, endpoint_id, current, now_ms()):
                        # Its holder let go between the two reads: take it on the next pass
                        # rather than drop what may be the only message that finishes it.
                        raise Defer("delivery released meanwhile", BUSY_WAIT_MS)
                    return
                job = Job(delivery, endpoint, attempt, bool(delivery.get("single_attempt")))
                retry_after = await self._run(job, ticket, retry_by_command=False)
        except Limited as exc:  # only entering raises it
            self._metrics.deferred.labels(exc.limit).inc()
            raise Defer(str(exc), exc.wait_ms, escalate=exc.escalate) from None
        if retry_after is not None:
            raise Retry(f"attempt {attempt} failed", at_least_ms=retry_after or None)

    def _still_to_attempt(
        self,
        envelope: Envelope,
        did: str,
        endpoint_id: str,
        current: Document | None,
        now: int,
    ) -> bool:
        """Whether the delivery ``current`` still waits for this attempt. A pending one still
        leased (another dispatcher is attempting it, or died mid-attempt, or its retry is not due
        yet) is deferred (:class:`Defer`) until its lease ends: this message may be the only one
        that can finish it, but waiting for a lease is no failed attempt, so the retry schedule
        stays where the message stands (a :class:`Retry` here would push the first retry after
        a crash into the second tier)."""
        if current is None or current.get("status") != "pending":
            self._duplicate(envelope, did, endpoint_id, current)
            return False
        until = int(current.get("lease_until_ms") or 0)
        if until >= now:
            self._metrics.deferred.labels("lease").inc()
            # In steps no longer than what is left of the lease (the longest defer queue that
            # fits), so the attempt comes back soon after the lease ends, not up to a whole
            # longer queue later.
            left = until - now + 1
            fits = [d for d in self._spec.defer_delays_ms if d <= left]
            raise Defer("delivery leased", max(fits) if fits else left)
        return True

    def _duplicate(
        self, envelope: Envelope, did: str, endpoint_id: str | None, current: Document | None
    ) -> None:
        """An attempt command for a delivery that is final or unknown: a duplicate (a message
        redelivered, a resend racing a success). Nothing to send, and said so."""
        status = "unknown" if current is None else str(current.get("status"))
        self._metrics.duplicates.labels(status).inc()
        log.info(
            "attempt command for a delivery already %s: nothing to send",
            status,
            extra={
                "delivery_id": did,
                "endpoint_id": endpoint_id,
                "message_id": envelope.id,
                "status": status,
            },
        )

    # ---- one attempt ---------------------------------------------------------------------------

    async def _run(self, job: Job, ticket: Ticket, *, retry_by_command: bool = True) -> int | None:
        """Send, log, judge. Returns None when the delivery is final or its retry is scheduled
        here, otherwise the wait the receiver asked for (0 for none) for the caller to retry."""
        delivery, endpoint = job.delivery, job.endpoint
        did = delivery["_id"]
        started = now_ms()
        try:
            secrets = [
                s["secret"]
                for s in endpoint.get("secrets", [])
                if s.get("expires_ms") is None or s["expires_ms"] > started
            ]
            keeper = self._keep_leases(did, ticket, int(delivery.get("attempt_count", 0)) + 1)
            try:
                result = await self._sender.send(
                    endpoint["url"], did, secrets, delivery["payload"].encode()
                )
            finally:
                await keeper.stop()
        finally:
            await self._gate.leave(ticket)
        self._metrics.duration.observe(result.duration_ms / 1000)
        # The attempt's number in the log counts every attempt of this delivery, resends too.
        record = {
            "delivery_id": did,
            "endpoint_id": endpoint["_id"],
            "attempt": int(delivery.get("attempt_count", 0)) + 1,
            "at_ms": started,
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": result.duration_ms,
            "response_headers": result.headers,
            "response_body": result.body,
            "response_truncated": result.truncated,
        }
        if result.succeeded:
            self._metrics.attempts.labels("succeeded").inc()
            await self._finish(record, "succeeded")
            self._metrics.latency.observe(
                max(0, now_ms() - delivery.get("event_ms", started)) / 1000
            )
            if not job.single:
                await self._health(endpoint, succeeded=True)
            return None
        if result.status_code == 410:
            # 410 Gone: the receiver says the endpoint is gone for good (Standard Webhooks).
            self._metrics.attempts.labels("gone").inc()
            await self._finish(record, "failed")
            await self._disable(endpoint, "gone_410")
            return None
        self._metrics.attempts.labels("failed").inc()
        if not job.single:  # a test send says nothing about the endpoint's health
            await self._health(endpoint, succeeded=False)
        if job.single or job.attempt > len(self._spec.retry_delays_ms):
            await self._finish(record, "failed")
            return None
        wait_ms = None
        if result.status_code in (429, 503):
            wait_ms = parse_retry_after(result.headers.get("retry-after"), time.time())
        # Leased until its retry is due: a copy of the message that would attempt it sooner (the
        # event redelivered after a crash before its retry was queued) waits for that instead,
        # so a crash never adds an attempt ahead of the schedule.
        await self._log.submit((record, "pending", started + self._retry_floor_ms(job, wait_ms)))
        if not retry_by_command:
            return wait_ms or 0
        # The first attempt was made in the fan-out: its retry goes straight to the retry tier
        # of the attempt commands, as the attempt consumer's own retry would.
        queue, headers = self._spec.retry_route(job.attempt, wait_ms)
        command = Envelope.new(records.WEBHOOK_ATTEMPT, records.attempt_data(did, endpoint["_id"]))
        await self._publisher.publish("", command, routing_key=queue, headers=headers)
        return None

    def _retry_floor_ms(self, job: Job, wait_ms: int | None) -> int:
        """The shortest wait the retry after ``job`` can get (its tier's shortest queue, or the
        first queue at least as long as what the receiver asked for): never later than it."""
        spec = self._spec
        if wait_ms is not None:
            return min(wait_ms, max(spec.all_retry_delays()))
        return min(spec.tier_delays(spec.retry_delays_ms[job.attempt - 1]))

    def _keep_leases(self, did: str, ticket: Ticket, attempt: int) -> LeaseKeeper:
        """Keeps the delivery's lease (and the endpoint slot's) alive while the request runs, so
        a lease can be short: a dispatcher that dies mid-attempt holds the delivery for one
        lease length at most, not for the longest request it might have been making."""
        return LeaseKeeper(self._lease_ms / 3 / 1000, lambda: self._renew(did, ticket, attempt))

    async def _renew(self, did: str, ticket: Ticket, attempt: int) -> None:
        """Renews now, then every third of the lease."""
        while True:
            try:
                await self._deliveries.update_one(
                    # Not once this attempt is logged: a late renewal must not push the lease
                    # past the retry it set.
                    {"_id": did, "status": "pending", "attempt_count": {"$ne": attempt}},
                    {"$set": {"lease_until_ms": now_ms() + self._lease_ms}},
                )
                await self._gate.renew(ticket)
            except Exception:
                # MongoDB is away: try again at the next turn. Should it stay away past the
                # lease, a duplicate message may attempt the delivery too (receivers dedupe on
                # its webhook-id), which beats a lease that outlasts a dead holder.
                log.warning("could not renew the lease of %s", did, exc_info=True)
            await asyncio.sleep(self._lease_ms / 3 / 1000)

    async def _finish(self, record: Document, status: str) -> None:
        await self._log.submit((record, status, 0))
        self._metrics.deliveries.labels(status).inc()

    async def _write_log(self, entries: list[LogEntry]) -> list[None]:
        # Each attempt lives in its delivery, in a map keyed by the attempt's number: one write
        # records the attempt and the delivery's new state together, a repeated write of the
        # same attempt lands on the same key, and no server has to get $push right.
        await self._deliveries.bulk_write(
            [
                UpdateOne(
                    {"_id": record["delivery_id"]},
                    {
                        "$set": {
                            "status": status,
                            "lease_until_ms": lease_until,
                            "last_attempt_ms": record["at_ms"],
                            "attempt_count": record["attempt"],
                            f"{ATTEMPTS}.{record['attempt']}": record,
                        }
                    },
                )
                for record, status, lease_until in entries
            ],
            ordered=False,
        )
        return [None] * len(entries)

    # ---- endpoint health -----------------------------------------------------------------------

    async def _health(self, endpoint: Document, *, succeeded: bool) -> None:
        """Failing since the first failure after a success; disabled when that lasts past the
        auto-disable period; recovered on the next success. Each change is announced once
        (the conditional updates make sure of it, whichever replica sees it first)."""
        endpoint_id, now = endpoint["_id"], now_ms()
        since = endpoint.get("failing_since_ms")
        if succeeded:
            if since is not None:
                changed = await self._endpoints.update_one(
                    {"_id": endpoint_id, "failing_since_ms": {"$ne": None}},
                    {"$set": {"failing_since_ms": None}},
                )
                if changed.modified_count:
                    await self._notice(
                        records.ENDPOINT_RECOVERED, endpoint, {"failing_since_ms": None}
                    )
            return
        if since is None:
            changed = await self._endpoints.update_one(
                {"_id": endpoint_id, "failing_since_ms": {"$eq": None}},
                {"$set": {"failing_since_ms": now}},
            )
            if changed.modified_count:
                await self._notice(records.ENDPOINT_FAILING, endpoint, {"failing_since_ms": now})
            return
        if now - since >= self._auto_disable_ms:
            await self._disable(endpoint, "failing")

    async def _disable(self, endpoint: Document, reason: str) -> None:
        now = now_ms()
        changed = await self._endpoints.update_one(
            {"_id": endpoint["_id"], "enabled": True},
            {"$set": {"enabled": False, "disabled_reason": reason, "disabled_ms": now}},
        )
        if changed.modified_count:
            await self._notice(
                records.ENDPOINT_DISABLED,
                endpoint,
                {"enabled": False, "disabled_reason": reason, "disabled_ms": now},
            )

    async def _notice(self, kind: str, endpoint: Document, changes: Document) -> None:
        current = {**endpoint, **changes}
        log.warning(
            "webhook endpoint %s",
            kind.removeprefix("endpoint."),
            extra={"endpoint_id": endpoint["_id"], "reason": current.get("disabled_reason")},
        )
        self._metrics.notices.labels(kind).inc()
        data = {
            "endpoint": {
                "id": endpoint["_id"],
                "url": endpoint["url"],
                "description": endpoint.get("description"),
                "enabled": bool(current.get("enabled", True)),
                "failing_since": ms_to_iso(current.get("failing_since_ms")),
                "disabled_reason": current.get("disabled_reason"),
            }
        }
        try:
            await self._publisher.publish(self._topology.events, Envelope.new(kind, data))
        except Exception:
            # The state change is stored and logged; a lost notice is not worth a retry of
            # the delivery that caused it.
            log.exception("could not publish %s", kind, extra={"endpoint_id": endpoint["_id"]})


async def close_quietly(session: aiohttp.ClientSession) -> None:
    await session.close()
    # aiohttp's own advice: give SSL transports a moment to close.
    await asyncio.sleep(0)
