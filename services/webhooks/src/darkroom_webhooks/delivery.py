"""Fan-out of public events to subscribed endpoints, and one delivery attempt per message."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

import aiohttp
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope, Publisher, Retry, Topology
from darkroom_kit.metrics import LATENCY_BUCKETS
from darkroom_kit.mongo import Database, Document
from prometheus_client import CollectorRegistry, Counter, Histogram

from darkroom_webhooks.signing import signature_header
from darkroom_webhooks.ssrf import Network, blocked_cause, check_literal

log = logging.getLogger(__name__)

STORED_BODY_CHARS = 4096


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


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_ms: int
    body: str | None

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
                raw = await resp.content.read(self._body_limit)
                return AttemptResult(
                    resp.status,
                    None,
                    _ms_since(started),
                    raw[:STORED_BODY_CHARS].decode("utf-8", "replace"),
                )
        except TimeoutError:
            return AttemptResult(None, "timeout", _ms_since(started), None)
        except (aiohttp.ClientError, OSError) as exc:
            blocked = blocked_cause(exc)
            error = f"blocked_address: {blocked}" if blocked else f"{type(exc).__name__}: {exc}"
            return AttemptResult(None, error[:500], _ms_since(started), None)


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        topology: Topology,
        sender: Sender,
        retry_delays_ms: tuple[int, ...],
        lease_ms: int,
        metrics: WebhookMetrics,
    ) -> None:
        self._endpoints = db[records.WEBHOOK_ENDPOINTS]
        self._deliveries = db[records.WEBHOOK_DELIVERIES]
        self._attempts = db[records.WEBHOOK_ATTEMPTS]
        self._attempts = db[records.WEBHOOK_ATTEMPTS]
        self._publisher = publisher
        self._topology = topology
        self._sender = sender
        self._delays = retry_delays_ms
        self._lease_ms = lease_ms
        self._metrics = metrics

    async def fan_out(self, envelope: Envelope, attempt: int) -> None:
        """One delivery per subscribed endpoint, then one attempt command per delivery."""
        endpoints = [e async for e in self._endpoints.find({"enabled": True})]
        targets = [e for e in endpoints if subscribed(e["event_types"], envelope.type)]
        if not targets:
            return
        payload = json.dumps(
            {"type": envelope.type, "timestamp": envelope.time, "data": envelope.data},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        commands = []
        for endpoint in targets:
            did = delivery_id(envelope.id, endpoint["_id"])
            await self._deliveries.update_one(
                {"_id": did},
                {
                    "$setOnInsert": {
                        "endpoint_id": endpoint["_id"],
                        "message_id": envelope.id,
                        "event_type": envelope.type,
                        "payload": payload,
                        "status": "pending",
                        "attempt_count": 0,
                        "created_ms": now_ms(),
                        "lease_until_ms": 0,
                        "last_attempt_ms": None,
                    }
                },
                upsert=True,
            )
            commands.append(Envelope.new(records.WEBHOOK_ATTEMPT, {"delivery_id": did}))
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
        record = {
            "delivery_id": did,
            "endpoint_id": endpoint["_id"],
            "attempt": attempt,
            "at_ms": now,
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": result.duration_ms,
            "response_body": result.body,
        }
        if result.succeeded:
            self._metrics.attempts.labels("succeeded").inc()
            await self._finish(did, "succeeded", record)
            return
        if result.status_code == 410:
            # 410 Gone: the receiver says the endpoint is gone for good (Standard Webhooks).
            self._metrics.attempts.labels("gone").inc()
            await self._endpoints.update_one(
                {"_id": endpoint["_id"]},
                {
                    "$set": {
                        "enabled": False,
                        "disabled_reason": "gone_410",
                        "disabled_ms": now_ms(),
                    }
                },
            )
            log.warning("endpoint disabled after 410 Gone", extra={"endpoint_id": endpoint["_id"]})
            await self._finish(did, "failed", record)
            return
        self._metrics.attempts.labels("failed").inc()
        if attempt > len(self._delays):
            await self._finish(did, "failed", record)
            return
        await self._record(did, record, "pending")
        raise Retry(f"attempt {attempt} failed: {result.status_code or result.error}")

    async def _record(self, did: str, record: Document, status: str) -> None:
        # One document per attempt, keyed by delivery and attempt number: a repeated write of the
        # same attempt lands on the same document instead of logging it twice.
        await self._attempts.update_one(
            {"_id": f"{did}.{record['attempt']}"}, {"$set": record}, upsert=True
        )
        await self._deliveries.update_one(
            {"_id": did},
            {
                "$inc": {"attempt_count": 1},
                "$set": {"status": status, "lease_until_ms": 0, "last_attempt_ms": record["at_ms"]},
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
