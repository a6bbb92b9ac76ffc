"""Fan-out of public events to subscribed endpoints, and one delivery attempt per message."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

import aiohttp
from darkroom_kit import records
from darkroom_kit.clock import iso_to_ms, ms_to_iso, now_ms
from darkroom_kit.messaging import Envelope, Publisher, QueueSpec, Retry, Topology
from darkroom_kit.metrics import LATENCY_BUCKETS
from darkroom_kit.mongo import Database, Document
from prometheus_client import CollectorRegistry, Counter, Histogram
from pymongo import UpdateOne

from darkroom_webhooks.signing import signature_header
from darkroom_webhooks.ssrf import Network, blocked_cause, check_literal

log = logging.getLogger(__name__)

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
    if not subscribed(endpoint["event_types"], envelope.type):
        return False
    if envelope.type in records.ENDPOINT_NOTICES:
        # A notice about an endpoint never goes to that endpoint (it is the one failing).
        return bool(envelope.data.get("endpoint", {}).get("id") != endpoint["_id"])
    only = endpoint.get("event_ids")
    return not only or event_id_of(envelope) in only


class Dispatcher:
    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        topology: Topology,
        sender: Sender,
        attempts: QueueSpec,
        lease_ms: int,
        metrics: WebhookMetrics,
        *,
        auto_disable_ms: int,
    ) -> None:
        self._endpoints = db[records.WEBHOOK_ENDPOINTS]
        self._deliveries = db[records.WEBHOOK_DELIVERIES]
        self._attempts = db[records.WEBHOOK_ATTEMPTS]
        self._publisher = publisher
        self._topology = topology
        self._sender = sender
        self._spec = attempts
        self._lease_ms = lease_ms
        self._metrics = metrics
        self._auto_disable_ms = auto_disable_ms

    async def fan_out(self, envelope: Envelope, attempt: int) -> None:
        """One delivery per subscribed endpoint, then one attempt command per delivery."""
        endpoints = [e async for e in self._endpoints.find({"enabled": True})]
        targets = [e for e in endpoints if wants(e, envelope)]
        if not targets:
            return
        payload = json.dumps(
            {"type": envelope.type, "timestamp": envelope.time, "data": envelope.data},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        event_ms = iso_to_ms(envelope.time) or now_ms()
        ids = [delivery_id(envelope.id, e["_id"]) for e in targets]
        # One bulk write for all endpoints (an upsert each, so a redelivered event changes nothing).
        await self._deliveries.bulk_write(
            [
                UpdateOne(
                    {"_id": did},
                    {
                        "$setOnInsert": {
                            "endpoint_id": endpoint["_id"],
                            "message_id": envelope.id,
                            "event_type": envelope.type,
                            "payload": payload,
                            "status": "pending",
                            "attempt_count": 0,
                            "event_ms": event_ms,
                            "created_ms": now_ms(),
                            "lease_until_ms": 0,
                            "last_attempt_ms": None,
                        }
                    },
                    upsert=True,
                )
                for did, endpoint in zip(ids, targets, strict=True)
            ],
            ordered=False,
        )
        commands = [Envelope.new(records.WEBHOOK_ATTEMPT, {"delivery_id": did}) for did in ids]
        await self._publisher.publish_many(self._topology.commands, commands)

    async def attempt(self, envelope: Envelope, attempt: int) -> None:
        did = envelope.data["delivery_id"]
        now = now_ms()
        delivery = await self._deliveries.find_one_and_update(
            {"_id": did, "status": "pending", "lease_until_ms": {"$lt": now}},
            {"$set": {"lease_until_ms": now + self._lease_ms}},
        )
        if delivery is None:
            current = await self._deliveries.find_one({"_id": did}, {"status": 1})
            if current is not None and current["status"] == "pending":
                # Another dispatcher holds it right now; come back after a delay to make sure
                # it finished, instead of dropping the only message that can finish it.
                raise Retry("delivery leased by another consumer")
            return  # unknown or already final: a duplicate message
        endpoint = await self._endpoints.find_one({"_id": delivery["endpoint_id"]})
        if endpoint is None or not endpoint.get("enabled", True):
            await self._finish(did, "cancelled", None)
            return
        now = now_ms()
        secrets = [
            s["secret"]
            for s in endpoint.get("secrets", [])
            if s.get("expires_ms") is None or s["expires_ms"] > now
        ]
        result = await self._sender.send(
            endpoint["url"], did, secrets, delivery["payload"].encode()
        )
        self._metrics.duration.observe(result.duration_ms / 1000)
        # The attempt's number in the log counts every attempt of this delivery, resends too.
        number = int(delivery.get("attempt_count", 0)) + 1
        record = {
            "delivery_id": did,
            "endpoint_id": endpoint["_id"],
            "attempt": number,
            "at_ms": now,
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": result.duration_ms,
            "response_headers": result.headers,
            "response_body": result.body,
            "response_truncated": result.truncated,
        }
        if result.succeeded:
            self._metrics.attempts.labels("succeeded").inc()
            self._metrics.latency.observe(max(0, now_ms() - delivery.get("event_ms", now)) / 1000)
            await self._finish(did, "succeeded", record)
            if not delivery.get("single_attempt"):
                await self._health(endpoint, succeeded=True)
            return
        if result.status_code == 410:
            # 410 Gone: the receiver says the endpoint is gone for good (Standard Webhooks).
            self._metrics.attempts.labels("gone").inc()
            await self._finish(did, "failed", record)
            await self._disable(endpoint, "gone_410")
            return
        self._metrics.attempts.labels("failed").inc()
        single = bool(delivery.get("single_attempt"))
        if not single:  # a test send says nothing about the endpoint's health
            await self._health(endpoint, succeeded=False)
        if single or attempt > len(self._spec.retry_delays_ms):
            await self._finish(did, "failed", record)
            return
        await self._record(did, record, "pending")
        wait_ms = None
        if result.status_code in (429, 503):
            wait_ms = parse_retry_after(result.headers.get("retry-after"), time.time())
        raise Retry(
            f"attempt {attempt} failed: {result.status_code or result.error}", at_least_ms=wait_ms
        )

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

    async def _record(self, did: str, record: Document, status: str) -> None:
        # One document per attempt, keyed by delivery and attempt number: a repeated write of the
        # same attempt lands on the same document instead of logging it twice.
        await self._attempts.update_one(
            {"_id": f"{did}.{record['attempt']}"}, {"$set": record}, upsert=True
        )
        await self._deliveries.update_one(
            {"_id": did},
            {
                "$set": {
                    "status": status,
                    "lease_until_ms": 0,
                    "last_attempt_ms": record["at_ms"],
                    "attempt_count": record["attempt"],
                },
            },
        )

    async def _finish(self, did: str, status: str, record: Document | None) -> None:
        self._metrics.deliveries.labels(status).inc()
        if record is None:
            await self._deliveries.update_one(
                {"_id": did}, {"$set": {"status": status, "lease_until_ms": 0}}
            )
            return
        await self._record(did, record, status)


async def close_quietly(session: aiohttp.ClientSession) -> None:
    await session.close()
    # aiohttp's own advice: give SSL transports a moment to close.
    await asyncio.sleep(0)
