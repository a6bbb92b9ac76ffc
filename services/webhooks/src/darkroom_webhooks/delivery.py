"""Fan-out of public events to subscribed endpoints, and one delivery attempt per message."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from darkroom_kit import records
from darkroom_kit.batching import Batcher
from darkroom_kit.clock import iso_to_ms, ms_to_iso, now_ms
from darkroom_kit.links import MediaLinks
from darkroom_kit.logs import bound
from darkroom_kit.messaging import (
    Defer,
    Envelope,
    Message,
    QueueSpec,
    Reject,
    Retry,
)
from darkroom_kit.metrics import LATENCY_BUCKETS
from darkroom_kit.mongo import Document, insert_new
from darkroom_kit.payloads import (
    Endpoint,
    EndpointNotice,
    EventArchived,
    Photo,
    PhotoDeleted,
    WebhookAttempt,
    WebhookResend,
    WebhookSendTest,
    declared,
)
from darkroom_kit.statuses import DELIVERY_FINAL, DeliveryStatus
from darkroom_kit.stored.deliveries import (
    ATTEMPTS,
    DeliveryRecord,
    DeliveryState,
    StoredAttempt,
    delivery_body,
)
from darkroom_kit.stored.endpoints import EndpointRecord
from darkroom_kit.views import linked_view
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel
from pymongo import UpdateOne

from darkroom_webhooks.limits import BUSY_WAIT_MS, Limited, Ticket
from darkroom_webhooks.signing import signature_header
from darkroom_webhooks.ssrf import Network, blocked_cause, check_literal

if TYPE_CHECKING:
    from darkroom_webhooks.deps import Deps

log = logging.getLogger(__name__)

# The final states, as a query's $in list.
FINAL = sorted(DELIVERY_FINAL)

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
        self.ignored = Counter(
            "webhook_commands_ignored_total",
            "Resend and test-send commands with nothing to do (a resend of a delivery still "
            "pending or unknown, a test of an unknown endpoint): logged too",
            ["command", "status"],
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


def about(payload: BaseModel) -> tuple[str | None, str | None]:
    """(the endpoint a notice is about, the darkroom event a message is about), for the
    filters of the fan-out."""
    if isinstance(payload, EndpointNotice):
        return payload.endpoint.id, None
    photo = getattr(payload, "photo", None)
    if isinstance(photo, Photo):
        event_id = photo.event_id
        return None, event_id if isinstance(event_id, str) else None
    if isinstance(payload, EventArchived):
        return None, payload.event.id
    return None, None


def public_body(envelope: Envelope, payload: BaseModel, links: MediaLinks, ttl_s: int) -> str:
    """The body every endpoint gets for ``envelope``: the fields the catalogue documents, and
    signed links to the photo it is about (for the owner's systems, so they work while the photo
    is hidden; not for a deleted photo, whose links could never work)."""
    data = declared(payload)
    photo = getattr(payload, "photo", None)
    if isinstance(photo, Photo) and not isinstance(payload, PhotoDeleted):
        urls = links.urls(linked_view(photo), ttl_s, hidden_ok=True)
        data["photo"]["urls"] = urls.model_dump(mode="json")
    return delivery_body(envelope.id, envelope.type, envelope.time, data)


def wants(
    endpoint: EndpointRecord, event_type: str, about_endpoint: str | None, event_id: str | None
) -> bool:
    if event_type in records.ENDPOINT_NOTICES:
        # A notice about an endpoint never goes to that endpoint (it is the one failing), and
        # passes every event filter.
        if about_endpoint == endpoint.id:
            return False
    else:
        only = endpoint.event_ids
        if only and event_id not in only:  # cheaper than the patterns: first
            return False
    return _subscribed(tuple(endpoint.event_types), event_type)


@functools.lru_cache(maxsize=4096)
def _subscribed(patterns: tuple[str, ...], event_type: str) -> bool:
    return subscribed(list(patterns), event_type)


@dataclass(slots=True)
class Job:
    """One attempt about to be made: the delivery, where it goes, and which attempt it is."""

    delivery: DeliveryRecord
    endpoint: EndpointRecord
    attempt: int  # the message's attempt number: where it stands in the retry schedule

    @property
    def single(self) -> bool:
        return self.delivery.single_attempt


# An attempt record, the delivery's status after it, and until when the delivery stays leased
# (for a pending one, until its retry is due).
LogEntry = tuple[StoredAttempt, DeliveryStatus, int]


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
    """Fan-out, attempts, resends and test sends: the one writer of deliveries. An event's first
    attempts are made right in its fan-out (no second trip through the broker) when nothing
    limits the endpoint; everything else, retries and limited endpoints, goes through
    ``webhook.attempt`` commands, and resends and test sends are commands of their own
    (``webhook.resend``, ``webhook.send_test``) that upload-ingest sends. Every delivery is
    leased before its attempt (a short lease, renewed while the request runs), so a message
    consumed twice is sent once; a failed attempt leaves it leased until its retry is due, so a
    message that comes back early (after a crash) adds no attempt ahead of the schedule. A
    message that finds its delivery leased waits for the lease (deferred, not counted as an
    attempt); one that finds it final is a counted, logged duplicate."""

    def __init__(self, deps: Deps, attempts: QueueSpec) -> None:
        """``attempts`` is the queue of the attempt commands (its retry tiers and defer queues
        are the schedule this dispatcher follows)."""
        settings = deps.settings
        self._endpoints = deps.db[records.WEBHOOK_ENDPOINTS]
        self._deliveries = deps.db[records.WEBHOOK_DELIVERIES]
        self._publisher = deps.publisher
        self._topology = deps.topology
        self._sender = deps.sender
        self._spec = attempts
        self._lease_ms = deps.lease_ms
        self._metrics = deps.metrics
        self._gate = deps.gate
        self._auto_disable_ms = int(settings.auto_disable_after_hours * 3600 * 1000)
        self._outbox = deps.outbox
        self._outbox_grace_ms = settings.outbox_grace_ms
        self._local_wait_s = settings.local_wait_seconds
        self._links = deps.links
        self._webhook_link_seconds = settings.webhook_media_link_seconds
        # Many messages at once share one read of the endpoints and one bulk write each.
        self._endpoint_reads: Batcher[None, list[EndpointRecord]] = Batcher(self._load_endpoints)
        self._inserts: Batcher[list[Document], set[str]] = Batcher(self._insert_deliveries)
        self._log: Batcher[LogEntry, None] = Batcher(self._write_log)

    # ---- fan-out -------------------------------------------------------------------------------

    async def fan_out(self, message: Message[BaseModel]) -> None:
        """One delivery per subscribed endpoint; the first attempt of each is made now where
        nothing limits the endpoint, otherwise an attempt command is sent."""
        envelope = message.envelope
        endpoints = await self._endpoint_reads.submit(None)
        about_endpoint, event_id = about(message.payload)
        targets = [e for e in endpoints if wants(e, envelope.type, about_endpoint, event_id)]
        if not targets:
            return
        body = public_body(envelope, message.payload, self._links, self._webhook_link_seconds)
        now = now_ms()
        event_ms = iso_to_ms(envelope.time) or now
        # Places under the replica cap are taken before the write, so the deliveries this
        # replica will attempt at once are leased from the start. A busy endpoint here waits a
        # moment for a place, then hands its attempt on. Every place taken is given back on the
        # way out, whatever happens (each attempt gives its own back as soon as it is answered).
        unlimited = [e.id for e in targets if self._gate.unlimited(e)]
        async with self._gate.local_places(unlimited, self._local_wait_s) as tickets:
            deliveries = [
                DeliveryRecord.new(
                    delivery_id=delivery_id(envelope.id, e.id),
                    endpoint_id=e.id,
                    message_id=envelope.id,
                    event_type=envelope.type,
                    body=body,
                    event_ms=event_ms,
                    now_ms=now,
                    # Leased from the start when attempted right here.
                    lease_until_ms=now + self._lease_ms if e.id in tickets else 0,
                )
                for e in targets
            ]
            inserted = await self._inserts.submit([d.to_document() for d in deliveries])
            now_jobs: list[tuple[Job, Ticket]] = []
            later: list[tuple[str, str]] = []
            for delivery, endpoint in zip(deliveries, targets, strict=True):
                ticket = tickets.get(endpoint.id)
                if delivery.id in inserted and ticket is not None:
                    now_jobs.append((Job(delivery, endpoint, 1), ticket))
                    continue
                if ticket is not None:
                    await self._gate.leave(ticket)
                # Limited, or the delivery existed already (this event came again, perhaps
                # after a crash before its attempts): the command path leases and attempts it.
                later.append((delivery.id, endpoint.id))
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

    async def _load_endpoints(self, requests: list[None]) -> list[list[EndpointRecord]]:
        endpoints = [EndpointRecord.of(e) async for e in self._endpoints.find({"enabled": True})]
        return [endpoints] * len(requests)

    async def _insert_deliveries(self, batches: list[list[Document]]) -> list[set[str]]:
        # Inserted, or there already (this event came again): the ones this write inserted are
        # the ones this replica may attempt at once (it holds their lease). Each caller learns
        # only of its own inserts: two copies of one message in one write hold one document,
        # and only the copy whose document went in may attempt it.
        flat = [doc for docs in batches for doc in docs]
        refused = await insert_new(self._deliveries, flat)
        answers: list[set[str]] = []
        start = 0
        for docs in batches:
            answers.append({d["_id"] for i, d in enumerate(docs, start) if i not in refused})
            start += len(docs)
        return answers

    # ---- commands ------------------------------------------------------------------------------

    async def command(self, message: Message[BaseModel]) -> None:
        """The consumer of the commands queue: attempts, resends and test sends."""
        payload = message.payload
        if isinstance(payload, WebhookAttempt):
            await self.attempt(message.envelope, payload, message.attempt)
        elif isinstance(payload, WebhookResend):
            await self.resend(message.envelope, payload, message.attempt)
        elif isinstance(payload, WebhookSendTest):
            await self.send_test(message.envelope, payload, message.attempt)
        else:  # the queue's payload models say which types come here: a bug if this is reached
            raise Reject(f"{message.envelope.type} is no command of webhook-dispatch")

    async def resend(self, envelope: Envelope, command: WebhookResend, attempt: int) -> None:
        """Reopen a final delivery (once per command: it remembers the command's id, which
        upload-ingest waits for) and attempt it, on a fresh retry schedule (this command's own
        attempts). Its retries are this command again (it is on the attempts queue): it finds
        the delivery reopened by itself and attempts it as a ``webhook.attempt`` would."""
        did, endpoint_id = command.delivery_id, command.endpoint_id
        reopened = await self._deliveries.update_one(
            {
                "_id": did,
                "endpoint_id": endpoint_id,
                "status": {"$in": FINAL},
                "last_resend_id": {"$ne": envelope.id},
            },
            {
                "$set": {
                    "status": DeliveryStatus.PENDING,
                    "lease_until_ms": 0,
                    "last_resend_id": envelope.id,
                }
            },
        )
        if reopened.modified_count:
            log.info(
                "delivery reopened for a resend",
                extra={"delivery_id": did, "endpoint_id": endpoint_id, "message_id": envelope.id},
            )
        else:
            found = await self._deliveries.find_one({"_id": did}, DeliveryState.PROJECTION)
            current = None if found is None else DeliveryState.of(found)
            if current is None or current.endpoint_id != endpoint_id:
                self._ignored("resend", "unknown", envelope, did, endpoint_id)
                return
            if current.last_resend_id != envelope.id:
                # Still pending (on its own schedule): nothing to reopen.
                self._ignored("resend", current.status, envelope, did, endpoint_id)
                return
            # Reopened by this very command before (it came again, or back from a retry tier).
        await self.attempt(
            envelope, WebhookAttempt(delivery_id=did, endpoint_id=endpoint_id), attempt
        )

    async def send_test(self, envelope: Envelope, command: WebhookSendTest, attempt: int) -> None:
        """A ``webhook.test`` delivery to the endpoint, made once per delivery id (however often
        the command comes), attempted once: a test is never retried and says nothing about the
        endpoint's health."""
        did, endpoint_id = command.delivery_id, command.endpoint_id
        if await self._deliveries.find_one({"_id": did}, {"_id": 1}) is None:
            found = await self._endpoints.find_one({"_id": endpoint_id})
            if found is None:
                self._ignored("send_test", "unknown_endpoint", envelope, did, endpoint_id)
                return
            endpoint = EndpointRecord.of(found)
            now = now_ms()
            delivery = DeliveryRecord.new(
                delivery_id=did,
                endpoint_id=endpoint.id,
                message_id=envelope.id,
                event_type=records.WEBHOOK_TEST,
                body=delivery_body(
                    envelope.id,
                    records.WEBHOOK_TEST,
                    envelope.time,
                    {"endpoint": {"id": endpoint.id, "url": endpoint.shown_url}},
                ),
                event_ms=now,
                now_ms=now,
                single_attempt=True,
            )
            await insert_new(self._deliveries, [delivery.to_document()])  # or a twin's insert
        await self.attempt(
            envelope, WebhookAttempt(delivery_id=did, endpoint_id=endpoint_id), attempt
        )

    def _ignored(
        self, command: str, status: str, envelope: Envelope, did: str, endpoint_id: str
    ) -> None:
        self._metrics.ignored.labels(command, status).inc()
        log.info(
            "%s for a delivery %s: nothing to do",
            command,
            status,
            extra={
                "delivery_id": did,
                "endpoint_id": endpoint_id,
                "message_id": envelope.id,
                "status": status,
            },
        )

    # ---- attempts through commands -------------------------------------------------------------

    async def attempt(self, envelope: Envelope, command: WebhookAttempt, attempt: int) -> None:
        did, endpoint_id = command.delivery_id, command.endpoint_id
        try:
            self._gate.check_room(endpoint_id)  # before MongoDB: a busy endpoint costs no read
        except Limited as exc:
            self._metrics.deferred.labels(exc.limit).inc()
            raise Defer(str(exc), exc.wait_ms, escalate=exc.escalate) from None
        found = await self._endpoints.find_one({"_id": endpoint_id})
        endpoint = None if found is None else EndpointRecord.of(found)
        if endpoint is None or not endpoint.enabled:
            cancelled = await self._deliveries.update_one(
                {"_id": did, "status": DeliveryStatus.PENDING},
                {"$set": {"status": DeliveryStatus.CANCELLED}},
            )
            if cancelled.modified_count:
                self._metrics.deliveries.labels(DeliveryStatus.CANCELLED).inc()
            return
        # A place at a limited endpoint costs a rate window's budget or a shared slot: look
        # first whether the delivery still needs one. (At an unlimited endpoint the place is a
        # counter in memory, and the lease below says the same.)
        if not self._gate.unlimited(endpoint) and not await self._still_to_attempt(
            envelope, did, endpoint_id
        ):
            return
        try:
            async with self._gate.entered(endpoint) as ticket:
                now = now_ms()
                leased = await self._deliveries.find_one_and_update(
                    {"_id": did, "status": DeliveryStatus.PENDING, "lease_until_ms": {"$lt": now}},
                    {"$set": {"lease_until_ms": now + self._lease_ms}},
                )
                if leased is None:
                    if await self._still_to_attempt(envelope, did, endpoint_id):
                        # Its holder let go between the two reads: take it on the next pass
                        # rather than drop what may be the only message that finishes it.
                        raise Defer("delivery released meanwhile", BUSY_WAIT_MS)
                    return
                job = Job(DeliveryRecord.of(leased), endpoint, attempt)
                retry_after = await self._run(job, ticket, retry_by_command=False)
        except Limited as exc:  # only entering raises it
            self._metrics.deferred.labels(exc.limit).inc()
            raise Defer(str(exc), exc.wait_ms, escalate=exc.escalate) from None
        if retry_after is not None:
            raise Retry(f"attempt {attempt} failed", at_least_ms=retry_after or None)

    async def _still_to_attempt(self, envelope: Envelope, did: str, endpoint_id: str) -> bool:
        """Whether the delivery still waits for this attempt. A pending one still leased
        (another dispatcher is attempting it, or died mid-attempt, or its retry is not due yet)
        is deferred (:class:`Defer`) until its lease ends: this message may be the only one
        that can finish it, but waiting for a lease is no failed attempt, so the retry schedule
        stays where the message stands (a :class:`Retry` here would push the first retry after
        a crash into the second tier)."""
        found = await self._deliveries.find_one({"_id": did}, DeliveryState.PROJECTION)
        current = None if found is None else DeliveryState.of(found)
        now = now_ms()
        if current is None or current.status is not DeliveryStatus.PENDING:
            self._duplicate(envelope, did, endpoint_id, current)
            return False
        until = current.lease_until_ms
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
        self, envelope: Envelope, did: str, endpoint_id: str, current: DeliveryState | None
    ) -> None:
        """An attempt command for a delivery that is final or unknown: a duplicate (a message
        redelivered, a resend racing a success). Nothing to send, and said so."""
        status = "unknown" if current is None else str(current.status)
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
        with bound(delivery_id=job.delivery.id, endpoint_id=job.endpoint.id):
            return await self._attempt(job, ticket, retry_by_command=retry_by_command)

    async def _attempt(self, job: Job, ticket: Ticket, *, retry_by_command: bool) -> int | None:
        delivery, endpoint = job.delivery, job.endpoint
        did = delivery.id
        number = delivery.attempt_count + 1  # counts every attempt of the delivery, resends too
        started = now_ms()
        try:
            keeper = self._keep_leases(did, ticket, number)
            try:
                result = await self._sender.send(
                    endpoint.url, did, endpoint.signing_secrets(started), delivery.body
                )
            finally:
                await keeper.stop()
        finally:
            await self._gate.leave(ticket)
        self._metrics.duration.observe(result.duration_ms / 1000)
        record = StoredAttempt(
            delivery_id=did,
            endpoint_id=endpoint.id,
            attempt=number,
            at_ms=started,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
            response_headers=result.headers,
            response_body=result.body,
            response_truncated=result.truncated,
        )
        if result.succeeded:
            self._metrics.attempts.labels("succeeded").inc()
            await self._finish(record, DeliveryStatus.SUCCEEDED)
            self._metrics.latency.observe(max(0, now_ms() - delivery.event_ms) / 1000)
            if not job.single:
                await self._health(endpoint, succeeded=True)
            return None
        log.warning(
            "webhook attempt failed: %s",
            result.status_code if result.status_code is not None else result.error,
            extra={
                "attempt": number,
                "status_code": result.status_code,
                "error": result.error,
                "duration_ms": result.duration_ms,
            },
        )
        if result.status_code == 410:
            # 410 Gone: the receiver says the endpoint is gone for good (Standard Webhooks).
            self._metrics.attempts.labels("gone").inc()
            await self._finish(record, DeliveryStatus.FAILED)
            await self._disable(endpoint, "gone_410")
            return None
        self._metrics.attempts.labels("failed").inc()
        if not job.single:  # a test send says nothing about the endpoint's health
            await self._health(endpoint, succeeded=False)
        if job.single or job.attempt > len(self._spec.retry_delays_ms):
            await self._finish(record, DeliveryStatus.FAILED)
            return None
        wait_ms = None
        if result.status_code in (429, 503):
            wait_ms = parse_retry_after(result.headers.get("retry-after"), time.time())
        # Leased until its retry is due: a copy of the message that would attempt it sooner (the
        # event redelivered after a crash before its retry was queued) waits for that instead,
        # so a crash never adds an attempt ahead of the schedule.
        await self._log.submit(
            (record, DeliveryStatus.PENDING, started + self._retry_floor_ms(job, wait_ms))
        )
        if not retry_by_command:
            return wait_ms or 0
        # The first attempt was made in the fan-out: its retry goes straight to the retry tier
        # of the attempt commands, as the attempt consumer's own retry would.
        queue, headers = self._spec.retry_route(job.attempt, wait_ms)
        command = Envelope.new(records.WEBHOOK_ATTEMPT, records.attempt_data(did, endpoint.id))
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
                    {
                        "_id": did,
                        "status": DeliveryStatus.PENDING,
                        "attempt_count": {"$ne": attempt},
                    },
                    {"$set": {"lease_until_ms": now_ms() + self._lease_ms}},
                )
                await self._gate.renew(ticket)
            except Exception:
                # MongoDB is away: try again at the next turn. Should it stay away past the
                # lease, a duplicate message may attempt the delivery too (receivers dedupe on
                # its webhook-id), which beats a lease that outlasts a dead holder.
                log.warning("could not renew the lease of %s", did, exc_info=True)
            await asyncio.sleep(self._lease_ms / 3 / 1000)

    async def _finish(self, record: StoredAttempt, status: DeliveryStatus) -> None:
        await self._log.submit((record, status, 0))
        self._metrics.deliveries.labels(status).inc()

    async def _write_log(self, entries: list[LogEntry]) -> list[None]:
        # Each attempt lives in its delivery, in a map keyed by the attempt's number: one write
        # records the attempt and the delivery's new state together, a repeated write of the
        # same attempt lands on the same key, and no server has to get $push right.
        await self._deliveries.bulk_write(
            [
                UpdateOne(
                    {"_id": record.delivery_id},
                    {
                        "$set": {
                            "status": status,
                            "lease_until_ms": lease_until,
                            "last_attempt_ms": record.at_ms,
                            "attempt_count": record.attempt,
                            f"{ATTEMPTS}.{record.attempt}": record.model_dump(),
                        }
                    },
                )
                for record, status, lease_until in entries
            ],
            ordered=False,
        )
        return [None] * len(entries)

    # ---- endpoint health -----------------------------------------------------------------------

    async def _health(self, endpoint: EndpointRecord, *, succeeded: bool) -> None:
        """Failing since the first failure after a success; disabled when that lasts past the
        auto-disable period; recovered on the next success. Each change is announced once
        (the conditional updates make sure of it, whichever replica sees it first), by a
        notice written with the change (the outbox)."""
        now = now_ms()
        since = endpoint.failing_since_ms
        if succeeded:
            if since is not None:
                await self._change(
                    endpoint,
                    {"failing_since_ms": {"$ne": None}},
                    {"failing_since_ms": None},
                    records.ENDPOINT_RECOVERED,
                )
            return
        if since is None:
            await self._change(
                endpoint,
                {"failing_since_ms": {"$eq": None}},
                {"failing_since_ms": now},
                records.ENDPOINT_FAILING,
            )
            return
        if now - since >= self._auto_disable_ms:
            await self._disable(endpoint, "failing")

    async def _disable(self, endpoint: EndpointRecord, reason: str) -> None:
        await self._change(
            endpoint,
            {"enabled": True},
            {"enabled": False, "disabled_reason": reason, "disabled_ms": now_ms()},
            records.ENDPOINT_DISABLED,
        )

    async def _change(
        self, endpoint: EndpointRecord, condition: Document, changes: Document, kind: str
    ) -> None:
        """Apply ``changes`` to the endpoint if ``condition`` still holds, and announce it
        (``kind``) in the same write."""
        current = endpoint.model_copy(update=changes)
        data = {
            "endpoint": Endpoint(
                id=current.id,
                url=current.shown_url,
                description=current.description,
                enabled=current.enabled,
                failing_since=ms_to_iso(current.failing_since_ms),
                disabled_reason=current.disabled_reason,
            ).model_dump()
        }
        notice = Envelope.new(kind, data)
        ops = self._outbox.push(self._topology.events, [notice], self._outbox_grace_ms)
        ops["$set"].update(changes)
        changed = await self._endpoints.update_one({"_id": endpoint.id, **condition}, ops)
        if not changed.modified_count:
            return  # another replica saw it first, or it changed meanwhile
        log.warning(
            "webhook endpoint %s",
            kind.removeprefix("endpoint."),
            extra={"endpoint_id": endpoint.id, "reason": current.disabled_reason},
        )
        self._metrics.notices.labels(kind).inc()
        # Refused by the broker: the notice waits in the outbox for this service's relay.
        await self._outbox.flush(
            self._endpoints, endpoint.id, self._outbox.entries(self._topology.events, [notice])
        )


async def close_quietly(session: aiohttp.ClientSession) -> None:
    await session.close()
    # aiohttp's own advice: give SSL transports a moment to close.
    await asyncio.sleep(0)
