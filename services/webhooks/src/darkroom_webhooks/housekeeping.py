"""What webhook-dispatch does on a schedule: prune the delivery log past its retention, and
measure what waits (retry tiers, defer queues) and how endpoints stand, for the dashboard."""

from __future__ import annotations

import contextlib

from aio_pika.abc import AbstractRobustConnection
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.mongo import Database
from darkroom_kit.statuses import DELIVERY_FINAL
from prometheus_client import CollectorRegistry, Gauge
from pymongo import ASCENDING

from darkroom_webhooks.limits import EndpointGate, slots_leased


async def ensure_indexes(db: Database) -> None:
    await db[records.WEBHOOK_DELIVERIES].create_index([("created_ms", ASCENDING)])


async def prune(db: Database, gate: EndpointGate, retention_ms: int) -> int:
    """Final deliveries whose last attempt (or creation) is older than the retention go, with
    the attempts they hold; a pending delivery stays whatever its age (it still has work to
    do)."""
    cutoff = now_ms() - retention_ms
    deliveries = await db[records.WEBHOOK_DELIVERIES].delete_many(
        {
            "status": {"$in": sorted(DELIVERY_FINAL)},
            "created_ms": {"$lt": cutoff},
            "$or": [{"last_attempt_ms": {"$lt": cutoff}}, {"last_attempt_ms": {"$eq": None}}],
        }
    )
    # Rate windows matter only for the current second.
    await gate.prune(now_ms() - 60_000)
    return int(deliveries.deleted_count)


def tier_label(delay_ms: int) -> str:
    return f"{delay_ms / 1000:g}s"


class WaitingGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.retry_waiting = Gauge(
            "webhook_retry_messages",
            "Attempts waiting in each retry tier (all of the tier's jitter queues)",
            ["tier"],
            registry=registry,
        )
        self.deferred_waiting = Gauge(
            "webhook_deferred_messages",
            "Attempts waiting in defer queues (held back by an endpoint's limits)",
            registry=registry,
        )
        self.endpoints = Gauge(
            "webhook_endpoints",
            "Webhook endpoints by state: healthy, failing (enabled) and disabled",
            ["state"],
            registry=registry,
        )
        self.slots_leased = Gauge(
            "webhook_endpoint_slots_leased",
            "Shared max_concurrency slots of each endpoint whose lease has not ended (over every "
            "replica; a dead replica's slots count until their lease ends)",
            ["endpoint_id"],
            registry=registry,
        )

    async def measure(
        self, connection: AbstractRobustConnection, spec: QueueSpec, db: Database
    ) -> None:
        channel = await connection.channel()
        try:
            for tier in spec.retry_delays_ms:
                waiting = 0
                for delay in spec.tier_delays(tier):
                    queue = await channel.declare_queue(spec.retry_queue(delay), passive=True)
                    waiting += queue.declaration_result.message_count or 0
                self.retry_waiting.labels(tier_label(tier)).set(waiting)
            deferred = 0
            for delay in spec.defer_delays_ms:
                queue = await channel.declare_queue(spec.defer_queue(delay), passive=True)
                deferred += queue.declaration_result.message_count or 0
            self.deferred_waiting.set(deferred)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        endpoints = db[records.WEBHOOK_ENDPOINTS]
        enabled = await endpoints.count_documents({"enabled": True})
        failing = await endpoints.count_documents(
            {"enabled": True, "failing_since_ms": {"$ne": None}}
        )
        disabled = await endpoints.count_documents({"enabled": False})
        self.endpoints.labels("healthy").set(enabled - failing)
        self.endpoints.labels("failing").set(failing)
        self.endpoints.labels("disabled").set(disabled)
        leased = await slots_leased(db)
        # Replaced whole (no await in between): an endpoint whose slots all came back drops out.
        self.slots_leased.clear()
        for endpoint_id, n in leased.items():
            self.slots_leased.labels(endpoint_id).set(n)
